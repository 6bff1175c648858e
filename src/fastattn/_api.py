"""Public functions (attention, attention_backward, attention_weights): validation, shape and dtype
rules, backend choice.

Everything a call can get wrong is checked here, before any C++ runs, and every option is
normalised once: the backends receive 4-D arrays (batch, heads, rows, features) whose last
axis is contiguous, a float scale and an integer causal mode.
"""

from __future__ import annotations

import math
import numbers
import operator
import sys
import warnings
from typing import Any, Literal, NamedTuple, Optional, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

from . import _backend, _reference
from ._backend import _check_num_threads

# Storage dtypes and the codes the C++ kernel knows them by, keyed by dtype object (dtype.name is
# slow to compute on every call). bfloat16 is ml_dtypes' (optional): recognised by name the first
# time it is seen, so that ml_dtypes is never imported here.
_DTYPE_CODES = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.float16): 2}
_BFLOAT16_CODE = 3
_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_DTYPE_NAMES = "float32, float64, float16 or bfloat16"


def _dtype_code(dtype: np.dtype) -> Optional[int]:
    """The kernel's code for a supported, native-order storage dtype, else None."""
    code = _DTYPE_CODES.get(dtype)
    if code is None and dtype.name == "bfloat16" and dtype.itemsize == 2 and dtype.isnative:
        code = _DTYPE_CODES[dtype] = _BFLOAT16_CODE
    return code
_CAUSAL_MODES = {"upper_left": _reference.UPPER_LEFT, "lower_right": _reference.LOWER_RIGHT}
_BACKENDS = ("auto", "cpp", "numpy")
_warned_fallback = False
_TooHardError = getattr(np, "exceptions", np).TooHardError  # moved in NumPy 2

Causal = Union[bool, str]


class _Call(NamedTuple):
    """One validated call, in the form both backends take."""

    q: np.ndarray  # (B, Hq, Lq, D)
    k: np.ndarray  # (B, Hkv, Lk, D)
    v: np.ndarray  # (B, Hkv, Lk, Dv)
    out_shape: Tuple[int, ...]  # the user-facing shape (..., Hq, Lq, Dv)
    batch_shape: Tuple[int, ...]
    options: _reference.Options


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """float64 for float64, else float32: what the kernels compute in, and lse's dtype."""
    return _F64 if dtype == _F64 else _F32


def _stand_in(shape: Tuple[int, ...], dtype) -> np.ndarray:
    """Zeros of `shape` that own only their last axis (stride 0 elsewhere): what fastattn.jax and
    fastattn.dask pass to _normalise to validate a call whose data is not at hand, without
    memory, and with the contiguous last axis that makes _normalise copy nothing."""
    return np.broadcast_to(np.zeros(tuple(shape)[-1:], dtype), tuple(shape))


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


Array = npt.NDArray[Any]
Window = Optional[Tuple[Optional[int], Optional[int]]]


@overload
def attention(q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike, /, *, causal: Causal = ...,
              scale: Optional[float] = ..., mask: Optional[npt.ArrayLike] = ..., kv_lengths: Optional[npt.ArrayLike] = ...,
              q_lengths: Optional[npt.ArrayLike] = ..., window: Window = ..., alibi_slopes: Optional[npt.ArrayLike] = ...,
              softcap: Optional[float] = ..., return_lse: Literal[False] = ..., out: Optional[Array] = ...,
              backend: str = ..., num_threads: Optional[int] = ...) -> Array: ...
@overload
def attention(q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike, /, *, causal: Causal = ...,
              scale: Optional[float] = ..., mask: Optional[npt.ArrayLike] = ..., kv_lengths: Optional[npt.ArrayLike] = ...,
              q_lengths: Optional[npt.ArrayLike] = ..., window: Window = ..., alibi_slopes: Optional[npt.ArrayLike] = ...,
              softcap: Optional[float] = ..., return_lse: Literal[True], out: Optional[Array] = ...,
              backend: str = ..., num_threads: Optional[int] = ...) -> Tuple[Array, Array]: ...
