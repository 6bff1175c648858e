"""The call contract: what fastattn's functions accept, and the normalised form its backends take.

Every argument check lives here, so that an argument means the same thing, and is refused with
the same message, whichever function it reaches first: ``attention``, ``attention_backward``,
``attention_weights``, the layers, or the JAX and Dask integrations (which run ``normalise`` on
data-free stand-ins when the data is not at hand). Errors are raised before any kernel runs:
``TypeError`` for types and dtypes, ``ValueError`` for shapes and values, naming the argument
with the expected and the actual value.

``normalise`` turns one call into a ``Call``: 4-D arrays (batch, heads, rows, features) whose
last axis is contiguous, and ``Options`` holding every option in the form the backends take (a
float scale, integer codes, int64 lengths, float64 slopes). Nothing below it re-validates.
"""

from __future__ import annotations

import collections
import math
import numbers
import operator
import sys
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Tuple, TypedDict, Union

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt

# Codes shared with the C++ kernel: they must match `enum class DType`, `enum class Causal`,
# `enum class Align`, `enum class Precision` and `enum class MaskKind` in src/cpp/fastattn/api.hpp
# (the binding passes them through as ints).
F32, F64, F16, BF16 = 0, 1, 2, 3  # DType
NO_CAUSAL, UPPER_LEFT, LOWER_RIGHT = 0, 1, 2  # Causal
ALIGN_UPPER_LEFT, ALIGN_LOWER_RIGHT = 0, 1  # Align
HIGHEST, HIGH, MEDIUM = 0, 1, 2  # Precision
NO_MASK, BOOL_MASK, ADDITIVE_MASK = 0, 1, 2  # MaskKind

# Storage dtypes by their DType code, keyed by dtype object (dtype.name is slow to compute on
# every call). bfloat16 is ml_dtypes' (optional): recognised by name the first time it is seen,
# so that ml_dtypes is never imported here.
FLOAT32, FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)
DTYPE_CODES = {FLOAT32: F32, FLOAT64: F64, np.dtype(np.float16): F16}
_DTYPE_NAMES = "float32, float64, float16 or bfloat16"

_CAUSAL_MODES = {"upper_left": UPPER_LEFT, "lower_right": LOWER_RIGHT}
_ALIGNMENTS = {"upper_left": ALIGN_UPPER_LEFT, "lower_right": ALIGN_LOWER_RIGHT}
PRECISIONS = {"highest": HIGHEST, "high": HIGH, "medium": MEDIUM}
BACKENDS = ("auto", "cpp", "numpy")
MAX_THREADS = 1024
_DLPACK_CPU = 1  # DLPack's kDLCPU
_TooHardError = getattr(np, "exceptions", np).TooHardError  # moved in NumPy 2

Causal = Union[bool, str]
Window = Optional[Tuple[Optional[int], Optional[int]]]


class OptionsWithoutSinks(TypedDict, total=False):
    """`AttentionOptions` but `sinks` (attention_backward's result has one more array with sinks)."""

    causal: Causal
    align: Optional[str]
    scale: Optional[float]
    mask: Optional[npt.ArrayLike]
    kv_lengths: Optional[npt.ArrayLike]
    q_lengths: Optional[npt.ArrayLike]
    window: Window
    alibi_slopes: Optional[npt.ArrayLike]
    softcap: Optional[float]
    precision: str


class AttentionOptions(OptionsWithoutSinks, total=False):
    """The options of ``attention``, ``attention_backward`` and ``attention_weights`` (keywords;
    their meaning is in ``attention``'s docstring). With its base, this is the one list of them in
    Python: the functions take ``**options: Unpack[AttentionOptions]``, `Options` holds them
    normalised in this order, and the C++ binding reads that tuple in the same order
    (FASTATTN_OPTIONS in src/cpp/bindings/module.cpp; tests/test_dispatch.py compares them)."""

    sinks: Optional[npt.ArrayLike]


OPTION_NAMES: Tuple[str, ...] = tuple(AttentionOptions.__annotations__)
# Every option of one call, validated and normalised once by `normalise`: scale a float, causal,
# align and precision their codes, mask a bool or compute-dtype view of batch_shape + (Hq, Lq, Lk),
# the lengths (B,) int64, window (left, right) with -1 unbounded, alibi_slopes and sinks (B·Hq,)
# float64 (sinks finite or -inf), softcap a float (0 = off).
Options = collections.namedtuple("Options", OPTION_NAMES)  # type: ignore[misc]


