"""An independent float64 oracle and the tolerance rule of docs/architecture.md.

Deliberately the most literal formula: the full score matrix, an explicit mask, K/V heads
repeated for GQA. It shares no code with fastattn, so a bug in fastattn's reference cannot hide
in both.
"""

from __future__ import annotations

import numpy as np

F32_TO_F64_EPS = np.finfo(np.float64).eps / np.finfo(np.float32).eps


def _scores(q, k, v, *, causal=False, scale=None, mask=None, kv_lengths=None, q_lengths=None, window=None,
            alibi_slopes=None, softcap=None, align=None, precision=None, dtype=np.float64):
    """The full score matrix (-inf where invisible), d(softcap)/ds (or None), the inputs in
    `dtype` with K/V heads repeated for GQA, and whether the call was 2-D. (`precision` changes
    how fastattn may round, not what it computes: the oracle ignores it.)

    Every rule is applied to the full (..., Hq, Lq, Lk) score matrix, in the documented order:
    softcap, ALiBi, additive mask; then boolean mask, causal, window, lengths give -inf.
    """
    q, k, v = (np.asarray(x).astype(dtype) for x in (q, k, v))
    two_d = q.ndim == 2
    if two_d:
        q, k, v = q[None], k[None], v[None]
    batch_shape = q.shape[:-3]
    group = q.shape[-3] // k.shape[-3]
    k = np.repeat(k, group, axis=-3)
    v = np.repeat(v, group, axis=-3)
    lq, lk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1 / np.sqrt(d) if scale is None else scale
    scores = (q @ np.swapaxes(k, -1, -2)) * dtype(scale)
    cap_grad = None
    if softcap is not None:
        capped = np.tanh(scores / softcap)
        scores, cap_grad = softcap * capped, 1 - capped * capped

    def per_sequence(lengths, full):  # -> batch_shape + (1, 1, 1)
        value = np.broadcast_to(full if lengths is None else np.asarray(lengths), batch_shape)
        return value.astype(np.int64)[..., None, None, None]

    q_len, kv_len = per_sequence(q_lengths, lq), per_sequence(kv_lengths, lk)
    i = np.arange(lq)[:, None]
    j = np.arange(lk)[None, :]
    lower_right = causal == "lower_right" or align == "lower_right"
    pos = i + (kv_len - q_len if lower_right else 0)  # query i's key position: i + off
    if alibi_slopes is not None:
        slopes = np.broadcast_to(np.asarray(alibi_slopes, np.float64), batch_shape + (q.shape[-3],))
        # The distance in `dtype` too: float32 times an int64 array would promote to float64
        # and make the naive float32 baseline unrealistically exact.
        scores = scores - slopes[..., None, None].astype(dtype) * np.abs(pos - j).astype(dtype)
    if mask is not None:
        m = np.asarray(mask)
        if two_d:
            m = m[None] if m.ndim >= 2 else m
        if m.dtype == np.bool_:
            scores = np.where(m, scores, -np.inf)
        else:
            m = m.astype(dtype)
            scores = np.where(m == -np.inf, -np.inf, scores + m)
    visible = (j < kv_len) & (i < q_len)
    left, right = window if window is not None else (None, None)
    if causal is not False:
        right = 0
    if left is not None:
        visible = visible & (j >= pos - left)
    if right is not None:
        visible = visible & (j <= pos + right)
    return np.where(visible, scores, -np.inf), cap_grad, (q, k, v), two_d


def _sink_column(scores, sinks, q_lengths, dtype):
    """The attention sinks as one more column of scores, (..., Hq, Lq, 1): each head's logit,
    -inf for padded rows (i >= q_lengths, which have no query)."""
    batch_shape, (hq, lq) = scores.shape[:-3], scores.shape[-3:-1]
    sink = np.broadcast_to(np.asarray(sinks, np.float64), batch_shape + (hq,)).astype(dtype)
    q_len = np.broadcast_to(lq if q_lengths is None else np.asarray(q_lengths), batch_shape).astype(np.int64)
    live = np.arange(lq)[:, None] < q_len[..., None, None, None]  # batch_shape + (1, Lq, 1)
    return np.where(live, sink[..., None, None], -np.inf).astype(dtype)


