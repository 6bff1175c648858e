"""`align`: where query i sits on the keys for the window and ALiBi without a causal mask
(issue 26). FlashAttention, vLLM and decoding with a cache put query i at key i + Lk − Lq
("lower_right") whether or not the call is causal; fastattn's default is "upper_left" unless
causal="lower_right". Every backend (each ISA and NumPy), forward and backward, against the
oracle; the issue's reproducers; and the errors."""

from __future__ import annotations

import numpy as np
import pytest

import fastattn
from oracle import assert_matches_oracle
from test_backward import assert_grads_match_oracle

B, HQ, HKV, LQ, LK, D = 2, 4, 2, 37, 90, 16  # Lq < Lk: the two alignments differ by 53 keys


def qkv(rng, lq=LQ, lk=LK, dtype=np.float32):
    q = rng.standard_normal((B, HQ, lq, D))
    k = rng.standard_normal((B, HKV, lk, D))
    v = rng.standard_normal((B, HKV, lk, D + 3))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def test_alibi_weights_as_flash_attention_gives_them(backend):
    # Lq = 1, Lk = 4, slope 1 (the reproducer): FlashAttention's weights favour the
    # last key, the one at query 0's lower-right position; upper-left favours key 0.
    q, k = np.zeros((1, 1), np.float32), np.zeros((4, 1), np.float32)
    v = np.eye(4, dtype=np.float32)  # out = the weights themselves
    lower = fastattn.attention(q, k, v, alibi_slopes=[1.0], align="lower_right", backend=backend)
    upper = fastattn.attention(q, k, v, alibi_slopes=[1.0], backend=backend)
    np.testing.assert_allclose(lower[0], [0.0320586, 0.0871443, 0.2368828, 0.6439143], rtol=1e-5)
    np.testing.assert_allclose(upper[0], lower[0, ::-1], rtol=1e-5)


def test_window_keys_as_flash_attention_keeps_them(backend):
    # window (1, 1) at Lq = 2, Lk = 5 (the reproducer): FlashAttention keeps keys
    # {2, 3, 4} and {3, 4}; upper-left alignment {0, 1} and {0, 1, 2}.
    q, k = np.zeros((2, 1), np.float32), np.zeros((5, 1), np.float32)
    v = np.eye(5, dtype=np.float32)
    lower = fastattn.attention(q, k, v, window=(1, 1), align="lower_right", backend=backend)
    upper = fastattn.attention(q, k, v, window=(1, 1), backend=backend)
    np.testing.assert_allclose(lower, [[0, 0, 1 / 3, 1 / 3, 1 / 3], [0, 0, 0, 0.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(upper, [[0.5, 0.5, 0, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0, 0]], rtol=1e-6)


@pytest.mark.parametrize("options_of", [
    lambda lq, lk: dict(window=(8, 3)),
    lambda lq, lk: dict(window=(None, 0)),
    lambda lq, lk: dict(window=(5, None), kv_lengths=[lk, lk - 29], q_lengths=[lq, lq - 17]),
    lambda lq, lk: dict(alibi_slopes=[0.5, 0.25, 0.125, 0.0625]),
    lambda lq, lk: dict(alibi_slopes=[0.3, 0.1, 0.2, 0.05], window=(20, 4), softcap=6.0),
    lambda lq, lk: dict(window=(12, 2), mask=np.arange(lk) % 5 != 1),
], ids=["window", "window-left-open", "window-lengths", "alibi", "alibi-window-softcap", "window-mask"])
@pytest.mark.parametrize("lq, lk", [(LQ, LK), (LK, LQ)], ids=["lq<lk", "lq>lk"])
def test_lower_right_without_causal_matches_the_oracle(backend, rng, options_of, lq, lk):
    q, k, v = qkv(rng, lq, lk)
    options = options_of(lq, lk)
    out, lse = fastattn.attention(q, k, v, align="lower_right", return_lse=True, backend=backend, **options)
    assert_matches_oracle(q, k, v, out, lse, align="lower_right", **options)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    grads = fastattn.attention_backward(dout, q, k, v, out, lse, align="lower_right", backend=backend, **options)
    assert_grads_match_oracle(q, k, v, dout, grads, align="lower_right", **options)


def test_causal_with_lower_right_alignment_is_causal_lower_right(backend, rng):
    q, k, v = qkv(rng)
    options = dict(window=(9, 0), alibi_slopes=[0.1] * HQ, backend=backend)
    aligned = fastattn.attention(q, k, v, causal=True, align="lower_right", **options)
    np.testing.assert_array_equal(aligned, fastattn.attention(q, k, v, causal="lower_right", **options))
    np.testing.assert_array_equal(fastattn.attention(q, k, v, causal=True, **options),
                                  fastattn.attention(q, k, v, causal=True, align="upper_left", **options))


def test_the_alignment_only_moves_rules_that_measure_positions(backend, rng):
    # Without a window, ALiBi or causal mask, no rule measures the diagonal: same result.
    q, k, v = qkv(rng)
    mask = rng.random((LQ, LK)) < 0.7
    np.testing.assert_array_equal(fastattn.attention(q, k, v, mask=mask, align="lower_right", backend=backend),
                                  fastattn.attention(q, k, v, mask=mask, backend=backend))


@pytest.mark.parametrize("align, causal, error, match", [
    ("bottom_right", False, ValueError, r"align \(='bottom_right'\) must be 'upper_left', 'lower_right' or None"),
    (1, False, TypeError, "align must be a str or None, got int"),
    ("lower_right", "upper_left", ValueError, r"align \(='lower_right'\) contradicts causal \(='upper_left'\)"),
    ("upper_left", "lower_right", ValueError, r"align \(='upper_left'\) contradicts causal \(='lower_right'\)"),
])
def test_bad_alignments_are_refused(align, causal, error, match):
    q = np.zeros((3, 4), np.float32)
    with pytest.raises(error, match=match):
        fastattn.attention(q, q, q, align=align, causal=causal)
    with pytest.raises(error, match=match):
        fastattn.attention_backward(q, q, q, q, q, np.zeros(3, np.float32), align=align, causal=causal)
