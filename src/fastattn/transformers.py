"""fastattn as a Hugging Face transformers attention backend: ``attn_implementation="fastattn"``.

    import fastattn.transformers
    fastattn.transformers.register()
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="fastattn")

``register()`` adds the implementation ``"fastattn"`` to transformers' ``AttentionInterface`` and its
mask style to ``AttentionMaskInterface``; no module is patched. The mask style describes the mask
instead of building it (``Mask``): causal, sliding windows (``window=(sliding_window − 1, 0)``, as
transformers keeps keys with kv > q − sliding_window) and key padding become fastattn's ``causal=``,
``window=`` and a ``(B, 1, 1, Lk)`` boolean view, so the kernel skips the blocks they mask and nothing
of size Lq×Lk is built; a pattern it does not recognise (packed sequences, chunked or custom masks)
becomes transformers' own boolean mask, which the kernel also takes. GQA runs without ``repeat_kv``;
``scaling``, ``softcap`` (Gemma 2) and the module's sinks (``s_aux``, GPT-OSS) go to the kernel;
gradients flow to the query, key, value and sinks.

What fastattn cannot take runs on the model's own eager attention, never on ``sdpa`` (which drops
softcap and sinks): dropout while training, tensors off the CPU or of other dtypes, attention weights
asked for (``output_attentions``), a position bias. Each such call counts in ``fallbacks`` (reason ->
calls), logs a line at DEBUG level on the ``fastattn.transformers`` logger, and the first of each
reason a WARNING.

Needs torch and transformers (``pip install "fastattn[transformers]"``, torch's CPU build first).
"""

from __future__ import annotations

import collections
import logging
import math
import sys
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import numpy as np

try:
    import torch
    from transformers import masking_utils
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface
except ImportError as exc:  # pragma: no cover - only without them
    raise ImportError('fastattn.transformers needs torch and transformers>=4.53: pip install "fastattn[transformers]" '
                      '(torch\'s CPU build first)') from exc

from . import torch as fat
from ._api import forward_prepared, plain_kernel
from ._backend import cpp_available
from ._contract import FLOAT32, FLOAT64, LOWER_RIGHT, NO_CAUSAL, PRECISIONS, UPPER_LEFT, check_softcap, normal_options

__all__ = ["register", "attention_forward", "mask", "Mask", "fallbacks", "NAME"]

NAME = "fastattn"
logger = logging.getLogger(__name__)

# reason -> calls that ran on the model's eager attention instead (see the module's docstring).
fallbacks: "collections.Counter[str]" = collections.Counter()



_precision: Optional[str] = None  # register()'s


def register(precision: Optional[str] = None) -> None:
    """Register ``"fastattn"`` with transformers' AttentionInterface and AttentionMaskInterface, so that
    ``from_pretrained(..., attn_implementation="fastattn")`` (and a config's ``attn_implementation``, and
    ``model.set_attn_implementation("fastattn")``) run fastattn. Idempotent. ``precision``: fastattn's
    ``precision=`` for every call (docs/precision.md); None: ``fastattn.torch.precision_for``'s rule
    (torch's float32 matmul precision for float32 models, "highest" for the rest)."""
    global _precision
    if precision is not None:
        fat.precision_for(None, precision)  # checks it
    _precision = precision
    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, mask)


# ---- the mask ------------------------------------------------------------------------------------

# transformers takes a 4-D tensor or a flex-attention BlockMask as a mask already made (create_causal_mask
# returns it as it is; generate() makes a compileable cache's masks in advance and passes them to forward):
# a Mask is a BlockMask to it, with a 4-D shape, so that it is passed through the same way.
_Prepared: Any = masking_utils.BlockMask if masking_utils.BlockMask is not torch.Tensor else object