def _softmax_with_sink(q, k, v, dtype, options):
    """(exp(s − m) over keys and, last, the sink; its row sums; whether a row is empty; lse;
    the softcap's derivative; q, k, v; two_d; whether sinks were given)."""
    sinks = options.pop("sinks", None)
    scores, cap_grad, (q, k, v), two_d = _scores(q, k, v, dtype=dtype, **options)
    if sinks is not None:  # the sink is one more column of the softmax, with no value
        scores = np.concatenate([scores, _sink_column(scores, sinks, options.get("q_lengths"), dtype)], axis=-1)
    m = scores.max(axis=-1, keepdims=True) if scores.shape[-1] else np.full(scores.shape[:-1] + (1,), -np.inf, dtype)
    empty = np.isneginf(m)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.exp(scores - np.where(empty, 0, m))
        s = p.sum(axis=-1, keepdims=True)
        lse = (np.where(empty, 0, m) + np.log(s))[..., 0]
    return p, s, empty, lse, cap_grad, (q, k, v), two_d, sinks is not None


def oracle(q, k, v, *, dtype=np.float64, **options):
    """(out, lse) computed in `dtype` (float64: the oracle; float32: the naive baseline).
    With sinks=, the sink is a last column of the scores whose value is 0."""
    p, s, empty, lse, _, (q, k, v), two_d, has_sinks = _softmax_with_sink(q, k, v, dtype, dict(options))
    if has_sinks:
        p = p[..., :-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(empty, 0, (p @ v) / s)
    if two_d:
        out, lse = out[0], lse[0]
    return out, lse


def oracle_grads(q, k, v, dout, *, dtype=np.float64, **options):
    """(dq, dk, dv) of sum(dout ∘ attention(q, k, v)) in `dtype`, from the full matrices and
    the textbook softmax Jacobian: dS = P ∘ (dP − rowsum(P ∘ dP)). (The kernels use
    rowsum(dout ∘ out) instead: the same number, computed differently.) With sinks=, the sink
    is a last column of P with dP = 0, and a fourth gradient, d sinks of batch_shape + (Hq,),
    sums its dS over the rows."""
    hkv = np.shape(k)[-3] if np.ndim(k) > 2 else 1
    scale = 1 / np.sqrt(np.shape(q)[-1]) if options.get("scale") is None else options["scale"]
    p, s, empty, _, cap_grad, (q, k, v), two_d, has_sinks = _softmax_with_sink(q, k, v, dtype, dict(options))
    with np.errstate(invalid="ignore"):
        p = np.where(empty, 0, p / s)
    dout = np.asarray(dout).astype(dtype)
    if two_d:
        dout = dout[None]
    dp = dout @ np.swapaxes(v, -1, -2)
    if has_sinks:
        dp = np.concatenate([dp, np.zeros(dp.shape[:-1] + (1,), dtype)], axis=-1)
    ds = p * (dp - np.sum(p * dp, axis=-1, keepdims=True))
    d_sinks = None
    if has_sinks:
        d_sinks, ds, p = ds[..., -1].sum(axis=-1), ds[..., :-1], p[..., :-1]
    if cap_grad is not None:
        ds = ds * cap_grad
    dq = (ds @ k) * dtype(scale)
    dk = (np.swapaxes(ds, -1, -2) @ q) * dtype(scale)
    dv = np.swapaxes(p, -1, -2) @ dout

    def per_kv_head(g):  # sum the query heads of each GQA group
        return g.reshape(g.shape[:-3] + (hkv, -1) + g.shape[-2:]).sum(axis=-3)

    dk, dv = per_kv_head(dk), per_kv_head(dv)
    grads = (dq[0], dk[0], dv[0]) if two_d else (dq, dk, dv)
    return grads if d_sinks is None else grads + (d_sinks[0] if two_d else d_sinks,)


def max_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    same_inf = np.isinf(a) & (a == b)  # -inf lse of fully masked rows
    with np.errstate(invalid="ignore"):
        diff = np.where(same_inf, 0.0, np.abs(a - b))
    return float(np.max(diff, initial=0.0))


HALF_EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}


