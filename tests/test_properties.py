"""Hypothesis: random shapes, flags, dtypes and strides against the float64 oracle."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastattn
from oracle import assert_matches_oracle


@st.composite
def problems(draw):
    batch = draw(st.integers(1, 2))
    hkv = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3))
    lq = draw(st.integers(1, 150))
    lk = draw(st.integers(1, 150))
    d = draw(st.integers(1, 70))
    dv = draw(st.integers(1, 70))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    causal = draw(st.sampled_from([False, True, "upper_left", "lower_right"]))
    scale = draw(st.one_of(st.none(), st.floats(-2, 2, allow_nan=False)))
    transposed = draw(st.booleans())  # feed a (B, L, H, D) buffer through a transposed view
    seed = draw(st.integers(0, 2**32 - 1))
    return batch, hkv, group, lq, lk, d, dv, dtype, causal, scale, transposed, seed


def tensor(rng, batch, heads, length, dim, dtype, transposed):
    if transposed:
        return rng.standard_normal((batch, length, heads, dim)).astype(dtype).transpose(0, 2, 1, 3)
    return rng.standard_normal((batch, heads, length, dim)).astype(dtype)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=problems())
def test_random_problems(backend, problem):
    batch, hkv, group, lq, lk, d, dv, dtype, causal, scale, transposed, seed = problem
    rng = np.random.default_rng(seed)
    q = tensor(rng, batch, hkv * group, lq, d, dtype, transposed)
    k = tensor(rng, batch, hkv, lk, d, dtype, transposed)
    v = tensor(rng, batch, hkv, lk, dv, dtype, transposed)
    out, lse = fastattn.attention(q, k, v, causal=causal, scale=scale, return_lse=True, backend=backend)
    assert_matches_oracle(q, k, v, out, lse, causal=causal, scale=scale)
