"""fastattn for PyTorch on the CPU: a drop-in ``scaled_dot_product_attention`` and a patch.

``scaled_dot_product_attention`` takes the arguments of ``torch.nn.functional.scaled_dot_product
_attention`` and runs fastattn's kernels on CPU tensors: the forward through ``attention`` and the
backward through ``attention_backward``, both registered as ``torch.library.custom_op``s
(``fastattn::sdpa`` and ``fastattn::sdpa_backward``) so that ``torch.compile`` keeps them in one
graph. Tensors reach the kernels through DLPack as NumPy views of their memory, and the output is
written straight into a torch tensor: no copies. ``patch()`` routes CPU calls of the torch function
to it; ``unpatch()`` undoes that.

Needs PyTorch (``pip install torch``); bfloat16 tensors also need ml_dtypes (``pip install ml_dtypes``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional, Tuple

import numpy as np

try:
    import torch
except ImportError as exc:  # pragma: no cover - only without torch
    raise ImportError("fastattn.torch needs PyTorch: pip install torch") from exc

from torch import Tensor

from ._api import _plain_forward, attention, backward_with_residual, forward_with_residual
from ._backend import cpp_available
from ._contract import LOWER_RIGHT, NO_CAUSAL, UPPER_LEFT, check_precision, compute_dtype

__all__ = ["scaled_dot_product_attention", "patch", "unpatch", "is_patched", "ShapeError", "DTypeError"]

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _to_numpy(t: Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor's memory (Tensor.numpy(): no copy, strides kept). NumPy has no
    bfloat16: such a tensor is viewed as int16 and relabelled ml_dtypes.bfloat16, which has the same bits."""
    if t.requires_grad:
        t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_bfloat16())
    return t.numpy()


def _from_numpy(a: np.ndarray) -> Tensor:
    """A tensor sharing a's memory."""
    if a.dtype.itemsize == 2 and a.dtype != np.float16:  # bfloat16 (dtype.name is slow to compute)
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _bfloat16() -> Any:
    try:
        import ml_dtypes
    except ImportError:
        raise TypeError("bfloat16 tensors need ml_dtypes: pip install ml_dtypes") from None
    return ml_dtypes.bfloat16


# Causal codes of the ops below (fastattn's: _contract.NO_CAUSAL, UPPER_LEFT, LOWER_RIGHT) as attention's causal=.
_CAUSAL = {NO_CAUSAL: False, UPPER_LEFT: True, LOWER_RIGHT: "lower_right"}


def precision_for(dtype: Any, precision: Optional[str] = None) -> str:
    """The ``precision=`` a call of this torch dtype runs at (docs/precision.md): `precision` when
    given; else, for float32, torch's own ``torch.get_float32_matmul_precision()`` (the same names:
    ``torch.set_float32_matmul_precision("medium")`` lets fastattn round P to bfloat16 too); else
    ``"highest"``."""
    if precision is not None:
        check_precision(precision)
        return precision
    return _matmul_precision() if dtype == torch.float32 else "highest"


@torch.compiler.assume_constant_result
def _matmul_precision() -> str:
    """torch's float32 matmul precision. torch.compile cannot trace the getter (a graph break), so a
    compiled graph takes its value when it is traced: set the precision before compiling."""
    return torch.get_float32_matmul_precision()


def _options(attn_mask: Optional[Tensor], causal: int, scale: float, window_left: int = -1, window_right: int = -1,
             softcap: float = 0.0, sinks: Optional[Tensor] = None, kv_lengths: Optional[Tensor] = None,
             precision: str = "highest") -> dict:
    """The ops' arguments as fastattn.attention's options (-1: an unbounded window side, 0.0: no softcap)."""
    options = dict(mask=None if attn_mask is None else _to_numpy(attn_mask), causal=_CAUSAL[causal], scale=scale)
    if precision != "highest":
        options["precision"] = precision
    if window_left >= 0 or window_right >= 0:
        options["window"] = (window_left if window_left >= 0 else None, window_right if window_right >= 0 else None)
    if softcap:
        options["softcap"] = softcap
    if sinks is not None:
        options["sinks"] = _to_numpy(sinks)
    if kv_lengths is not None:
        options["kv_lengths"] = _to_numpy(kv_lengths)
    return options


