"""Reliability: concurrency, fork, leaks, determinism, hostile values and 64-bit offsets.

What docs/reliability.md's "Guarantees" promise, each checked here: Python threads calling at
once get the serial results bit for bit; a forked child still computes; 20,000 calls leave
RSS flat; results are bitwise the same for every thread count; NaN/Inf stay in the rows they
touch; huge and denormal values give the oracle's answer; offsets past 2**31 are exact.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastattn
from fastattn import _backend
from oracle import assert_matches_oracle, oracle, oracle_grads
from test_backward import grads_of

needs_cpp = pytest.mark.skipif(not _backend.cpp_available(), reason="the C++ extension is not built")


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


def normal(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# --- concurrency -------------------------------------------------------------------------------

def _jobs(rng):
    """(name, function) pairs: forward and backward on shared and per-job inputs, with and without
    options, each a closure returning a tuple of arrays."""
    shared = [normal(rng, s) for s in ((2, 8, 150, 64), (2, 4, 170, 64), (2, 4, 170, 48))]
    jobs = []
    for index in range(8):
        own = [normal(rng, s) for s in ((1, 4, 90 + index, 32), (1, 2, 130, 32), (1, 2, 130, 40))]
        for name, (q, k, v) in (("shared", shared), ("own", own)):
            options = dict(causal=index % 2 == 0, num_threads=(None, 1, 2)[index % 3])
            if index % 4 == 3:
                options.update(alibi_slopes=np.linspace(0.1, 0.8, q.shape[1]), softcap=20.0)
            out, lse = fastattn.attention(q, k, v, return_lse=True, **options)
            dout = normal(np.random.default_rng(index), out.shape)

            def forward(q=q, k=k, v=v, options=options):
                return fastattn.attention(q, k, v, return_lse=True, **options)

            def backward(q=q, k=k, v=v, out=out, lse=lse, dout=dout, options=options):
                return fastattn.attention_backward(dout, q, k, v, out, lse, **options)

            jobs += [(f"forward-{name}-{index}", forward), (f"backward-{name}-{index}", backward)]
    return jobs


@needs_cpp
def test_python_threads_get_the_serial_results_bitwise(rng):
    jobs = _jobs(rng)
    serial = {name: job() for name, job in jobs}
    start = threading.Barrier(8)
    results, errors = {}, []

    def worker(t):
        try:
            start.wait()
            for round_ in range(3):  # each thread runs every job, in its own rotated order
                for name, job in jobs[t::8] + jobs[:t:8] + jobs[t + 1::8]:
                    results[(t, round_, name)] = job()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) >= 3 * len(jobs)
    for (_, _, name), got in results.items():
        for a, b in zip(got, serial[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)


@needs_cpp
def test_fork_after_openmp_still_computes():
    # libgomp's thread pool does not survive fork(): without the handler in dispatch.cpp the child
    # hangs at its first parallel region. The child runs single-threaded and gets the same bits.
    result = run_python("""
        import os, numpy as np, fastattn
        rng = np.random.default_rng(0)
        q, k, v = (rng.standard_normal((2, 8, 300, 64)).astype(np.float32) for _ in range(3))
        out, lse = fastattn.attention(q, k, v, return_lse=True, num_threads=2)
        grads = fastattn.attention_backward(out, q, k, v, out, lse, num_threads=2)
        pid = os.fork()
        if pid == 0:
            ok = np.array_equal(fastattn.attention(q, k, v, num_threads=2), out)
            ok &= all(np.array_equal(a, b) for a, b in
                      zip(fastattn.attention_backward(out, q, k, v, out, lse, num_threads=2), grads))
            ok &= fastattn.show_config()["num_threads"] == 1
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert np.array_equal(fastattn.attention(q, k, v, num_threads=2), out)  # the parent is unchanged
        print("ok")
    """, timeout=60)
    assert result.returncode == 0 and result.stdout.splitlines()[-1:] == ["ok"], result.stderr


@needs_cpp
def test_multiprocessing_fork_pool_after_openmp():
    result = run_python("""
        import multiprocessing, warnings, numpy as np, fastattn
        warnings.simplefilter("ignore", DeprecationWarning)  # fork of a process with threads

        def work(seed):
            rng = np.random.default_rng(seed)
            q = rng.standard_normal((1, 4, 256, 64)).astype(np.float32)
            return fastattn.attention(q, q, q, causal=True)

        if __name__ == "__main__":
            expected = [work(s) for s in range(4)]
            with multiprocessing.get_context("fork").Pool(2) as pool:
                got = pool.map(work, range(4))
            assert all(np.array_equal(a, b) for a, b in zip(got, expected))
            print("ok")
    """, timeout=120)
    assert result.returncode == 0 and result.stdout.splitlines()[-1:] == ["ok"], result.stderr


# --- leaks -------------------------------------------------------------------------------------

def test_twenty_thousand_calls_do_not_grow_rss():
    """docs/reliability.md "No leaks": 20,000 mixed calls — every option, both passes, valid and invalid —
    grow the RSS by less than 2 MiB. A valid call that raised would fail the run (nothing is
    swallowed), and each invalid call must raise its own ValueError: the leak a failed call
    could cause is measured only if it fails the way it should."""
    # In a fresh process, so that nothing else the test run allocates is counted.
    result = run_python("""
        import os, numpy as np, fastattn
        rng = np.random.default_rng(0)
        q, k, v = (rng.standard_normal((2, 4, 33, 16)).astype(np.float32) for _ in range(3))
        h = q.astype(np.float16)
        mask = rng.standard_normal((33, 33)) > 0
        out_buffer = np.empty((2, 4, 33, 16), np.float32)
        out, lse = fastattn.attention(q, k, v, return_lse=True)
        # Every option at once (per batch entry: kv_lengths, q_lengths; per head: ALiBi, sinks).
        options = dict(mask=mask, kv_lengths=[30, 7], q_lengths=[33, 20], alibi_slopes=[.1, .2, .3, .4],
                       window=(5, None), softcap=30.0, sinks=[.5, -1., 0., 2.], causal="lower_right", scale=0.3)
        out_o, lse_o = fastattn.attention(q, k, v, return_lse=True, **options)
        dout_h = np.ones_like(h)
        out_h, lse_h = fastattn.attention(h, h, h, return_lse=True, causal=True)

        def rejected(fn, message):
            def call():
                try:
                    fn()
                except ValueError as exc:
                    if message not in str(exc):
                        raise AssertionError(f"expected a ValueError saying {message!r}, got {exc!r}") from exc
                else:
                    raise AssertionError(f"no ValueError ({message!r})")
            return call

        def calls():
            yield lambda: fastattn.attention(q, k, v)
            yield lambda: fastattn.attention(q, k, v, causal="lower_right", return_lse=True)
            yield lambda: fastattn.attention(q, k, v, out=out_buffer, **options)
            yield lambda: fastattn.attention(h, h, h)
            yield lambda: fastattn.attention_backward(out, q, k, v, out, lse)
            yield lambda: fastattn.attention_backward(out_o, q, k, v, out_o, lse_o, **options)
            yield lambda: fastattn.attention_backward(dout_h, h, h, h, out_h, lse_h, causal=True)
            yield lambda: fastattn.attention(q, k, v, backend="numpy")
            yield rejected(lambda: fastattn.attention(q, k[..., :3], v),
                           "k.shape[-1] (=3) must equal q.shape[-1] (=16)")
            yield rejected(lambda: fastattn.attention_backward(out, q, k, v, out, lse[..., :2]),
                           "lse.shape (=(2, 4, 2)) must be (2, 4, 33)")

        def run(n):
            fns = list(calls())
            for i in range(n):
                fns[i % len(fns)]()  # any exception ends the run: only `rejected` expects one

        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        run(4000)  # warm up: allocator arenas of the OpenMP threads, NumPy's caches
        before = rss()
        run(20000)
        print(rss() - before)
    """, timeout=300)
    assert result.returncode == 0, result.stderr
    growth = int(result.stdout.split()[-1])
    assert growth < 2 * 2**20, f"RSS grew by {growth / 2**20:.2f} MiB over 20,000 calls"


# --- determinism -------------------------------------------------------------------------------

# Large enough that every thread count asked for below really runs that many threads, forward
# and backward (each pass has at least 8 work items with enough multiply-adds each); the test
# asserts the team size the kernel opened. On a machine with fewer processors the kernel's cap
# is lifted for the test (conftest's eight_processors): 8 threads on 2 cores is slow, not wrong,
# and results must not depend on the count.
DETERMINISM_SHAPES = {
    "gqa": ((4, 8, 150, 33), (4, 2, 260, 33), 40, dict(causal=True)),
    "decode-split-kv": ((1, 8, 1, 64), (1, 2, 40000, 64), 64, dict()),
    "few-heads-long-keys": ((1, 1, 100, 64), (1, 1, 6000, 64), 64, dict(causal="lower_right")),
    "options": ((2, 4, 400, 16), (2, 4, 600, 16), 16, dict(alibi_slopes=[.1, .2, .3, .4], softcap=5.0,
                                                           window=(200, 30), kv_lengths=[600, 300],
                                                           sinks=[0.5, -1.0, 2.0, 0.0])),
    "mask-bf16": ((2, 4, 300, 32), (2, 4, 700, 32), 32, dict(mask="padding", dtype="bfloat16")),
}
THREAD_COUNTS = (1, 2, 3, 8, 1, 8)


@needs_cpp
@pytest.mark.parametrize("case", DETERMINISM_SHAPES)
def test_bitwise_same_across_runs_and_thread_counts(isa, rng, case, eight_processors):
    q_shape, kv_shape, dv, options = DETERMINISM_SHAPES[case]
    options = dict(options)
    dtype = options.pop("dtype", None)
    q, k = normal(rng, q_shape), normal(rng, kv_shape)
    v = normal(rng, kv_shape[:-1] + (dv,))
    dout = normal(rng, q_shape[:-1] + (dv,))
    if dtype:
        cast = np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
        q, k, v, dout = (x.astype(cast) for x in (q, k, v, dout))
    if options.get("mask") == "padding":  # a key-padding mask, broadcast over heads and queries
        keep = np.arange(kv_shape[2]) < np.array([kv_shape[2], kv_shape[2] // 3])[:, None]
        options["mask"] = keep[:, None, None, :]
    team = eight_processors
    first = None
    for threads in THREAD_COUNTS:
        out, lse = fastattn.attention(q, k, v, return_lse=True, num_threads=threads, **options)
        assert team() in (None, threads), "the threads the forward really ran"
        grads = fastattn.attention_backward(dout, q, k, v, out, lse, num_threads=threads, **options)
        assert team() in (None, threads), "the threads the backward really ran"
        results = (out, lse) + tuple(grads)
        if first is None:
            first = results
        for a, b in zip(results, first):
            np.testing.assert_array_equal(a, b, err_msg=f"{threads} threads")


# --- hostile values ----------------------------------------------------------------------------

def _to_rounding(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def _visible(shape_q, lk, causal):
    """Which (row, key) pairs are visible: (B, Hq, Lq, Lk) booleans."""
    i, j = np.arange(shape_q[-2])[:, None], np.arange(lk)[None, :]
    return np.broadcast_to(j <= i if causal else np.ones((shape_q[-2], lk), bool), shape_q[:-1] + (lk,))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("target", ["q", "k", "v", "mask"])
def test_non_finite_input_touches_only_its_rows(backend, rng, target, value, causal):
    """A NaN or ±inf changes only the output rows that see it (for v, only its column), and those
    rows agree with the float64 oracle: NaN where it is NaN, its value where finite."""
    shape, group = (2, 4, 23, 8), 2
    for trial in range(6):
        q = normal(rng, shape)
        k, v = normal(rng, (2, 2, 23, 8)), normal(rng, (2, 2, 23, 8))
        mask = np.zeros((2, 4, 23, 23), np.float32)
        clean, clean_lse = fastattn.attention(q, k, v, mask=mask, causal=causal, return_lse=True, backend=backend)
        poisoned = dict(q=q, k=k, v=v, mask=mask)[target]
        at = tuple(int(rng.integers(n)) for n in poisoned.shape)
        poisoned[at] = value
        out, lse = fastattn.attention(q, k, v, mask=mask, causal=causal, return_lse=True, backend=backend)

        visible = _visible(shape, 23, causal)
        b = at[0]
        if target == "q":  # row at[2] of head at[1]
            touched = np.zeros(shape[:-1], bool)
            touched[b, at[1], at[2]] = True
        elif target == "mask":
            touched = np.zeros(shape[:-1], bool)
            touched[b, at[1], at[2]] = visible[b, at[1], at[2], at[3]]
        else:  # key at[2] of K/V head at[1]: every row of that head's query group that sees it
            touched = np.zeros(shape[:-1], bool)
            heads = slice(at[1] * group, (at[1] + 1) * group)
            touched[b, heads] = visible[b, heads, :, at[2]]
        # The kernel's rows are independent, bit for bit; NumPy's matmul may round a row
        # differently when another row of its operand changed, so there: to rounding.
        same = np.testing.assert_array_equal if backend == "cpp" else _to_rounding
        untouched = ~touched
        same(out[untouched], clean[untouched])
        same(lse[untouched], clean_lse[untouched])
        if target == "v":  # the weights do not involve v: the other columns and lse are untouched too
            columns = np.arange(8) != at[3]
            same(out[touched][:, columns], clean[touched][:, columns])
            same(lse, clean_lse)
        want, want_lse = oracle(q, k, v, mask=mask, causal=causal)
        got, ref = out[touched], want[touched]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_array_equal(np.isnan(lse[touched]), np.isnan(want_lse[touched]))
        finite = np.isfinite(ref)
        np.testing.assert_array_equal(got[~finite & ~np.isnan(ref)], ref[~finite & ~np.isnan(ref)])  # ±inf
        np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", ["q", "dout"])
def test_backward_nan_stays_in_what_its_row_reaches(backend, rng, target):
    """A NaN in query row i (or in its upstream gradient) reaches dq of row i and dk, dv of the keys
    row i sees (causal: j <= i); every other gradient row is bitwise the clean one."""
    q, k, v = normal(rng, (1, 2, 40, 16)), normal(rng, (1, 2, 40, 16)), normal(rng, (1, 2, 40, 16))
    dout = normal(rng, (1, 2, 40, 16))
    out, lse = fastattn.attention(q, k, v, causal=True, return_lse=True, backend=backend)
    clean = fastattn.attention_backward(dout, q, k, v, out, lse, causal=True, backend=backend)
    row = 25
    if target == "q":
        q = q.copy()
        q[0, 1, row, 3] = np.nan
        out, lse = fastattn.attention(q, k, v, causal=True, return_lse=True, backend=backend)
    else:
        dout = dout.copy()
        dout[0, 1, row, 3] = np.nan
    dq, dk, dv = fastattn.attention_backward(dout, q, k, v, out, lse, causal=True, backend=backend)
    same = np.testing.assert_array_equal if backend == "cpp" else _to_rounding
    others = np.ones((1, 2, 40), bool)
    others[0, 1, row] = False
    same(dq[others], clean[0][others])
    assert np.isnan(dq[0, 1, row]).all()
    for got, want in ((dk, clean[1]), (dv, clean[2])):
        same(got[0, 0], want[0, 0])  # the other head
        same(got[0, 1, row + 1:], want[0, 1, row + 1:])  # keys row cannot see
        assert np.isnan(got[0, 1, :row + 1]).any(axis=-1).all()


@pytest.mark.parametrize("causal", [False, True])
def test_float32_logits_of_1e30(backend, rng, causal):
    # Scores around ±1e30 are finite in float32; the softmax is then (nearly) one-hot and finite.
    q = normal(rng, (1, 2, 37, 4)) * np.float32(1e15)
    k = normal(rng, (1, 2, 41, 4)) * np.float32(1e15)
    v = normal(rng, (1, 2, 41, 5))
    out, lse = fastattn.attention(q, k, v, causal=causal, return_lse=True, backend=backend)
    scores = oracle(q, k, v, causal=causal)[1]
    assert np.abs(scores).max() > 1e29
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    assert_matches_oracle(q, k, v, out, lse, causal=causal)
    # The gradients: dv = Pᵀ·dout to the oracle's rule. dq and dk hold dP − D with
    # D = rowsum(dout∘out) (FlashAttention-2's identity, torch's too): for one-hot weights
    # the true difference is ~0 and what is left is float32 rounding of the terms, so their
    # bound is relative to those terms, scale·|dout|·|v|·|k| (or |q|).
    dout = normal(rng, out.shape)
    dq, dk, dv = grads_of(q, k, v, dout, backend=backend, causal=causal)
    want_dq, want_dk, want_dv = oracle_grads(q, k, v, dout, causal=causal)
    assert np.isfinite(dq).all() and np.isfinite(dk).all() and np.isfinite(dv).all()
    np.testing.assert_allclose(dv, want_dv, rtol=1e-5, atol=1e-5)
    terms = 0.5 * np.abs(dout).max() * np.abs(v).max() * v.shape[-1]
    eps = np.finfo(np.float32).eps
    for got, want, x in ((dq, want_dq, k), (dk, want_dk, q)):
        bound = 8 * eps * terms * np.abs(x).max()
        assert np.abs(got - want).max() <= bound, (np.abs(got - want).max(), bound)


@pytest.mark.parametrize("dtype, tiny", [(np.float32, 1e-41), (np.float64, 1e-312)], ids=["float32", "float64"])
def test_denormal_inputs(backend, rng, dtype, tiny):
    # Every input subnormal: the scores underflow to 0 and the result is mean(v) (also subnormal).
    q, k, v = (normal(rng, (1, 2, 19, 8), dtype) * dtype(tiny) for _ in range(3))
    assert (np.abs(v)[v != 0] < np.finfo(dtype).tiny).all()
    out, lse = fastattn.attention(q, k, v, return_lse=True, backend=backend)
    assert_matches_oracle(q, k, v, out, lse)
    dout = normal(rng, out.shape, dtype)
    grads = grads_of(q, k, v, dout, backend=backend)
    want = oracle_grads(q, k, v, dout)
    for got, ref in zip(grads, want):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=np.finfo(dtype).smallest_subnormal * 64)


# --- 64-bit offsets ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_offsets_beyond_2_to_the_31_elements(backend, rng, dtype):
    """Views whose two rows lie 2**31 + 64 elements apart (8 or 16 GiB of address space, of which
    only the touched pages are ever mapped): a 32-bit element or byte offset would read the wrong row."""
    gap = 2**31 + 64
    d = 16
    base = np.zeros(gap + 4 * d, dtype)  # calloc: untouched pages cost nothing

    def view(offset):
        return np.lib.stride_tricks.as_strided(base[offset:], shape=(1, 1, 2, d),
                                               strides=(0, 0, gap * base.itemsize, base.itemsize))

    q, k, v = view(0), view(d), view(2 * d)
    for x in (q, k, v):  # write through the views: only a few pages are touched
        x[...] = normal(rng, x.shape, dtype)
    assert q.strides[2] > 2**33
    out, lse = fastattn.attention(q, k, v, return_lse=True, backend=backend)
    assert_matches_oracle(np.array(q), np.array(k), np.array(v), out, lse)
    want = fastattn.attention(np.array(q), np.array(k), np.array(v), backend=backend)
    np.testing.assert_array_equal(out, want)
    dout = normal(rng, out.shape, dtype)
    grads = fastattn.attention_backward(dout, q, k, v, out, lse, backend=backend)
    copies = fastattn.attention_backward(dout, np.array(q), np.array(k), np.array(v), out, lse, backend=backend)
    for a, b in zip(grads, copies):
        np.testing.assert_array_equal(a, b)


def _prefix_oracle(q, k, v, dout, scale):
    """Causal attention and its gradients in float64 for inputs whose scores depend on the key
    only (every q row the same vector): P[i, j] = w[j] / Z[i] for j <= i, so every sum over keys
    is a prefix sum and every sum over rows a suffix sum — O(L·D·Dv) memory, not O(L²)."""
    q, k, v, dout = (x.astype(np.float64) for x in (q, k, v, dout))
    s = (k @ q[0]) * scale
    w = np.exp(s - s.max())
    z = np.cumsum(w)
    out = np.cumsum(w[:, None] * v, axis=0) / z[:, None]
    lse = np.log(z) + s.max()
    delta = np.sum(dout * out, axis=1)  # D_i
    kv = np.cumsum(w[:, None, None] * k[:, :, None] * v[:, None, :], axis=0)  # Σ_{j<=i} w_j k_j v_jᵀ
    wk = np.cumsum(w[:, None] * k, axis=0)
    dq = scale * (np.einsum("icd,id->ic", kv, dout) - delta[:, None] * wk) / z[:, None]

    def suffix(x):
        return np.cumsum(x[::-1], axis=0)[::-1]

    qd = suffix(q[:, :, None] * dout[:, None, :] / z[:, None, None])  # Σ_{i>=j} q_i dout_iᵀ / Z_i
    qdelta = suffix(q * (delta / z)[:, None])
    dk = scale * w[:, None] * (np.einsum("jcd,jd->jc", qd, v) - qdelta)
    dv = w[:, None] * suffix(dout / z[:, None])
    return out, lse, (dq, dk, dv)


def _ones(shape):
    """Float32 ones of any size in 4 bytes (every stride 0)."""
    return np.lib.stride_tricks.as_strided(np.ones(1, np.float32), shape=shape, strides=(0,) * len(shape))


def test_small_terms_after_a_large_sum_are_not_lost(isa):
    """Equal weights (K = 1), V = 2**16 for the first 256 keys (one key block: they sum to 2**24)
    and 1 for the next 2**16. Summed key by key into a float32 accumulator, every later 1 rounded
    away against 2**24 (out 0.4% low; with 2**31 ones the output was 0.25); summed block by
    block it is float32-exact. (The 2**31-key case itself runs under -m slow.)"""
    big, small = 256, 2**16
    k = _ones((1, 1, big + small, 1))
    v = np.concatenate([np.full(big, 2.0**16, np.float32), np.ones(small, np.float32)]).reshape(1, 1, -1, 1)
    want = (big * 2.0**16 + small) / (big + small)  # float64
    for q_shape in [(1, 1, 1, 1), (1, 32, 1, 1)]:  # one row split 32 ways; 32 rows unsplit
        out = fastattn.attention(_ones(q_shape), np.broadcast_to(k, k.shape[:1] + q_shape[1:2] + k.shape[2:]),
                                 np.broadcast_to(v, v.shape[:1] + q_shape[1:2] + v.shape[2:]))
        np.testing.assert_allclose(out, want, rtol=4e-7)  # a few float32 roundings


@pytest.mark.slow
def test_more_than_2_to_the_31_keys_sum_exactly(isa):
    """Lk = 2**31 + 5 stride-0 keys and values of ones (issue 18's case, one row): exactly 1.
    The row is shared out as 32 splits of 2**26 keys; each stopped at 2**24 (out was 0.25)."""
    lk = 2**31 + 5
    q, kv = _ones((1, 1, 1, 1)), _ones((1, 1, lk, 1))
    out, lse = fastattn.attention(q, kv, kv, return_lse=True)
    assert np.all(out == 1), np.unique(out)
    np.testing.assert_allclose(lse, 1 + np.log(lk), rtol=1e-6)


@pytest.mark.slow
def test_more_than_2_to_the_31_scores(rng):
    """Lq = Lk = 2**16: 2**32 scores per head (2**31 visible under causal), against a float64 oracle
    that needs no Lq×Lk matrix (see _prefix_oracle), forward and backward."""
    n, d = 2**16, 8
    q = np.broadcast_to(normal(rng, (1, d)), (n, d))  # every row the same: scores depend on the key
    k, v, dout = normal(rng, (n, d)), normal(rng, (n, d)), normal(rng, (n, d))
    scale = 1 / np.sqrt(d)
    want_out, want_lse, want_grads = _prefix_oracle(q, k, v, dout, scale)
    out, lse = fastattn.attention(q, k, v, causal=True, return_lse=True)
    np.testing.assert_allclose(out, want_out, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-5)
    grads = fastattn.attention_backward(dout, q, k, v, out, lse, causal=True)
    for name, got, want in zip(("dq", "dk", "dv"), grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max(), err_msg=name)
    full = fastattn.attention(q, k, v)  # not causal: every row is the last causal row
    np.testing.assert_allclose(full, np.broadcast_to(want_out[-1], full.shape), rtol=1e-4, atol=1e-5)


# --- the kernels' floating-point environment (kernels/common/fp_env.hpp) --------------------

@pytest.mark.skipif(not _backend.cpp_available() or not _backend._core._team_fp_env(1),
                    reason="x86 only (MXCSR)")
def test_kernels_compute_in_their_own_fp_environment_and_give_the_callers_back():
    """A caller rounding downwards with invalid, divide-by-zero and overflow exceptions unmasked
    gets the results of the default environment (round to nearest, nothing trapped: the masked
    keys' inf - inf, exp(-inf)), and its environment back exactly, on every thread of the team;
    subnormal arithmetic after a call still gives subnormals (no FTZ/DAZ left behind)."""
    code = r"""
import ctypes, sys
import numpy as np
import fastattn
from fastattn import _backend
core = _backend._core
libm = ctypes.CDLL("libm.so.6")
FE_DOWNWARD, TRAPS = 0x400, 0x01 | 0x04 | 0x08  # FE_INVALID | FE_DIVBYZERO | FE_OVERFLOW (x86 glibc)
rng = np.random.default_rng(0)
q = rng.standard_normal((1, 4, 70, 16)).astype(np.float32)
k, v = (rng.standard_normal((1, 2, 90, 16)).astype(np.float32) for _ in range(2))
k[0, :, 5] = np.inf
v[0, :, 9] = np.nan
mask = np.ones((70, 90), bool)
mask[:, [5, 9]] = False
mask[3] = False  # a row that sees nothing
dout = rng.standard_normal((1, 4, 70, 16)).astype(np.float32)

def call():
    out, lse = fastattn.attention(q, k, v, mask=mask, return_lse=True, num_threads=2)
    return (out, lse) + tuple(fastattn.attention_backward(dout, q, k, v, out, lse, mask=mask, num_threads=2))

want = call()
before = core._team_fp_env(2)
assert libm.fesetround(FE_DOWNWARD) == 0 and libm.feenableexcept(TRAPS) != -1
caller = core._team_fp_env(1)[0]
got = call()
after = core._team_fp_env(2)
state = (libm.fegetround(), libm.fegetexcept())
libm.fedisableexcept(TRAPS)
libm.fesetround(0)
assert state == (FE_DOWNWARD, TRAPS), state
assert caller != before[0] and after == [caller] + before[1:], (before, caller, after)
for a, b in zip(got, want):
    assert a.tobytes() == b.tobytes()
assert np.float32(1e-38) / np.float32(1e4) > 0  # still a subnormal here
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