_OPTION_SET = frozenset(OPTION_NAMES)
# A keyword's default where it is not None (normalise reads the same values).
_DEFAULTS = {"causal": False, "precision": "highest"}


def _annotation_text(annotation: Any) -> Any:
    return getattr(annotation, "__forward_arg__", annotation)  # TypedDict keeps them as ForwardRefs


def with_option_keywords(func: Any) -> Any:
    """`func`, which takes ``**options``, with a signature that lists them (OPTION_NAMES, their
    defaults) in place of ``**options``, for help() and inspect.signature."""
    import inspect

    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
    keywords = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=_DEFAULTS.get(name),
                                  annotation=_annotation_text(AttentionOptions.__annotations__[name]))
                for name in OPTION_NAMES]
    first_keyword = next((i for i, p in enumerate(params) if p.kind == p.KEYWORD_ONLY), len(params))
    func.__signature__ = sig.replace(parameters=params[:first_keyword] + keywords + params[first_keyword:])
    return func


def plain_options(scale: float, causal: int) -> Any:
    """The normalised options of a call with only `scale` (a float) and `causal` (its code)."""
    return _PLAIN_OPTIONS._replace(scale=scale, causal=causal)


def normal_options(**fields: Any) -> Any:
    """Options already in normal form (a caller that has validated them: fastattn.transformers'
    plans), the rest as normalise leaves an absent option; align follows causal unless given."""
    if "align" not in fields:
        fields["align"] = ALIGN_LOWER_RIGHT if fields.get("causal") == LOWER_RIGHT else ALIGN_UPPER_LEFT
    return _PLAIN_OPTIONS._replace(**fields)


class Call(NamedTuple):
    """One validated call, in the form both backends take."""

    q: np.ndarray  # (B, Hq, Lq, D)
    k: np.ndarray  # (B, Hkv, Lk, D)
    v: np.ndarray  # (B, Hkv, Lk, Dv)
    out_shape: Tuple[int, ...]  # the user-facing shape (..., Hq, Lq, Dv)
    batch_shape: Tuple[int, ...]
    options: Options


def dtype_code(dtype: np.dtype) -> Optional[int]:
    """The kernel's DType code for a supported, native-order storage dtype, else None."""
    code = DTYPE_CODES.get(dtype)
    if code is None and dtype.name == "bfloat16" and dtype.itemsize == 2 and dtype.isnative:
        code = DTYPE_CODES[dtype] = BF16
    return code


def compute_dtype(dtype: Any, float32: Any = FLOAT32, float64: Any = FLOAT64) -> Any:
    """float64 for float64, else float32: what the kernels compute in, lse's dtype, and the dtype
    a floating mask is converted to. The one home of that rule; `float32` and `float64` name the
    two in another library's terms (torch's, for fastattn.torch)."""
    return float64 if dtype == float64 else float32


