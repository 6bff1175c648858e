"""Thread-pool manners: fastattn.set_num_threads()/get_num_threads(), threadpoolctl's limits, and
no oversubscription from a ThreadPoolExecutor when docs/api.md's recommendation is followed.

Thread counts are read from /proc/self/task in a fresh process: an OpenMP team is OS threads that
stay alive (idle) after the call, so the growth of that count is the number of threads calls used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastattn
from fastattn import _backend

needs_openmp = pytest.mark.skipif(not (_backend.cpp_available() and _backend._core.have_openmp()),
                                  reason="needs the C++ extension with OpenMP")
needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc/self/task")


@pytest.fixture(autouse=True)
def _restore_default():
    previous = fastattn.set_num_threads(None)
    yield
    fastattn.set_num_threads(previous)


def test_set_and_get_num_threads():
    default = fastattn.get_num_threads()
    assert default >= 1 and fastattn.show_config()["num_threads"] == default
    assert fastattn.set_num_threads(1) is None
    assert fastattn.get_num_threads() == 1 and fastattn.show_config()["num_threads"] == 1
    assert fastattn.set_num_threads(10**3) == 1
    assert fastattn.get_num_threads() == default  # capped at the processors (and the OpenMP limit)
    assert fastattn.set_num_threads(None) == 1000
    assert fastattn.get_num_threads() == default


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (1025, ValueError), (2.0, TypeError),
                                        (True, TypeError), ("2", TypeError)])
def test_set_num_threads_rejects(bad, error):
    with pytest.raises(error, match="num_threads"):
        fastattn.set_num_threads(bad)


def test_results_do_not_depend_on_the_setting(rng):
    q, k, v = (rng.standard_normal((1, 4, 300, 32)).astype(np.float32) for _ in range(3))
    results = []
    for n in (1, 2, None):
        fastattn.set_num_threads(n)
        results.append(fastattn.attention(q, k, v, causal=True))
    assert all(np.array_equal(results[0], r) for r in results[1:])


def run_child(code: str) -> dict:
    """Runs `code` in a fresh Python; it prints one JSON line."""
    prelude = textwrap.dedent("""
        import json, os, numpy as np, fastattn
        def threads(): return len(os.listdir("/proc/self/task"))
        rng = np.random.default_rng(0)
        q, k, v = (rng.standard_normal((1, 8, 512, 64)).astype(np.float32) for _ in range(3))
        fastattn.attention(q[:, :1, :8], k[:, :1, :8], v[:, :1, :8])  # tiny: one thread, loads everything
    """)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OMP_", "FASTATTN_"))}
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@needs_openmp
@needs_proc
def test_threadpoolctl_sees_and_limits_the_openmp_pool():
    pytest.importorskip("threadpoolctl")
    seen = run_child("""
        from threadpoolctl import threadpool_info, threadpool_limits
        libraries = [i["filepath"] for i in threadpool_info() if i["user_api"] == "openmp"]
        maps = open("/proc/self/maps").read()
        before = threads()
        with threadpool_limits(limits=1, user_api="openmp"):
            limited = fastattn.get_num_threads()
            fastattn.attention(q, k, v)
            fastattn.attention_backward(q, q, k, v, *fastattn.attention(q, k, v, return_lse=True))
        after_limited = threads()
        restored = fastattn.get_num_threads()
        fastattn.attention(q, k, v)
        print(json.dumps(dict(libraries=libraries, loaded=[p for p in libraries if p in maps], limited=limited,
                              restored=restored, grew_limited=after_limited - before,
                              grew=threads() - after_limited)))
    """)
    assert seen["libraries"] and seen["loaded"] == seen["libraries"]  # the libgomp fastattn uses is listed
    assert seen["limited"] == 1 and seen["grew_limited"] == 0  # limited to the calling thread: no team
    assert seen["restored"] == fastattn.get_num_threads()
    assert seen["grew"] == seen["restored"] - 1  # and without the limit, a team of that many threads


@needs_openmp
@needs_proc
@pytest.mark.parametrize("follow_advice", [True, False])
def test_thread_pool_does_not_oversubscribe_with_the_recommended_setting(follow_advice):
    """docs/api.md's advice for W pool workers: set_num_threads(max(1, cores // W)). The calls then
    use at most `cores` threads in all (each worker's team is its own OS threads). Without it, each
    worker opens a team of `cores` threads: W x cores, the oversubscription the advice prevents."""
    seen = run_child(f"""
        from concurrent.futures import ThreadPoolExecutor
        workers, cores = 4, fastattn.get_num_threads()
        if {follow_advice}:
            fastattn.set_num_threads(max(1, cores // workers))
        before = threads()
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda _: fastattn.attention(q, k, v, causal=True), range(3 * workers)))
            busy = threads() - before - workers  # OpenMP threads beyond the pool's own
        assert all(np.array_equal(results[0], r) for r in results)
        print(json.dumps(dict(cores=cores, workers=workers, busy=busy,
                              per_call=max(1, cores // workers) if {follow_advice} else cores)))
    """)
    # Every worker ran calls; each opened a team of per_call threads (per_call - 1 new OS threads).
    assert seen["busy"] <= seen["workers"] * (seen["per_call"] - 1)
    if follow_advice:
        assert seen["busy"] + seen["workers"] <= max(seen["cores"], seen["workers"])
    elif seen["cores"] >= 2:
        assert seen["busy"] >= 1  # the check above can fail: without the advice teams do appear
