"""Flash-decoding: when a call has few tasks (decoding one sequence), the C++ kernel splits each
task's keys into shares run as separate work items and merges their partial (max, sum, acc).

Every case here is one task (B = 1, one K/V head, Lq <= 60) over 2048 keys: 4 shares of 512
keys (forward-inl.hpp; count_splits in common/parallel-inl.hpp). The split depends on the shape
only, so results are the same for every thread count.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastattn
from fastattn import _backend
from oracle import assert_matches_oracle

pytestmark = pytest.mark.skipif(not _backend.cpp_available(), reason="C++ extension not built")
LK = 2048

CASES = {
    "plain": {},
    "lower_right": {"causal": "lower_right"},
    "kv_lengths": {"kv_lengths": [1500]},
    "key_padding_mask": {"mask": np.arange(LK) % 7 != 3},
    "window": {"causal": "lower_right", "window": (700, 0)},
    "alibi": {"alibi_slopes": [0.01, 0.02, 0.05, 0.1]},
    "softcap": {"softcap": 5.0},
}


def decode_inputs(rng, lq=1, hq=4, dtype=np.float32, d=64, lk=LK):
    q = rng.standard_normal((1, hq, lq, d)).astype(dtype)
    k = (2 * rng.standard_normal((1, 1, lk, d))).astype(dtype)
    v = rng.standard_normal((1, 1, lk, d)).astype(dtype)
    return q, k, v


@pytest.mark.parametrize("lq", [1, 7])
@pytest.mark.parametrize("case", list(CASES))
def test_split_matches_oracle(isa, rng, case, lq):
    q, k, v = decode_inputs(rng, lq=lq)
    options = CASES[case]
    out, lse = fastattn.attention(q, k, v, num_threads=2, return_lse=True, **options)
    assert_matches_oracle(q, k, v, out, lse, **options)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_split_other_dtypes(isa, rng, dtype):
    q, k, v = decode_inputs(rng, dtype=dtype)
    out, lse = fastattn.attention(q, k, v, num_threads=2, return_lse=True)
    assert_matches_oracle(q, k, v, out, lse)


@pytest.mark.parametrize("lq", [1, 20])  # direct mode; packed
def test_split_does_not_depend_on_the_thread_count(isa, rng, lq, eight_processors):
    # 32 query heads: enough work that the call really runs up to 8 threads (dispatch.cpp runs
    # smaller calls on fewer); asserted below.
    q, k, v = decode_inputs(rng, lq=lq, hq=32, lk=10000 if lq == 1 else LK)
    one = fastattn.attention(q, k, v, num_threads=1, return_lse=True)
    for threads in (2, 3, 8):
        many = fastattn.attention(q, k, v, num_threads=threads, return_lse=True)
        assert eight_processors() in (None, threads), "the threads the kernel really ran"
        for a, b in zip(one, many):
            np.testing.assert_array_equal(a, b)  # bitwise


def test_split_rows_that_see_no_key_in_one_share(isa, rng):
    # Row 0 sees only keys [0, 100): every later share of its keys is empty for it.
    q, k, v = decode_inputs(rng, lq=1, hq=1)
    mask = np.zeros(LK, bool)
    mask[:100] = True
    out, lse = fastattn.attention(q, k, v, mask=mask, num_threads=2, return_lse=True)
    assert_matches_oracle(q, k, v, out, lse, mask=mask)
    # and a row that sees no key at all: zeros, lse = -inf
    out, lse = fastattn.attention(q, k, v, kv_lengths=[0], num_threads=2, return_lse=True)
    assert not out.any() and np.isneginf(lse).all()


def test_split_non_finite_values(isa, rng):
    q, k, v = decode_inputs(rng, hq=1)
    v[0, 0, 1900, 5] = np.nan  # a key the row cannot see (kv_lengths) stays invisible
    out = fastattn.attention(q, k, v, kv_lengths=[1800], num_threads=2)
    assert np.isfinite(out).all()
    k[0, 0, 30, 0] = np.nan  # a NaN score in one share makes the whole row NaN
    out, lse = fastattn.attention(q, k, v, num_threads=2, return_lse=True)
    assert np.isnan(out).all() and np.isnan(lse).all()