def normalise(q: Any, k: Any, v: Any, **options: Any) -> Call:
    """The call ``attention(q, k, v, **options)`` describes, validated: a `Call`, or the error
    that call raises. Allocates nothing of the output's size."""
    unknown = [name for name in options if name not in _OPTION_SET]
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}: the options are {', '.join(OPTION_NAMES)}")
    q = as_float_array(q, "q")
    k = as_float_array(k, "k")
    v = as_float_array(v, "v")
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
    # The kernels index and count in int64: every query row meets every key over the feature
    # dimension, so rows·Lk·max(D, Dv) must fit (stride-0 views can describe far more keys than
    # memory holds; such a call would overflow, or run for ever, instead of failing).
    work = rows * k.shape[-2] * max(d, v.shape[-1])
    if work > sys.maxsize:
        raise ValueError(f"the call is too large for 64-bit index arithmetic: query rows (={rows}) × Lk "
                         f"(={k.shape[-2]}) × max(D, Dv) (={max(d, v.shape[-1])}) = {work} > {sys.maxsize}; "
                         f"q.shape = {q.shape}, k.shape = {k.shape}")

    def as_4d(x: np.ndarray) -> np.ndarray:
        # A view whenever the batch dimensions can be merged (always for <= 4-D).
        x4 = x if x.ndim == 4 else x.reshape((batch,) + heads + x.shape[-3 if q.ndim > 2 else -2:])
        if x4.flags.c_contiguous:  # the common case, and always fine
            return x4
        if x4.shape[-1] > 1 and x4.strides[-1] != x4.itemsize or any(s % x4.itemsize for s in x4.strides):
            x4 = np.ascontiguousarray(x4)  # the kernel needs unit stride along features
        return x4

    hq, lq, lk = (q.shape[-3] if q.ndim > 2 else 1), q.shape[-2], k.shape[-2]
    compute = compute_dtype(q.dtype)
    get = options.get
    causal, align = check_alignment(get("causal", _DEFAULTS["causal"]), get("align"))
    normalised = Options(
        causal=causal,
        align=align,
        scale=check_scale(get("scale"), d),
        mask=check_mask(get("mask"), q.shape[:-1] + (lk,), batch_shape + (hq, lq, lk), compute),
        kv_lengths=check_lengths(get("kv_lengths"), "kv_lengths", batch_shape, lk, "Lk"),
        q_lengths=check_lengths(get("q_lengths"), "q_lengths", batch_shape, lq, "Lq"),
        window=check_window(get("window")),
        alibi_slopes=check_per_head(get("alibi_slopes"), "alibi_slopes", batch_shape, hq, q.ndim == 2),
        softcap=check_softcap(get("softcap"), compute),
        sinks=check_per_head(get("sinks"), "sinks", batch_shape, hq, q.ndim == 2, allow_neg_inf=True),
        precision=check_precision(get("precision", _DEFAULTS["precision"])),
    )
    return Call(as_4d(q), as_4d(k), as_4d(v), out_shape, batch_shape, normalised)


def sum_to_shape(x: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """x summed over the axes along which an array of `shape` was broadcast to x.shape: the
    gradient of a broadcast parameter has the parameter's shape."""
    lead = x.ndim - len(shape)
    x = x.sum(axis=tuple(range(lead))) if lead > 0 else x
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and x.shape[i] != 1)
    return (x.sum(axis=axes, keepdims=True) if axes else x).reshape(shape)