@torch.library.custom_op("fastattn::sdpa", mutates_args=(), device_types="cpu")
def _sdpa(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor], causal: int, scale: float,
          for_backward: bool, window_left: int = -1, window_right: int = -1, softcap: float = 0.0,
          sinks: Optional[Tensor] = None, kv_lengths: Optional[Tensor] = None,
          precision: str = "highest") -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(out, lse, lse_lo, wide) of fastattn.attention; out is allocated by torch and written in place.
    `causal` is a code of fastattn's (0 none, 1 upper-left, 2 lower-right); the window, softcap, sinks
    (gradient too) and kv_lengths (int64) are attention's options. Kept for the backward, which they make
    as precise as torch's math path: lse and lse_lo, the exact error of lse's rounding (float32, float64
    for float64: fastattn._api.forward_with_residual), and, for 16-bit inputs when `for_backward`, `wide`:
    the output in float32 before its rounding (out is that rounded, the bits the kernel stores); else an
    empty tensor. `precision`: attention's precision=."""
    shape = query.shape[:-1] + value.shape[-1:]
    keep_wide = _keeps_wide(query, for_backward)
    out = torch.empty(shape, dtype=torch.float32 if keep_wide else query.dtype)
    _, lse, lse_lo = forward_with_residual(_to_numpy(query), _to_numpy(key), _to_numpy(value), out=_to_numpy(out),
                                           **_options(attn_mask, causal, scale, window_left, window_right, softcap,
                                                      sinks, kv_lengths, precision))
    if keep_wide:
        return out.to(query.dtype), _from_numpy(lse), _from_numpy(lse_lo), out
    return out, _from_numpy(lse), _from_numpy(lse_lo), out.new_empty((0,), dtype=torch.float32)


def _keeps_wide(query: Tensor, for_backward: bool) -> bool:
    """Whether _sdpa keeps the float32 output: for 16-bit inputs that autograd records."""
    return for_backward and query.dtype in (torch.float16, torch.bfloat16)


@_sdpa.register_fake
def _sdpa_fake(query, key, value, attn_mask, causal, scale, for_backward, window_left=-1, window_right=-1,
               softcap=0.0, sinks=None, kv_lengths=None, precision="highest"):
    lse_dtype = compute_dtype(query.dtype, torch.float32, torch.float64)
    return (query.new_empty(query.shape[:-1] + value.shape[-1:]), query.new_empty(query.shape[:-1], dtype=lse_dtype),
            query.new_empty(query.shape[:-1], dtype=lse_dtype),
            query.new_empty(query.shape[:-1] + value.shape[-1:] if _keeps_wide(query, for_backward) else (0,),
                            dtype=torch.float32))


