"""Public functions: validation, shape and dtype rules, backend choice.

Everything a call can get wrong is checked here, before any C++ runs, and every option is
normalised once: the backends receive 4-D arrays (batch, heads, rows, features) whose last
axis is contiguous, a float scale and an integer causal mode.
"""

from __future__ import annotations

import math
import numbers
import operator
import warnings
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np

from . import _backend, _reference

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_CAUSAL_MODES = {"upper_left": _reference.UPPER_LEFT, "lower_right": _reference.LOWER_RIGHT}
_BACKENDS = ("auto", "cpp", "numpy")
MAX_THREADS = 1024
_warned_fallback = False
_TooHardError = getattr(np, "exceptions", np).TooHardError  # moved in NumPy 2

Causal = Union[bool, str]


class _Call(NamedTuple):
    """One validated call, in the form both backends take."""

    q: np.ndarray  # (B, Hq, Lq, D)
    k: np.ndarray  # (B, Hkv, Lk, D)
    v: np.ndarray  # (B, Hkv, Lk, Dv)
    out_shape: Tuple[int, ...]  # the user-facing shape (..., Hq, Lq, Dv)
    scale: float
    causal: int


def attention(q, k, v, /, *, causal: Causal = False, scale: Optional[float] = None,
              return_lse: bool = False, out: Optional[np.ndarray] = None, backend: str = "auto",
              num_threads: Optional[int] = None):
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

    A query row that sees no key (e.g. ``"lower_right"`` with Lq > Lk, or ``"upper_left"``
    never, since key 0 is always visible there) returns zeros, and its lse is ``-inf``.

    Parameters
    ----------
    q, k, v : float32 or float64 arrays of one dtype (positional-only). Any strides: the
        kernel reads strided views directly; only an input whose last axis is not contiguous
        is copied once.
    causal : False, True, "upper_left" or "lower_right".
    scale : multiplier of q·kᵀ; default ``1 / sqrt(D)``. Any finite real number.
    return_lse : also return the log-sum-exp of each row's scores, in the input dtype.
    out : optional C-contiguous, writeable array of the output's shape and dtype, sharing no
        memory with q, k, v; written in place and returned.
    backend : "auto" (C++ when built, else NumPy with a one-time warning), "cpp" (raises
        RuntimeError when the extension is unavailable) or "numpy".
    num_threads : None for the OpenMP default (honours ``OMP_NUM_THREADS``), or an int in
        [1, 1024] for this call only. The result does not depend on it. Ignored by "numpy".

    Returns
    -------
    out, or ``(out, lse)`` when ``return_lse`` is true.
    """
    use_cpp = _choose_backend(backend)
    call = _normalise(q, k, v, causal, scale)
    threads = _check_num_threads(num_threads)
    if not isinstance(return_lse, (bool, np.bool_)):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    out = _check_out(out, call, (q, k, v))

    batch, hq, lq, _ = call.q.shape
    lk, dv = call.k.shape[2], call.v.shape[3]
    out4 = out.reshape(batch, hq, lq, dv)
    lse = np.empty(call.out_shape[:-1], dtype=out.dtype) if return_lse else None
    lse3 = None if lse is None else lse.reshape(batch, hq, lq)

    if out.size == 0 and lse3 is None or lse3 is not None and lse3.size == 0:
        pass  # nothing to compute
    elif lk == 0:
        out4.fill(0)  # no key to see: every row is fully masked
        if lse3 is not None:
            lse3.fill(-np.inf)
    elif use_cpp:
        _backend._core.forward(call.q, call.k, call.v, out4, lse3, call.scale, call.causal, threads)
    else:
        _reference.forward(call.q, call.k, call.v, out4, lse3, call.scale, call.causal)
    return (out, lse) if return_lse else out


def _choose_backend(backend: str) -> bool:
    """True for the C++ backend."""
    global _warned_fallback
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend (={backend!r}) must be one of {', '.join(map(repr, _BACKENDS))}")
    if backend == "numpy":
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


def _as_float_array(x, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as exc:  # e.g. ragged nested lists
            raise TypeError(f"{name} must be an array, got {type(x).__name__}: {exc}") from None
    if x.dtype == object and x.ndim == 0:  # None, or some other non-array object
        raise TypeError(f"{name} must be an array of float32 or float64, got {type(x.item()).__name__}")
    if x.dtype not in _DTYPES:
        hint = ""
        if x.dtype.kind == "f" and x.dtype.newbyteorder("=") in _DTYPES:
            hint = f"; convert with {name}.astype({name}.dtype.newbyteorder('='))"
        raise TypeError(f"{name}.dtype (={x.dtype.str if hint else x.dtype}) must be float32 or float64{hint}")
    return x


def _normalise(q, k, v, causal, scale) -> _Call:
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

    def as_4d(x: np.ndarray) -> np.ndarray:
        # A view whenever the batch dimensions can be merged (always for <= 4-D).
        x4 = x.reshape((batch,) + heads + x.shape[-3 if q.ndim > 2 else -2:])
        if x4.shape[-1] > 1 and x4.strides[-1] != x4.itemsize or any(s % x4.itemsize for s in x4.strides):
            x4 = np.ascontiguousarray(x4)  # the kernel needs unit stride along features
        return x4

    return _Call(as_4d(q), as_4d(k), as_4d(v), out_shape, _check_scale(scale, d), _check_causal(causal))


def _check_scale(scale, d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    try:
        scale = float(scale)
    except OverflowError:  # an int beyond float range; too large to print, too
        raise ValueError(f"scale (=an int of {scale.bit_length()} bits) must be finite") from None
    if not math.isfinite(scale):
        raise ValueError(f"scale (={scale}) must be finite")
    return scale


def _check_causal(causal) -> int:
    if isinstance(causal, (bool, np.bool_)):
        return _reference.UPPER_LEFT if causal else _reference.NO_CAUSAL
    if isinstance(causal, str):
        if causal in _CAUSAL_MODES:
            return _CAUSAL_MODES[causal]
        raise ValueError(f"causal (={causal!r}) must be False, True, 'upper_left' or 'lower_right'")
    raise TypeError(f"causal must be a bool or a str, got {type(causal).__name__}")


def _check_num_threads(num_threads) -> int:
    """0 means the OpenMP default."""
    if num_threads is None:
        return 0
    if isinstance(num_threads, (bool, np.bool_)):
        raise TypeError("num_threads must be an int or None, got bool")
    try:
        n = operator.index(num_threads)
    except TypeError:
        raise TypeError(f"num_threads must be an int or None, got {type(num_threads).__name__}") from None
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"num_threads (={n}) must be between 1 and {MAX_THREADS}, or None")
    return n


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
