"""attention_backward: gradients of every backend (each ISA, and NumPy) against the float64 oracle,
finite differences and torch autograd; fully masked rows; determinism across thread counts."""

from __future__ import annotations

import numpy as np
import pytest

import fastattn
from oracle import HALF_EPS, max_err, oracle_grads
from test_parity import make

def grads_of(q, k, v, dout, backend="auto", num_threads=None, **options):
    out, lse = fastattn.attention(q, k, v, return_lse=True, backend=backend, **options)
    return fastattn.attention_backward(dout, q, k, v, out, lse, backend=backend, num_threads=num_threads, **options)


def assert_grads_match_oracle(q, k, v, dout, grads, **options):
    """Each gradient within 2·(error of the naive float32 formula) + atol·(1 + its magnitude) of
    the float64 oracle, the forward's tolerance rule (tests/oracle.py) applied to gradients."""
    want = oracle_grads(q, k, v, dout, **options)
    naive = oracle_grads(q, k, v, dout, dtype=np.float32, **options)
    dtype = np.asarray(q).dtype
    for name, got, ref, base, x in zip(("dq", "dk", "dv"), grads, want, naive, (q, k, v)):
        assert got.dtype == dtype and got.shape == np.shape(x), name
        assert not np.isnan(np.asarray(got, np.float64)).any(), f"NaN in {name}"
        magnitude = float(np.max(np.abs(ref), initial=0.0))
        if dtype.name == "float64":
            tol = 2 * max_err(base, ref) * np.finfo(np.float64).eps / np.finfo(np.float32).eps + 1e-13 * (1 + magnitude)
        elif dtype.name in HALF_EPS:  # the inputs' rounding is shared; lse and dout are 16-bit
            tol = 2 * max_err(base.astype(dtype), ref) + 4 * HALF_EPS[dtype.name] * (1 + magnitude)
        else:
            tol = 2 * max_err(base, ref) + 1e-6 * (1 + magnitude)
        err = max_err(got, ref)
        assert err <= tol, f"{name}: max error {err:.3g} > tolerance {tol:.3g}"


