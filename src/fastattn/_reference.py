"""The NumPy implementation of attention: the fallback backend, and a readable statement of the contract.

It takes the arrays `_api.py` has normalised to 4-D — q (B, Hq, Lq, D), k (B, Hkv, Lk, D),
v (B, Hkv, Lk, Dv) — and writes into out (B, Hq, Lq, Dv) and lse (B, Hq, Lq) or None, computing
in the input dtype. Scores are materialised only for a chunk of query rows at a time, so memory
stays bounded for long sequences (the C++ kernel never materialises them at all).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

NO_CAUSAL, UPPER_LEFT, LOWER_RIGHT = 0, 1, 2

# Elements of one chunk's score matrix (B·Hq·rows·Lk): about 64 MiB in float32.
_SCORE_BUDGET = 1 << 24


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray, lse: Optional[np.ndarray],
            scale: float, causal: int) -> None:
    batch, hq, lq, d = q.shape
    hkv, lk, dv = k.shape[1], k.shape[2], v.shape[3]
    group = hq // hkv
    # GQA without copying K/V: the query heads of one group share a broadcast K/V head.
    q_g = q.reshape(batch, hkv, group, lq, d)
    k_t = k[:, :, None].swapaxes(-1, -2)  # (B, Hkv, 1, D, Lk)
    v_g = v[:, :, None]  # (B, Hkv, 1, Lk, Dv)
    out_g = out.reshape(batch, hkv, group, lq, dv)
    lse_g = None if lse is None else lse.reshape(batch, hkv, group, lq)
    diag_off = lk - lq if causal == LOWER_RIGHT else 0

    rows = max(1, _SCORE_BUDGET // max(1, batch * hq * lk))
    for row0 in range(0, lq, rows):
        row1 = min(lq, row0 + rows)
        scores = (q_g[..., row0:row1, :] @ k_t) * scale
        if causal != NO_CAUSAL:
            # Query i sees key j iff j <= i + diag_off (see DESIGN.md, "Semantics").
            visible = np.arange(lk) <= np.arange(row0 + diag_off, row1 + diag_off)[:, None]
            scores = np.where(visible, scores, -np.inf)
        row_max = scores.max(axis=-1, keepdims=True)
        # A row that sees no key has max -inf; shifting it by 0 gives p = 0 and l = 0.
        sees_nothing = row_max == -np.inf
        shift = np.where(sees_nothing, 0, row_max)
        p = np.exp(scores - shift)
        row_sum = p.sum(axis=-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            out_g[..., row0:row1, :] = np.where(sees_nothing, 0, (p @ v_g) / row_sum)
            if lse_g is not None:
                lse_g[..., row0:row1] = (shift + np.log(row_sum))[..., 0]
