"""The NumPy implementation of attention: the fallback backend, and a readable statement of the contract.

It takes the arrays `_contract.normalise` has made 4-D — q (B, Hq, Lq, D), k (B, Hkv, Lk, D),
v (B, Hkv, Lk, Dv) — plus their `Options`, and writes into out (B, Hq, Lq, Dv) and lse (B, Hq, Lq)
or None. float64 is computed in float64, everything else in float32. Scores are materialised only
for a chunk of query rows at a time, so memory stays bounded for long sequences (the C++ kernel
never materialises them at all).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ._contract import ALIGN_LOWER_RIGHT, NO_CAUSAL, Call, Options, compute_dtype

# Elements of one chunk's score matrix (B·Hq·rows·Lk): about 64 MiB in float32.
_SCORE_BUDGET = 1 << 24


class _Scores:
    """What every chunk of query rows needs to form its scores, prepared once per call.

    GQA without copying K/V: the query heads of one group share a broadcast K/V head.
    (float16/bfloat16 K/V are converted to float32 here; the C++ kernel does it per block.)
    """

    def __init__(self, q: np.ndarray, k: np.ndarray, opts: Options):
        batch, hq, lq, d = q.shape
        hkv, lk = k.shape[1], k.shape[2]
        self.group = group = hq // hkv
        self.compute = compute = compute_dtype(q.dtype).type
        self.q_g = q.reshape(batch, hkv, group, lq, d)
        self.k_t = k[:, :, None].swapaxes(-1, -2).astype(compute, copy=False)  # (B, Hkv, 1, D, Lk)
        self.opts = opts
        q_len = np.full(batch, lq) if opts.q_lengths is None else opts.q_lengths
        self.kv_len = np.full(batch, lk) if opts.kv_lengths is None else opts.kv_lengths
        # The diagonal of every positional rule: query i is at key position i + off (docs/architecture.md).
        self.diag_off = self.kv_len - q_len if opts.align == ALIGN_LOWER_RIGHT else np.zeros(batch, dtype=np.int64)
        self.q_len = q_len
        left, right = opts.window
        if opts.causal != NO_CAUSAL:
            right = 0  # causal is the window's right edge at the diagonal
        self.left, self.right = left, right
        self.keys = np.arange(lk)
        self.slopes = None if opts.alibi_slopes is None else opts.alibi_slopes.reshape(batch, hkv, group, 1, 1)
        self.rows_per_chunk = max(1, _SCORE_BUDGET // max(1, batch * hq * lk))
        self.sinks = None if opts.sinks is None else opts.sinks.reshape(batch, hkv, group, 1, 1).astype(compute)

    def sink_logits(self, row0: int, row1: int):
        """The sinks of query rows [row0, row1), (B, Hkv, group, rows, 1), -inf for rows past
        q_lengths (padding has no query, so no sink either); None without sinks."""
        if self.sinks is None:
            return None
        live = (np.arange(row0, row1)[None, :] < self.q_len[:, None])[:, None, None, :, None]
        return np.where(live, self.sinks, -np.inf)

    def chunk(self, row0: int, row1: int):
        """(scores, cap_grad) of query rows [row0, row1), (B, Hkv, group, rows, Lk): the shaped
        and masked scores (-inf where invisible), and d(softcap(s))/ds = 1 - tanh² (None
        without a softcap)."""
        opts, batch, hkv, group, lk = self.opts, *self.q_g.shape[:3], self.k_t.shape[-1]
        rows = np.arange(row0, row1)
        with np.errstate(invalid="ignore"):  # inf − inf in a key that a mask may hide: NaN, like the kernel
            scores = (self.q_g[..., row0:row1, :].astype(self.compute, copy=False) @ self.k_t) * self.compute(opts.scale)
        cap_grad = None
        if opts.softcap:
            capped = np.tanh(scores / opts.softcap)
            scores = opts.softcap * capped
            cap_grad = 1 - capped * capped
        pos = rows[None, :] + self.diag_off[:, None]  # (B, rows)
        if self.slopes is not None:
            scores = scores - self.slopes * np.abs(pos[:, None, None, :, None] - self.keys)
        if opts.mask is not None:
            m = opts.mask[..., row0:row1, :].reshape(batch, hkv, group, row1 - row0, lk)
            if m.dtype == np.bool_:
                scores = np.where(m, scores, -np.inf)
            else:  # -inf masks even a NaN or +inf score (inf − inf), like the kernel
                with np.errstate(invalid="ignore"):
                    scores = np.where(m == -np.inf, -np.inf, scores + m)
        visible = (self.keys < self.kv_len[:, None, None]) & (rows[None, :, None] < self.q_len[:, None, None])
        if self.left >= 0:
            visible &= self.keys >= pos[..., None] - self.left
        if self.right >= 0:
            visible &= self.keys <= pos[..., None] + self.right
        return np.where(visible[:, None, None], scores, -np.inf), cap_grad


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray, lse: Optional[np.ndarray],
            opts: Options, lse_lo: Optional[np.ndarray] = None) -> None:
    """attention into out and lse (or None), and lse_lo (None, or with lse: the exact error of
    lse's rounding, as the kernel's AttentionArgs::lse_lo)."""
    batch, hq, lq, _ = q.shape
    hkv, dv = k.shape[1], v.shape[3]
    ctx = _Scores(q, k, opts)
    group, compute = ctx.group, ctx.compute
    v_g = v[:, :, None].astype(compute, copy=False)  # (B, Hkv, 1, Lk, Dv)
    out_g = out.reshape(batch, hkv, group, lq, dv)
    lse_g = None if lse is None else lse.reshape(batch, hkv, group, lq)
    lo_g = None if lse_lo is None else lse_lo.reshape(batch, hkv, group, lq)

    for row0 in range(0, lq, ctx.rows_per_chunk):
        row1 = min(lq, row0 + ctx.rows_per_chunk)
        scores, _ = ctx.chunk(row0, row1)
        row_max = scores.max(axis=-1, keepdims=True) if scores.shape[-1] else np.full(scores.shape[:-1] + (1,), -np.inf)
        # A row that sees no key has max -inf; shifting it by 0 gives p = 0 and l = 0.
        sees_nothing = row_max == -np.inf
        sink = ctx.sink_logits(row0, row1)  # None, or (B, Hkv, group, rows, 1): -inf for padding rows
        if sink is not None:  # one more term of the denominator, with no value: shift by the larger
            row_max = np.maximum(row_max, sink)  # a NaN row stays NaN
        shift = np.where(row_max == -np.inf, 0, row_max)
        with np.errstate(invalid="ignore", over="ignore"):  # a score of +inf: inf - inf is NaN, as the kernel gives
            p = np.exp(scores - shift)
            row_sum = p.sum(axis=-1, keepdims=True)
            if sink is not None:
                row_sum = row_sum + np.exp(sink - shift)
            acc = _weighted_sum(p, v_g)
        with np.errstate(divide="ignore", invalid="ignore"):
            out_g[..., row0:row1, :] = np.where(sees_nothing, 0, acc / row_sum)
            if lse_g is not None:
                log_l = np.log(row_sum)
                hi = shift + log_l
                lse_g[..., row0:row1] = hi[..., 0]
                if lo_g is not None:  # TwoSum: the exact error of that rounding; 0 where hi is not finite
                    b = hi - shift
                    lo = (shift - (hi - b)) + (log_l - b)
                    lo_g[..., row0:row1] = np.where(np.isfinite(hi), lo, 0)[..., 0]


def empty_rows_lse(call: Call) -> np.ndarray:
    """lse (B, Hq, Lq) of a call with no key (Lk = 0): -inf, or each live row's sink."""
    batch, hq, lq, _ = call.q.shape
    sinks = call.options.sinks
    if sinks is None:
        return np.full((batch, hq, lq), -np.inf)
    q_len = np.full(batch, lq) if call.options.q_lengths is None else call.options.q_lengths
    live = np.arange(lq)[None, :] < q_len[:, None]  # (B, Lq)
    return np.where(live[:, None, :], sinks.reshape(batch, hq, 1), -np.inf)


