"""The public functions: attention, attention_backward and attention_weights.

Each one validates and normalises its call through `_contract` (every check and its message
live there), picks a backend through `_backend`, and runs the C++ kernel or the NumPy
reference (`_reference`) on the normalised arrays.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any, Literal, Optional, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

from . import _contract, _reference
# Imported by name: a tiny call takes about 5 µs, and each module attribute lookup on its path counts.
from ._backend import binding_args, call_args, cpp_backward, cpp_forward, use_cpp
from ._contract import (DTYPE_CODES, FLOAT32, NO_CAUSAL, UPPER_LEFT, AttentionOptions, OptionsWithoutSinks,
                        check_num_threads, compute_dtype, with_option_keywords)

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11; only read by type checkers

Array = npt.NDArray[Any]


@overload
def attention(q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike, /, *, return_lse: Literal[False] = ...,
              lse_dtype: Any = ..., out: Optional[Array] = ..., backend: str = ..., num_threads: Optional[int] = ...,
              **options: Unpack[AttentionOptions]) -> Array: ...
@overload
def attention(q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike, /, *, return_lse: Literal[True],
              lse_dtype: Any = ..., out: Optional[Array] = ..., backend: str = ..., num_threads: Optional[int] = ...,
              **options: Unpack[AttentionOptions]) -> Tuple[Array, Array]: ...
@overload
def attention(q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike, /, *, return_lse: bool, lse_dtype: Any = ...,
              out: Optional[Array] = ..., backend: str = ..., num_threads: Optional[int] = ...,
              **options: Unpack[AttentionOptions]) -> Union[Array, Tuple[Array, Array]]: ...


@with_option_keywords
def attention(q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike, /, *, return_lse: bool = False,
              lse_dtype: Any = None, out: Optional[Array] = None, backend: str = "auto",
              num_threads: Optional[int] = None, **options: Any) -> Union[Array, Tuple[Array, Array]]:
    """Exact scaled dot-product attention, ``softmax(q·kᵀ·scale)·v``, without an Lq×Lk matrix.

    Shapes (PyTorch's layout)::

        q    (..., Hq,  Lq, D)      a 2-D (L, D) array is one head; 3-D is (H, L, D)
        k    (..., Hkv, Lk, D)      Hq must be a multiple of Hkv: query head h uses
        v    (..., Hkv, Lk, Dv)     key/value head h // (Hq // Hkv) (GQA/MQA, no copy)
        out  (..., Hq,  Lq, Dv)
        lse  (..., Hq,  Lq)         log Σ_j exp(score_ij), when return_lse=True

    The leading batch dimensions ``...`` of q, k and v must be equal. Lq may differ from Lk,
    Dv from D; any D >= 1 works.

    Causal masking compares query i with key j on one diagonal, ``j <= i + off``:
    ``causal=True`` or ``"upper_left"`` uses ``off = 0`` (PyTorch's ``is_causal``);
    ``"lower_right"`` uses ``off = Lk - Lq``, aligning the last query with the last key as
    KV-cache decoding needs. For Lq = 3, Lk = 5 (1 = may attend)::

        upper_left        lower_right
        1 0 0 0 0         1 1 1 0 0
        1 1 0 0 0         1 1 1 1 0
        1 1 1 0 0         1 1 1 1 1

    ``window``, ALiBi and ``kv_lengths``/``q_lengths`` use the same diagonal ``off`` (per
    sequence, ``kv_lengths[b] - q_lengths[b]`` under ``"lower_right"``). Without a causal mask
    the diagonal is upper-left unless ``align="lower_right"``: FlashAttention's and vLLM's
    convention for windows and ALiBi, which decoding against a cache needs (query i at key
    ``i + Lk - Lq``). Lq = 2, Lk = 5, ``window=(1, 1)``::

        default (upper_left)    align="lower_right"
        1 1 0 0 0               0 0 1 1 1
        1 1 1 0 0               0 0 0 1 1

    A score is formed in this order: ``s = scale·q·k``; ``softcap·tanh(s / softcap)``;
    ``- slope·|i + off - j|`` (ALiBi); ``+ mask`` (additive); then a False boolean mask,
    causal, the window and the lengths make it ``-inf``.

    A query row that sees no key (e.g. ``"lower_right"`` with Lq > Lk, a mask row that is all
    False or all ``-inf``, a padded query row) returns zeros, and its lse is ``-inf`` (the
    sink's logit with ``sinks``, except for padded rows).

    Parameters
    ----------
    q, k, v : arrays of one dtype (positional-only): float32, float64, float16 or bfloat16
        (``ml_dtypes.bfloat16``); the 16-bit types are widened block by block inside the kernel
        and computed in float32. Any strides: the kernel reads strided views directly; only an
        input whose last axis is not contiguous is copied once.
    causal : False, True, "upper_left" or "lower_right".
    align : None, "upper_left" or "lower_right": the diagonal ``off`` of the window, ALiBi and
        causal (above). None follows ``causal`` (lower-right only for ``causal="lower_right"``);
        ``causal=True, align="lower_right"`` is ``causal="lower_right"``, and an explicit causal
        string that disagrees with ``align`` is a ValueError.
    scale : multiplier of q·kᵀ; default ``1 / sqrt(D)``. Any finite real number.
    mask : boolean (True = may attend, PyTorch's convention) or floating (added to the
        scores) array broadcastable to ``(..., Hq, Lq, Lk)``. Size-1 axes are read with stride
        0, never expanded. A floating mask of another dtype than the computation (float64 for
        float64 inputs, else float32) is converted once at its own size.
    kv_lengths, q_lengths : integer arrays broadcastable to the batch shape ``...`` (a scalar
        for 2-D/3-D inputs): keys ``j >= kv_lengths[b]`` are invisible, query rows
        ``i >= q_lengths[b]`` return zeros (lse ``-inf``). Values in [0, Lk] and [0, Lq].
    window : ``(left, right)``: query i sees keys ``i + off - left <= j <= i + off + right``;
        ``None`` on either side means unbounded. Ints >= 0.
    alibi_slopes : real array of shape ``(Hq,)`` or broadcastable to ``(..., Hq)``: adds
        ``-slope·|i + off - j|`` to the scores.
    softcap : positive float: ``scores -> softcap·tanh(scores / softcap)`` (Gemma 2).
    sinks : attention sinks (gpt-oss; vLLM's ``s_aux``, ONNX Runtime's ``head_sink``): a real
        logit per query head, shape ``(Hq,)`` or broadcastable to ``(..., Hq)``, added to each
        row's softmax denominator with no value, ``out_i = Σ_j exp(s_ij)·v_j / (Σ_j exp(s_ij)
        + exp(sink))``, so a row's weights sum to less than 1. The lse includes it. Finite, or
        ``-inf`` for a head without a sink.
    precision : "highest" (default), "high" or "medium": how precisely the matrix products may
        be computed (torch's ``set_float32_matmul_precision`` names). "highest" is float32
        accuracy for every dtype. On matrix engines (``fastattn.show_config()["engines"]``),
        "medium" rounds the softmax weights (and the backward's dS) to bfloat16 once before
        their products, as torch's bfloat16 kernels do, for speed; "high" is float32 inputs on
        tile units at float32-like accuracy. A mode without a faster path on this CPU and dtype
        computes as "highest" (float64 always does); docs/precision.md has each mode's error.
    return_lse : also return the log-sum-exp of each row's scores, in the compute dtype (float64
        for float64 inputs, else float32: a 16-bit lse would cost the backward its precision).
    lse_dtype : None (the compute dtype, above) or float64: the lse ``m + log(l)`` without its
        rounding to float32, for ``attention_backward``. Rounded, it is off by up to half an ulp
        of the row's largest score (3.8e-6 at 100), a relative error of every weight the backward
        recomputes; float64 makes float32 gradients on peaked rows as precise as a float32
        softmax's (docs/how-it-works.md, "Backward"). Needs ``return_lse=True``.
    out : optional C-contiguous, writeable array of the output's shape, sharing no memory with
        q, k, v; written in place and returned. Its dtype is q's, or for float16/bfloat16 inputs
        float32: the output before its rounding to 16 bits (rounded, it gives the same bits), from
        which ``attention_backward`` forms gradients as precise as a float32 computation's.
    backend : "auto" (C++ when built, else NumPy with a one-time warning), "cpp" (raises
        RuntimeError when the extension is unavailable) or "numpy".
    num_threads : None for ``fastattn.set_num_threads()``'s value, else the OpenMP default,
        within the calling thread's OpenMP limit (``OMP_NUM_THREADS``, ``threadpoolctl``); or
        an int in [1, 1024] for this call only. Either is capped at the number of processors.
        The result does not depend on it. Ignored by "numpy".

    Returns
    -------
    out, or ``(out, lse)`` when ``return_lse`` is true.
    """
    cpp = use_cpp(backend)
    if cpp and out is None and lse_dtype is None and options.keys() <= _PLAIN_KEYS:
        result = _plain_forward(q, k, v, options.get("causal", False), options.get("scale"), return_lse, num_threads)
        if result is not None:
            return result
    _contract.check_bool(return_lse, "return_lse")
    wide = _contract.check_lse_dtype(lse_dtype, return_lse) is not None
    out, lse, lse_lo = _forward(q, k, v, options, out, cpp, num_threads, return_lse, residual=wide)
    if wide and lse is not None and lse.dtype == FLOAT32:  # hi + lo: exact in float64 (24 + 24 bits)
        lse = lse.astype(np.float64) + lse_lo
    return (out, lse) if return_lse else out


def forward_with_residual(q: Any, k: Any, v: Any, *, out: Optional[np.ndarray] = None, backend: str = "auto",
                          num_threads: Optional[int] = None, **options: Any) -> Tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
    """(out, lse, lse_lo) of attention(q, k, v, return_lse=True, **options): lse in the compute dtype and
    lse_lo the exact error of its rounding, for backward_with_residual (fastattn.torch, MultiHeadAttention;
    float64 inputs too, where no wider lse_dtype exists)."""
    return _forward(q, k, v, options, out, use_cpp(backend), num_threads, True, residual=True)


def _forward(q: Any, k: Any, v: Any, options: dict, out: Optional[np.ndarray], cpp: bool,
             num_threads: Optional[int], return_lse: bool, residual: bool) -> Tuple[Any, Any, Any]:
    """attention's general path: (out, lse or None, lse_lo or None); lse_lo (lse's rounding error,
    in the compute dtype) when `residual` and return_lse."""
    call = _contract.normalise(q, k, v, **options)
    threads = check_num_threads(num_threads)
    out = _contract.check_out(out, call, (q, k, v))
    lse, lse_lo = _run_forward(call, out, cpp, threads, return_lse, residual)
    return out, lse, lse_lo


def forward_prepared(q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray, options: _contract.Options,
                     backend: str = "auto", num_threads: Optional[int] = None) -> None:
    """attention(q, k, v) into `out`, for a caller that has made the call valid and normal itself, as
    _contract.normalise would: q, k, v 4-D (B, H, L, D) arrays of one storage dtype with a contiguous
    last axis, `out` a writeable (B, Hq, Lq, Dv) array of q's dtype with a contiguous last axis (the C++
    kernel writes through its strides: a view of a (B, Lq, Hq, Dv) array, as a model wants the
    output next, needs no copy), and `options` normalised for
    the batch shape (B,) (a mask view of shape (B, Hq, Lq, Lk), sinks (B·Hq,) float64, kv_lengths (B,)
    int64, ...). Nothing is checked here beyond what the binding checks: the no-grad calls of
    fastattn.torch and fastattn.transformers, which build these from tensors they have checked, skip
    normalise's 10-40 µs."""
    _contract.dtype_code(q.dtype)  # binding_args looks the code up: bfloat16's is registered on first sight
    call = _contract.Call(q, k, v, out.shape, (q.shape[0],), options)
    _run_forward(call, out, use_cpp(backend), check_num_threads(num_threads), False, False)


def _run_forward(call: _contract.Call, out: np.ndarray, cpp: bool, threads: int, return_lse: bool,
                 residual: bool) -> Tuple[Any, Any]:
    """The forward of a normalised call into out (its user-facing shape, C-contiguous) on one backend:
    (lse or None, lse_lo or None), as _forward returns them."""
    batch, hq, lq, _ = call.q.shape
    lk, dv = call.k.shape[2], call.v.shape[3]
    out4 = out.reshape(batch, hq, lq, dv)
    compute = compute_dtype(call.q.dtype)
    lse = np.empty(call.out_shape[:-1], dtype=compute) if return_lse else None
    lse_lo = np.zeros(call.out_shape[:-1], dtype=compute) if return_lse and residual else None
    lse3 = None if lse is None else lse.reshape(batch, hq, lq)
    lo3 = None if lse_lo is None else lse_lo.reshape(batch, hq, lq)

    if batch * hq * lq == 0 or dv == 0 and lse3 is None:
        pass  # no query rows, or nothing asked of them (Dv = 0 still has an lse)
    elif lk == 0:
        out4.fill(0)  # no key to see: every row is fully masked
        if lse3 is not None:
            lse3[...] = _reference.empty_rows_lse(call)
    elif cpp:
        cpp_forward(call.q, call.k, call.v, out4, lse3, call_args(call, threads), lo3)
    else:
        _reference.forward(call.q, call.k, call.v, out4, lse3, call.options, lo3)
    return lse, lse_lo


@overload
def attention_backward(dout: npt.ArrayLike, q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike,
                       out: npt.ArrayLike, lse: npt.ArrayLike, /, *, sinks: None = ..., backend: str = ...,
                       num_threads: Optional[int] = ...,
                       **options: Unpack[OptionsWithoutSinks]) -> Tuple[Array, Array, Array]: ...
@overload
def attention_backward(dout: npt.ArrayLike, q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike,
                       out: npt.ArrayLike, lse: npt.ArrayLike, /, *, sinks: npt.ArrayLike, backend: str = ...,
                       num_threads: Optional[int] = ...,
                       **options: Unpack[OptionsWithoutSinks]) -> Tuple[Array, Array, Array, Array]: ...


@with_option_keywords
def attention_backward(dout: npt.ArrayLike, q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike,
                       out: npt.ArrayLike, lse: npt.ArrayLike, /, *, backend: str = "auto",
                       num_threads: Optional[int] = None, **options: Any
                       ) -> Union[Tuple[Array, Array, Array], Tuple[Array, Array, Array, Array]]:
    """Gradients ``(dq, dk, dv)`` of ``attention`` for the upstream gradient ``dout``.

    ``out, lse = attention(q, k, v, return_lse=True, **options)`` must come from the forward
    call with the same q, k, v and options, which are passed again here. The kernel recomputes
    the attention weights block by block from ``lse`` (FlashAttention-2), so no Lq×Lk matrix
    is stored by either pass::

        P = exp(s − lse)        D_i = Σ_c dout_ic·out_ic       dS = P ∘ (dout·vᵀ − D)
        dv = Pᵀ·dout            dq = scale·dS·k                dk = scale·dSᵀ·q

    (with ``dS ∘ (1 − tanh²(s₀ / softcap))`` under a softcap). GQA: dk and dv are summed over
    the query heads of each group. Gradients are with respect to q, k, v (and the sinks); masks,
    lengths and ALiBi slopes are constants. A query row that sees no key gets dq = 0 and
    contributes nothing to dk, dv. With sinks, lse includes the sink's term, so the formulas
    above hold unchanged, and ``d sink = −Σ_i exp(sink − lse_i)·D_i`` over the head's rows.

    Parameters
    ----------
    dout : array of out's shape and q's dtype: the gradient of the loss with respect to out.
    q, k, v : as for ``attention``.
    out : the forward output, shape (..., Hq, Lq, Dv), q's dtype; for float16/bfloat16 inputs
        preferably the float32 one (``attention(..., out=<float32 array>)``): ``D`` is then
        formed from the output before its rounding, and dq, dk are as precise as a float32
        computation's rounded to 16 bits (from the rounded output they can be 2-7x less
        precise, on rows whose softmax is nearly one-hot).
    lse : the forward's log-sum-exp, shape (..., Hq, Lq): float32 or float64 (as ``attention``
        returns it), or q's dtype. A float64 one (``lse_dtype=np.float64``) is used as it is:
        float32 gradients on peaked rows are then as precise as a float32 softmax's. For
        float16/bfloat16 inputs an lse rounded to 16 bits costs the gradients about that
        relative precision (2-3x the error of the float32 one).
    causal, scale, mask, kv_lengths, q_lengths, window, alibi_slopes, softcap, sinks, backend,
    num_threads : as for ``attention``. The C++ kernel splits the work so that no two threads
        write the same gradient rows: no atomics, and results are bitwise the same for every
        thread count.

    Returns
    -------
    (dq, dk, dv), new arrays of the shapes of q, k, v in q's dtype; with ``sinks``,
    ``(dq, dk, dv, dsinks)``, dsinks of the shape ``sinks`` was given in (summed over the axes it
    was broadcast along) in the compute dtype (float64 for float64 inputs, else float32).
    """
    return _backward(dout, q, k, v, out, lse, None, options, use_cpp(backend), num_threads)


def backward_with_residual(dout: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, lse_lo: Any, *,
                           backend: str = "auto", num_threads: Optional[int] = None, **options: Any) -> tuple:
    """attention_backward with the weights recomputed from lse + lse_lo (forward_with_residual's)."""
    return _backward(dout, q, k, v, out, lse, lse_lo, options, use_cpp(backend), num_threads)


def _backward(dout: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, lse_lo: Any, options: dict, cpp: bool,
              num_threads: Optional[int]) -> tuple:
    """attention_backward's body; lse_lo None, or lse's rounding error in the compute dtype."""
    # The gradients take their shapes from the arrays as read (np.shape of a DLPack object is ()).
    q, k, v = _contract.asarray(q, "q"), _contract.asarray(k, "k"), _contract.asarray(v, "v")
    call = _contract.normalise(q, k, v, **options)
    threads = check_num_threads(num_threads)
    batch, hq, lq, d = call.q.shape
    lk, dv_cols = call.k.shape[2], call.v.shape[3]
    dtype = call.q.dtype
    dout4 = _contract.check_same_as_out(dout, "dout", call).reshape(batch, hq, lq, dv_cols)
    out4 = _contract.check_same_as_out(out, "out", call).reshape(batch, hq, lq, dv_cols)
    lse3, lo3 = (None if x is None else x.reshape(batch, hq, lq) for x in _contract.check_lse(lse, lse_lo, call))

    grads = tuple(np.empty(np.shape(x), dtype) for x in (q, k, v))
    dq4, dk4, dv4 = (g.reshape(x.shape) for g, x in zip(grads, (call.q, call.k, call.v)))
    if batch * hq * lq == 0 or lk == 0 or dv_cols == 0:
        for g in grads:  # no query row sees a key, or no value column: every weight is constant
            g.fill(0)
    elif cpp:
        cpp_backward(dout4, out4, lse3, dq4, dk4, dv4, call.q, call.k, call.v, call_args(call, threads), lo3)
    else:
        _reference.backward(dout4, call.q, call.k, call.v, out4, lse3, dq4, dk4, dv4, call.options, lo3)
    if call.options.sinks is None:
        return grads
    d_sinks = _reference.sink_grads(call.options.sinks, dout4, out4, lse3)  # (B, Hq)
    d_sinks = d_sinks.reshape(call.batch_shape + (hq,))
    return grads + (_contract.sum_to_shape(d_sinks, np.shape(_contract.asarray(options["sinks"], "sinks"))),)


@with_option_keywords
def attention_weights(q: npt.ArrayLike, k: npt.ArrayLike, /, **options: Unpack[AttentionOptions]) -> npt.NDArray[Any]:
    """The attention weights ``P = softmax(scores)`` of every head, materialised.

    ``scores`` are formed and masked exactly as ``fastattn.attention`` forms them from ``q`` and
    ``k`` with the same options (scale, softcap, ALiBi, mask, causal, window, lengths), so
    ``attention(q, k, v, **options)`` equals ``attention_weights(q, k, **options) @ v`` (per
    head, K/V heads shared under GQA). For pictures and teaching: this builds the Lq×Lk matrix
    that ``attention`` never does, O(Lq·Lk) memory per head, so keep the inputs small.

    Shapes: q ``(..., Hq, Lq, D)`` (2-D ``(Lq, D)``: one head), k ``(..., Hkv, Lk, D)``; the
    result is ``(..., Hq, Lq, Lk)`` in the compute dtype (float64 for float64 inputs, else
    float32). Each row sums to 1 (less than 1 with ``sinks``: the sink takes the rest), or is all
    zeros for a query that sees no key (as its output is). Errors are those of ``attention``.
    """
    call = _contract.normalise(q, k, k, **options)
    batch, hq, lq, _ = call.q.shape
    lk = call.k.shape[2]
    shape = call.out_shape[:-1] + (lk,)
    compute = compute_dtype(call.q.dtype)
    if batch * hq * lq * lk == 0:
        return np.zeros(shape, compute)
    ctx = _reference._Scores(call.q, call.k, call.options)
    scores, _ = ctx.chunk(0, lq)
    row_max = scores.max(axis=-1, keepdims=True)
    sink = ctx.sink_logits(0, lq)
    if sink is not None:
        row_max = np.maximum(row_max, sink)
    # Subtract the row max (every exponent <= 0: no overflow); a row that sees nothing has max
    # -inf and all scores -inf: shifted by 0 instead, its weights are exp(-inf) = 0.
    with np.errstate(invalid="ignore"):  # NaN scores propagate to their row, as in attention
        shift = np.where(row_max == -np.inf, 0, row_max)
        p = np.exp(scores - shift)
        row_sum = p.sum(axis=-1, keepdims=True)
        if sink is not None:
            row_sum = row_sum + np.exp(sink - shift)
        weights = np.where(row_sum > 0, p / np.where(row_sum > 0, row_sum, 1), p)
    return weights.reshape(shape).astype(compute, copy=False)  # ALiBi promotes


_PLAIN_KEYS = frozenset(("causal", "scale"))


def _plain_forward(q, k, v, causal, scale, return_lse, num_threads):
    """The most common call, with a few microseconds less overhead: non-empty 4-D arrays of one storage
    dtype (float32, float64, float16, or bfloat16 once seen) of valid shapes whose last axis is contiguous
    (any other strides are read in place, as normalise leaves them: a torch tensor's transposed view), a
    bool causal, a float scale or None, and no other option. It returns attention's result, or None for
    anything else, valid or not, which then takes the general path: _contract.normalise stays the one
    place that explains errors, and this only accepts a subset of what it accepts, computing the same
    thing (tests/test_api_fast_path.py)."""
    if not (type(q) is np.ndarray and type(k) is np.ndarray and type(v) is np.ndarray):
        return None
    dtype = q.dtype
    if dtype not in DTYPE_CODES or k.dtype != dtype or v.dtype != dtype or not (q.ndim == k.ndim == v.ndim == 4):
        return None
    item = dtype.itemsize
    for x in (q, k, v):
        if not x.flags.c_contiguous and (x.strides[3] != item and x.shape[3] > 1 or any(s % item for s in x.strides)):
            return None
    (batch, hq, lq, d), (kb, hkv, lk, dk), (vb, vh, vl, dv) = q.shape, k.shape, v.shape
    if not (batch == kb == vb and hkv == vh >= 1 and hq % hkv == 0 and lk == vl >= 1 and d == dk >= 1
            and batch * hq * lq * dv > 0):
        return None
    rows = batch * hq * lq  # views (stride 0, as_strided) can describe what normalise refuses to size
    if rows * dv * item > sys.maxsize or rows * lk * max(d, dv) > sys.maxsize:
        return None
    if type(causal) is not bool or type(return_lse) is not bool:
        return None
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    elif type(scale) is not float or not math.isfinite(scale):
        return None
    return plain_kernel(q, k, v, causal, scale, return_lse, check_num_threads(num_threads))


def plain_kernel(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool, scale: float, return_lse: bool,
                 threads: int, out: Optional[np.ndarray] = None) -> Any:
    """The C++ kernel on a plain call _plain_forward has accepted (or fastattn.torch's _plain_sdpa, which
    checks the same of its tensors): out (new, or the given (B, Hq, Lq, Dv) view of q's dtype with a
    contiguous last axis, written through its strides) and lse."""
    dtype = q.dtype
    if out is None:
        out = np.empty(q.shape[:3] + v.shape[3:], dtype)
    lse = np.empty(q.shape[:3], compute_dtype(dtype)) if return_lse else None
    cpp_forward(q, k, v, out, lse, binding_args(scale, UPPER_LEFT if causal else NO_CAUSAL, threads))
    return (out, lse) if return_lse else out