def tolerance(naive_err: float, dtype, magnitude: float) -> float:
    """err(fast) <= 2·err(naive float32) + atol, the flash-attention test idiom.

    For float64 inputs the float32 error is rescaled by eps64/eps32: the same conditioning,
    at float64's precision. For 16-bit inputs the naive result is rounded to the input dtype
    (so its error includes the output rounding), and atol is one unit of that dtype.
    """
    name = np.dtype(dtype).name
    if name == "float64":
        return 2 * naive_err * F32_TO_F64_EPS + 1e-14 * (1 + magnitude)
    if name in HALF_EPS:
        return 2 * naive_err + HALF_EPS[name] * (1 + magnitude)
    return 2 * naive_err + 1e-6 * (1 + magnitude)


def _eps(dtype) -> float:
    """The unit of rounding of a storage dtype (float32 and float64 also compute in it)."""
    dtype = np.dtype(dtype)
    return 2 * HALF_EPS[dtype.name] if dtype.name in HALF_EPS else float(np.finfo(dtype).eps)


def rounding_allowance(q, k, v, dout, lse_dtype, **options) -> dict:
    """Per entry of out, lse, dq, dk and dv: the error that the kernel's algorithm makes beyond the
    rounding the naive float32 baseline shares, as float64 arrays with the oracle's shapes (a
    2-D call with a leading axis of 1). A model of the typical size, not a worst-case bound: a
    dot product of n terms a·b is off by about eps·√n·‖a∘b‖₂.

    Why the baseline alone is not enough: where the softmax is (nearly) one-hot — large scores —
    the naive textbook formulas get the weights, and dS = P∘(dP − rowsum(P∘dP)) = 0, exactly, and
    "2·err(naive) + atol" leaves only the atol. The kernel (FlashAttention-2) instead
    (1) recomputes P = exp(s − lse) in the backward: the rounding of s in either pass and of the
    stored lse scales P by about exp(δs + δlse), δs ≈ eps·|s|; (2) takes D_i = dout_i·out_i, which
    cancels against dP_ij = dout_i·v_j only up to rounding, an error that dq and dk multiply by
    scale·|k| and scale·|q|. Relative to the data that is rounding; relative to a gradient of 0 it
    is anything. Without this, fuzzing finds gradients off by up to 5e4 × test_backward's
    tolerance on every backend (the NumPy one too), and now and then a forward off by 1.1 × (a
    tiny problem whose naive float32 result happens to be almost exact).
    """
    dtype = np.asarray(q).dtype
    hkv = np.shape(k)[-3] if np.ndim(k) > 2 else 1
    scores, cap_grad, (q, k, v), two_d = _scores(q, k, v, **options)  # float64; k, v per query head
    dout = np.asarray(dout, np.float64)[None] if two_d else np.asarray(dout, np.float64)
    eps = _eps(np.float64 if dtype == np.float64 else np.float32)  # the compute dtype's
    d, dv_cols = q.shape[-1], v.shape[-1]
    scale = abs(1 / np.sqrt(d) if options.get("scale") is None else options["scale"])

    def t(x):
        return np.swapaxes(x, -1, -2)

    def norm_of_products(a, b):  # ‖a_i ∘ b_j‖₂ for every pair of rows
        return np.sqrt((a * a) @ t(b * b))

    visible = np.isfinite(scores)
    m = np.max(np.where(visible, scores, -np.inf), axis=-1, keepdims=True, initial=-np.inf)
    empty = np.isneginf(m)
    p = np.exp(np.where(visible, scores - np.where(empty, 0, m), -np.inf))
    total = p.sum(axis=-1, keepdims=True)
    p = p / np.where(empty, 1, total)
    lse = np.where(empty, 0, m + np.log(np.where(empty, 1, total)))[..., 0]
    out = p @ v
    s = np.where(visible, np.abs(scores), 0)
    s0 = scale * np.abs(q @ t(k))  # before softcap, ALiBi and mask
    cap = 1.0 if cap_grad is None else cap_grad
    # δs: the dot product, then each later step (scale, softcap, ALiBi, mask) rounds at |s|.
    ds = eps * (cap * (scale * np.sqrt(d) * norm_of_products(q, k) + 2 * s0) + 3 * s)
    dlse = (p * ds).sum(axis=-1)  # the forward's weights move by p·(δs − Σ p·δs)
    allow_out = (p * ds) @ np.abs(v) + (p * ds).sum(axis=-1, keepdims=True) * np.abs(out)
    # Backward: P from the re-rounded scores and the forward's lse, stored in lse_dtype.
    dp = p * (ds + (dlse + _eps(lse_dtype) * np.abs(lse))[..., None])
    dP = dout @ t(v)
    D = (dout * out).sum(axis=-1, keepdims=True)
    dD = (eps + _eps(dtype)) * np.sqrt(dv_cols) * np.linalg.norm(dout * out, axis=-1, keepdims=True) \
        + (np.abs(dout) * allow_out).sum(axis=-1, keepdims=True)  # out's compute, storage and error
    ddP = eps * np.sqrt(dv_cols) * norm_of_products(dout, v)
    dS = cap * (dp * np.abs(dP - D) + p * (ddP + dD))
    if cap_grad is not None:  # 1 − tanh² from a rounded tanh: absolute error of a few eps
        dS = dS + 4 * eps * p * np.abs(dP - D)

    def per_kv_head(g):
        return g.reshape(g.shape[:-3] + (hkv, -1) + g.shape[-2:]).sum(axis=-3)

    return {"out": allow_out, "lse": dlse, "dq": scale * dS @ np.abs(k),
            "dk": per_kv_head(scale * t(dS) @ np.abs(q)), "dv": per_kv_head(t(dp) @ np.abs(dout))}


