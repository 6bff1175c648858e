"""attention()'s fast path for plain calls (_api._plain_forward) computes exactly what the general
path computes, is taken for plain calls only, and leaves every error to the general path."""

from __future__ import annotations

import numpy as np
import pytest

import fastattn
from fastattn import _backend, _contract

pytestmark = pytest.mark.skipif(not _backend.cpp_available(), reason="the fast path is C++ only")


def _inputs(rng, dtype, hq=4, hkv=2, lq=33, lk=70, d=16, dv=24):
    q = rng.standard_normal((2, hq, lq, d)).astype(dtype)
    k = rng.standard_normal((2, hkv, lk, d)).astype(dtype)
    v = rng.standard_normal((2, hkv, lk, dv)).astype(dtype)
    return q, k, v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [None, 0.3])
@pytest.mark.parametrize("return_lse", [False, True])
@pytest.mark.parametrize("num_threads", [None, 1])
def test_fast_path_equals_general_path(isa, rng, dtype, causal, scale, return_lse, num_threads):
    q, k, v = _inputs(rng, dtype)
    kw = dict(causal=causal, scale=scale, return_lse=return_lse, num_threads=num_threads)
    fast = fastattn.attention(q, k, v, **kw)
    # out= and an unbounded window change nothing but send the call down the general path.
    general = fastattn.attention(q, k, v, out=np.empty((2, 4, 33, 24), dtype), window=(None, None), **kw)
    for a, b in zip(fast if return_lse else (fast,), general if return_lse else (general,)):
        np.testing.assert_array_equal(a, b)


def test_plain_calls_skip_normalise(isa, rng, monkeypatch):
    q, k, v = _inputs(rng, np.float32)
    want = fastattn.attention(q, k, v, causal=True)

    def fail(*args, **kwargs):
        raise AssertionError("the general path ran")

    monkeypatch.setattr(_contract, "normalise", fail)
    np.testing.assert_array_equal(fastattn.attention(q, k, v, causal=True), want)
    for not_plain in ({"causal": "lower_right"}, {"kv_lengths": [70, 70]}, {"scale": 1}):
        with pytest.raises(AssertionError, match="general path"):
            fastattn.attention(q, k, v, **not_plain)
    with pytest.raises(AssertionError, match="general path"):
        fastattn.attention(q[..., ::2], k[..., ::2], v)  # features strided: normalise copies them
    with pytest.raises(AssertionError, match="general path"):
        fastattn.attention(q.astype(">f4"), k, v)  # not native byte order


@pytest.mark.parametrize("dtype", [np.float32, np.float16, "bfloat16"])
def test_views_and_16_bit_inputs_take_the_fast_path(isa, rng, dtype, monkeypatch):
    """A view whose last axis is contiguous (reversed rows, a torch tensor's transposed heads) and the
    16-bit dtypes run on the fast path, reading the view in place, with the general path's result."""
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
        fastattn.attention(*_inputs(rng, dtype), mask=None, window=(None, None))  # bfloat16 seen once
    q, k, v = _inputs(rng, dtype)
    k_heads_inside = np.ascontiguousarray(k.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)  # (B, L, H, D) memory
    views = (q[:, :, ::-1], k_heads_inside[..., 3:40, :], v[..., 3:40, :])
    want = [fastattn.attention(*views, causal=causal, window=(None, None), return_lse=True) for causal in (False, True)]

    def fail(*args, **kwargs):
        raise AssertionError("the general path ran")

    monkeypatch.setattr(_contract, "normalise", fail)
    for causal, (out, lse) in zip((False, True), want):
        got_out, got_lse = fastattn.attention(*views, causal=causal, return_lse=True)
        assert got_out.dtype == q.dtype and got_lse.dtype == np.float32
        np.testing.assert_array_equal(got_out, out)
        np.testing.assert_array_equal(got_lse, lse)


def test_errors_still_named_by_the_general_path(isa, rng):
    q, k, v = _inputs(rng, np.float32)
    with pytest.raises(ValueError, match=r"num_threads \(=0\)"):
        fastattn.attention(q, k, v, num_threads=0)
    with pytest.raises(TypeError, match="return_lse must be a bool"):
        fastattn.attention(q, k, v, return_lse=1)
    with pytest.raises(ValueError, match=r"scale \(=nan\) must be finite"):
        fastattn.attention(q, k, v, scale=float("nan"))
    with pytest.raises(ValueError, match=r"q.shape\[-3\] \(=4\) must be a multiple of k.shape\[-3\] \(=3\)"):
        fastattn.attention(q, k[:, :1].repeat(3, 1), v[:, :1].repeat(3, 1))
    with pytest.raises(TypeError, match="causal must be a bool or a str"):
        fastattn.attention(q, k, v, causal=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, "bfloat16"])
@pytest.mark.parametrize("shape", [(2, 4, 33, 70), (3, 8, 1, 300)], ids=["prefill", "decode"])
def test_forward_writes_through_out_strides(isa, rng, dtype, shape):
    """forward_prepared (fastattn.transformers' door) writes a (B, Hq, Lq, Dv) view of a (B, Lq, Hq, Dv)
    array in place, row by row through its strides, with the bits of a C-contiguous out: prefill tasks
    and decoding (direct mode, GQA heads sharing a task, split key ranges)."""
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    b, hq, lq, lk = shape
    q = rng.standard_normal((b, hq, lq, 16)).astype(dtype)
    k = rng.standard_normal((b, 2, lk, 16)).astype(dtype)
    v = rng.standard_normal((b, 2, lk, 24)).astype(dtype)
    want = fastattn.attention(q, k, v, scale=0.25, kv_lengths=[lk - 5, lk, lk - 1][:b])
    options = _contract.normal_options(scale=0.25, kv_lengths=np.array([lk - 5, lk, lk - 1][:b], np.int64))
    model_layout = np.full((b, lq, hq, 24), np.nan, dtype)  # (B, Lq, Hq, Dv): every element written
    fastattn._api.forward_prepared(q, k, v, model_layout.transpose(0, 2, 1, 3), options)
    np.testing.assert_array_equal(model_layout.transpose(0, 2, 1, 3), want)
    model_layout[...] = np.nan  # the NumPy backend (the fallback without the extension) writes the view too
    fastattn._api.forward_prepared(q, k, v, model_layout.transpose(0, 2, 1, 3), options, backend="numpy")
    tol = 1e-12 if dtype == np.float64 else 1e-2 if np.dtype(dtype).itemsize == 2 else 1e-5
    np.testing.assert_allclose(model_layout.transpose(0, 2, 1, 3).astype(np.float64), want.astype(np.float64),
                               rtol=tol, atol=tol)