def stand_in(shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
    """Zeros of `shape` that own only their last axis (stride 0 elsewhere): what fastattn.jax and
    fastattn.dask pass to `normalise` to validate a call whose data is not at hand, without
    memory, and with the contiguous last axis that makes `normalise` copy nothing."""
    return np.broadcast_to(np.zeros(tuple(shape)[-1:], dtype), tuple(shape))


# -- arrays ---------------------------------------------------------------------------------

def asarray(x: Any, name: str) -> np.ndarray:
    """x as an array, or a TypeError naming the argument (e.g. for a ragged nested list).

    An object with ``__dlpack__`` (a torch tensor, a JAX array, CuPy, ...) is read through DLPack:
    a view of its memory, no copy, when it lives on the CPU and NumPy knows its dtype (bfloat16
    is not a DLPack dtype NumPy reads: such an array takes the array_like path). Anything else
    goes through ``np.asarray``.

    Two ndarray subclasses are refused with a TypeError: ``np.matrix`` (always 2-D, and ``*``
    is its matrix product) and masked arrays (their mask would be silently dropped: attention
    has its own ``mask=`` and ``kv_lengths=``; ``x.filled(...)`` or ``np.asarray(x)`` drops it
    deliberately)."""
    if isinstance(x, np.ndarray):
        if isinstance(x, np.matrix):
            raise TypeError(f"{name} must be an array, got np.matrix (always 2-D): pass np.asarray({name}), "
                            f"shaped (..., L, D)")
        if isinstance(x, np.ma.MaskedArray):
            raise TypeError(f"{name} is a masked array, whose mask fastattn would not see: use mask= or "
                            f"kv_lengths= for masking, or pass {name}.filled(0) or np.asarray({name}) to drop "
                            f"the mask deliberately")
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


def as_float_array(x: Any, name: str) -> np.ndarray:
    """x as an array of a storage dtype the kernels take (native byte order)."""
    x = asarray(x, name)
    if x.dtype == object and x.ndim == 0:  # None, or some other non-array object
        raise TypeError(f"{name} must be an array of {_DTYPE_NAMES}, got {type(x.item()).__name__}")
    if dtype_code(x.dtype) is None:
        hint = ""
        if dtype_code(x.dtype.newbyteorder("=")) is not None:
            hint = f"; convert with {name}.astype({name}.dtype.newbyteorder('='))"
        raise TypeError(f"{name}.dtype (={x.dtype.str if hint else x.dtype}) must be {_DTYPE_NAMES}{hint}")
    return x


def check_out(out: Any, call: Call, inputs: Tuple[Any, ...]) -> np.ndarray:
    """attention's `out`: a new array when None, else the caller's, checked (`inputs` are the
    q, k, v as given, which it must not overlap)."""
    dtype = call.q.dtype
    if out is None:
        return np.empty(call.out_shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray or None, got {type(out).__name__}")
    if out.shape != call.out_shape:
        raise ValueError(f"out.shape (={out.shape}) must be {call.out_shape}")
    check_out_dtype(out.dtype, "out", dtype)
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


def out_dtypes(dtype: np.dtype) -> Tuple[np.dtype, ...]:
    """The dtypes of an output for inputs of `dtype`: q's, and for 16-bit inputs float32 too (the
    output before rounding to 16 bits, from which the backward forms more precise gradients)."""
    return (dtype, FLOAT32) if dtype.itemsize == 2 else (dtype,)


def check_lse_dtype(lse_dtype: Any, return_lse: bool) -> Optional[np.dtype]:
    """attention's lse_dtype: None (the compute dtype) or float64, and only with return_lse."""
    if lse_dtype is None:
        return None
    try:
        dtype = np.dtype(lse_dtype)
    except TypeError:
        dtype = None
    if dtype is None or dtype != FLOAT64:  # (None != FLOAT64 is False: np.dtype(None) is float64)
        raise TypeError(f"lse_dtype (={lse_dtype!r}) must be None or float64")
    if not return_lse:
        raise ValueError("lse_dtype (=float64) needs return_lse=True")
    return dtype


def check_out_dtype(dtype: np.dtype, name: str, q_dtype: np.dtype) -> None:
    if dtype not in out_dtypes(q_dtype):
        wide = ", or be float32 for these 16-bit inputs" if q_dtype.itemsize == 2 else ""
        raise TypeError(f"{name}.dtype (={dtype}) must equal q.dtype (={q_dtype}){wide}")


def check_same_as_out(x: Any, name: str, call: Call) -> np.ndarray:
    """attention_backward's dout or out: an array of the forward output's shape and q's dtype
    (out: or float32 for 16-bit inputs, see out_dtypes), C-contiguous."""
    x = as_float_array(x, name)
    if name == "out":
        check_out_dtype(x.dtype, name, call.q.dtype)
    elif x.dtype != call.q.dtype:
        raise TypeError(f"{name}.dtype (={x.dtype}) must equal q.dtype (={call.q.dtype})")
    if x.shape != call.out_shape:
        raise ValueError(f"{name}.shape (={x.shape}) must be the output's shape {call.out_shape}")
    return np.ascontiguousarray(x)


def check_lse(lse: Any, lse_lo: Any, call: Call) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """attention_backward's lse (and the internal lse_lo, or None) as the kernel takes them:
    C-contiguous in the compute dtype, lse_lo the part of lse its rounding lost. A float64 lse of
    float32 compute becomes hi + lo, so that nothing of it is lost."""
    dtype, shape = call.q.dtype, tuple(call.out_shape[:-1])
    compute = compute_dtype(dtype)
    a = as_float_array(lse, "lse")
    if a.dtype not in (dtype, FLOAT32, FLOAT64):
        raise TypeError(f"lse.dtype (={a.dtype}) must be q.dtype (={dtype}), float32 or float64")
    if a.shape != shape:
        raise ValueError(f"lse.shape (={a.shape}) must be {shape}, the output's shape without Dv")
    hi = np.ascontiguousarray(a, dtype=compute)
    if lse_lo is not None:
        lo = np.ascontiguousarray(lse_lo)
        if lo.dtype != compute or lo.shape != shape or a.dtype != compute:
            raise ValueError(f"lse_lo must be a {compute} array of shape {shape}, with lse of that dtype")
        return hi, lo
    if a.dtype == FLOAT64 and compute == FLOAT32:
        with np.errstate(invalid="ignore"):  # ±inf − ±inf: lo is 0 where hi is not finite
            return hi, np.where(np.isfinite(hi), a - hi, 0).astype(compute)
    return hi, None


# -- options --------------------------------------------------------------------------------

def check_scale(scale: Any, d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d)
    value = _real_or_none(scale, "scale")
    if not math.isfinite(value):
        raise ValueError(f"scale (={_shown(scale)}) must be finite")
    return value


def check_softcap(softcap: Any, compute: np.dtype) -> float:
    """0.0 means no softcap."""
    if softcap is None:
        return 0.0
    value = _real_or_none(softcap, "softcap")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"softcap (={_shown(softcap)}) must be a finite number > 0, or None")
    # A cap whose reciprocal is subnormal in the compute dtype changes no score that dtype can
    # hold sensibly (and would lose precision as scores·(1/softcap)): no cap.
    return 0.0 if value >= 1 / float(np.finfo(compute).tiny) else value


def check_causal(causal: Any) -> int:
    if isinstance(causal, (bool, np.bool_)):
        return UPPER_LEFT if causal else NO_CAUSAL
    if isinstance(causal, str):
        if causal in _CAUSAL_MODES:
            return _CAUSAL_MODES[causal]
        raise ValueError(f"causal (={causal!r}) must be False, True, 'upper_left' or 'lower_right'")
    raise TypeError(f"causal must be a bool or a str, got {type(causal).__name__}")


def check_alignment(causal: Any, align: Any) -> Tuple[int, int]:
    """(causal code, align code). `align` puts query i at key position i + off for every
    positional rule: off = 0 ("upper_left") or Lk − Lq ("lower_right"); None follows causal (lower
    right only under causal="lower_right"). causal=True with align="lower_right" is
    causal="lower_right"; causal="lower_right" with align="upper_left" (or the reverse) contradict."""
    mode = check_causal(causal)
    if align is None:
        return mode, ALIGN_LOWER_RIGHT if mode == LOWER_RIGHT else ALIGN_UPPER_LEFT
    if not isinstance(align, str):
        raise TypeError(f"align must be a str or None, got {type(align).__name__}")
    if align not in _ALIGNMENTS:
        raise ValueError(f"align (={align!r}) must be 'upper_left', 'lower_right' or None")
    code = _ALIGNMENTS[align]
    if isinstance(causal, str) and (mode == LOWER_RIGHT) != (code == ALIGN_LOWER_RIGHT):
        raise ValueError(f"align (={align!r}) contradicts causal (={causal!r}): a causal mask and the window and "
                         f"ALiBi share one diagonal; pass causal=True with align={align!r}")
    if mode != NO_CAUSAL:
        mode = LOWER_RIGHT if code == ALIGN_LOWER_RIGHT else UPPER_LEFT
    return mode, code


def check_precision(precision: Any) -> int:
    """The code of `precision`: "highest", "high" or "medium" (torch's set_float32_matmul_precision
    names; what each means per dtype and engine: attention's docstring)."""
    if not isinstance(precision, str):
        raise TypeError(f"precision must be a str, got {type(precision).__name__}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision (={precision!r}) must be 'highest', 'high' or 'medium'")
    return PRECISIONS[precision]


def check_mask(mask: Any, user_shape: Tuple[int, ...], target: Tuple[int, ...],
               compute: np.dtype) -> Optional[np.ndarray]:
    """The mask as a view of shape target = batch_shape + (Hq, Lq, Lk), stride 0 where broadcast.

    user_shape is the (..., Hq, Lq, Lk) the user sees (no Hq axis for a 2-D call).
    """
    if mask is None:
        return None
    m = asarray(mask, "mask")
    if m.dtype != np.bool_:
        if not is_floating(m.dtype):
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


def check_lengths(lengths: Any, name: str, batch_shape: Tuple[int, ...], limit: int,
                  limit_name: str) -> Optional[np.ndarray]:
    """(B,) int64, C-contiguous."""
    if lengths is None:
        return None
    a = asarray(lengths, name)
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


def check_window(window: Any) -> Tuple[int, int]:
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
        n = check_int(w, f"window[{i}] ({side})", "an int or None")
        if n < 0:
            raise ValueError(f"window[{i}] ({side}) (={n}) must be >= 0, or None for unbounded")
        bounds.append(min(n, 1 << 62))  # beyond any length: unbounded in effect
    return bounds[0], bounds[1]


def check_per_head(values: Any, name: str, batch_shape: Tuple[int, ...], hq: int, two_d: bool,
                   allow_neg_inf: bool = False) -> Optional[np.ndarray]:
    """A real value per query head (alibi_slopes, sinks), broadcast to batch_shape + (Hq,): (B·Hq,)
    float64, C-contiguous. Finite; with allow_neg_inf, -inf too (a head without a sink)."""
    if values is None:
        return None
    a = asarray(values, name)
    if a.dtype.kind not in "iu" and not is_floating(a.dtype):
        exact = _exact_numbers(values, numbers.Real)
        if exact is None:
            raise TypeError(f"{name}.dtype (={a.dtype}) must be a real type")
        a = exact  # ints beyond float range: caught as not finite below
    given = a
    target = tuple(batch_shape) + (hq,)
    try:
        a = np.broadcast_to(a, target)
    except ValueError:
        want = "() or (1,)" if two_d else f"(Hq,) = ({hq},) or broadcast to (..., Hq) = {target}"
        raise ValueError(f"{name}.shape (={np.shape(values)}) must be {want}") from None
    flat = a.reshape(-1)
    values64 = np.array([float(x) if abs(x) < 1e308 else math.inf for x in flat]) if a.dtype == object \
        else np.asarray(flat, dtype=np.float64)
    ok = np.isfinite(values64) | (values64 == -np.inf) if allow_neg_inf else np.isfinite(values64)
    if not ok.all():  # name the element as the caller indexes it, not the broadcast view
        where = np.unravel_index(int(np.argmin(ok)), a.shape)[a.ndim - given.ndim:]
        where = tuple(i if n != 1 else 0 for i, n in zip(where, given.shape))
        allowed = "finite or -inf" if allow_neg_inf else "finite"
        raise ValueError(f"{name}{_index_text(given, where)} (={_shown(given[where])}) must be {allowed}")
    return np.ascontiguousarray(values64)


def check_num_threads(num_threads: Any) -> int:
    """A num_threads as the kernel takes it: 0 means the default."""
    if num_threads is None:
        return 0
    n = check_int(num_threads, "num_threads", "an int or None")
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"num_threads (={n}) must be between 1 and {MAX_THREADS}, or None")
    return n


