"""Parity of every backend (each ISA of the C++ kernel, and NumPy) with the float64 oracle."""

from __future__ import annotations

import numpy as np
import pytest

import fastattn
from oracle import assert_matches_oracle, oracle

HEAD_DIMS = [1, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 128]
LENGTHS = [1, 2, 5, 17, 63, 64, 65, 257, 1000]
CAUSAL = [False, "upper_left", "lower_right"]


def make(rng, q_shape, kv_shape, dv=None, dtype=np.float32, spread=1.0):
    dv = kv_shape[-1] if dv is None else dv
    q = rng.standard_normal(q_shape) * spread
    k = rng.standard_normal(kv_shape) * spread
    v = rng.standard_normal(kv_shape[:-1] + (dv,))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_head_dims(backend, rng, d, causal):
    q, k, v = make(rng, (2, 2, 65, d), (2, 2, 63, d))
    out, lse = fastattn.attention(q, k, v, causal=causal, return_lse=True, backend=backend)
    assert_matches_oracle(q, k, v, out, lse, causal=causal)


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("lk", LENGTHS)
@pytest.mark.parametrize("lq", LENGTHS)
def test_lengths(backend, rng, lq, lk, causal):
    # Lq > Lk under lower_right leaves the first Lq - Lk rows fully masked: zeros, lse -inf.
    q, k, v = make(rng, (1, 2, lq, 16), (1, 2, lk, 16), dv=9)
    out, lse = fastattn.attention(q, k, v, causal=causal, return_lse=True, backend=backend)
    assert_matches_oracle(q, k, v, out, lse, causal=causal)


def test_fully_masked_rows_are_zero(backend, rng):
    q, k, v = make(rng, (1, 3, 70, 8), (1, 3, 20, 8))
    out, lse = fastattn.attention(q, k, v, causal="lower_right", return_lse=True, backend=backend)
    assert np.all(out[:, :, :50] == 0) and np.all(np.isneginf(lse[:, :, :50]))
    assert np.all(np.isfinite(lse[:, :, 50:])) and not np.isnan(out).any()


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("hkv", [1, 2, 4, 8])  # 1 is MQA, 8 plain multi-head
def test_gqa(backend, rng, hkv, causal):
    q, k, v = make(rng, (2, 8, 40, 32), (2, hkv, 50, 32))
    out, lse = fastattn.attention(q, k, v, causal=causal, return_lse=True, backend=backend)
    assert_matches_oracle(q, k, v, out, lse, causal=causal)


@pytest.mark.parametrize("dv", [1, 7, 8, 33, 64, 100])
def test_value_dim_differs(backend, rng, dv):
    q, k, v = make(rng, (1, 2, 30, 16), (1, 2, 70, 16), dv=dv)
    assert_matches_oracle(q, k, v, fastattn.attention(q, k, v, backend=backend))


@pytest.mark.parametrize("q_shape, kv_shape", [
    ((33, 16), (40, 16)),                      # 2-D: one head
    ((4, 33, 16), (2, 40, 16)),                # 3-D: (H, L, D)
    ((2, 3, 4, 33, 16), (2, 3, 1, 40, 16)),    # two batch dims
])
def test_batch_dims(backend, rng, q_shape, kv_shape):
    q, k, v = make(rng, q_shape, kv_shape, dv=5)
    out, lse = fastattn.attention(q, k, v, causal=True, return_lse=True, backend=backend)
    assert out.shape == q_shape[:-1] + (5,) and lse.shape == q_shape[:-1]
    assert_matches_oracle(q, k, v, out, lse, causal=True)


@pytest.mark.parametrize("causal", CAUSAL)
def test_float64(backend, rng, causal):
    q, k, v = make(rng, (2, 4, 100, 65), (2, 2, 130, 65), dv=31, dtype=np.float64)
    out, lse = fastattn.attention(q, k, v, causal=causal, return_lse=True, backend=backend)
    assert_matches_oracle(q, k, v, out, lse, causal=causal)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_logits(backend, rng, dtype):
    # |scores| around 1e4: exp would overflow without the running max.
    q, k, v = make(rng, (1, 2, 70, 16), (1, 2, 90, 16), dtype=dtype, spread=np.sqrt(1e4 * 4 / 4))
    q = q * np.asarray(25.0, dtype)
    out, lse = fastattn.attention(q, k, v, return_lse=True, backend=backend)
    scores = np.abs(q.astype(np.float64) @ np.swapaxes(k, -1, -2) / 4)
    assert scores.max() > 5e3
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    assert_matches_oracle(q, k, v, out, lse)


