"""fastattn for JAX on the CPU: a drop-in ``dot_product_attention``.

``dot_product_attention`` takes the arguments of ``jax.nn.dot_product_attention`` and runs
fastattn's kernels on the host: the forward through ``attention`` and the backward through
``attention_backward``, each inside a ``jax.pure_callback``, tied together by a ``jax.custom_vjp``.
It works eagerly and under ``jax.jit``, ``jax.grad`` and ``jax.vmap``. The callbacks read JAX's
CPU buffers as NumPy views and swap their axes as views too (fastattn reads strided arrays in
place): query, key, value, bias and mask are not copied on the way to the kernels. ::

    import jax
    from fastattn.jax import dot_product_attention

    out = dot_product_attention(q, k, v, is_causal=True)             # q (B, T, N, H), k/v (B, S, K, H)
    dq = jax.grad(lambda q: dot_product_attention(q, k, v).sum())(q)  # also under jax.jit, jax.vmap

Needs JAX (``pip install jax``); ``import fastattn`` never imports this module or JAX.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np

try:  # an absolute import: the real JAX, not this module
    import jax
    import jax.numpy as jnp
    from jax.custom_derivatives import SymbolicZero, custom_vjp_primal_tree_values
except ImportError as exc:
    raise ImportError("fastattn.jax needs JAX: pip install jax") from exc

from . import _api, _contract

__all__ = ["dot_product_attention"]

# Under jax.vmap a callback sees every argument with the vmapped axes in front, of size 1 where an
# argument is not mapped: fastattn takes any leading batch axes (_host_arrays), so one kernel call
# covers the whole vmapped batch, where "sequential" would loop.
_VMAP_METHOD = "expand_dims"

# Appended to fastattn's TypeError/ValueError, whose messages name fastattn's arguments and axes.
_NAMES_NOTE = (" [fastattn.jax calls fastattn.attention with q, k, v = query, key, value with their T and N "
               "axes swapped, (B, N, T, H); mask = bias and/or mask; q_lengths, kv_lengths = "
               "query_seq_lengths, key_value_seq_lengths; window = local_window_size]")


class _Options(NamedTuple):
    """The static options, passed on to fastattn as they are (hashable: a custom_vjp nondiff arg)."""

    scale: Optional[float]
    causal: Union[bool, str]
    window: Optional[Tuple[Optional[int], Optional[int]]]


def dot_product_attention(query, key, value, bias=None, mask=None, *, scale: Optional[float] = None,
                          is_causal: Union[bool, str] = False, query_seq_lengths=None,
                          key_value_seq_lengths=None,
                          local_window_size: Union[int, Tuple[int, int], None] = None):
    """``jax.nn.dot_product_attention`` computed by fastattn's kernels on the host CPU.

    ``softmax(query·keyᵀ·scale + bias)·value`` per head, with JAX's layout::

        query  (B, T, N, H)   or (T, N, H)      T queries, N query heads
        key    (B, S, K, H)   or (S, K, H)      S keys, K key/value heads; N % K == 0 (GQA/MQA:
        value  (B, S, K, Hv)  or (S, K, Hv)     query head n uses key/value head n // (N // K))
        out    (B, T, N, Hv)  or (T, N, Hv)     query's dtype

    query, key and value are float32, float16, bfloat16, or float64 (with ``jax_enable_x64``),
    all of one dtype. The 16-bit types are computed in float32 and rounded once at the end.

    The options map onto ``fastattn.attention`` (whose layout is (B, N, T, H): the callbacks
    swap the T and N axes of NumPy views, no copy)::

        bias (additive, broadcastable to (B, N, T, S))   ->  mask= (a float mask is added)
        mask (bool, True = attend, same shapes)           ->  mask= (boolean)
        bias and mask                                     ->  mask= where(mask, bias, -inf)
        scale (default 1 / sqrt(H))                       ->  scale=
        is_causal (query i sees keys j <= i: tril)        ->  causal=
        query_seq_lengths (B,)                            ->  q_lengths=  (rows i >= it: zeros)
        key_value_seq_lengths (B,)                        ->  kv_lengths= (keys j >= it: unseen)
        local_window_size w or (left, right)              ->  window=(w, w) or (left, right):
                                                              keys i - left <= j <= i + right

    Differences from ``jax.nn.dot_product_attention``:

    - A query row that sees no key (a mask row that is all False, a key_value_seq_length of 0, a
      window or causal mask that leaves nothing) returns **zeros**, and gets and passes on zero
      gradients. jax.nn's XLA path fills masked scores with a large finite negative number, so
      such a row returns the mean of ``value`` over all S keys (or NaN where a bias row is all
      -inf). Rows ``i >= query_seq_lengths[b]`` are zeros in both.
    - No gradient with respect to ``bias``: ``jax.grad`` through a bias that depends on the
      differentiated inputs raises ``NotImplementedError`` (fastattn's backward never forms the
      T×S score gradient it would need). Pass ``jax.lax.stop_gradient(bias)`` to treat it as a
      constant. Gradients with respect to query, key and value are exact; masks and lengths have
      none in either. Forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``) is not supported
      (a ``custom_vjp``).
    - ``scale``, ``is_causal`` and ``local_window_size`` are static Python values, not traced
      arrays. There is no ``implementation`` or ``return_residual`` argument.
    - Sequence lengths outside [0, T] / [0, S] act as the nearest end (that is what jax.nn's
      masks do); they may be any integer dtype and a scalar broadcasts over the batch.
    - Extensions: ``value`` may have its own head size Hv; ``is_causal="lower_right"`` aligns the
      last query with the last key (KV-cache decoding, fastattn's ``causal="lower_right"``); a
      window side of ``None`` is unbounded.
    - 16-bit inputs round once, at the end (jax.nn also rounds the attention weights to 16 bits
      before multiplying by ``value``); the backward gets the forward's lse in float32.
    - Invalid arguments raise fastattn's ``TypeError``/``ValueError`` when the call is traced;
      their messages name fastattn's arguments (q, k, v in the (B, N, T, H) layout).
    - No second derivatives (``jax.hessian``): the backward is a callback too.

    The work runs on the host CPU, also when JAX computes elsewhere (``pure_callback`` moves the
    arrays). Each pass is one kernel call: under ``jax.grad`` the forward also returns the lse
    that the backward needs, and under ``jax.vmap`` one call covers the whole vmapped batch.
    """
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    ndims = (query.ndim, key.ndim, value.ndim)
    if ndims not in ((4, 4, 4), (3, 3, 3)):
        raise ValueError(f"query, key and value must all be 4-D, (B, T, N, H) and (B, S, K, H), or all 3-D, "
                         f"(T, N, H) and (S, K, H); got ndim {ndims}")
    unbatched = query.ndim == 3
    if unbatched:  # as jax.nn does: a batch of one (a bias or mask is right-aligned, so it fits)
        query, key, value = query[None], key[None], value[None]

    if bias is not None:
        bias = jnp.asarray(bias)
        if not jnp.issubdtype(bias.dtype, jnp.floating):
            bias = bias.astype(jnp.float32)  # jax.nn adds an integer bias too
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:  # fastattn would add a float mask: say so rather than guess
            raise TypeError(f"mask.dtype (={mask.dtype}) must be bool (True = may attend); pass an additive "
                            "mask as bias")
    if bias is not None and mask is not None:
        # fastattn takes one mask. -inf where mask is False is exactly what a boolean mask does;
        # the two are broadcast together here (jax.nn broadcasts them to the logits' shape).
        mask = jnp.where(mask, bias, -jnp.inf)
    elif bias is not None:
        mask = bias

    window: Optional[tuple] = None
    if isinstance(local_window_size, (tuple, list)):
        window = tuple(local_window_size)  # hashable: the options are static
    elif local_window_size is not None:
        window = (local_window_size, local_window_size)  # jax.nn: an int is symmetric
    options = _Options(None if scale is None else float(scale), is_causal, window)
    _check(options, query, key, value, mask, query_seq_lengths, key_value_seq_lengths)

    batch, t, s = query.shape[0], query.shape[1], key.shape[1]
    q_lengths = _lengths(query_seq_lengths, batch, t)
    kv_lengths = _lengths(key_value_seq_lengths, batch, s)
    out = _attention(options, query, key, value, mask, q_lengths, kv_lengths)
    return out[0] if unbatched else out


def _check(options: _Options, q, k, v, mask, q_lengths, kv_lengths) -> None:
    """fastattn's own argument checks, run on stand-ins when the call is traced: raised inside a
    callback, an exception would reach the caller only as an opaque JaxRuntimeError. (Length
    values are not known then; _lengths clips them instead.)"""

    def stand_in(x, dtype=None):
        x = jnp.asarray(x)
        return _contract.stand_in(x.shape, x.dtype if dtype is None else dtype)

    q, k, v = (_t_n(stand_in(x)) for x in (q, k, v))
    if mask is not None:  # a float mask of the compute dtype: fastattn would convert another at full size
        mask = stand_in(mask, None if mask.dtype == jnp.bool_ else _contract.compute_dtype(q.dtype))
    q_lengths, kv_lengths = (None if x is None else stand_in(x) for x in (q_lengths, kv_lengths))
    try:  # the internal function behind fastattn.attention's checks (it allocates nothing)
        _contract.normalise(q, k, v, causal=options.causal, scale=options.scale, mask=mask, kv_lengths=kv_lengths,
                            q_lengths=q_lengths, window=options.window)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{exc}{_NAMES_NOTE}") from None


def _lengths(lengths, batch: int, limit: int):
    """(B,) int32 lengths clipped to [0, limit], as jax.nn's masks treat them; or None."""
    if lengths is None:
        return None
    lengths = jnp.asarray(lengths)
    return jnp.broadcast_to(jnp.clip(lengths, 0, limit).astype(jnp.int32), (batch,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(options: _Options, q, k, v, mask, q_lengths, kv_lengths):
    """The output (B, T, N, Hv), without the lse: the call when no gradient is taken."""
    b, t, n, _ = q.shape
    shape = jax.ShapeDtypeStruct((b, t, n, v.shape[-1]), q.dtype)
    return jax.pure_callback(_callback(_host_forward, options, False), shape, q, k, v, mask, q_lengths,
                             kv_lengths, vmap_method=_VMAP_METHOD)


def _attention_fwd(options: _Options, q, k, v, mask, q_lengths, kv_lengths):
    # symbolic_zeros=True: each argument comes as a CustomVJPPrimal whose `perturbed` tells
    # whether the gradient depends on it, so a bias gradient fails only when it is asked for.
    if mask is not None and mask.perturbed:
        raise NotImplementedError(
            "fastattn.jax.dot_product_attention has no gradient with respect to bias: its backward "
            "never forms the T×S gradient of the scores. Pass jax.lax.stop_gradient(bias) to treat the "
            "bias as a constant, or use jax.nn.dot_product_attention to learn it")
    args = custom_vjp_primal_tree_values((q, k, v, mask, q_lengths, kv_lengths))
    q, v = args[0], args[2]
    b, t, n, _ = q.shape
    # out stays in fastattn's layout as a residual: attention_backward then reads it without a copy
    shapes = (jax.ShapeDtypeStruct((b, n, t, v.shape[-1]), q.dtype),
              jax.ShapeDtypeStruct((b, n, t), _contract.compute_dtype(q.dtype)))  # lse's dtype
    out, lse = jax.pure_callback(_callback(_host_forward, options, True), shapes, *args,
                                 vmap_method=_VMAP_METHOD)
    return jnp.swapaxes(out, 1, 2), (args, out, lse)


def _attention_bwd(options: _Options, residuals, dout):
    args, out, lse = residuals
    if type(dout) is SymbolicZero:  # the output does not reach the loss
        return (None,) * 6
    shapes = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in args[:3])
    dq, dk, dv = jax.pure_callback(_callback(_host_grads, options), shapes, dout, out, lse, *args,
                                   vmap_method=_VMAP_METHOD)
    return dq, dk, dv, None, None, None  # None: no gradient for the mask/bias and the lengths


_attention.defvjp(_attention_fwd, _attention_bwd, symbolic_zeros=True)


@functools.lru_cache(maxsize=None)
def _callback(function, *args):
    """functools.partial(function, *args), the same object for the same arguments: JAX caches what
    it compiles for a callback by the callable, so a new partial on every eager call would
    recompile every time."""
    return functools.partial(function, *args)


def _host_forward(options: _Options, with_lse: bool, q, k, v, mask, q_lengths, kv_lengths):
    """On the host: out in JAX's layout (B, T, N, Hv), or (out, lse) in fastattn's (B, N, T, ...)."""
    (q, k, v), masks = _host_arrays((q, k, v), mask, q_lengths, kv_lengths)
    if not with_lse:  # JAX copies the result into its own buffer either way
        return _t_n(_api.attention(_t_n(q), _t_n(k), _t_n(v), **masks, **options._asdict()))
    out, lse = _api.attention(_t_n(q), _t_n(k), _t_n(v), return_lse=True, **masks, **options._asdict())
    return out, lse.astype(_contract.compute_dtype(q.dtype), copy=False)  # the declared dtype; no copy when it has it


def _host_grads(options: _Options, dout, out, lse, q, k, v, mask, q_lengths, kv_lengths):
    """On the host: (dq, dk, dv) in JAX's layout."""
    (q, k, v, dout, out, lse), masks = _host_arrays((q, k, v, dout, out, lse), mask, q_lengths, kv_lengths)
    grads = _api.attention_backward(_t_n(dout), _t_n(q), _t_n(k), _t_n(v), out, lse, **masks, **options._asdict())
    return tuple(_t_n(g) for g in grads)


def _t_n(x: np.ndarray) -> np.ndarray:
    """A view with the T and N axes swapped: JAX's (..., T, N, H) <-> fastattn's (..., N, T, H)."""
    return x.swapaxes(-3, -2)


def _host_arrays(arrays, mask, q_lengths, kv_lengths):
    """The callback's arguments as NumPy views of JAX's buffers, ready for fastattn: ``arrays``
    (query first) broadcast to one batch shape, and the keyword arguments mask, q_lengths and
    kv_lengths (which fastattn broadcasts itself).

    Under jax.vmap every argument arrives with the same number of leading vmap axes, of size 1
    where it is not mapped, before its own (B, ...); fastattn wants the batch axes of q, k, v (and
    dout, out, lse) equal, so they are broadcast with stride-0 views. A bias/mask of fewer than 4
    axes gets size-1 axes after the vmap axes, as jax.nn right-aligns it to (B, N, T, S).
    """
    arrays = [np.asarray(x) for x in arrays]
    lead = arrays[0].ndim - 3  # the vmap axes, then B
    if mask is not None:
        mask = np.asarray(mask)
        mask = mask.reshape(mask.shape[:lead - 1] + (1,) * (lead + 3 - mask.ndim) + mask.shape[lead - 1:])
    q_lengths, kv_lengths = (None if x is None else np.asarray(x) for x in (q_lengths, kv_lengths))
    present = [x for x in (*arrays, mask, q_lengths, kv_lengths) if x is not None]
    batch = np.broadcast_shapes(*(x.shape[:lead] for x in present))
    arrays = [np.broadcast_to(x, batch + x.shape[lead:]) for x in arrays]
    return arrays, dict(mask=mask, q_lengths=q_lengths, kv_lengths=kv_lengths)