def sink_grads(sinks: np.ndarray, dout: np.ndarray, out: np.ndarray, lse: np.ndarray) -> np.ndarray:
    """d loss / d sink of every (batch, head), (B, Hq), for the forward's out, lse (B, Hq, Lq, Dv),
    (B, Hq, Lq): out_i = Σ_j P_ij·v_j with the sink's weight P_i,sink = exp(sink − lse_i) in the
    denominator only, so d out_i / d sink = −P_i,sink·out_i and

        d sink = −Σ_i exp(sink − lse_i)·D_i,    D_i = Σ_c dout_ic·out_ic.

    Rows with lse -inf (padding, no sink) add nothing; NaN propagates."""
    batch, hq = lse.shape[:2]
    compute = out.dtype.type if out.dtype == np.float64 else np.float32
    sink = sinks.reshape(batch, hq, 1).astype(compute)
    with np.errstate(invalid="ignore", over="ignore"):
        p_sink = np.where(lse == -np.inf, 0, np.exp(sink - np.where(lse == -np.inf, 0, lse)))
        delta = np.sum(dout.astype(compute, copy=False) * out.astype(compute, copy=False), axis=-1)
        return (-np.sum(p_sink * delta, axis=-1)).astype(compute, copy=False)  # (a float64 lse widens p_sink)


