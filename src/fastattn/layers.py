"""Layers built on ``attention`` / ``attention_backward``: NumPy parameters, explicit backward.

``MultiHeadAttention`` is the usual projection → attention → projection block, with the forward
pass running fastattn's kernel (no Lq×Lk matrix) and the backward pass its FlashAttention-2
style gradient kernel. There is no autograd: ``forward`` caches what ``backward`` needs, and
``backward(dy)`` fills the parameter gradients and returns the input gradients.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Union

import numpy as np

from . import _checkpoint, _contract, _reference
from ._api import backward_with_residual, forward_with_residual

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_PARAM_NAMES = ("w_q", "w_k", "w_v", "w_o")
_BIAS_NAMES = ("b_q", "b_k", "b_v", "b_o")


class MultiHeadAttention:
    """Multi-head attention (with grouped-query attention) over NumPy arrays.

    ``y = merge(attention(x·w_q + b_q, c·w_k + b_k, c·w_v + b_v))·w_o + b_o``, where ``c`` is
    ``context`` for cross-attention and ``x`` otherwise, and the projections are split into
    heads of ``head_dim = embed_dim // num_heads`` features. With ``num_kv_heads < num_heads``
    (GQA; 1 is MQA) keys and values have fewer heads, each serving ``num_heads // num_kv_heads``
    query heads; fastattn reads them in place, nothing is repeated. The scale is
    ``1 / sqrt(head_dim)``. There is no dropout.

    Weights follow ``y = x @ w + b`` with ``w`` of shape ``(in_features, out_features)``: the
    transpose of ``torch.nn.Linear.weight``. For ``torch.nn.MultiheadAttention``,
    ``in_proj_weight = concatenate([w_q.T, w_k.T, w_v.T])`` and ``out_proj.weight = w_o.T``.

    Parameters
    ----------
    embed_dim : int
        Features E of the input, of the output and of each projection of the queries.
    num_heads : int
        Query heads H; must divide ``embed_dim``.
    num_kv_heads : int, optional
        Key/value heads Hkv (default ``num_heads``); ``num_heads`` must be a multiple of it.
        ``w_k`` and ``w_v`` then have ``Hkv·head_dim`` output features.
    bias : bool
        Whether the four projections have biases (initialised to zero).
    causal : bool or str
        Passed to ``fastattn.attention``: False, True (= "upper_left", query i sees keys
        j <= i) or "lower_right" (j <= i + S − L).
    dtype : float32 or float64
        The parameters' dtype and the computation's; inputs must have it.
    rng : numpy.random.Generator, int or None
        Source of the initial weights: Xavier/Glorot uniform, ``U(-a, a)`` with
        ``a = sqrt(6 / (fan_in + fan_out))`` for each projection matrix on its own (torch's
        ``MultiheadAttention`` applies it to the fused (3E, E) matrix and gives ``out_proj``
        the ``nn.Linear`` default instead).
    backend, num_threads
        Passed to ``fastattn.attention`` and ``fastattn.attention_backward``.

    Attributes
    ----------
    w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o : numpy.ndarray
        The parameters (biases only when ``bias=True``); ``parameters()`` returns them.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, num_kv_heads: Optional[int] = None, bias: bool = True,
                 causal: Union[bool, str] = False, dtype=np.float32,
                 rng: Union[np.random.Generator, int, None] = None, backend: str = "auto",
                 num_threads: Optional[int] = None):
        self.embed_dim = _positive_int(embed_dim, "embed_dim")
        self.num_heads = _positive_int(num_heads, "num_heads")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim (={self.embed_dim}) must be divisible by num_heads (={self.num_heads})")
        self.num_kv_heads = self.num_heads if num_kv_heads is None else _positive_int(num_kv_heads, "num_kv_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads (={self.num_heads}) must be a multiple of num_kv_heads "
                             f"(={self.num_kv_heads}): each key/value head serves num_heads // num_kv_heads "
                             "query heads")
        _contract.check_bool(bias, "bias")
        self.head_dim = self.embed_dim // self.num_heads
        self.causal = causal
        _contract.check_causal(causal)  # the same rules, and messages, as attention()
        self.dtype = _check_dtype(dtype)
        self.backend = _contract.check_backend(backend)
        _contract.check_num_threads(num_threads)
        self.num_threads = num_threads
        rng = _check_rng(rng)

        e, kv = self.embed_dim, self.num_kv_heads * self.head_dim
        self.w_q = _glorot_uniform(rng, e, e, self.dtype)
        self.w_k = _glorot_uniform(rng, e, kv, self.dtype)
        self.w_v = _glorot_uniform(rng, e, kv, self.dtype)
        self.w_o = _glorot_uniform(rng, e, e, self.dtype)
        self.bias = bool(bias)
        if self.bias:
            self.b_q, self.b_k, self.b_v, self.b_o = (np.zeros(n, self.dtype) for n in (e, kv, kv, e))
        # Gradients live in fixed arrays, overwritten in place by each backward, so the dict that
        # grads() returns stays valid across steps.
        self._grads = {name: np.zeros_like(p) for name, p in self.parameters().items()}
        self._cache: Optional[dict] = None

    def __repr__(self) -> str:
        kv = "" if self.num_kv_heads == self.num_heads else f", num_kv_heads={self.num_kv_heads}"
        return (f"MultiHeadAttention(embed_dim={self.embed_dim}, num_heads={self.num_heads}{kv}, "
                f"bias={self.bias}, causal={self.causal!r}, dtype={self.dtype.name})")

    def parameters(self) -> Dict[str, np.ndarray]:
        """The parameter arrays themselves (not copies), by name: ``w_q``, ``w_k``, ``w_v``,
        ``w_o`` and, with ``bias=True``, ``b_q``, ``b_k``, ``b_v``, ``b_o``. An optimizer updates
        them in place."""
        names = _PARAM_NAMES + (_BIAS_NAMES if self.bias else ())
        return {name: getattr(self, name) for name in names}

    def grads(self) -> Dict[str, np.ndarray]:
        """The gradients of the last ``backward``, by the names of ``parameters()`` (zeros before
        the first). The same arrays every time: each ``backward`` overwrites them in place."""
        return dict(self._grads)

    def zero_grad(self) -> None:
        """Set every gradient to zero (``backward`` overwrites them anyway; for symmetry with
        torch and for code that reads gradients without a backward)."""
        for g in self._grads.values():
            g.fill(0)

    # -- saving and loading ------------------------------------------------------------------

    def config(self) -> Dict[str, Union[int, bool, str]]:
        """The architecture, as ``save`` writes it: ``embed_dim``, ``num_heads``,
        ``num_kv_heads``, ``bias``, ``causal`` and ``dtype`` (a name). ``backend`` and
        ``num_threads`` are how to run, not what the model is: they are not saved."""
        causal = self.causal if isinstance(self.causal, str) else bool(self.causal)
        return dict(embed_dim=self.embed_dim, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                    bias=self.bias, causal=causal, dtype=self.dtype.name)

    def save(self, path) -> None:
        """Write the configuration and the parameters to ``path`` (a path, taken as given, no
        suffix added, and replaced only once the whole file is written; or a binary file
        object), as an ``.npz`` archive: one array per name of ``parameters()``, and the
        configuration as JSON in a ``__fastattn__`` entry (format: ``fastattn/_checkpoint.py``).
        ``MultiHeadAttention.load`` rebuilds the layer; ``np.load(path)`` reads it too.
        Gradients and the forward's cache are not saved."""
        _checkpoint.write(path, "MultiHeadAttention", self.config(), self.parameters())

    @classmethod
    def load(cls, path, *, backend: str = "auto", num_threads: Optional[int] = None) -> "MultiHeadAttention":
        """A layer rebuilt from a file ``save`` wrote: the same configuration and bitwise the same
        parameters, so it computes bitwise what the saved layer computed (with the same
        backend and ISA). ``backend`` and ``num_threads`` as in the constructor.

        Raises ValueError for a file that is not such a file (another format, corrupt or
        truncated, a newer format version) or whose arrays do not match its configuration
        (names, shapes, dtypes); FileNotFoundError for a missing one."""
        _contract.check_backend(backend)  # the caller's arguments first: their errors are theirs
        _contract.check_num_threads(num_threads)
        what = _checkpoint.describe(path)
        header, arrays = _checkpoint.read(path, "MultiHeadAttention")
        config = _config_from(what, header)
        try:
            layer = cls(**config, rng=0, backend=backend, num_threads=num_threads)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what}: its configuration is not a valid layer: {exc}") from None
        layer._set_parameters(what, arrays)
        return layer

    def load_parameters(self, path) -> None:
        """Replace this layer's parameters (in place: an optimizer holding them sees the new
        values) by those of a file ``save`` wrote for a layer of the same ``config()``.

        Raises ValueError, leaving the layer unchanged, when the file's configuration differs
        from this layer's (naming each difference), or as ``load`` does."""
        what = _checkpoint.describe(path)
        header, arrays = _checkpoint.read(path, "MultiHeadAttention")
        config = _config_from(what, header)
        mine = self.config()
        diff = [f"{key} {config[key]!r} (the layer's: {mine[key]!r})" for key in mine if config[key] != mine[key]]
        if diff:
            raise ValueError(f"{what} is for another layer: " + ", ".join(diff))
        self._set_parameters(what, arrays)

    def _set_parameters(self, what: str, arrays: Dict[str, np.ndarray]) -> None:
        params = self.parameters()
        _checkpoint.check_arrays(what, arrays, {name: (p.shape, p.dtype) for name, p in params.items()})
        for name, p in params.items():  # all checked: now copy, in place
            np.copyto(p, arrays[name])

    def forward(self, x, *, context=None, mask=None, need_weights: bool = False):
        """Attend from ``x`` to itself, or to ``context``.

        Parameters
        ----------
        x : array (B, L, E) or (L, E) of the layer's dtype
            The queries' source (and the keys' and values' without ``context``).
        context : array (B, S, E) or (S, E), optional
            The keys' and values' source, for cross-attention; batched like ``x``.
        mask : array, optional
            Passed to ``fastattn.attention``: boolean (True = may attend) or additive (added to
            the scores), broadcastable to (B, H, L, S) — (H, L, S) for a 2-D ``x``. A key-padding
            mask is ``keep[:, None, None, :]`` for ``keep`` of shape (B, S). Combined with
            ``causal``.
        need_weights : bool
            Also return the attention weights. They are the only Lq×Lk array this layer ever
            builds: O(B·H·L·S) memory, computed exactly from q, k and the forward's log-sum-exp.

        Returns
        -------
        y : array of x's shape, or ``(y, weights)`` with ``need_weights=True``, where ``weights``
            has shape (B, H, L, S) ((H, L, S) for a 2-D ``x``): the softmax matrix of each head,
            whose rows sum to 1 — or are zero for a query that sees no key (as its output is).

        Caches its inputs and intermediates (all O(L), no Lq×Lk matrix) for ``backward``,
        replacing those of the previous call; the cache holds ``x``, ``context`` and ``mask``
        themselves, not copies, so do not modify them before ``backward``.
        """
        _contract.check_bool(need_weights, "need_weights")
        x = self._check_input(x, "x")
        unbatched = x.ndim == 2
        x3 = x[None] if unbatched else x
        if context is None:
            c3 = x3
        else:
            c = self._check_input(context, "context")
            if c.ndim != x.ndim:
                raise ValueError(f"context.ndim (={c.ndim}) must equal x.ndim (={x.ndim})")
            if c.shape[:-2] != x.shape[:-2]:
                raise ValueError(f"context.shape[0] (={c.shape[0]}) must equal x.shape[0] (={x.shape[0]}), "
                                 "the batch size")
            c3 = c[None] if unbatched else c

        q = self._heads(self._project(x3, "q"), self.num_heads)  # (B, H, L, Dh)
        k = self._heads(self._project(c3, "k"), self.num_kv_heads)  # (B, Hkv, S, Dh)
        v = self._heads(self._project(c3, "v"), self.num_kv_heads)
        # lse with its rounding error (lse_lo): the backward's weights as precise as a softmax's
        out, lse, lse_lo = forward_with_residual(q, k, v, causal=self.causal, mask=mask, backend=self.backend,
                                                 num_threads=self.num_threads)
        merged = _merge_heads(out)  # (B, L, E)
        y = self._project(merged, "o")
        self._cache = dict(x=x3, context=None if context is None else c3, q=q, k=k, v=v, out=out, lse=lse,
                           lse_lo=lse_lo, merged=merged, mask=mask, unbatched=unbatched, y_shape=y.shape)
        y = y[0] if unbatched else y
        if not need_weights:
            return y
        weights = self._weights(q, k, lse, mask)
        return y, (weights[0] if unbatched else weights)

    __call__ = forward

    def backward(self, dy):
        """Gradients for the upstream gradient ``dy`` = ∂loss/∂y of the last ``forward``.

        Overwrites ``grads()`` (no accumulation: call ``backward`` once per forward, or sum the
        gradients yourself) and returns the gradient of the loss with respect to the inputs.
        Uses ``fastattn.attention_backward``, which recomputes the attention weights block by
        block: no Lq×Lk matrix.

        Parameters
        ----------
        dy : array of y's shape and the layer's dtype.

        Returns
        -------
        dx, or ``(dx, dcontext)`` when the forward had a ``context``.
        """
        cache = self._cache
        if cache is None:
            raise RuntimeError("backward() needs the activations of a forward() call on this layer; "
                               "call forward() first")
        dy = self._check_array(dy, "dy")
        want = cache["y_shape"][1:] if cache["unbatched"] else cache["y_shape"]
        if dy.shape != want:
            raise ValueError(f"dy.shape (={dy.shape}) must be the shape of forward's output, {want}")
        dy3 = dy[None] if cache["unbatched"] else dy

        d_merged = self._project_backward(dy3, cache["merged"], "o")
        b, h, l, dh = cache["q"].shape
        d_out = d_merged.reshape(b, l, h, dh).transpose(0, 2, 1, 3)
        dq, dk, dv = backward_with_residual(d_out, cache["q"], cache["k"], cache["v"], cache["out"], cache["lse"],
                                            cache["lse_lo"], causal=self.causal, mask=cache["mask"],
                                            backend=self.backend, num_threads=self.num_threads)
        x, c = cache["x"], cache["context"]
        source = x if c is None else c
        dx = self._project_backward(_merge_heads(dq), x, "q")
        d_source = self._project_backward(_merge_heads(dk), source, "k")
        d_source += self._project_backward(_merge_heads(dv), source, "v")
        if c is None:
            dx += d_source
        if cache["unbatched"]:
            dx, d_source = dx[0], d_source[0]
        return dx if c is None else (dx, d_source)

    # -- helpers -----------------------------------------------------------------------------

    def _check_array(self, a, name: str) -> np.ndarray:
        if isinstance(a, np.ndarray):
            if a.dtype != self.dtype:
                raise TypeError(f"{name}.dtype (={a.dtype}) must equal the layer's dtype (={self.dtype})")
            return a
        try:  # array-likes (nested lists) carry no dtype of their own: take the layer's
            return np.asarray(a, dtype=self.dtype)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be an array of {self.dtype}, got {type(a).__name__}: {exc}") from None

    def _check_input(self, a, name: str) -> np.ndarray:
        a = self._check_array(a, name)
        if a.ndim not in (2, 3):
            raise ValueError(f"{name}.ndim (={a.ndim}) must be 3, (B, L, E), or 2, (L, E)")
        if a.shape[-1] != self.embed_dim:
            raise ValueError(f"{name}.shape[-1] (={a.shape[-1]}) must equal embed_dim (={self.embed_dim})")
        return a

    def _project(self, x: np.ndarray, which: str) -> np.ndarray:
        y = x @ getattr(self, "w_" + which)
        if self.bias:
            y += getattr(self, "b_" + which)
        return y

    def _project_backward(self, dy: np.ndarray, x: np.ndarray, which: str) -> np.ndarray:
        """Writes the gradients of w_<which> (and b_<which>) for y = x·w + b; returns dx."""
        w = getattr(self, "w_" + which)
        dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
        np.matmul(x2.T, dy2, out=self._grads["w_" + which])
        if self.bias:
            np.sum(dy2, axis=0, out=self._grads["b_" + which])
        return dy @ w.T

    def _heads(self, y: np.ndarray, heads: int) -> np.ndarray:
        """(B, L, heads·Dh) → (B, heads, L, Dh), a view: attention reads strided arrays in place."""
        b, l, _ = y.shape
        return y.reshape(b, l, heads, self.head_dim).transpose(0, 2, 1, 3)

    def _weights(self, q: np.ndarray, k: np.ndarray, lse: np.ndarray, mask) -> np.ndarray:
        """P = exp(s − lse), with s the scores exactly as attention() forms and masks them (the
        NumPy reference's own code for it, so the rules have one home)."""
        call = _contract.normalise(q, k, k, causal=self.causal, mask=mask)
        b, h, l, _ = q.shape
        scores, _ = _reference._Scores(call.q, call.k, call.options).chunk(0, l)
        # A row that sees no key has lse = -inf and all scores -inf: weights exp(-inf) = 0.
        return np.exp(scores.reshape(b, h, l, -1) - np.where(lse == -np.inf, 0, lse)[..., None])


def _config_from(what: str, header: Dict) -> Dict:
    """The constructor's keyword arguments from a saved header, each of the saved type."""
    expected = dict(embed_dim=int, num_heads=int, num_kv_heads=int, bias=bool, causal=(bool, str), dtype=str)
    return _checkpoint.fields(what, header, expected)


def _merge_heads(a: np.ndarray) -> np.ndarray:
    """(B, H, L, Dh) → (B, L, H·Dh)."""
    b, h, l, dh = a.shape
    return a.transpose(0, 2, 1, 3).reshape(b, l, h * dh)


def _glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int, dtype: np.dtype) -> np.ndarray:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=(fan_in, fan_out)).astype(dtype)


def _positive_int(n, name: str) -> int:
    n = _contract.check_int(n, name)
    if n < 1:
        raise ValueError(f"{name} (={n}) must be >= 1")
    return n


def _check_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in _DTYPES:
        raise TypeError(f"dtype (={dt}) must be float32 or float64")
    return dt


def _check_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng()
    seed = _contract.check_int(rng, "rng", "a numpy.random.Generator, an int seed or None")
    if seed < 0:
        raise ValueError(f"rng (={seed}) must be >= 0 as a seed")
    return np.random.default_rng(seed)