def assert_matches_oracle(q, k, v, out, lse=None, **options):
    """Checks out (and lse) of a fastattn call against the float64 oracle; `options` are the
    attention keywords (causal, scale, mask, ...). An error beyond the tolerance is measured
    again net of the kernel's rounding_allowance (a float32 dot product summed in another order
    than the naive baseline's can be several times less lucky than it on one problem)."""
    want, want_lse = oracle(q, k, v, **options)
    naive, naive_lse = oracle(q, k, v, dtype=np.float32, **options)
    dtype = np.asarray(q).dtype
    if dtype.name in HALF_EPS:
        naive, naive_lse = naive.astype(dtype), naive_lse.astype(dtype)
    assert out.dtype == dtype and out.shape == want.shape
    assert not np.isnan(np.asarray(out, np.float64)).any(), "NaN in the output of finite inputs"
    allowances: dict = {}

    def beyond(name, got, want_, tol):
        """got's error, net of the rounding allowance where the raw error exceeds tol."""
        err = max_err(got, want_)
        if err <= tol:
            return err
        if not allowances:
            dout = np.zeros(np.shape(want), np.float64)
            lse_dtype = np.float64 if dtype == np.float64 else np.float32
            allowances.update(rounding_allowance(q, k, v, dout, lse_dtype, **options))
        diff = np.abs(np.asarray(got, np.float64) - want_)
        return float(np.max(diff - allowances[name].reshape(np.shape(want_)), initial=0.0))

    magnitude = float(np.max(np.abs(np.asarray(v, np.float64)), initial=0.0))
    tol = tolerance(max_err(naive, want), dtype, magnitude)
    err = beyond("out", out, want, tol)
    assert err <= tol, f"out: max error {err:.3g} > tolerance {tol:.3g}"
    if lse is not None:
        lse64 = np.asarray(lse, np.float64)
        assert lse.dtype == (np.float64 if dtype == np.float64 else np.float32)  # the compute dtype
        assert lse.shape == want_lse.shape
        np.testing.assert_array_equal(np.isneginf(lse64), np.isneginf(want_lse))
        lse_mag = float(np.max(np.abs(np.where(np.isinf(want_lse), 0, want_lse)), initial=0.0))
        finite = np.where(np.isinf(want_lse), 0, want_lse)
        tol = tolerance(max_err(naive_lse, want_lse), dtype, lse_mag)
        err = beyond("lse", np.where(np.isinf(want_lse), 0, lse64), finite, tol)
        assert err <= tol, f"lse: max error {err:.3g} > tolerance {tol:.3g}"