def backward(dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray, lse: np.ndarray,
             dq: np.ndarray, dk: np.ndarray, dv: np.ndarray, opts: Options, lse_lo: Optional[np.ndarray] = None) -> None:
    """Gradients of sum(dout ∘ out) into dq, dk, dv, with P recomputed from lse (the forward's
    log-sum-exp, in the compute dtype), as the C++ kernel does:

        P = exp(s − lse),  dP = dout·vᵀ,  D_i = Σ_c dout_ic·out_ic,  dS = P ∘ (dP − D)
        dv = Pᵀ·dout,  dq = scale·dS'·k,  dk = scale·dS'ᵀ·q

    where dS' = dS·(1 − tanh²) under a softcap. Invisible keys (P = 0) get dS = 0 exactly,
    so a NaN in their values cannot reach a gradient. GQA sums dk, dv over each group.
    """
    batch, hq, lq, d = q.shape
    hkv, lk, d_v = k.shape[1], k.shape[2], v.shape[3]
    ctx = _Scores(q, k, opts)
    group, compute = ctx.group, ctx.compute
    scale = compute(opts.scale)
    k_g = k[:, :, None].astype(compute, copy=False)  # (B, Hkv, 1, Lk, D)
    v_t = v[:, :, None].swapaxes(-1, -2).astype(compute, copy=False)  # (B, Hkv, 1, Dv, Lk)
    dout_g = dout.reshape(batch, hkv, group, lq, d_v).astype(compute, copy=False)
    out_g = out.reshape(batch, hkv, group, lq, d_v).astype(compute, copy=False)
    # lse as hi + lo, as the kernel reads it (lo: lse_lo where hi is finite, else 0).
    lse_hi = lse.reshape(batch, hkv, group, lq, 1).astype(compute, copy=False)
    lse_lo = np.zeros_like(lse_hi) if lse_lo is None else \
        np.where(np.isfinite(lse_hi), lse_lo.reshape(lse_hi.shape), 0).astype(compute, copy=False)
    dq_g = dq.reshape(batch, hkv, group, lq, d)
    dk_acc = np.zeros((batch, hkv, lk, d), compute)
    dv_acc = np.zeros((batch, hkv, lk, d_v), compute)

    # NaN and inf propagate (to the rows and keys they reach) without RuntimeWarnings.
    with np.errstate(invalid="ignore"):
        for row0 in range(0, lq, ctx.rows_per_chunk):
            row1 = min(lq, row0 + ctx.rows_per_chunk)
            scores, cap_grad = ctx.chunk(row0, row1)
            row_lse = lse_hi[..., row0:row1, :]
            # A row that saw nothing has lse -inf and weights 0 (not exp(-inf + inf) = NaN);
            # NaN or +inf scores give NaN weights, as in the kernel.
            p = np.exp((scores - np.where(row_lse == -np.inf, 0, row_lse)) - lse_lo[..., row0:row1, :])
            p[scores == -np.inf] = 0  # invisible, also in a NaN row (lse NaN)
            d_out = dout_g[..., row0:row1, :]
            dp = d_out @ v_t  # NaN where a hidden value is inf: dS is 0 there
            delta = np.sum(d_out * out_g[..., row0:row1, :], axis=-1, keepdims=True)
            ds = p * (dp - delta)
            if cap_grad is not None:
                ds *= cap_grad
            ds = np.where(p != 0, ds, 0)  # exactly 0 where P is, whatever dP or the softcap's factor
            # _weighted_sum: a NaN in a row of dout or q reaches only the keys that row sees.
            dv_acc += _weighted_sum(np.swapaxes(p, -1, -2), d_out).sum(axis=2)
            q_rows = ctx.q_g[..., row0:row1, :].astype(compute, copy=False)
            dk_acc += _weighted_sum(np.swapaxes(ds, -1, -2), q_rows).sum(axis=2) * scale
            dq_g[..., row0:row1, :] = _weighted_sum(ds, k_g) * scale
    dk[...] = dk_acc
    dv[...] = dv_acc


def _weighted_sum(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """w @ x over keys, leaving out the terms of weight exactly 0, as the kernel does: a key that a
    row cannot see must not spread a NaN or inf of its row of x to it (0·inf = NaN). Exact: the
    keys whose rows are not finite are summed separately, only where their weight is nonzero.
    NaN from inf·0 or inf − inf elsewhere propagates; it is not an error (no RuntimeWarning)."""
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(x)
        if not bad.any():
            return w @ x
        bad_keys = np.flatnonzero(bad.any(axis=(0, 1, 2, 4)))
        finite_keys = x.copy()
        finite_keys[..., bad_keys, :] = 0  # the whole row of a bad key: its terms are all added below
        result = w @ finite_keys
        for start in range(0, len(bad_keys), 16):  # a few keys at a time bounds the temporary
            keys = bad_keys[start:start + 16]
            w_k = w[..., keys, None]  # (..., rows, keys, 1)
            terms = np.where(w_k != 0, w_k * x[..., None, keys, :], 0)  # (..., rows, keys, C)
            result += terms.sum(axis=-2)
        return result