@torch.library.custom_op("fastattn::sdpa_backward", mutates_args=(), device_types="cpu")
def _sdpa_backward(dout: Tensor, query: Tensor, key: Tensor, value: Tensor, out: Tensor, lse: Tensor,
                   lse_lo: Tensor, attn_mask: Optional[Tensor], causal: int, scale: float, window_left: int = -1,
                   window_right: int = -1, softcap: float = 0.0, sinks: Optional[Tensor] = None,
                   kv_lengths: Optional[Tensor] = None, precision: str = "highest") -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, d_sinks): d_sinks in the shape and dtype of sinks, or empty without them."""
    grads = backward_with_residual(*map(_to_numpy, (dout, query, key, value, out, lse, lse_lo)),
                                   **_options(attn_mask, causal, scale, window_left, window_right, softcap, sinks,
                                              kv_lengths, precision))
    dq, dk, dv = (_from_numpy(g) for g in grads[:3])
    if sinks is None:
        return dq, dk, dv, query.new_empty((0,))
    return dq, dk, dv, torch.from_numpy(grads[3]).to(sinks.dtype)


@_sdpa_backward.register_fake
def _sdpa_backward_fake(dout, query, key, value, out, lse, lse_lo, attn_mask, causal, scale, window_left=-1,
                        window_right=-1, softcap=0.0, sinks=None, kv_lengths=None, precision="highest"):
    return (torch.empty_like(query), torch.empty_like(key), torch.empty_like(value),
            query.new_empty((0,)) if sinks is None else torch.empty_like(sinks))


def _setup_context(ctx, inputs, output) -> None:
    query, key, value, attn_mask, causal, scale, _, window_left, window_right, softcap, sinks, kv_lengths, precision = \
        inputs
    out, lse, lse_lo, wide = output
    ctx.save_for_backward(query, key, value, out if wide.numel() == 0 else wide, lse, lse_lo, attn_mask, sinks,
                          kv_lengths)
    ctx.options = (causal, scale, window_left, window_right, softcap, precision)


def _backward(ctx, dout: Tensor, *_d_saved: Optional[Tensor]):  # (lse, lse_lo and wide get no gradient)
    query, key, value, out, lse, lse_lo, attn_mask, sinks, kv_lengths = ctx.saved_tensors
    causal, scale, window_left, window_right, softcap, precision = ctx.options
    dq, dk, dv, d_sinks = _sdpa_backward(dout, query, key, value, out, lse, lse_lo, attn_mask, causal, scale,
                                         window_left, window_right, softcap, sinks, kv_lengths, precision)
    # The mask, the options, the flag, kv_lengths and the precision are constants.
    return dq, dk, dv, None, None, None, None, None, None, None, None if sinks is None else d_sinks, None, None


_sdpa.register_autograd(_backward, setup_context=_setup_context)


def _wants_grad(query: Tensor, key: Tensor, value: Tensor, sinks: Optional[Tensor] = None) -> bool:
    """Whether autograd records this call: grad mode is on and an input requires grad."""
    return torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad or
                                        sinks is not None and sinks.requires_grad)


def _lean(query: Tensor, key: Tensor, value: Tensor) -> bool:
    """Whether a call that needs no gradient may take the lean door (plain tensors, straight to the
    kernel as NumPy arrays) rather than the custom op: not while torch.compile traces it, nor for
    tensor subclasses (fake, functional) that have no memory to share."""
    return not torch.compiler.is_compiling() and type(query) is Tensor and type(key) is Tensor and \
        type(value) is Tensor


def _attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor], causal: int, scale: float,
               window_left: int = -1, window_right: int = -1, softcap: float = 0.0, sinks: Optional[Tensor] = None,
               kv_lengths: Optional[Tensor] = None, precision: str = "highest") -> Tensor:
    """fastattn.attention on CPU tensors of one dtype, with autograd, by one of two doors: calls that
    need no gradient and are not traced by torch.compile go straight to the kernel (the lean door: the
    tensors' memory as NumPy arrays, no custom-op dispatch, no lse kept); the rest through the custom op
    fastattn::sdpa, which autograd records (its backward runs fastattn's backward kernel; the sinks get a
    gradient too) and torch.compile keeps in its graph. Arguments as _sdpa's."""
    wants_grad = _wants_grad(query, key, value, sinks)
    if not wants_grad and _lean(query, key, value):
        options = _options(attn_mask, causal, scale, window_left, window_right, softcap, sinks, kv_lengths, precision)
        return _from_numpy(attention(_to_numpy(query), _to_numpy(key), _to_numpy(value), **options))
    out, _, _, _ = _sdpa(query, key, value, attn_mask, causal, scale, wants_grad, window_left, window_right, softcap,
                         sinks, kv_lengths, precision)
    return out


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False, *, precision: Optional[str] = None) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` on CPU tensors, computed by fastattn.

    Shapes as torch's: query ``(N, ..., Hq, L, E)``, key ``(N, ..., Hkv, S, E)``, value
    ``(N, ..., Hkv, S, Ev)``, result ``(N, ..., Hq, L, Ev)``; leading dimensions broadcast as in
    torch, across ranks and size-1 batch or head axes (as views: nothing is copied).
    dtypes float32, float64, float16 and bfloat16 (the 16-bit ones computed in float32), one
    dtype for all three. ``attn_mask`` is boolean (True = take part) or floating (added to the
    scores), broadcastable to ``(N, ..., Hq, L, S)``; ``is_causal`` is upper-left aligned, as in
    torch; ``scale`` defaults to ``1/sqrt(E)``; ``enable_gqa=True`` lets Hq be a multiple of Hkv.
    ``precision`` (keyword only; not torch's): fastattn's ``precision=`` (docs/precision.md); None
    takes ``torch.get_float32_matmul_precision()`` for float32 inputs, ``"highest"`` for the rest
    (``precision_for``).

    Differences from torch, each deliberate:

    - a query row that sees no key (its mask row is all False) returns zeros, where torch's math
      path returns NaN;
    - ``dropout_p > 0`` raises NotImplementedError (fastattn computes exact attention);
    - gradients flow to query, key and value; ``attn_mask`` is a constant, and a mask that
      requires grad raises NotImplementedError while autograd is recording;
    - a 1-D mask is taken for a 4-D query too (torch's math path takes it, its flash path raises
      IndexError); a non-finite ``scale`` raises ValueError (torch returns NaN);
    - errors name the argument; what torch refuses raises the type torch raises: shapes
      ``ShapeError`` (a ValueError and a RuntimeError), dtypes ``DTypeError`` (a TypeError and a
      RuntimeError), a scale that is not a number TypeError.

    Autograd runs fastattn's backward kernel (the weights are recomputed from the saved
    log-sum-exp, FlashAttention-2 style: no L×S matrix in either pass). Under ``torch.compile``
    the two ops stay in the graph (no graph break). Double backward is not supported.
    """
    precision = precision_for(query.dtype if isinstance(query, Tensor) else None, precision)
    if attn_mask is None and dropout_p == 0.0 and precision == "highest":
        out = _plain_sdpa(query, key, value, is_causal, scale, enable_gqa)
        if out is not None:
            return out
    tensors = {"query": query, "key": key, "value": value}
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"{name} is on {t.device}: fastattn.torch computes on CPU tensors")
        if t.dtype not in _DTYPES:
            raise DTypeError(f"{name}.dtype (={t.dtype}) must be torch.float32, float64, float16 or bfloat16")
        if t.dim() < 2:
            raise ShapeError(f"{name}.dim() (={t.dim()}) must be >= 2")
    for name in ("key", "value"):
        if tensors[name].dtype != query.dtype:
            raise DTypeError(f"{name}.dtype (={tensors[name].dtype}) must equal query.dtype (={query.dtype})")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if dropout_p != 0.0:
        raise NotImplementedError(f"dropout_p (={dropout_p}) must be 0: fastattn computes attention without dropout")
    if attn_mask is not None:
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.dtype not in (torch.bool, torch.float32, query.dtype):
            raise DTypeError(f"attn_mask.dtype (={attn_mask.dtype}) must be torch.bool, torch.float32 or "
                             f"query.dtype (={query.dtype}), as torch requires")
        if attn_mask.requires_grad and torch.is_grad_enabled():
            raise NotImplementedError("attn_mask requires grad, but fastattn gives no gradient for the mask: "
                                      "detach it, or use torch's own scaled_dot_product_attention")
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    query, key, value = _broadcast(query, key, value, enable_gqa)
    _check_sizes(query, key, value, attn_mask)
    return _attention(query, key, value, attn_mask, UPPER_LEFT if is_causal else NO_CAUSAL, float(scale),
                      precision=precision)


def _plain_sdpa(query: Any, key: Any, value: Any, is_causal: Any, scale: Any, enable_gqa: Any) -> Optional[Tensor]:
    """The most common call on the lean door, with the fewest checks: plain CPU tensors of one of
    fastattn's dtypes that need no gradient, no mask, outside torch.compile, with the C++ kernel built,
    whose NumPy views fastattn._api._plain_forward takes (4-D, non-empty, a contiguous last axis, shapes
    that match, a bool is_causal, a finite float scale or None) and whose head counts torch takes (equal,
    or a multiple with enable_gqa). Its result, or None for anything else, valid or not, which then takes
    scaled_dot_product_attention's checks (torch's error types) and _attention."""
    if torch.compiler.is_compiling() or not (type(query) is Tensor and type(key) is Tensor and type(value) is Tensor):
        return None
    requires_grad = query.requires_grad or key.requires_grad or value.requires_grad
    if requires_grad and torch.is_grad_enabled():
        return None
    dtype = query.dtype
    if key.dtype != dtype or value.dtype != dtype or not cpp_available():
        return None
    try:
        if dtype == torch.bfloat16 or requires_grad:
            q, k, v = _to_numpy(query), _to_numpy(key), _to_numpy(value)
        else:  # (float16, float32, float64; other dtypes _plain_forward refuses)
            q, k, v = query.numpy(), key.numpy(), value.numpy()
    except (TypeError, RuntimeError):  # off the CPU, conjugate or negative views, bfloat16 without ml_dtypes
        return None
    if q.ndim == 4 == k.ndim and q.shape[1] != k.shape[1] and enable_gqa is not True:
        return None  # torch refuses this call: its checks say how
    out = _plain_forward(q, k, v, is_causal, scale, False, None)
    return None if out is None else _from_numpy(out)


def _bfloat16_missing() -> bool:
    try:
        _bfloat16()
    except TypeError:
        return True
    return False


class ShapeError(ValueError, RuntimeError):
    """Shapes torch would refuse too: a ValueError, as fastattn's errors are, and a RuntimeError,
    as torch's are, so that code written for either catches it."""


class DTypeError(TypeError, RuntimeError):
    """dtypes torch would refuse too (mixed, unsupported, a mask's): a TypeError, as fastattn's
    errors are, and a RuntimeError, as torch's are."""


def _check_sizes(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor]) -> None:
    """After _broadcast: the feature and key axes agree, and the mask broadcasts to the scores'
    shape (..., Hq, L, S) without growing it, as torch requires."""
    if key.shape[-1] != query.shape[-1]:
        raise ShapeError(f"key.shape[-1] (={key.shape[-1]}) must equal query.shape[-1] (={query.shape[-1]})")
    if value.shape[-2] != key.shape[-2]:
        raise ShapeError(f"value.shape[-2] (={value.shape[-2]}) must equal key.shape[-2] (={key.shape[-2]})")
    if attn_mask is None:
        return
    scores = tuple(torch.broadcast_shapes(query.shape[:-3], key.shape[:-3])) + tuple(query.shape[-3:-1]) + \
        (key.shape[-2],)
    try:
        fits = attn_mask.dim() <= len(scores) and torch.broadcast_shapes(attn_mask.shape, scores) == scores
    except RuntimeError:
        fits = False
    if not fits:
        raise ShapeError(f"attn_mask.shape (={tuple(attn_mask.shape)}) must broadcast to the scores' shape {scores}")


def _broadcast(query: Tensor, key: Tensor, value: Tensor, enable_gqa: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """query, key and value broadcast against each other as torch does: the lower ranks get
    leading axes of 1, then every axis before (L, E) broadcasts, the head axis too (a single
    key/value head serves every query head, a single query head meets every key/value head);
    with enable_gqa, the head axes instead need Hq to be a multiple of Hkv. Views (expand): no
    copy, and autograd sums the gradients of broadcast axes back."""
    rank = max(query.dim(), key.dim(), value.dim())
    query, key, value = (t.reshape((1,) * (rank - t.dim()) + tuple(t.shape)) for t in (query, key, value))
    if rank == 2:
        return query, key, value
    heads = {"query": query.shape[-3], "key": key.shape[-3], "value": value.shape[-3]}
    if heads["key"] != heads["value"]:
        raise ShapeError(f"key.shape[-3] (={heads['key']}) must equal value.shape[-3] (={heads['value']})")
    if enable_gqa and heads["query"] % heads["key"]:
        raise ShapeError(f"query.shape[-3] (={heads['query']}) must be a multiple of key.shape[-3] "
                         f"(={heads['key']}) with enable_gqa=True")
    if not enable_gqa and heads["query"] != heads["key"] and 1 not in (heads["query"], heads["key"]):
        raise ShapeError(f"query.shape[-3] (={heads['query']}) must equal key.shape[-3] (={heads['key']}), or "
                         "one of them be 1, unless enable_gqa=True")
    lead = -3 if enable_gqa else -2  # the axes that broadcast: batch, and heads without GQA
    try:
        shape = torch.broadcast_shapes(query.shape[:lead], key.shape[:lead], value.shape[:lead])
    except RuntimeError:
        raise ShapeError(f"the batch axes of query {tuple(query.shape)}, key {tuple(key.shape)} and value "
                         f"{tuple(value.shape)} do not broadcast") from None
    return tuple(t if t.shape[:lead] == shape else t.expand(shape + t.shape[lead:])  # type: ignore[return-value]
                 for t in (query, key, value))


# ---- patching torch.nn.functional --------------------------------------------------------------

_original: Optional[Callable[..., Tensor]] = None


def _routable(query: Any, key: Any, value: Any, attn_mask: Any, dropout_p: float) -> bool:
    """Whether fastattn can take this call; the patch hands everything else to torch unchanged."""
    if not all(isinstance(t, Tensor) and t.device.type == "cpu" and not t.is_nested and t.dtype == query.dtype
               and t.dim() >= 2 for t in (query, key, value)):
        return False
    if query.dtype not in _DTYPES or dropout_p != 0.0:
        return False
    if query.dtype == torch.bfloat16:
        try:
            _bfloat16()
        except TypeError:
            return False
    if attn_mask is not None and (not isinstance(attn_mask, Tensor) or attn_mask.requires_grad):
        return False
    return True


_patch_precision: Optional[str] = None  # patch()'s precision


def _patched_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                  enable_gqa=False):
    if _routable(query, key, value, attn_mask, dropout_p):
        return scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                                            precision=_patch_precision)
    assert _original is not None
    return _original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                     scale=scale, enable_gqa=enable_gqa)


class _Patch:
    """What ``patch()`` returns: also a context manager that unpatches on exit."""

    def __enter__(self) -> "_Patch":
        return self

    def __exit__(self, *exc_info: object) -> None:
        unpatch()


def patch(precision: Optional[str] = None) -> _Patch:
    """Route CPU calls of ``torch.nn.functional.scaled_dot_product_attention`` to fastattn.

    Every module that calls the torch function through ``torch.nn.functional`` picks this up,
    ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` among them (in training, or
    whenever they don't take torch's fused inference fast path). Calls fastattn cannot take
    are passed to torch unchanged: tensors off the CPU or of other dtypes, nested tensors,
    ``dropout_p > 0``, a mask that requires grad. Idempotent; ``unpatch()`` restores the torch function, and
    ``with fastattn.torch.patch(): ...`` patches for a block. ``precision``: fastattn's for every routed
    call (None: ``precision_for``'s rule, torch's float32 matmul precision for float32).
    """
    global _original, _patch_precision
    if precision is not None:
        check_precision(precision)
    _patch_precision = precision
    if _original is None:
        _original = torch.nn.functional.scaled_dot_product_attention
        torch.nn.functional.scaled_dot_product_attention = _patched_sdpa
    return _Patch()


def unpatch() -> None:
    """Restore torch's own ``scaled_dot_product_attention`` (a no-op when not patched)."""
    global _original
    if _original is not None:
        torch.nn.functional.scaled_dot_product_attention = _original
        _original = None


def is_patched() -> bool:
    return _original is not None