class Mask(_Prepared):
    """What the ``"fastattn"`` mask style gives every attention layer of one forward: the mask described.

    ``causal``: query i sees keys j <= i + ``offset`` (``offset`` = the query's first position minus the
    first key's; transformers' absolute positions), else every key; ``window``: ``(left, right)`` around
    that diagonal, or None; ``padding``: ``(B, Lk)`` bool, False for padded keys, or None when no key is
    padded; ``lengths``: ``(B,)`` int64, each row's number of keys when the padding is all at the end of
    the rows (right padding: fastattn's ``kv_lengths``, which skips those keys), else None; ``dense``:
    transformers' own ``(B, 1, Lq, Lk)`` boolean mask for a pattern not recognised (the fields above are
    then unused), else None. ``eager()`` builds the additive mask transformers' eager attention would
    have got, for the calls that fall back to it."""

    def __init__(self, causal: bool, offset: int, window: Optional[Tuple[int, int]], padding: Optional[torch.Tensor],
                 dense: Optional[torch.Tensor], factory: Dict[str, Any]) -> None:  # (no BlockMask.__init__: no blocks)
        self.causal, self.offset, self.window, self.padding, self.dense = causal, offset, window, padding, dense
        self.lengths: Optional[torch.Tensor] = None
        if padding is not None:
            lengths = padding.sum(-1)
            if torch.equal(padding, torch.arange(padding.shape[-1]) < lengths[:, None]):
                self.lengths = lengths
        self._factory = factory
        self._eager: Optional[torch.Tensor] = None
        self._plans: Dict[Tuple[Any, ...], Optional[_Plan]] = {}  # every layer of a forward asks with its shape

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        """(B, 1, Lq, Lk), as transformers' 4-D masks."""
        factory = self._factory
        q_length = factory["q_length"] if "q_length" in factory else len(factory["cache_position"])
        return (factory["batch_size"], 1, q_length, factory["kv_length"])

    def eager(self) -> Optional[torch.Tensor]:
        if self._eager is None:
            self._eager = masking_utils.eager_mask(**self._factory)
        return self._eager

    def __repr__(self) -> str:
        if self.dense is not None:
            return f"Mask(dense {tuple(self.dense.shape)})"
        padding = None if self.padding is None else tuple(self.padding.shape)
        return f"Mask(causal={self.causal}, offset={self.offset}, window={self.window}, padding={padding})"


def mask(batch_size: int, q_length: Optional[int] = None, kv_length: int = 0, q_offset: Any = 0, kv_offset: int = 0,
         mask_function: Callable = masking_utils.causal_mask_function, attention_mask: Optional[torch.Tensor] = None,
         cache_position: Optional[torch.Tensor] = None, **kwargs: Any) -> Mask:
    """The ``"fastattn"`` mask style (transformers' AttentionMaskInterface): a ``Mask`` for the arguments
    transformers gives every mask style (before 5.0, the queries' positions as ``cache_position``)."""
    factory = dict(kwargs, batch_size=batch_size, kv_length=kv_length, kv_offset=kv_offset,
                   mask_function=mask_function, attention_mask=attention_mask)
    if cache_position is not None:
        factory["cache_position"] = cache_position
        q_length = len(cache_position)
        q_offset = cache_position[0] if q_length else 0
    else:
        factory.update(q_length=q_length, q_offset=q_offset)
    pattern = None if torch.compiler.is_compiling() else _pattern(mask_function)
    if pattern is None:  # transformers' boolean mask, which fastattn takes as it is
        dense = masking_utils.sdpa_mask(**dict(factory, allow_is_causal_skip=False, allow_is_bidirectional_skip=False))
        return Mask(False, 0, None, None, dense, factory)
    causal, window = pattern
    offset = int(q_offset) - int(kv_offset)
    padding = None
    if attention_mask is not None:
        padding = attention_mask[:, kv_offset:kv_offset + kv_length].bool()
        if padding.shape[-1] < kv_length:  # keys past the mask (a static cache's free slots) are masked
            padding = torch.nn.functional.pad(padding, (0, kv_length - padding.shape[-1]))
        if bool(padding.all()):
            padding = None
    return Mask(causal, offset, window, padding, None, factory)


def _pattern(mask_function: Callable) -> Optional[Tuple[bool, Optional[Tuple[int, int]]]]:
    """(causal, window) of a mask function transformers composes, or None for one not recognised.
    A recognised function is also checked against the rule it stands for on a grid of positions, once
    per rule: a transformers whose function meant something else would get the dense mask, not a
    wrong result."""
    if mask_function is masking_utils.causal_mask_function:
        pattern: Tuple[bool, Optional[Tuple[int, int]]] = (True, None)
    elif mask_function is getattr(masking_utils, "bidirectional_mask_function", None):
        pattern = (False, None)
    else:
        parts = _closure(mask_function, "and_masks.<locals>.and_mask").get("mask_functions", ())
        if len(parts) != 2:
            return None
        overlay, base = parts
        causal = base is masking_utils.causal_mask_function
        name = "sliding_window_overlay" if causal else "sliding_window_bidirectional_overlay"
        size = _closure(overlay, f"{name}.<locals>.inner_mask").get("sliding_window")
        if type(size) is not int or size < 1 or not causal and base is not getattr(
                masking_utils, "bidirectional_mask_function", None):
            return None
        pattern = (True, (size - 1, 0)) if causal else (False, (size, size))
    return pattern if _checked(pattern, mask_function) else None


