"""Runtime ISA dispatch, show_config, threads and the GIL (C++ backend)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fastattn
from fastattn import _backend

pytestmark = pytest.mark.skipif(not _backend.cpp_available(), reason="C++ extension not built")
core = _backend._core


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":")[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        return ""


def test_auto_selects_the_best_supported_isa():
    # The best supported ISA, except: avx512_bf16 off AMD (VDPBF16PS runs at half the FMA's
    # multiply-add rate on the Intel Xeon measured: dispatch.cpp, avx512_bf16_is_faster) and the
    # AMX engine's software model (for tests). amx, where it runs, is the best (measured faster
    # than avx512 and avx512_bf16 on a Xeon: docs/engines.md).
    supported = core.supported_isas()
    assert supported[0] == "scalar" and set(supported) <= set(core.compiled_isas())
    opt_in = {"amx-model"} | ({"avx512_bf16"} if _cpu_vendor() != "AuthenticAMD" else set())
    best = [isa for isa in supported if isa not in opt_in][-1]
    previous = fastattn.set_isa("auto")
    try:
        assert fastattn.get_isa() == best
    finally:
        fastattn.set_isa(previous)


def test_avx2_is_selected_on_an_avx2_machine():
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo")
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    if " avx2" not in flags or " fma" not in flags:
        pytest.skip("this CPU has no AVX2+FMA")
    assert "avx2" in core.supported_isas()
    if " avx512" not in flags:
        result = run_python("import fastattn; print(fastattn.get_isa())", FASTATTN_ISA="")
        assert result.stdout.strip() == "avx2", result.stderr


def test_x86_builds_compile_every_x86_isa():
    if os.uname().machine not in ("x86_64", "AMD64"):
        pytest.skip("not x86-64")
    # amx where the compiler knows its instructions (GCC >= 11, Clang >= 12)
    assert core.compiled_isas() in (["scalar", "avx2", "avx512", "avx512_bf16", "amx-model"],
                                    ["scalar", "avx2", "avx512", "avx512_bf16", "amx-model", "amx"])


@pytest.mark.parametrize("isa", core.supported_isas() if core else [])
def test_env_var_selects_isa(isa):
    result = run_python("import fastattn; print(fastattn.get_isa())", FASTATTN_ISA=isa)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == isa


def test_env_var_with_isa_the_cpu_lacks_fails_clearly():
    missing = [isa for isa in core.compiled_isas() if isa not in core.supported_isas()]
    if not missing:
        pytest.skip("this CPU runs every compiled ISA")
    result = run_python("import fastattn", FASTATTN_ISA=missing[0])
    assert result.returncode != 0
    assert f"FASTATTN_ISA='{missing[0]}'" in result.stderr and "not supported by this CPU" in result.stderr
    with pytest.raises(ValueError, match="not supported by this CPU"):
        fastattn.set_isa(missing[0])


def test_set_isa_returns_previous_and_switches():
    original = fastattn.get_isa()
    assert fastattn.set_isa("scalar") == original
    try:
        assert fastattn.get_isa() == "scalar"
    finally:
        assert fastattn.set_isa(original) == "scalar"


def test_show_config(capsys):
    config = fastattn.show_config()
    assert capsys.readouterr().out == ""  # shown by whoever shows it (a REPL: once, as its repr)
    assert isinstance(config, dict) and config["version"] == fastattn.__version__ and config["backend"] == "cpp"
    assert config["selected_isa"] == fastattn.get_isa() in config["supported_isas"]
    assert config["compiled_isas"] == core.compiled_isas()
    assert isinstance(config["openmp"], bool) and config["num_threads"] >= 1
    table = repr(config)
    assert str(config) == table
    assert [line.split()[0] for line in table.splitlines()] == list(config)  # every key, one line each
    assert f"selected_isa    {config['selected_isa']}" in table
    assert f"compiled_isas   {', '.join(config['compiled_isas'])}" in table
    assert f"openmp          {'on' if config['openmp'] else 'off'}" in table
    print(config)
    assert capsys.readouterr().out == table + "\n"


def test_show_config_shows_once_in_a_repl():
    """Issue 26: it printed and returned a dict, so a REPL showed the configuration twice."""
    repl = subprocess.run([sys.executable, "-i", "-q"], input="import fastattn\nfastattn.show_config()\n",
                          capture_output=True, text=True, timeout=120)
    assert repl.stdout.count("selected_isa") == 1, repl.stdout + repl.stderr


def test_show_config_shows_any_key():
    """The table is generic over keys: a new one (a list, a dict, a bool, None) shows without a
    change to the display code, and IPython's pretty printer gets the same table."""
    config = type(fastattn.show_config())(version="1", engines={"float32": "fma", "bfloat16": "amx"},
                                          isas=[], openmp=False, selected_isa=None)
    assert repr(config) == ("version       1\n"
                            "engines       float32 fma, bfloat16 amx\n"
                            "isas          -\n"
                            "openmp        off\n"
                            "selected_isa  None")
    shown = []
    config._repr_pretty_(type("Printer", (), {"text": lambda self, text: shown.append(text)})(), False)
    assert shown == [repr(config)]


