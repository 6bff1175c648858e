"""Decoding shapes: tasks of at most 8 query rows whose K/V head no other task reads are computed
in "direct mode" (K and V read in place, not packed; forward-inl.hpp). Every feature there against
the oracle, including feature and value widths that are not whole vectors."""

from __future__ import annotations

import numpy as np
import pytest

import fastattn
from fastattn import _backend
from oracle import assert_matches_oracle

pytestmark = pytest.mark.skipif(not _backend.cpp_available(), reason="C++ extension not built")

LK = 300  # two key blocks, the second partial


def inputs(rng, lq, hq, hkv, d=13, dv=7, dtype=np.float32, batch=2):
    q = rng.standard_normal((batch, hq, lq, d)).astype(dtype)
    k = rng.standard_normal((batch, hkv, LK, d)).astype(dtype)
    v = rng.standard_normal((batch, hkv, LK, dv)).astype(dtype)
    return q, k, v


# (Lq, Hq, Hkv): direct mode for the first four (rows per task <= 8), packed for the last.
SHAPES = [(1, 2, 2), (1, 8, 2), (2, 4, 1), (8, 1, 1), (9, 1, 1)]
OPTIONS = {
    "plain": {},
    "lower_right": {"causal": "lower_right"},
    "lengths": {"kv_lengths": [200, 300], "q_lengths": [1, 0]},
    "mask": {"mask": np.arange(LK) % 5 != 0},
    "window_alibi_softcap": {"causal": "lower_right", "window": (50, 0), "alibi_slopes": 0.1, "softcap": 3.0},
}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("dims", [(13, 7), (64, 64), (16, 40)], ids=str)
def test_decode_matches_oracle(isa, rng, shape, option, dims):
    lq, hq, hkv = shape
    q, k, v = inputs(rng, lq, hq, hkv, *dims)
    options = dict(OPTIONS[option])
    if "alibi_slopes" in options:
        options["alibi_slopes"] = np.full(hq, options["alibi_slopes"])
    out, lse = fastattn.attention(q, k, v, return_lse=True, num_threads=1, **options)
    assert_matches_oracle(q, k, v, out, lse, **options)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, "bfloat16"])
def test_decode_dtypes(isa, rng, dtype):
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    q, k, v = inputs(rng, 1, 4, 2, dtype=dtype)
    out, lse = fastattn.attention(q, k, v, return_lse=True, num_threads=1)
    assert_matches_oracle(q, k, v, out, lse)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dv", [7, 40])  # the scalar tail; whole vectors (4 at a time, then 1)
def test_decode_masked_non_finite_values_stay_invisible(isa, rng, shape, dv):
    lq, hq, hkv = shape
    q, k, v = inputs(rng, lq, hq, hkv, dv=dv)
    mask = np.ones(LK, bool)
    mask[[3, 150, 299]] = False
    v[:, :, 3] = np.nan
    v[:, :, 150] = np.inf
    v[:, :, 299, 2] = -np.inf
    out = fastattn.attention(q, k, v, mask=mask, num_threads=1)
    clean = v.copy()
    clean[:, :, [3, 150, 299]] = 0
    np.testing.assert_array_equal(out, fastattn.attention(q, k, clean, mask=mask, num_threads=1))
    assert np.isfinite(out).all()