def _closure(function: Callable, qualname: str) -> Dict[str, Any]:
    """The variables a closure of transformers.masking_utils with this qualified name holds, else {}."""
    if getattr(function, "__qualname__", None) != qualname or function.__module__ != masking_utils.__name__:
        return {}
    return dict(zip(function.__code__.co_freevars, (cell.cell_contents for cell in function.__closure__ or ())))


_CHECKED: Dict[Tuple[bool, Optional[Tuple[int, int]]], bool] = {}


def _checked(pattern: Tuple[bool, Optional[Tuple[int, int]]], mask_function: Callable) -> bool:
    """Whether mask_function keeps exactly the keys `pattern` keeps, for queries at and around the
    window's edges against every key position of a span twice the window's (memoised per pattern)."""
    if pattern not in _CHECKED:
        causal, window = pattern
        w = max(window or (0, 0))
        n = 2 * w + 8
        q = torch.tensor(sorted({0, 1, 2, w - 1, w, w + 1, w + 2, n // 2, n - 2, n - 1} - {-1}))[:, None]
        kv = torch.arange(n)[None, :]
        want = (kv <= q) if causal else torch.ones(len(q), n, dtype=torch.bool)
        if window is not None:
            want &= (kv >= q - window[0]) & (kv <= q + window[1])
        zero = torch.zeros(1, dtype=torch.long)
        try:
            got = mask_function(zero, zero, q, kv)
            _CHECKED[pattern] = bool(torch.equal(torch.broadcast_to(got, want.shape), want))
        except Exception:  # a function that cannot run on index grids is not one of these
            _CHECKED[pattern] = False
    return _CHECKED[pattern]


# ---- the attention -------------------------------------------------------------------------------

class _Plan(NamedTuple):
    """How fastattn runs the calls of one mask and shape: a causal code, a window (-1: an unbounded side),
    kv_lengths (B,) or None, and a mask tensor (B or 1, 1, Lq or 1, Lk) or None; for the lean door, the
    same as NumPy arrays (the mask as the (B, Hq, Lq, Lk) view the kernel reads, in the compute dtype)."""

    causal: int
    window: Tuple[int, int]
    lengths: Optional[torch.Tensor]
    mask: Optional[torch.Tensor]
    lengths_array: Optional[np.ndarray]
    mask_view: Optional[np.ndarray]
    plain: bool  # no rule but causal or none: fastattn._api.plain_kernel can run it


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Any, **kwargs: Any) -> Tuple[torch.Tensor, None]:
    """The ``"fastattn"`` attention implementation (transformers' AttentionInterface): query
    ``(B, Hq, Lq, D)``, key ``(B, Hkv, Lk, D)``, value ``(B, Hkv, Lk, Dv)`` with Hq a multiple of Hkv, the
    mask the ``"fastattn"`` mask style made (a ``Mask``), a tensor (boolean, or added to the scores) or
    None; returns ``(out (B, Lq, Hq, Dv), None)``. Reads ``scaling``, ``dropout``, ``softcap``, ``s_aux``
    (sinks) and ``is_causal`` from kwargs; a call it cannot take runs the model's eager attention with
    the same arguments (counted in ``fallbacks``)."""
    reason = _why_eager(module, query, key, value, attention_mask, kwargs)
    if reason is not None:
        return _eager(reason, module, query, key, value, attention_mask, kwargs)
    batch, hq, lq, d = query.shape
    dtype = query.dtype
    plan = _plan(module, attention_mask, kwargs.get("is_causal"), batch, hq, lq, key.shape[2], dtype)
    if plan is None:
        return _eager("a mask fastattn cannot place on these keys", module, query, key, value, attention_mask, kwargs)
    scaling = kwargs.get("scaling")
    scale = float(scaling) if scaling is not None else 1.0 / math.sqrt(d)
    softcap = kwargs.get("softcap")
    if softcap is not None:
        softcap = check_softcap(float(softcap), FLOAT64 if dtype == torch.float64 else FLOAT32)
    sinks = kwargs.get("s_aux")
    left, right = plan.window
    precision = fat.precision_for(dtype, _precision)

    if not fat._wants_grad(query, key, value, sinks) and fat._lean(query, key, value):
        q, k, v = fat._to_numpy(query), fat._to_numpy(key), fat._to_numpy(value)
        # The output in the (B, Lq, Hq, Dv) layout the model reads next, the kernel writing through a
        # (B, Hq, Lq, Dv) view of it: no transposing copy (~70 µs a MiniLM-sized call inside a model).
        result = torch.empty((batch, lq, hq, value.shape[3]), dtype=dtype)
        out = fat._to_numpy(result).transpose(0, 2, 1, 3)
        if plan.plain and sinks is None and not softcap and precision == "highest" and cpp_available():
            # No option but causality: the plain call's route (inside a model the Python runs with cold
            # caches, so each layer skipped shows: ~25 µs a decode call).
            plain_kernel(q, k, v, plan.causal == UPPER_LEFT, scale, False, 0, out)
            return result, None
        sinks64 = None
        if sinks is not None:
            sinks64 = fat._to_numpy(sinks).astype(np.float64)
            if batch > 1:
                sinks64 = np.tile(sinks64, batch)
        options = normal_options(scale=scale, causal=plan.causal, mask=plan.mask_view, kv_lengths=plan.lengths_array,
                                 window=plan.window, softcap=softcap or 0.0, sinks=sinks64,
                                 precision=PRECISIONS[precision])
        forward_prepared(q, k, v, out, options)
        return result, None
    out = fat._attention(query, key, value, plan.mask, plan.causal, scale, left, right, softcap or 0.0, sinks,
                         plan.lengths, precision)
    return out.transpose(1, 2).contiguous(), None


def _plan(module: torch.nn.Module, attention_mask: Any, is_causal: Optional[bool], batch: int, hq: int, lq: int,
          lk: int, dtype: torch.dtype) -> Optional[_Plan]:
    """The _Plan of a call, made once per Mask and shape (the layers of a forward share it); None where no
    causal code places the mask's diagonal on these keys."""
    if not isinstance(attention_mask, Mask):
        return _make_plan(module, attention_mask, is_causal, batch, hq, lq, lk, dtype)
    key = (batch, hq, lq, lk, dtype)
    plans = attention_mask._plans
    if key not in plans:
        plans[key] = _make_plan(module, attention_mask, is_causal, batch, hq, lq, lk, dtype)
    return plans[key]


def _make_plan(module: torch.nn.Module, attention_mask: Any, is_causal: Optional[bool], batch: int, hq: int, lq: int,
               lk: int, dtype: torch.dtype) -> Optional[_Plan]:
    rule = _rule(module, attention_mask, is_causal, lq, lk)
    if rule is None:
        return None
    causal, window, offset_length, mask = rule
    lengths = None
    if offset_length is not None:  # lower-right with kv_lengths = offset + Lq puts the diagonal where it belongs
        lengths = torch.full((batch,), offset_length, dtype=torch.int64)
    elif isinstance(attention_mask, Mask) and attention_mask.lengths is not None and causal != LOWER_RIGHT:
        lengths, mask = attention_mask.lengths, None  # right padding: the keys past each row's length are skipped
    if mask is not None and (mask.dim() != 4 or mask.shape[-1] != lk):
        return None  # a mask made for other keys
    mask_view = None
    if mask is not None:
        mask_view = fat._to_numpy(mask)
        if mask_view.dtype != np.bool_:
            mask_view = mask_view.astype(FLOAT64 if dtype == torch.float64 else FLOAT32, copy=False)
        mask_view = np.broadcast_to(mask_view, (batch, hq, lq, lk))
    lengths_array = None if lengths is None else np.ascontiguousarray(lengths.numpy(), dtype=np.int64)
    plain = mask is None and lengths is None and window == (-1, -1) and causal in (NO_CAUSAL, UPPER_LEFT)
    return _Plan(causal, window, lengths, mask, lengths_array, mask_view, plain)


def _rule(module: torch.nn.Module, attention_mask: Any, is_causal: Optional[bool], lq: int,
          lk: int) -> Optional[Tuple[int, Tuple[int, int], Optional[int], Optional[torch.Tensor]]]:
    """(causal code, window, kv_lengths that place the diagonal or None, mask tensor or None) for fastattn;
    None where no causal code places the mask's diagonal."""
    if attention_mask is None:  # as sdpa: the module's causality (upper-left), for more than one query
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        return (UPPER_LEFT if causal and lq > 1 else NO_CAUSAL), (-1, -1), None, None
    if isinstance(attention_mask, torch.Tensor):
        return NO_CAUSAL, (-1, -1), None, attention_mask
    if attention_mask.dense is not None:
        return NO_CAUSAL, (-1, -1), None, attention_mask.dense
    padding = None if attention_mask.padding is None else attention_mask.padding[:, None, None, :]
    window = attention_mask.window
    if not attention_mask.causal:
        if window is not None and attention_mask.offset != 0:  # the window's diagonal is fastattn's only at 0
            return None
        return NO_CAUSAL, window or (-1, -1), None, padding
    offset = attention_mask.offset  # query i sees keys j <= i + offset
    left = -1 if window is None or window[0] >= offset + lq - 1 else window[0]  # a window wider than every row: none
    if left < 0 and offset >= lk - 1:  # every row sees every key (decoding): no rule at all
        return NO_CAUSAL, (-1, -1), None, padding
    if offset == 0:
        return UPPER_LEFT, (left, -1), None, padding
    if offset == lk - lq:
        return LOWER_RIGHT, (left, -1), None, padding
    if 0 <= offset + lq <= lk:
        return LOWER_RIGHT, (left, -1), offset + lq, padding
    return None


def _why_eager(module: torch.nn.Module, query: Any, key: Any, value: Any, attention_mask: Any,
               kwargs: Dict[str, Any]) -> Optional[str]:
    """Why fastattn cannot take this call (then the model's eager attention runs it), or None."""
    if kwargs.get("dropout") and module.training:
        return "attention dropout while training"
    for t in (query, key, value):
        if not isinstance(t, torch.Tensor) or not t.is_cpu:
            return "tensors off the CPU"
    if query.dtype not in fat._DTYPES or key.dtype != query.dtype or value.dtype != query.dtype:
        return f"dtype {query.dtype}, {key.dtype}, {value.dtype}"
    if query.dtype == torch.bfloat16 and fat._bfloat16_missing():
        return "bfloat16 without ml_dtypes"
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4 or key.shape[1] == 0 or \
            query.shape[1] % key.shape[1] or query.shape[0] != key.shape[0]:
        return "shapes fastattn does not take"
    if kwargs.get("output_attentions") or _attentions_recorded():
        return "attention weights asked for (output_attentions)"
    if kwargs.get("position_bias") is not None:
        return "a position bias"
    if kwargs.get("s_aux") is None and "sinks" in getattr(module, "_parameters", ()):
        return "sinks the call does not pass as s_aux"
    if attention_mask is not None and not isinstance(attention_mask, (Mask, torch.Tensor)):
        return f"an attention mask of type {type(attention_mask).__name__}"
    return None


_collector: Any = None
try:  # transformers >= 5.0 records attention weights with hooks, asked for through this context variable
    from transformers.utils.output_capturing import _active_collector as _collector
except ImportError:  # before: output_attentions reaches the attention function as a keyword
    pass


def _attentions_recorded() -> bool:
    """Whether transformers is recording the attention weights of this forward (5.x)."""
    outputs = None if _collector is None else _collector.get()
    return outputs is not None and "attentions" in outputs


_warned: set = set()


def _eager(reason: str, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           attention_mask: Any, kwargs: Dict[str, Any]) -> Any:
    """The model's own eager attention (its module's eager_attention_forward) on the same arguments,
    with the additive mask transformers' eager mask style would have made; counted and logged."""
    fallbacks[reason] += 1
    name = type(module).__name__
    logger.debug("%s: %s; transformers' eager attention runs this call", name, reason)
    if reason not in _warned:
        _warned.add(reason)
        logger.warning("fastattn: %s (%s): these calls run on transformers' eager attention "
                       "(fastattn.transformers.fallbacks counts them)", reason, name)
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is None:
        raise NotImplementedError(f"fastattn cannot take this call ({reason}), and {type(module).__module__} has "
                                  f"no eager_attention_forward to run it")
    if isinstance(attention_mask, Mask):
        attention_mask = attention_mask.eager()
    return eager(module, query, key, value, attention_mask, **kwargs)