def test_omp_num_threads_is_honoured():
    result = run_python("import json, fastattn; print(json.dumps(fastattn.show_config()))",
                        OMP_NUM_THREADS="1")
    config = json.loads(result.stdout.strip().splitlines()[-1])
    assert config["num_threads"] == 1


@pytest.mark.parametrize("causal", [False, True, "lower_right"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_does_not_change_results(isa, causal, dtype, eight_processors):
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 4, 301, 40)).astype(dtype)
    k = rng.standard_normal((2, 2, 333, 40)).astype(dtype)
    v = rng.standard_normal((2, 2, 333, 24)).astype(dtype)
    one = fastattn.attention(q, k, v, causal=causal, num_threads=1, return_lse=True)
    for threads in (2, 3, 8):
        many = fastattn.attention(q, k, v, causal=causal, num_threads=threads, return_lse=True)
        assert eight_processors() in (None, threads), "the threads the kernel really ran"
        for a, b in zip(one, many):
            np.testing.assert_array_equal(a, b)  # bitwise, not approximately


def _gil_calls():
    """One long single-threaded call of each kind of kernel entry (each returns its callable)."""
    rng = np.random.default_rng(4)
    # Long enough (> 10 ms on one thread) on the fastest core seen: an Intel Xeon ran
    # (1, 4, 1024, 64) forward in 7.8 ms.
    q = rng.standard_normal((1, 4, 2048, 64)).astype(np.float32)
    out, lse = fastattn.attention(q, q, q, return_lse=True)
    cache = fastattn.KVCache(4, 64, dtype="int8")
    kv = rng.standard_normal((2, 4, 4096, 64)).astype(np.float32)
    cache.append([0, 1], kv, kv)
    decode = rng.standard_normal((2, 16, 64, 64)).astype(np.float32)
    return {
        "forward": lambda: fastattn.attention(q, q, q, num_threads=1),
        "backward": lambda: fastattn.attention_backward(out, q, q, q, out, lse, num_threads=1),
        "kv-cache": lambda: cache.attention(decode, [0, 1], num_threads=1),
    }


@pytest.mark.parametrize("kind", ["forward", "backward", "kv-cache"])
def test_gil_is_released_during_the_kernel(kind):
    # While one thread runs a long single-threaded kernel call, a pure-Python
    # thread must keep running; with the GIL held it would stall for the whole call.
    call = _gil_calls()[kind]
    start = time.perf_counter()
    call()
    single = time.perf_counter() - start
    repeats = max(1, int(0.3 / max(single, 1e-4)))
    ticks = []
    done = threading.Event()

    def ticker():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    def work():
        for _ in range(repeats):
            call()

    t = threading.Thread(target=ticker)
    t.start()
    time.sleep(0.01)
    begin = time.perf_counter()
    work()
    end = time.perf_counter()
    done.set()
    t.join()
    during = [x for x in ticks if begin <= x <= end]
    # A tick every ~1 ms if the GIL is free; with it held, at most one per call.
    assert single > 0.01, f"the {kind} call is too short ({single * 1e3:.1f} ms) to tell"
    assert len(during) > 3 * repeats + 5, (len(during), repeats, end - begin)


def test_thread_counts_are_capped_at_the_processors(isa):
    """Without the tests' override, 8 requested threads run as many as this process may use
    (its CPU affinity): the team size the kernel reports is real, not the request echoed."""
    core = _backend._core
    rng = np.random.default_rng(5)
    q = rng.standard_normal((2, 8, 512, 64)).astype(np.float32)
    fastattn.attention(q, q, q, num_threads=8)
    # A build without OpenMP runs every call on the calling thread.
    assert core._last_team_size() == (min(8, len(os.sched_getaffinity(0))) if core.have_openmp() else 1)
    fastattn.attention(q[:, :, :4], q[:, :, :4], q[:, :, :4], num_threads=8)  # too little work for 2
    assert core._last_team_size() == 1
    with pytest.raises(ValueError, match="the processor limit must be >= 0"):
        core._set_processor_limit_for_testing(-1)


def test_the_binding_reads_the_options_in_the_order_python_writes_them():
    # The options cross the binding as one tuple read by position: its two spellings, Python's
    # AttentionOptions and C++'s FASTATTN_OPTIONS, must list the same names in the same order.
    from fastattn import _contract

    assert tuple(core.option_fields()) == _contract.OPTION_NAMES == _contract.Options._fields