@overload
def attention(q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike, /, *, causal: Causal = ...,
              scale: Optional[float] = ..., mask: Optional[npt.ArrayLike] = ..., kv_lengths: Optional[npt.ArrayLike] = ...,
              q_lengths: Optional[npt.ArrayLike] = ..., window: Window = ..., alibi_slopes: Optional[npt.ArrayLike] = ...,
              softcap: Optional[float] = ..., return_lse: bool, out: Optional[Array] = ...,
              backend: str = ..., num_threads: Optional[int] = ...) -> Union[Array, Tuple[Array, Array]]: ...


def attention(q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike, /, *, causal: Causal = False,
              scale: Optional[float] = None, mask: Optional[npt.ArrayLike] = None,
              kv_lengths: Optional[npt.ArrayLike] = None, q_lengths: Optional[npt.ArrayLike] = None,
              window: Window = None, alibi_slopes: Optional[npt.ArrayLike] = None, softcap: Optional[float] = None,
              return_lse: bool = False, out: Optional[Array] = None, backend: str = "auto",
              num_threads: Optional[int] = None) -> Union[Array, Tuple[Array, Array]]:
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
    sequence, ``kv_lengths[b] - q_lengths[b]`` under ``"lower_right"``).

    A score is formed in this order: ``s = scale·q·k``; ``softcap·tanh(s / softcap)``;
    ``- slope·|i + off - j|`` (ALiBi); ``+ mask`` (additive); then a False boolean mask,
    causal, the window and the lengths make it ``-inf``.

    A query row that sees no key (e.g. ``"lower_right"`` with Lq > Lk, a mask row that is all
    False or all ``-inf``, a padded query row) returns zeros, and its lse is ``-inf``.

    Parameters
    ----------
    q, k, v : arrays of one dtype (positional-only): float32, float64, float16 or bfloat16
        (``ml_dtypes.bfloat16``); the 16-bit types are widened block by block inside the kernel
        and computed in float32. Any strides: the kernel reads strided views directly; only an
        input whose last axis is not contiguous is copied once.
    causal : False, True, "upper_left" or "lower_right".
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
    return_lse : also return the log-sum-exp of each row's scores, in the compute dtype (float64
        for float64 inputs, else float32: a 16-bit lse would cost the backward its precision).
    out : optional C-contiguous, writeable array of the output's shape and dtype, sharing no
        memory with q, k, v; written in place and returned.
    backend : "auto" (C++ when built, else NumPy with a one-time warning), "cpp" (raises
        RuntimeError when the extension is unavailable) or "numpy".
    num_threads : None for the OpenMP default (honours ``OMP_NUM_THREADS``), or an int in
        [1, 1024] for this call only; either is capped at the number of processors. The result
        does not depend on it. Ignored by "numpy".

    Returns
    -------
    out, or ``(out, lse)`` when ``return_lse`` is true.
    """
    use_cpp = _choose_backend(backend)
    if use_cpp and mask is None and kv_lengths is None and q_lengths is None and window is None \
            and alibi_slopes is None and softcap is None and out is None:
        result = _plain_forward(q, k, v, causal, scale, return_lse, num_threads)
        if result is not None:
            return result
    call = _normalise(q, k, v, causal, scale, mask, kv_lengths, q_lengths, window, alibi_slopes, softcap)
    threads = _check_num_threads(num_threads)
    if not isinstance(return_lse, (bool, np.bool_)):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    out = _check_out(out, call, (q, k, v))

    batch, hq, lq, _ = call.q.shape
    lk, dv = call.k.shape[2], call.v.shape[3]
    out4 = out.reshape(batch, hq, lq, dv)
    lse = np.empty(call.out_shape[:-1], dtype=_compute_dtype(out.dtype)) if return_lse else None
    lse3 = None if lse is None else lse.reshape(batch, hq, lq)

    if batch * hq * lq == 0 or dv == 0 and lse3 is None:
        pass  # no query rows, or nothing asked of them (Dv = 0 still has an lse)
    elif lk == 0:
        out4.fill(0)  # no key to see: every row is fully masked
        if lse3 is not None:
            lse3.fill(-np.inf)
    elif use_cpp:
        _forward_cpp(call, out4, lse3, threads)
    else:
        _reference.forward(call.q, call.k, call.v, out4, lse3, call.options)
    return (out, lse) if return_lse else out


def attention_backward(dout: npt.ArrayLike, q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike,
                       out: npt.ArrayLike, lse: npt.ArrayLike, /, *, causal: Causal = False,
                       scale: Optional[float] = None, mask: Optional[npt.ArrayLike] = None,
                       kv_lengths: Optional[npt.ArrayLike] = None, q_lengths: Optional[npt.ArrayLike] = None,
                       window: Window = None, alibi_slopes: Optional[npt.ArrayLike] = None,
                       softcap: Optional[float] = None, backend: str = "auto",
                       num_threads: Optional[int] = None) -> Tuple[Array, Array, Array]:
    """Gradients ``(dq, dk, dv)`` of ``attention`` for the upstream gradient ``dout``.

    ``out, lse = attention(q, k, v, return_lse=True, **options)`` must come from the forward
    call with the same q, k, v and options, which are passed again here. The kernel recomputes
    the attention weights block by block from ``lse`` (FlashAttention-2), so no Lq×Lk matrix
    is stored by either pass::

        P = exp(s − lse)        D_i = Σ_c dout_ic·out_ic       dS = P ∘ (dout·vᵀ − D)
        dv = Pᵀ·dout            dq = scale·dS·k                dk = scale·dSᵀ·q

    (with ``dS ∘ (1 − tanh²(s₀ / softcap))`` under a softcap). GQA: dk and dv are summed over
    the query heads of each group. Gradients are with respect to q, k and v only; masks,
    lengths and ALiBi slopes are constants. A query row that sees no key gets dq = 0 and
    contributes nothing to dk, dv.

    Parameters
    ----------
    dout : array of out's shape and q's dtype: the gradient of the loss with respect to out.
    q, k, v : as for ``attention``.
    out : the forward output, shape (..., Hq, Lq, Dv), q's dtype.
    lse : the forward's log-sum-exp, shape (..., Hq, Lq): float32 or float64 (as ``attention``
        returns it), or q's dtype. For float16/bfloat16 inputs an lse rounded to 16 bits costs
        the gradients about that relative precision (2-3x the error of the float32 one).
    causal, scale, mask, kv_lengths, q_lengths, window, alibi_slopes, softcap, backend,
    num_threads : as for ``attention``. The C++ kernel splits the work so that no two threads
        write the same gradient rows: no atomics, and results are bitwise the same for every
        thread count.

    Returns
    -------
    (dq, dk, dv), new arrays of the shapes of q, k, v in q's dtype.
    """
    use_cpp = _choose_backend(backend)
    q, k, v = _asarray(q, "q"), _asarray(k, "k"), _asarray(v, "v")  # the gradients take their shapes
    call = _normalise(q, k, v, causal, scale, mask, kv_lengths, q_lengths, window, alibi_slopes, softcap)
    threads = _check_num_threads(num_threads)
    batch, hq, lq, d = call.q.shape
    lk, dv_cols = call.k.shape[2], call.v.shape[3]
    dtype = call.q.dtype
    compute = _compute_dtype(dtype)
    dout4 = _check_same_as_out(dout, "dout", call).reshape(batch, hq, lq, dv_cols)
    out4 = _check_same_as_out(out, "out", call).reshape(batch, hq, lq, dv_cols)
    lse3 = _check_lse(lse, call.out_shape[:-1], dtype, compute).reshape(batch, hq, lq)

    grads = tuple(np.empty(np.shape(x), dtype) for x in (q, k, v))
    dq4, dk4, dv4 = (g.reshape(x.shape) for g, x in zip(grads, (call.q, call.k, call.v)))
    if batch * hq * lq == 0 or lk == 0 or dv_cols == 0:
        for g in grads:  # no query row sees a key, or no value column: every weight is constant
            g.fill(0)
    elif use_cpp:
        _backward_cpp(call, dout4, out4, lse3, dq4, dk4, dv4, threads)
    else:
        _reference.backward(dout4, call.q, call.k, call.v, out4, lse3, dq4, dk4, dv4, call.options)
    return grads


def attention_weights(q: npt.ArrayLike, k: npt.ArrayLike, /, *, causal: Causal = False,
                      scale: Optional[float] = None, mask: Optional[npt.ArrayLike] = None,
                      kv_lengths: Optional[npt.ArrayLike] = None, q_lengths: Optional[npt.ArrayLike] = None,
                      window: Window = None, alibi_slopes: Optional[npt.ArrayLike] = None,
                      softcap: Optional[float] = None) -> Array:
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
    call = _normalise(q, k, k, causal, scale, mask, kv_lengths, q_lengths, window, alibi_slopes, softcap)
    batch, hq, lq, _ = call.q.shape
    lk = call.k.shape[2]
    shape = call.out_shape[:-1] + (lk,)
    if batch * hq * lq * lk == 0:
        return np.zeros(shape, _compute_dtype(call.q.dtype))
    scores, _ = _reference._Scores(call.q, call.k, call.options).chunk(0, lq)
    row_max = scores.max(axis=-1, keepdims=True)
    # Subtract the row max (every exponent <= 0: no overflow); a row that sees nothing has max
    # -inf and all scores -inf: shifted by 0 instead, its weights are exp(-inf) = 0.
    with np.errstate(invalid="ignore"):  # NaN scores propagate to their row, as in attention
        p = np.exp(scores - np.where(row_max == -np.inf, 0, row_max))
        row_sum = p.sum(axis=-1, keepdims=True)
        weights = np.where(row_sum > 0, p / np.where(row_sum > 0, row_sum, 1), p)
    return weights.reshape(shape).astype(_compute_dtype(call.q.dtype), copy=False)  # ALiBi promotes


def _check_same_as_out(x, name: str, call: _Call) -> np.ndarray:
    """dout or out: an array of the forward output's shape and q's dtype, C-contiguous."""
    x = _as_float_array(x, name)
    if x.dtype != call.q.dtype:
        raise TypeError(f"{name}.dtype (={x.dtype}) must equal q.dtype (={call.q.dtype})")
    if x.shape != call.out_shape:
        raise ValueError(f"{name}.shape (={x.shape}) must be the output's shape {call.out_shape}")
    return np.ascontiguousarray(x)


def _check_lse(lse, shape, dtype: np.dtype, compute: np.dtype) -> np.ndarray:
    """The forward's lse, C-contiguous in the compute dtype."""
    a = _as_float_array(lse, "lse")
    if a.dtype not in (dtype, _F32, _F64):
        raise TypeError(f"lse.dtype (={a.dtype}) must be q.dtype (={dtype}), float32 or float64")
    if a.shape != tuple(shape):
        raise ValueError(f"lse.shape (={a.shape}) must be {tuple(shape)}, the output's shape without Dv")
    return np.ascontiguousarray(a, dtype=compute)


