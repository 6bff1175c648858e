"""attention_weights: the softmax matrix itself, for looking at it (small inputs only)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import numpy.typing as npt

from . import _api, _reference


def attention_weights(q: npt.ArrayLike, k: npt.ArrayLike, /, *, causal: _api.Causal = False,
                      scale: Optional[float] = None, mask: Optional[npt.ArrayLike] = None,
                      kv_lengths: Optional[npt.ArrayLike] = None, q_lengths: Optional[npt.ArrayLike] = None,
                      window: _api.Window = None, alibi_slopes: Optional[npt.ArrayLike] = None,
                      softcap: Optional[float] = None) -> npt.NDArray[Any]:
    """The attention weights ``P = softmax(scores)`` of every head, materialised.

    ``scores`` are formed and masked exactly as ``fastattn.attention`` forms them from ``q`` and
    ``k`` with the same options (scale, softcap, ALiBi, mask, causal, window, lengths), so
    ``attention(q, k, v, **options)`` equals ``attention_weights(q, k, **options) @ v`` (per
    head, K/V heads shared under GQA). For pictures and teaching: this builds the Lq×Lk matrix
    that ``attention`` never does, O(Lq·Lk) memory per head, so keep the inputs small.

    Shapes: q ``(..., Hq, Lq, D)`` (2-D ``(Lq, D)``: one head), k ``(..., Hkv, Lk, D)``; the
    result is ``(..., Hq, Lq, Lk)`` in the compute dtype (float64 for float64 inputs, else
    float32). Each row sums to 1, or is all zeros for a query that sees no key (as its output is).
    Errors are those of ``attention``.
    """
    call = _api._normalise(q, k, k, causal, scale, mask, kv_lengths, q_lengths, window, alibi_slopes, softcap)
    batch, hq, lq, _ = call.q.shape
    lk = call.k.shape[2]
    shape = call.out_shape[:-1] + (lk,)
    if batch * hq * lq * lk == 0:
        return np.zeros(shape, _api._compute_dtype(call.q.dtype))
    scores, _ = _reference._Scores(call.q, call.k, call.options).chunk(0, lq)
    row_max = scores.max(axis=-1, keepdims=True)
    # Subtract the row max (every exponent <= 0: no overflow); a row that sees nothing has max
    # -inf and all scores -inf: shifted by 0 instead, its weights are exp(-inf) = 0.
    with np.errstate(invalid="ignore"):  # NaN scores propagate to their row, as in attention
        p = np.exp(scores - np.where(row_max == -np.inf, 0, row_max))
        row_sum = p.sum(axis=-1, keepdims=True)
        weights = np.where(row_sum > 0, p / np.where(row_sum > 0, row_sum, 1), p)
    return weights.reshape(shape).astype(_api._compute_dtype(call.q.dtype), copy=False)  # ALiBi promotes
