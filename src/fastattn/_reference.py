"""The NumPy implementation of attention: the fallback backend, and a readable statement of the contract.

It takes the arrays `_api.py` has normalised to 4-D — q (B, Hq, Lq, D), k (B, Hkv, Lk, D),
v (B, Hkv, Lk, Dv) — plus `Options`, and writes into out (B, Hq, Lq, Dv) and lse (B, Hq, Lq) or
None. float64 is computed in float64, everything else in float32. Scores are materialised only
for a chunk of query rows at a time, so memory stays bounded for long sequences (the C++ kernel
never materialises them at all).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import numpy as np

NO_CAUSAL, UPPER_LEFT, LOWER_RIGHT = 0, 1, 2

# Elements of one chunk's score matrix (B·Hq·rows·Lk): about 64 MiB in float32.
_SCORE_BUDGET = 1 << 24


class Options(NamedTuple):
    """Every option of one call, validated and normalised once by `_api.py`."""

    scale: float
    causal: int  # NO_CAUSAL, UPPER_LEFT or LOWER_RIGHT
    mask: Optional[np.ndarray] = None  # bool or compute-dtype view, batch_shape + (Hq, Lq, Lk)
    q_lengths: Optional[np.ndarray] = None  # (B,) int64
    kv_lengths: Optional[np.ndarray] = None  # (B,) int64
    window: Tuple[int, int] = (-1, -1)  # (left, right); -1 = unbounded
    alibi_slopes: Optional[np.ndarray] = None  # (B·Hq,) float64
    softcap: float = 0.0  # 0 = off


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray, lse: Optional[np.ndarray],
            opts: Options) -> None:
    batch, hq, lq, d = q.shape
    hkv, lk, dv = k.shape[1], k.shape[2], v.shape[3]
    group = hq // hkv
    compute = np.float64 if q.dtype == np.float64 else np.float32
    # GQA without copying K/V: the query heads of one group share a broadcast K/V head.
    # (float16/bfloat16 K/V are converted to float32 here; the C++ kernel does it per block.)
    q_g = q.reshape(batch, hkv, group, lq, d)
    k_t = k[:, :, None].swapaxes(-1, -2).astype(compute, copy=False)  # (B, Hkv, 1, D, Lk)
    v_g = v[:, :, None].astype(compute, copy=False)  # (B, Hkv, 1, Lk, Dv)
    # In p @ v a key of weight 0 would still spread a NaN of its value row (0·NaN = NaN) to rows
    # that cannot see it. The kernel skips such keys; here NaN is put back only where a key of
    # nonzero weight carries it.
    v_nan = np.isnan(v_g)
    if v_nan.any():
        v_g, v_nan = np.where(v_nan, 0, v_g), v_nan.astype(compute)
    else:
        v_nan = None
    out_g = out.reshape(batch, hkv, group, lq, dv)
    lse_g = None if lse is None else lse.reshape(batch, hkv, group, lq)

    q_len = np.full(batch, lq) if opts.q_lengths is None else opts.q_lengths
    kv_len = np.full(batch, lk) if opts.kv_lengths is None else opts.kv_lengths
    # The diagonal of every positional rule: query i is at key position i + off (DESIGN.md).
    diag_off = kv_len - q_len if opts.causal == LOWER_RIGHT else np.zeros(batch, dtype=np.int64)
    left, right = opts.window
    if opts.causal != NO_CAUSAL:
        right = 0  # causal is the window's right edge at the diagonal
    keys = np.arange(lk)
    slopes = None if opts.alibi_slopes is None else opts.alibi_slopes.reshape(batch, hkv, group, 1, 1)

    rows_per_chunk = max(1, _SCORE_BUDGET // max(1, batch * hq * lk))
    for row0 in range(0, lq, rows_per_chunk):
        row1 = min(lq, row0 + rows_per_chunk)
        rows = np.arange(row0, row1)
        scores = (q_g[..., row0:row1, :].astype(compute, copy=False) @ k_t) * compute(opts.scale)
        if opts.softcap:
            scores = opts.softcap * np.tanh(scores / opts.softcap)
        pos = rows[None, :] + diag_off[:, None]  # (B, rows)
        if slopes is not None:
            scores = scores - slopes * np.abs(pos[:, None, None, :, None] - keys)
        if opts.mask is not None:
            m = opts.mask[..., row0:row1, :].reshape(batch, hkv, group, row1 - row0, lk)
            if m.dtype == np.bool_:
                scores = np.where(m, scores, -np.inf)
            else:  # -inf masks even a NaN score, like the kernel
                scores = np.where(m == -np.inf, -np.inf, scores + m)
        visible = (keys < kv_len[:, None, None]) & (rows[None, :, None] < q_len[:, None, None])
        if left >= 0:
            visible &= keys >= pos[..., None] - left
        if right >= 0:
            visible &= keys <= pos[..., None] + right
        scores = np.where(visible[:, None, None], scores, -np.inf)

        row_max = scores.max(axis=-1, keepdims=True) if lk else np.full(scores.shape[:-1] + (1,), -np.inf)
        # A row that sees no key has max -inf; shifting it by 0 gives p = 0 and l = 0.
        sees_nothing = row_max == -np.inf
        shift = np.where(sees_nothing, 0, row_max)
        p = np.exp(scores - shift)
        row_sum = p.sum(axis=-1, keepdims=True)
        acc = p @ v_g
        if v_nan is not None:
            acc[((p != 0) @ v_nan) > 0] = np.nan
        with np.errstate(divide="ignore", invalid="ignore"):
            out_g[..., row0:row1, :] = np.where(sees_nothing, 0, acc / row_sum)
            if lse_g is not None:
                lse_g[..., row0:row1] = (shift + np.log(row_sum))[..., 0]