CASES = {
    "plain": dict(),
    "causal": dict(causal=True),
    "lower_right": dict(causal="lower_right"),
    "scale": dict(scale=0.3),
    "window": dict(window=(9, 4)),
    "window_causal": dict(window=(20, None), causal=True),
    "alibi": dict(alibi_slopes=[0.05, 0.1, 0.2, 0.4]),
    "softcap": dict(softcap=2.5),
    "all_positional": dict(causal="lower_right", window=(30, None), alibi_slopes=[0.1, 0.2, 0.3, 0.4], softcap=5.0),
    "kv_lengths": dict(kv_lengths=[37, 130]),
    "q_lengths": dict(q_lengths=[70, 15]),
    "both_lengths_lower_right": dict(kv_lengths=[100, 3], q_lengths=[50, 70], causal="lower_right"),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_options(backend, rng, case, dtype):
    # Lq ≠ Lk, Dv ≠ D, GQA (4 query heads on 2 K/V heads), several key and query blocks.
    q, k, v = make(rng, (2, 4, 70, 16), (2, 2, 130, 16), dv=24, dtype=dtype)
    dout = rng.standard_normal((2, 4, 70, 24)).astype(dtype)
    options = CASES[case]
    assert_grads_match_oracle(q, k, v, dout, grads_of(q, k, v, dout, backend=backend, **options), **options)


@pytest.mark.parametrize("mask_shape", [(2, 4, 70, 130), (70, 130), (2, 1, 1, 130), (4, 1, 130)])
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_masks(backend, rng, mask_shape, kind):
    q, k, v = make(rng, (2, 4, 70, 16), (2, 2, 130, 16), dv=8)
    dout = rng.standard_normal((2, 4, 70, 8)).astype(np.float32)
    if kind == "bool":
        mask = rng.random(mask_shape) > 0.3
    else:
        mask = rng.standard_normal(mask_shape).astype(np.float32)
        mask[rng.random(mask_shape) < 0.2] = -np.inf
    assert_grads_match_oracle(q, k, v, dout, grads_of(q, k, v, dout, backend=backend, mask=mask), mask=mask)


@pytest.mark.parametrize("d, dv", [(1, 1), (7, 3), (17, 33), (64, 64), (65, 100), (128, 128)])
@pytest.mark.parametrize("causal", [False, True])
def test_head_dims(backend, rng, d, dv, causal):
    q, k, v = make(rng, (1, 2, 65, d), (1, 2, 100, d), dv=dv)
    dout = rng.standard_normal((1, 2, 65, dv)).astype(np.float32)
    assert_grads_match_oracle(q, k, v, dout, grads_of(q, k, v, dout, backend=backend, causal=causal), causal=causal)


@pytest.mark.parametrize("hkv", [1, 2, 8])
def test_gqa_sums_over_the_group(backend, rng, hkv):
    q, k, v = make(rng, (2, 8, 33, 16), (2, hkv, 50, 16))
    dout = rng.standard_normal(q.shape).astype(np.float32)
    assert_grads_match_oracle(q, k, v, dout, grads_of(q, k, v, dout, backend=backend, causal=True), causal=True)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_dtypes(backend, rng, dtype):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dtype = np.dtype(getattr(ml_dtypes, dtype)) if dtype == "bfloat16" else np.dtype(dtype)
    q, k, v = make(rng, (1, 2, 40, 16), (1, 2, 150, 16), dtype=dtype)
    dout = rng.standard_normal(q.shape).astype(dtype)
    assert_grads_match_oracle(q, k, v, dout, grads_of(q, k, v, dout, backend=backend, causal=True), causal=True)


def test_long_keys_few_heads(backend, rng):
    # One (batch, K/V head) and many key blocks: the C++ kernel splits the keys into chunks
    # whose partial dQ are summed afterwards.
    q, k, v = make(rng, (1, 1, 50, 32), (1, 1, 3000, 32))
    dout = rng.standard_normal(q.shape).astype(np.float32)
    assert_grads_match_oracle(q, k, v, dout, grads_of(q, k, v, dout, backend=backend, window=(2000, None)),
                              window=(2000, None))


@pytest.mark.parametrize("options", [dict(), dict(causal="lower_right", softcap=1.5, alibi_slopes=[0.3, 0.7])],
                         ids=["plain", "options"])
def test_finite_differences(backend, rng, options):
    q, k, v = (rng.standard_normal(s) for s in ((1, 2, 4, 3), (1, 1, 6, 3), (1, 1, 6, 2)))
    dout = rng.standard_normal((1, 2, 4, 2))
    grads = grads_of(q, k, v, dout, backend=backend, **options)

    def loss(*xs):
        return float(np.sum(fastattn.attention(*xs, backend="numpy", **options) * dout))

    eps = 1e-6
    for i, (x, g) in enumerate(zip((q, k, v), grads)):
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            xs = [q, k, v]
            plus, minus = x.copy(), x.copy()
            plus[idx] += eps
            minus[idx] -= eps
            xs[i] = plus
            f_plus = loss(*xs)
            xs[i] = minus
            numeric[idx] = (f_plus - loss(*xs)) / (2 * eps)
        np.testing.assert_allclose(g, numeric, rtol=1e-6, atol=1e-8)


def test_fully_masked_rows_get_zero_gradients(backend, rng):
    # lower_right with q_lengths 45 > Lk = 20: the first 25 rows see nothing (row 25 sees one
    # key, whose weight 1 is constant: dq = 0 there too); mask row 40 of
    # head 1 is all False; rows past q_lengths are padding; batch 1 has no keys at all.
    q, k, v = make(rng, (2, 2, 50, 8), (2, 2, 20, 8))
    dout = rng.standard_normal(q.shape).astype(np.float32)
    mask = np.ones((2, 2, 50, 20), bool)
    mask[:, 1, 40] = False
    options = dict(causal="lower_right", mask=mask, q_lengths=[45, 50], kv_lengths=[20, 0])
    dq, dk, dv = grads_of(q, k, v, dout, backend=backend, **options)
    for g in (dq, dk, dv):
        assert np.isfinite(g).all()
    assert not dq[0, :, :25].any() and dq[0, :, 27].all() and not dq[0, 1, 40].any() and not dq[0, :, 45:].any()
    assert not dq[1].any() and not dk[1].any() and not dv[1].any()
    assert_grads_match_oracle(q, k, v, dout, (dq, dk, dv), **options)


def test_nan_in_invisible_keys_does_not_leak(backend, rng):
    q, k, v = make(rng, (1, 2, 40, 8), (1, 1, 300, 8))
    k[0, 0, 250:] = np.nan  # past kv_lengths
    v[0, 0, 250:] = np.inf
    k[0, 0, 100] = np.inf  # masked for every row
    v[0, 0, 100] = np.nan
    mask = np.ones(300, bool)
    mask[100] = False
    dout = rng.standard_normal(q.shape).astype(np.float32)
    dq, dk, dv = grads_of(q, k, v, dout, backend=backend, kv_lengths=250, mask=mask)
    assert np.isfinite(dq).all()
    assert not dk[0, 0, 250:].any() and not dv[0, 0, 250:].any() and not dk[0, 0, 100].any()
    clean = [x.copy() for x in (k, v)]
    for x in clean:
        x[0, 0, 250:] = 0
        x[0, 0, 100] = 0
    want = grads_of(q, *clean, dout, backend=backend, kv_lengths=250, mask=mask)
    np.testing.assert_array_equal(dq, want[0])


@pytest.mark.parametrize("shape", [(1, 1, 100, 6000), (2, 8, 260, 280)], ids=["chunked", "per_head"])
def test_bitwise_equal_across_thread_counts(isa, rng, shape, eight_processors):
    b, h, lq, lk = shape
    q, k, v = make(rng, (b, h, lq, 32), (b, h, lk, 32))
    dout = rng.standard_normal(q.shape).astype(np.float32)
    first = grads_of(q, k, v, dout, backend="cpp", num_threads=1, causal="lower_right")
    for threads in (2, 3, 8):
        again = grads_of(q, k, v, dout, backend="cpp", num_threads=threads, causal="lower_right")
        assert eight_processors() in (None, threads), "the threads the backward really ran"
        for a, b_ in zip(first, again):
            np.testing.assert_array_equal(a, b_)


def test_strided_and_low_rank_inputs(backend, rng):
    # (B, L, H, D) storage viewed as (B, H, L, D), as attention layers produce it; 2-D and 3-D calls.
    base = rng.standard_normal((2, 30, 4, 16)).astype(np.float32)
    q = base.transpose(0, 2, 1, 3)
    k = v = rng.standard_normal((2, 40, 4, 16)).astype(np.float32).transpose(0, 2, 1, 3)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    got = grads_of(q, k, v, dout, backend=backend, causal=True)
    want = grads_of(*(np.ascontiguousarray(x) for x in (q, k, v)), dout, backend=backend, causal=True)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    for ndim in (2, 3):
        lead = (0,) * (4 - ndim)
        g = grads_of(q[lead], k[lead], v[lead], dout[lead], backend=backend, causal=True)
        assert [x.shape for x in g] == [q[lead].shape, k[lead].shape, v[lead].shape]
        assert_grads_match_oracle(q[lead], k[lead], v[lead], dout[lead], g, causal=True)


@pytest.mark.parametrize("shapes", [((0, 2, 5, 4), (0, 2, 6, 4), 4), ((1, 2, 0, 4), (1, 2, 6, 4), 4),
                                    ((1, 2, 5, 4), (1, 2, 0, 4), 4), ((1, 2, 5, 4), (1, 2, 6, 4), 0)],
                         ids=["batch0", "lq0", "lk0", "dv0"])
def test_empty_dimensions(backend, rng, shapes):
    q_shape, kv_shape, dv = shapes
    q, k, v = make(rng, q_shape, kv_shape, dv=dv)
    dout = np.ones(q_shape[:-1] + (dv,), np.float32)
    dq, dk, dv_ = grads_of(q, k, v, dout, backend=backend)
    assert (dq.shape, dk.shape, dv_.shape) == (q.shape, k.shape, v.shape)
    assert not dq.any() and not dk.any() and not dv_.any()


@pytest.mark.parametrize("bad, error, match", [
    (dict(dout=np.zeros((1, 2, 5, 3), np.float32)), ValueError, r"dout.shape \(=\(1, 2, 5, 3\)\) must be"),
    (dict(dout=np.zeros((1, 2, 5, 4), np.float64)), TypeError, r"dout.dtype \(=float64\) must equal q.dtype"),
    (dict(dout="x"), TypeError, r"dout.dtype"),
    (dict(out=np.zeros((1, 2, 4, 4), np.float32)), ValueError, r"out.shape"),
    (dict(lse=np.zeros((1, 2, 4), np.float32)), ValueError, r"lse.shape \(=\(1, 2, 4\)\) must be \(1, 2, 5\)"),
    (dict(lse=np.zeros((1, 2, 5), np.float16)), TypeError, r"lse.dtype \(=float16\) must be"),
    (dict(lse=None), TypeError, r"lse must be an array"),
])
def test_errors(rng, bad, error, match):
    q, k, v = make(rng, (1, 2, 5, 4), (1, 2, 6, 4))
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    args = dict(dout=np.ones_like(out), out=out, lse=lse)
    args.update(bad)
    with pytest.raises(error, match=match):
        fastattn.attention_backward(args["dout"], q, k, v, args["out"], args["lse"])


def test_lse_of_another_float_dtype_is_accepted(rng):
    q, k, v = make(rng, (1, 2, 5, 4), (1, 2, 6, 4))
    dout = rng.standard_normal(q.shape).astype(np.float32)
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    want = fastattn.attention_backward(dout, q, k, v, out, lse)
    got = fastattn.attention_backward(dout, q, k, v, out, lse.astype(np.float64))
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", ["plain", "causal", "gqa", "bool_mask", "lq_ne_lk_dv_ne_d"])
def test_against_torch_autograd(backend, rng, case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    hkv, lq, lk, dv = 4, 33, 33, 16
    if case == "gqa":
        hkv = 2
    if case == "lq_ne_lk_dv_ne_d":
        lq, lk, dv = 20, 70, 24
    q, k, v = make(rng, (2, 4, lq, 16), (2, hkv, lk, 16), dv=dv, dtype=np.float64)
    dout = rng.standard_normal((2, 4, lq, dv))
    mask = rng.random((2, 1, lq, lk)) > 0.3 if case == "bool_mask" else None
    causal = case in ("causal", "gqa")
    tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
    out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal,
                                         attn_mask=None if mask is None else torch.from_numpy(mask),
                                         enable_gqa=hkv != 4)
    out.backward(torch.from_numpy(dout))
    got = grads_of(q, k, v, dout, backend=backend, causal=causal, mask=mask)
    for name, g, t in zip("qkv", got, (tq, tk, tv)):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=f"d{name}")
