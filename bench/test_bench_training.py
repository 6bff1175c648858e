"""Benchmarks: forward + backward (training) of fastattn's C++ kernel against torch's
scaled_dot_product_attention with autograd, at (B, H, L, D) = (1, 8, 2048, 64), causal and not.

One call is ``attention(..., return_lse=True)`` then ``attention_backward``, against torch's
SDPA forward then ``.backward()``. ``python bench/summarize.py FILE`` shows them as rows of
pass ``fwd+bwd``.
"""

import numpy as np
import pytest

from fastattn.bench import make_training_runner

SHAPE = (1, 8, 2048, 64)  # (B, H, L, D)


def make_fn(impl, q, k, v, dout, causal):
    """A zero-argument callable running forward + backward; it returns (dq, dk, dv)."""
    torch = pytest.importorskip("torch") if impl == "torch" else None
    return make_training_runner(impl, q, k, v, dout, causal, None, torch)


@pytest.mark.parametrize("impl", ["cpp", "torch"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_forward_backward(benchmark, causal, impl):
    rng = np.random.default_rng(0)
    small = [rng.standard_normal((1, 2, 97, 32)).astype(np.float32) for _ in range(4)]
    got = make_fn(impl, *small, causal)()  # also skips torch early when it is missing
    want = make_fn("cpp", *(a.astype(np.float64) for a in small), causal)()
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4)

    B, H, L, D = SHAPE
    q, k, v, dout = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(4))
    benchmark.group = f"B={B} H={H} L={L} D={D} causal={causal} fwd+bwd"
    benchmark(make_fn(impl, q, k, v, dout, causal))
    # Seven products of 2·L·L·D FLOPs per head (two forward, five backward); causal skips half.
    flops = 14 * B * H * L * L * D / (2 if causal else 1)
    benchmark.extra_info.update(impl=impl, B=B, H=H, Lq=L, Lk=L, D=D, causal=causal, dtype="float32",
                                flops=flops, **{"pass": "fwd+bwd"})
    if benchmark.stats is not None:
        benchmark.extra_info["gflops"] = flops / benchmark.stats.stats.median / 1e9
