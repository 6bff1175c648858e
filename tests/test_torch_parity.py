"""fastattn against torch.nn.functional.scaled_dot_product_attention on what both support:
boolean and float masks, causal (upper-left, torch's is_causal), GQA. Skipped without torch."""

from __future__ import annotations

import numpy as np
import pytest

import fastattn

torch = pytest.importorskip("torch")
sdpa = torch.nn.functional.scaled_dot_product_attention


def torch_attention(q, k, v, **kwargs):
    with torch.no_grad():
        tensors = [torch.from_numpy(np.ascontiguousarray(x)) for x in (q, k, v)]
        if "attn_mask" in kwargs:
            kwargs["attn_mask"] = torch.from_numpy(np.ascontiguousarray(kwargs["attn_mask"]))
        return sdpa(*tensors, **kwargs).numpy()


@pytest.fixture
def qkv(rng):
    q = rng.standard_normal((2, 4, 70, 32)).astype(np.float32)
    k = rng.standard_normal((2, 4, 90, 32)).astype(np.float32)
    v = rng.standard_normal((2, 4, 90, 24)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("shape", [(2, 4, 70, 90), (2, 1, 1, 90), (70, 90)], ids=["full", "key-padding", "2d"])
def test_boolean_mask(backend, rng, qkv, shape):
    mask = rng.random(shape) < 0.7
    mask[..., 0] = True  # torch returns NaN for rows that see nothing; keep every row alive
    ours = fastattn.attention(*qkv, mask=mask, backend=backend)
    np.testing.assert_allclose(ours, torch_attention(*qkv, attn_mask=mask), rtol=1e-4, atol=2e-5)


def test_float_mask(backend, rng, qkv):
    mask = rng.standard_normal((2, 1, 70, 90)).astype(np.float32)
    ours = fastattn.attention(*qkv, mask=mask, backend=backend)
    np.testing.assert_allclose(ours, torch_attention(*qkv, attn_mask=mask), rtol=1e-4, atol=2e-5)


def test_causal(backend, rng):
    q, k, v = (rng.standard_normal((2, 4, 80, 32)).astype(np.float32) for _ in range(3))
    ours = fastattn.attention(q, k, v, causal=True, backend=backend)
    np.testing.assert_allclose(ours, torch_attention(q, k, v, is_causal=True), rtol=1e-4, atol=2e-5)


def test_gqa_and_scale(backend, rng):
    q = rng.standard_normal((1, 8, 50, 16)).astype(np.float32)
    k, v = (rng.standard_normal((1, 2, 60, 16)).astype(np.float32) for _ in range(2))
    ours = fastattn.attention(q, k, v, scale=0.2, backend=backend)
    theirs = torch_attention(q, k, v, scale=0.2, enable_gqa=True)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=2e-5)
