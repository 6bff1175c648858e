"""An independent float64 oracle and the tolerance rule of DESIGN.md.

Deliberately the most literal formula: the full score matrix, an explicit mask, K/V heads
repeated for GQA. It shares no code with fastattn, so a bug in fastattn's reference cannot hide
in both.
"""

from __future__ import annotations

import numpy as np

F32_TO_F64_EPS = np.finfo(np.float64).eps / np.finfo(np.float32).eps


def causal_offset(causal, lq: int, lk: int):
    """The diagonal offset `off` (key j visible iff j <= i + off), or None without masking."""
    if causal is False:
        return None
    return lk - lq if causal == "lower_right" else 0


def oracle(q, k, v, *, causal=False, scale=None, dtype=np.float64):
    """(out, lse) computed in `dtype` (float64: the oracle; float32: the naive baseline)."""
    q, k, v = (np.asarray(x, dtype=dtype) for x in (q, k, v))
    if q.ndim == 2:
        q, k, v = q[None], k[None], v[None]
        squeeze = True
    else:
        squeeze = False
    group = q.shape[-3] // k.shape[-3]
    k = np.repeat(k, group, axis=-3)
    v = np.repeat(v, group, axis=-3)
    lq, lk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1 / np.sqrt(d) if scale is None else scale
    scores = (q @ np.swapaxes(k, -1, -2)) * dtype(scale)
    off = causal_offset(causal, lq, lk)
    if off is not None:
        visible = np.arange(lk)[None, :] <= np.arange(lq)[:, None] + off
        scores = np.where(visible, scores, -np.inf)
    m = scores.max(axis=-1, keepdims=True) if lk else np.full(scores.shape[:-1] + (1,), -np.inf, dtype)
    empty = np.isneginf(m)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.exp(scores - np.where(empty, 0, m))
        s = p.sum(axis=-1, keepdims=True)
        out = np.where(empty, 0, (p @ v) / s)
        lse = (np.where(empty, 0, m) + np.log(s))[..., 0]
    if squeeze:
        out, lse = out[0], lse[0]
    return out, lse


def max_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    same_inf = np.isinf(a) & (a == b)  # -inf lse of fully masked rows
    with np.errstate(invalid="ignore"):
        diff = np.where(same_inf, 0.0, np.abs(a - b))
    return float(np.max(diff, initial=0.0))


def tolerance(naive_err: float, dtype, magnitude: float) -> float:
    """err(fast) <= 2·err(naive float32) + atol, the flash-attention test idiom.

    For float64 inputs the float32 error is rescaled by eps64/eps32: the same conditioning,
    at float64's precision.
    """
    if np.dtype(dtype) == np.float64:
        return 2 * naive_err * F32_TO_F64_EPS + 1e-14 * (1 + magnitude)
    return 2 * naive_err + 1e-6 * (1 + magnitude)


def assert_matches_oracle(q, k, v, out, lse=None, *, causal=False, scale=None):
    """Checks out (and lse) of a fastattn call against the float64 oracle."""
    want, want_lse = oracle(q, k, v, causal=causal, scale=scale)
    naive, naive_lse = oracle(q, k, v, causal=causal, scale=scale, dtype=np.float32)
    assert out.dtype == q.dtype and out.shape == want.shape
    assert not np.isnan(out).any(), "NaN in the output of finite inputs"
    magnitude = float(np.max(np.abs(v), initial=0.0))
    err = max_err(out, want)
    tol = tolerance(max_err(naive, want), q.dtype, magnitude)
    assert err <= tol, f"out: max error {err:.3g} > tolerance {tol:.3g}"
    if lse is not None:
        assert lse.dtype == q.dtype and lse.shape == want_lse.shape
        np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(want_lse))
        lse_mag = float(np.max(np.abs(np.where(np.isinf(want_lse), 0, want_lse)), initial=0.0))
        err = max_err(lse, want_lse)
        tol = tolerance(max_err(naive_lse, want_lse), q.dtype, lse_mag)
        assert err <= tol, f"lse: max error {err:.3g} > tolerance {tol:.3g}"