def check_backend(backend: Any) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend (={backend!r}) must be one of {', '.join(map(repr, BACKENDS))}")
    return backend


# -- values ---------------------------------------------------------------------------------

def check_int(value: Any, name: str, expected: str = "an int") -> int:
    """value as an int (a Python or NumPy integer, or anything with __index__), else a TypeError
    "<name> must be <expected>, got <type>". A bool is refused, although it is an int: True
    threads or True heads is a mistake, not a count."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be {expected}, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}") from None


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def is_floating(dtype: np.dtype) -> bool:
    """A floating dtype: NumPy's, or ml_dtypes' bfloat16 (recognised by name, as in dtype_code)."""
    return dtype.kind == "f" or dtype.name == "bfloat16"


def is_real(x: Any) -> bool:
    """A real number that is not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _real_or_none(x: Any, name: str) -> float:
    """An option that is a real number or None, given (not None), as a float: +-inf for an int
    beyond float range, which the caller then refuses as not finite."""
    if not is_real(x):
        raise TypeError(f"{name} must be a real number or None, got {type(x).__name__}")
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def _exact_numbers(x: Any, kind: Any = numbers.Integral) -> Optional[np.ndarray]:
    """An object array of x's Python numbers when x holds only numbers of `kind` (NumPy stores
    ints beyond int64 as object or float64 arrays); else None."""
    if isinstance(x, np.ndarray):
        return None
    exact = np.asarray(x, dtype=object)
    ok = all(isinstance(e, kind) and not isinstance(e, (bool, np.bool_)) for e in exact.flat)
    return exact if ok and exact.size else None


def _shown(x: Any) -> str:
    """x for an error message; an int too long to print in full is described instead."""
    if isinstance(x, int) and abs(x) > 10**30:
        return f"an int of {x.bit_length()} bits"
    return str(x)


def _index_text(a: np.ndarray, where: Any) -> str:
    return f"[{', '.join(str(int(i)) for i in where)}]" if a.ndim else ""


# What normalise makes of a call without options (D = 1: scale 1.0): the fast paths' options.
_PLAIN_OPTIONS = normalise(np.zeros((1, 1), FLOAT32), np.zeros((1, 1), FLOAT32), np.zeros((1, 1), FLOAT32)).options