@pytest.mark.parametrize("scale", [0.0, -0.5, 3.0])
def test_explicit_scale(backend, rng, scale):
    q, k, v = make(rng, (1, 2, 20, 16), (1, 2, 30, 16))
    out, lse = fastattn.attention(q, k, v, scale=scale, return_lse=True, backend=backend)
    assert_matches_oracle(q, k, v, out, lse, scale=scale)


def test_out_is_written_in_place(backend, rng):
    q, k, v = make(rng, (2, 4, 33, 16), (2, 2, 40, 16), dv=24)
    out = np.full((2, 4, 33, 24), np.nan, dtype=np.float32)
    result, lse = fastattn.attention(q, k, v, out=out, return_lse=True, backend=backend)
    assert result is out
    assert_matches_oracle(q, k, v, out, lse)


def _views(rng, dtype=np.float32):
    """(name, q, k, v) built from strided views of larger arrays."""
    base = rng.standard_normal((2, 70, 4, 48)).astype(dtype)  # (B, L, H, 48): BLHD layout
    yield "transposed BLHD", base[..., :16].transpose(0, 2, 1, 3), base[..., 16:32].transpose(0, 2, 1, 3), \
        base[..., 32:].transpose(0, 2, 1, 3)
    big = rng.standard_normal((3, 4, 140, 40)).astype(dtype)
    yield "every other row", big[0, :, ::2, :16], big[1, :, 1::2, :16], big[2, :, ::2, 8:]
    yield "reversed rows", big[0, :, ::-1, :16], big[1, :, ::-1, :16], big[2, ::-1, ::-1, :20]
    yield "strided features (copied)", big[0, :, :, ::2], big[1, :, :, ::2], big[2, :, :, 1::3]
    k = rng.standard_normal((1, 2, 50, 16)).astype(dtype)
    yield "broadcast batch (stride 0)", big[:2, :2, :30, :16], np.broadcast_to(k, (2, 2, 50, 16)), \
        np.broadcast_to(k, (2, 2, 50, 16))
    yield "fortran order", np.asfortranarray(big[0, :, :33, :16]), np.asfortranarray(big[1, :, :60, :16]), \
        np.asfortranarray(big[2, :, :60, :16])


@pytest.mark.parametrize("causal", CAUSAL)
def test_non_contiguous_inputs(backend, rng, causal):
    for name, q, k, v in _views(rng):
        out, lse = fastattn.attention(q, k, v, causal=causal, return_lse=True, backend=backend)
        try:
            assert_matches_oracle(q, k, v, out, lse, causal=causal)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


def test_inputs_are_not_modified(backend, rng):
    q, k, v = make(rng, (1, 2, 40, 16), (1, 2, 40, 16))
    copies = [x.copy() for x in (q, k, v)]
    fastattn.attention(q, k, v, causal=True, backend=backend)
    for x, c in zip((q, k, v), copies):
        np.testing.assert_array_equal(x, c)


def test_non_array_inputs(backend):
    # Nested lists are array_like: converted once, float64 from Python floats.
    q = [[0.1, 0.2], [0.3, -0.4], [1.0, 0.5]]
    out = fastattn.attention(q, q, q, backend=backend)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, oracle(q, q, q)[0], rtol=0, atol=1e-14)


def test_empty_and_zero_sizes(backend, rng):
    q, k, v = make(rng, (2, 0, 5, 8), (2, 0, 7, 8))
    assert fastattn.attention(q, k, v, backend=backend).shape == (2, 0, 5, 8)
    q, k, v = make(rng, (2, 2, 0, 8), (2, 2, 7, 8))
    out, lse = fastattn.attention(q, k, v, return_lse=True, backend=backend)
    assert out.shape == (2, 2, 0, 8) and lse.shape == (2, 2, 0)
    q, k, v = make(rng, (2, 2, 5, 8), (2, 2, 0, 8))
    out, lse = fastattn.attention(q, k, v, return_lse=True, backend=backend)
    assert np.all(out == 0) and np.all(np.isneginf(lse))  # no key at all: fully masked
    q, k, v = make(rng, (2, 2, 5, 8), (2, 2, 7, 8), dv=0)
    out, lse = fastattn.attention(q, k, v, return_lse=True, backend=backend)
    assert out.shape == (2, 2, 5, 0)
    np.testing.assert_allclose(lse, oracle(q, k, v)[1], rtol=1e-5)