def _backward_cpp(call: _Call, dout4, out4, lse3, dq4, dk4, dv4, threads: int) -> None:
    _backend._core.backward(dout4, out4, lse3, dq4, dk4, dv4, call.q, call.k, call.v,
                            *_option_args(call, threads))


def _forward_cpp(call: _Call, out4: np.ndarray, lse3: Optional[np.ndarray], threads: int) -> None:
    _backend._core.forward(call.q, call.k, call.v, out4, lse3, *_option_args(call, threads))


def _option_args(call: _Call, threads: int) -> tuple:
    """The binding's arguments from `dtype` to `softcap`, positional, in the order of its signature
    (src/cpp/bindings/module.cpp): pybind11 matching 19 keywords by name costs about 2 µs per
    call, a third of a tiny call. (_NO_OPTIONS below is the tail for a call without options.)"""
    opts = call.options
    mask_kind, mask_strides, mask_offsets = 0, (0, 0, 0), None
    if opts.mask is not None:
        # The mask view is batch_shape + (Hq, Lq, Lk) with stride-0 broadcast axes. Its batch
        # axes may not merge into one stride, so the kernel gets one offset per batch index.
        mask = opts.mask
        mask_kind = 1 if mask.dtype == np.bool_ else 2
        strides = [s // mask.itemsize for s in mask.strides]
        nb = len(call.batch_shape)
        mask_strides = tuple(strides[nb:])
        mask_offsets = np.zeros(max(1, math.prod(call.batch_shape)), dtype=np.int64)
        if nb:
            index = np.indices(call.batch_shape, dtype=np.int64).reshape(nb, -1)
            mask_offsets = np.ascontiguousarray((index * np.array(strides[:nb], np.int64)[:, None]).sum(0))
    return (_dtype_code(call.q.dtype), opts.scale, opts.causal, threads,              # dtype .. num_threads
            opts.mask, mask_kind, mask_strides, mask_offsets,                          # mask view
            opts.q_lengths, opts.kv_lengths, opts.window[0], opts.window[1],           # positional rules
            opts.alibi_slopes, opts.softcap)


# The arguments of _core.forward from `mask` to `softcap` for a call without those options.
_NO_OPTIONS = (None, 0, (0, 0, 0), None, None, None, -1, -1, None, 0.0)


def _check_backend(backend) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend (={backend!r}) must be one of {', '.join(map(repr, _BACKENDS))}")
    return backend


def _choose_backend(backend: str) -> bool:
    """True for the C++ backend."""
    global _warned_fallback
    if _check_backend(backend) == "numpy":
        return False
    if _backend.cpp_available():
        return True
    if backend == "cpp":
        raise RuntimeError(f"backend='cpp' needs fastattn's C++ extension, which failed to import: "
                           f"{_backend.IMPORT_ERROR}")
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(f"fastattn's C++ extension is unavailable ({_backend.IMPORT_ERROR}); "
                      "using the NumPy backend", RuntimeWarning, stacklevel=3)
    return False


_DLPACK_CPU = 1  # DLPack's kDLCPU


def _asarray(x, name: str) -> np.ndarray:
    """x as an array, or a TypeError naming the argument (e.g. for a ragged nested list).

    An object with ``__dlpack__`` (a torch tensor, a JAX array, CuPy, ...) is read through DLPack:
    a view of its memory, no copy, when it lives on the CPU and NumPy knows its dtype (bfloat16
    is not a DLPack dtype NumPy reads: such an array takes the array_like path). Anything else
    goes through ``np.asarray``."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        device = x.__dlpack_device__()
        if int(device[0]) != _DLPACK_CPU:
            raise ValueError(f"{name} is on a DLPack device {tuple(int(i) for i in device)}, not the CPU "
                             f"(device type {_DLPACK_CPU}): fastattn computes on the CPU; move it there first")
        try:
            return np.from_dlpack(x)
        except BufferError as exc:  # e.g. a torch tensor that requires grad
            raise TypeError(f"{name} cannot be shared through DLPack: {exc}") from None
        except (TypeError, RuntimeError):
            pass  # a dtype NumPy's DLPack import lacks: np.asarray may still convert it
    try:
        return np.asarray(x)
    except Exception as exc:
        hint = " (for torch tensors of any dtype, use fastattn.torch)" if type(x).__module__ == "torch" else ""
        raise TypeError(f"{name} must be an array, got {type(x).__name__}: {exc}{hint}") from None


def _exact_numbers(x, kind=numbers.Integral) -> Optional[np.ndarray]:
    """An object array of x's Python numbers when x holds only numbers of `kind` (NumPy stores
    ints beyond int64 as object or float64 arrays); else None."""
    if isinstance(x, np.ndarray):
        return None
    exact = np.asarray(x, dtype=object)
    ok = all(isinstance(e, kind) and not isinstance(e, (bool, np.bool_)) for e in exact.flat)
    return exact if ok and exact.size else None


def _shown(x) -> str:
    """x for an error message; an int too long to print in full is described instead."""
    if isinstance(x, int) and abs(x) > 10**30:
        return f"an int of {x.bit_length()} bits"
    return str(x)


def _index_text(a: np.ndarray, where) -> str:
    return f"[{', '.join(str(int(i)) for i in where)}]" if a.ndim else ""


def _as_float_array(x, name: str) -> np.ndarray:
    x = _asarray(x, name)
    if x.dtype == object and x.ndim == 0:  # None, or some other non-array object
        raise TypeError(f"{name} must be an array of {_DTYPE_NAMES}, got {type(x.item()).__name__}")
    if _dtype_code(x.dtype) is None:
        hint = ""
        if _dtype_code(x.dtype.newbyteorder("=")) is not None:
            hint = f"; convert with {name}.astype({name}.dtype.newbyteorder('='))"
        raise TypeError(f"{name}.dtype (={x.dtype.str if hint else x.dtype}) must be {_DTYPE_NAMES}{hint}")
    return x


def _plain_forward(q, k, v, causal, scale, return_lse, num_threads):
    """The most common call, with a few microseconds less overhead: C-contiguous, non-empty 4-D
    float32/float64 arrays of valid shapes, a bool causal, a float scale or None, and no other
    option. It returns attention's result, or None for anything else, valid or not, which then
    takes the general path: _normalise stays the one place that explains errors, and this only
    accepts a subset of what it accepts, computing the same thing (tests/test_api_fast_path.py)."""
    if not (type(q) is np.ndarray and type(k) is np.ndarray and type(v) is np.ndarray):
        return None
    dtype = q.dtype
    if not (dtype == _F32 or dtype == _F64) or k.dtype != dtype or v.dtype != dtype:
        return None
    if not (q.ndim == k.ndim == v.ndim == 4 and q.flags.c_contiguous and k.flags.c_contiguous
            and v.flags.c_contiguous):
        return None
    (batch, hq, lq, d), (kb, hkv, lk, dk), (vb, vh, vl, dv) = q.shape, k.shape, v.shape
    if not (batch == kb == vb and hkv == vh >= 1 and hq % hkv == 0 and lk == vl >= 1 and d == dk >= 1
            and batch * hq * lq * dv > 0):
        return None
    if type(causal) is not bool or type(return_lse) is not bool:
        return None
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    elif type(scale) is not float or not math.isfinite(scale):
        return None
    threads = _check_num_threads(num_threads)
    out = np.empty((batch, hq, lq, dv), dtype)
    lse = np.empty((batch, hq, lq), dtype) if return_lse else None
    _backend._core.forward(q, k, v, out, lse, _DTYPE_CODES[dtype], scale,
                           _reference.UPPER_LEFT if causal else _reference.NO_CAUSAL, threads, *_NO_OPTIONS)
    return (out, lse) if return_lse else out


def _normalise(q, k, v, causal, scale, mask, kv_lengths, q_lengths, window, alibi_slopes, softcap) -> _Call:
    q = _as_float_array(q, "q")
    k = _as_float_array(k, "k")
    v = _as_float_array(v, "v")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name}.dtype (={x.dtype}) must equal q.dtype (={q.dtype})")
    if q.ndim < 2:
        raise ValueError(f"q.ndim (={q.ndim}) must be >= 2: q has shape (..., Hq, Lq, D) or (Lq, D)")
    for name, x in (("k", k), ("v", v)):
        if x.ndim != q.ndim:
            raise ValueError(f"{name}.ndim (={x.ndim}) must equal q.ndim (={q.ndim})")
    if q.ndim > 2:
        for name, x in (("k", k), ("v", v)):
            if x.shape[:-3] != q.shape[:-3]:
                raise ValueError(f"{name}.shape[:-3] (={x.shape[:-3]}) must equal q.shape[:-3] "
                                 f"(={q.shape[:-3]}): the batch dimensions of q, k and v are equal")
        if v.shape[-3] != k.shape[-3]:
            raise ValueError(f"v.shape[-3] (={v.shape[-3]}) must equal k.shape[-3] (={k.shape[-3]})")
        if k.shape[-3] == 0 and q.shape[-3] != 0:
            raise ValueError(f"k.shape[-3] (=0) must be >= 1 when q has heads (q.shape[-3] = {q.shape[-3]})")
        if k.shape[-3] and q.shape[-3] % k.shape[-3]:
            raise ValueError(f"q.shape[-3] (={q.shape[-3]}) must be a multiple of k.shape[-3] "
                             f"(={k.shape[-3]}): each key/value head serves Hq // Hkv query heads")
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"v.shape[-2] (={v.shape[-2]}) must equal k.shape[-2] (={k.shape[-2]})")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k.shape[-1] (={k.shape[-1]}) must equal q.shape[-1] (={q.shape[-1]})")
    d = q.shape[-1]
    if d < 1:
        raise ValueError(f"q.shape[-1] (={d}) must be >= 1")

    heads = (1,) if q.ndim == 2 else ()  # a 2-D call is one head
    batch_shape = q.shape[:-3] if q.ndim > 2 else ()
    batch = math.prod(batch_shape)
    out_shape = q.shape[:-1] + (v.shape[-1],)
    # Broadcast views can describe an output no array can hold; say so before any allocation.
    rows = math.prod(q.shape[:-1])
    if max(rows, rows * v.shape[-1]) * q.itemsize > sys.maxsize:
        raise ValueError(f"the output shape {out_shape} (q.shape[:-1] + v.shape[-1:]) has more bytes than an "
                         f"array can address ({sys.maxsize}); q.shape = {q.shape}, v.shape = {v.shape}")

    def as_4d(x: np.ndarray) -> np.ndarray:
        # A view whenever the batch dimensions can be merged (always for <= 4-D).
        x4 = x if x.ndim == 4 else x.reshape((batch,) + heads + x.shape[-3 if q.ndim > 2 else -2:])
        if x4.flags.c_contiguous:  # the common case, and always fine
            return x4
        if x4.shape[-1] > 1 and x4.strides[-1] != x4.itemsize or any(s % x4.itemsize for s in x4.strides):
            x4 = np.ascontiguousarray(x4)  # the kernel needs unit stride along features
        return x4

    hq, lq, lk = (q.shape[-3] if q.ndim > 2 else 1), q.shape[-2], k.shape[-2]
    compute = _F64 if q.dtype == _F64 else _F32
    options = _reference.Options(
        scale=_check_scale(scale, d),
        causal=_check_causal(causal),
        mask=_check_mask(mask, q.shape[:-1] + (lk,), batch_shape + (hq, lq, lk), compute),
        q_lengths=_check_lengths(q_lengths, "q_lengths", batch_shape, lq, "Lq"),
        kv_lengths=_check_lengths(kv_lengths, "kv_lengths", batch_shape, lk, "Lk"),
        window=_check_window(window),
        alibi_slopes=_check_alibi(alibi_slopes, batch_shape, hq, q.ndim == 2),
        softcap=_check_softcap(softcap, compute),
    )
    return _Call(as_4d(q), as_4d(k), as_4d(v), out_shape, batch_shape, options)


def _check_scale(scale, d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d)
    if not _is_real(scale):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    try:
        scale = float(scale)
    except OverflowError:  # an int beyond float range
        raise ValueError(f"scale (={_shown(scale)}) must be finite") from None
    if not math.isfinite(scale):
        raise ValueError(f"scale (={scale}) must be finite")
    return scale


def _check_softcap(softcap, compute: np.dtype) -> float:
    """0.0 means no softcap."""
    if softcap is None:
        return 0.0
    if not _is_real(softcap):
        raise TypeError(f"softcap must be a real number or None, got {type(softcap).__name__}")
    try:
        value = float(softcap)
    except OverflowError:  # an int beyond float range
        value = math.inf
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"softcap (={_shown(softcap)}) must be a finite number > 0, or None")
    # A cap whose reciprocal is subnormal in the compute dtype changes no score that dtype can
    # hold sensibly (and would lose precision as scores·(1/softcap)): no cap.
    return 0.0 if value >= 1 / float(np.finfo(compute).tiny) else value


def _check_mask(mask, user_shape, target, compute: np.dtype) -> Optional[np.ndarray]:
    """The mask as a view of shape target = batch_shape + (Hq, Lq, Lk), stride 0 where broadcast.

    user_shape is the (..., Hq, Lq, Lk) the user sees (no Hq axis for a 2-D call).
    """
    if mask is None:
        return None
    m = _asarray(mask, "mask")
    if m.dtype != np.bool_:
        if m.dtype.kind != "f" and m.dtype.name != "bfloat16":
            raise TypeError(f"mask.dtype (={m.dtype}) must be bool (True = may attend) or floating (added to "
                            "the scores)")
        if m.dtype != compute:
            m = m.astype(compute)  # at the mask's own size, before any broadcasting
    try:
        fits = np.broadcast_shapes(m.shape, user_shape) == tuple(user_shape)
    except ValueError:
        fits = False
    if not fits:
        axes = "(Lq, Lk)" if len(user_shape) == 2 else "(..., Hq, Lq, Lk)"
        raise ValueError(f"mask.shape (={m.shape}) must broadcast to {axes} = {tuple(user_shape)}")
    if any(s % m.itemsize for s in m.strides):
        m = np.ascontiguousarray(m)
    return np.broadcast_to(m, user_shape).reshape(target) if len(user_shape) == 2 else np.broadcast_to(m, target)


def _check_lengths(lengths, name: str, batch_shape, limit: int, limit_name: str) -> Optional[np.ndarray]:
    """(B,) int64, C-contiguous."""
    if lengths is None:
        return None
    a = _asarray(lengths, name)
    if a.dtype.kind not in "iu":
        exact = _exact_numbers(lengths)
        if exact is None:
            raise TypeError(f"{name}.dtype (={a.dtype}) must be an integer type")
        a = exact
    try:
        a = np.broadcast_to(a, batch_shape)
    except ValueError:
        raise ValueError(f"{name}.shape (={a.shape}) must broadcast to the batch shape q.shape[:-3] "
                         f"(={tuple(batch_shape)})") from None
    bad = np.asarray((a < 0) | (a > limit), dtype=bool)
    if bad.any():
        where = tuple(np.argwhere(bad)[0])
        raise ValueError(f"{name}{_index_text(a, where)} (={_shown(a[where])}) must be in [0, {limit_name}={limit}]")
    return np.ascontiguousarray(a.reshape(-1), dtype=np.int64)


def _check_window(window) -> Tuple[int, int]:
    """-1 means unbounded."""
    if window is None:
        return (-1, -1)
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise TypeError(f"window must be a (left, right) pair of ints or None, got {window!r}")
    bounds = []
    for i, (side, w) in enumerate(zip(("left", "right"), window)):
        if w is None:
            bounds.append(-1)
            continue
        if isinstance(w, (bool, np.bool_)):
            raise TypeError(f"window[{i}] ({side}) must be an int or None, got bool")
        try:
            n = operator.index(w)
        except TypeError:
            raise TypeError(f"window[{i}] ({side}) must be an int or None, got {type(w).__name__}") from None
        if n < 0:
            raise ValueError(f"window[{i}] ({side}) (={n}) must be >= 0, or None for unbounded")
        bounds.append(min(n, 1 << 62))  # beyond any length: unbounded in effect
    return bounds[0], bounds[1]


def _check_alibi(slopes, batch_shape, hq: int, two_d: bool) -> Optional[np.ndarray]:
    """(B·Hq,) float64, C-contiguous."""
    if slopes is None:
        return None
    a = _asarray(slopes, "alibi_slopes")
    if a.dtype.kind not in "fiu" and a.dtype.name != "bfloat16":
        exact = _exact_numbers(slopes, numbers.Real)
        if exact is None:
            raise TypeError(f"alibi_slopes.dtype (={a.dtype}) must be a real type")
        a = exact  # ints beyond float range: caught as not finite below
    target = tuple(batch_shape) + (hq,)
    try:
        a = np.broadcast_to(a, target)
    except ValueError:
        want = "() or (1,)" if two_d else f"(Hq,) = ({hq},) or broadcast to (..., Hq) = {target}"
        raise ValueError(f"alibi_slopes.shape (={np.shape(slopes)}) must be {want}") from None
    flat = a.reshape(-1)
    values = np.array([float(x) if abs(x) < 1e308 else math.inf for x in flat]) if a.dtype == object \
        else np.asarray(flat, dtype=np.float64)
    if not np.isfinite(values).all():
        where = np.unravel_index(int(np.argmin(np.isfinite(values))), a.shape)
        raise ValueError(f"alibi_slopes{_index_text(a, where)} (={_shown(a[where])}) must be finite")
    return np.ascontiguousarray(values)


def _check_causal(causal) -> int:
    if isinstance(causal, (bool, np.bool_)):
        return _reference.UPPER_LEFT if causal else _reference.NO_CAUSAL
    if isinstance(causal, str):
        if causal in _CAUSAL_MODES:
            return _CAUSAL_MODES[causal]
        raise ValueError(f"causal (={causal!r}) must be False, True, 'upper_left' or 'lower_right'")
    raise TypeError(f"causal must be a bool or a str, got {type(causal).__name__}")


def _check_out(out, call: _Call, inputs) -> np.ndarray:
    dtype = call.q.dtype
    if out is None:
        return np.empty(call.out_shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray or None, got {type(out).__name__}")
    if out.shape != call.out_shape:
        raise ValueError(f"out.shape (={out.shape}) must be {call.out_shape}")
    if out.dtype != dtype:
        raise TypeError(f"out.dtype (={out.dtype}) must equal q.dtype (={dtype})")
    if not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous (out.strides = {out.strides}, out.shape = {out.shape})")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    for name, x in zip("qkv", inputs):
        if isinstance(x, np.ndarray) and _overlaps(out, x):
            raise ValueError(f"out must not share memory with {name}")
    return out


def _overlaps(a: np.ndarray, b: np.ndarray) -> bool:
    """Exact overlap test, cheap in the usual case: bounds first, then the exact check,
    which may give up on pathological strides (then we assume an overlap)."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=100_000))
    except _TooHardError:
        return True
