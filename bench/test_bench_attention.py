"""Benchmarks: fastattn C++ vs fastattn NumPy vs torch's scaled_dot_product_attention.

Run with ``python -m pytest bench/ --benchmark-json=FILE`` and tabulate with
``python bench/summarize.py FILE``. Each shape + causal combination is one pytest-benchmark
group, so the three implementations print side by side.
"""

import functools

import numpy as np
import pytest

import fastattn

SHAPES = [(1, 8, 512, 64), (1, 8, 2048, 64), (4, 12, 1024, 64)]  # (B, H, L, D)
IMPLS = ["cpp", "numpy", "torch"]
SEED = 0

# The NumPy backend takes ~0.3-0.6 s per call at the larger shapes; pytest-benchmark's
# calibrated mode would still be fine, but a fixed small number of rounds keeps the whole
# suite predictable. The fast implementations use the default calibrated mode.
SLOW_ROUNDS = {"numpy": 5}


@functools.lru_cache(maxsize=None)
def make_inputs(shape, dtype=np.float32):
    """q, k, v ~ N(0, 1) of one shape, generated once per shape (fixed seed)."""
    rng = np.random.default_rng(SEED)
    return tuple(rng.standard_normal(shape).astype(dtype) for _ in range(3))


def make_fn(impl, q, k, v, causal):
    """A zero-argument callable running one attention; input conversion happens here, untimed."""
    if impl in ("cpp", "numpy"):
        return lambda: fastattn.attention(q, k, v, causal=causal, backend=impl)
    torch = pytest.importorskip("torch")
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))  # zero-copy views

    def run():
        # Entering inference_mode costs microseconds, negligible next to the >=ms kernels.
        with torch.inference_mode():
            return torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)

    return run


def check(impl, causal):
    """Quick correctness check on small inputs against the float64 NumPy reference."""
    q, k, v = make_inputs((2, 3, 97, 32))
    got = np.asarray(make_fn(impl, q, k, v, causal)())
    want = fastattn.attention(*(a.astype(np.float64) for a in (q, k, v)), causal=causal,
                              backend="numpy")
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4, err_msg=f"{impl} causal={causal}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-H{}-L{}-D{}".format(*s))
def test_attention(benchmark, shape, causal, impl):
    check(impl, causal)  # also skips the torch case early when torch is missing
    B, H, L, D = shape
    fn = make_fn(impl, *make_inputs(shape), causal)

    benchmark.group = f"B={B} H={H} L={L} D={D} causal={causal}"
    if impl in SLOW_ROUNDS:
        benchmark.pedantic(fn, rounds=SLOW_ROUNDS[impl], iterations=1, warmup_rounds=1)
    else:
        benchmark(fn)  # calibration runs happen before timing and act as a warm-up

    # q·kᵀ and p·v are 2·L·L·D FLOPs each per head; causal masking skips about half.
    flops = 4 * B * H * L * L * D / (2 if causal else 1)
    benchmark.extra_info.update(impl=impl, B=B, H=H, Lq=L, Lk=L, D=D, causal=causal,
                                dtype="float32", flops=flops)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["gflops"] = flops / benchmark.stats.stats.median / 1e9
