"""fastattn.dask: ``attention`` on Dask arrays, one fastattn call per output block.

Dask is optional: ``import fastattn`` never imports this module, and importing it without Dask
raises ImportError.
"""

from __future__ import annotations

import numpy as np

try:  # absolute import: this module's own name does not shadow the real dask package
    import dask.array as da
except ImportError as exc:
    raise ImportError("fastattn.dask needs Dask: pip install 'dask[array]'") from exc

from . import _api, _contract

__all__ = ["attention"]


@_contract.with_option_keywords
def attention(q, k, v, /, *, backend="auto", num_threads=None, **options):
    """``fastattn.attention`` on Dask arrays: a lazy Dask array, computed where the graph runs.

    Shapes are fastattn's (see ``fastattn.attention``)::

        q    (..., Hq,  Lq, D)      k (..., Hkv, Lk, D)      v (..., Hkv, Lk, Dv)
        out  (..., Hq,  Lq, Dv)     lazy, q's dtype

    q, k, v, ``mask``, ``kv_lengths``, ``q_lengths``, ``alibi_slopes`` and ``sinks`` may be Dask or NumPy
    arrays (NumPy ones are wrapped with ``da.asarray``). Every option means what it means for
    ``fastattn.attention`` and the result equals ``fastattn.attention`` on the whole arrays;
    ``return_lse`` and ``out`` are not offered. Shapes, dtypes and options are validated here,
    when the graph is built; the values of lengths and slopes given as Dask arrays are checked
    by each task. Nothing is computed or pulled to the client: the graph only slices,
    rechunks and calls fastattn on the workers.

    Chunking
    --------
    Each output block is one ``fastattn.attention`` call on one block of q and the K/V heads
    it uses. The output is chunked like q along the batch dimensions, the heads and Lq, and is
    one chunk along Dv. To get there:

    - q is one chunk along D. Under GQA (``Hq = g·Hkv``) q's head chunks are rounded to
      multiples of g (a chunk boundary moves up to the next multiple), so that q head block i
      uses exactly K/V head block i, whose chunks are q's divided by g.
    - k and v are rechunked like q along the batch dimensions, to q's head chunks / g, and to
      one chunk along Lk and along D, Dv.
    - ``mask`` (broadcastable to ``(..., Hq, Lq, Lk)``) is chunked like the output rows and is
      whole along Lk; its size-1 (broadcast) axes stay size 1, never expanded. ``kv_lengths``
      and ``q_lengths`` are chunked with the batch dimensions, ``alibi_slopes`` with the batch
      dimensions and the heads (again leaving size-1 axes alone).

    A task thus holds its q block, the whole K and V of its heads (all Lk keys), its mask block
    and its output block; fastattn itself never builds an Lq×Lk matrix. Chunk q so that this
    fits a worker. ``num_threads`` is passed to every call: with several Dask threads per
    worker, ``num_threads=1`` avoids oversubscribing the cores (results do not depend on it).

    Positional rules across Lq blocks
    ---------------------------------
    Without ``causal``, ``window`` and ``alibi_slopes``, query rows are independent and every
    Lq block is a plain call (``q_lengths`` shifted to the block's first row). With them, a
    row's keys depend on its global index: row i sees key j iff ``j <= i + off``, with
    ``off = 0`` under ``causal=True``/``"upper_left"`` and ``off = Lk - Lq`` under
    ``"lower_right"`` (per sequence ``kv_lengths[b] - q_lengths[b]`` when lengths are given),
    and the window and ALiBi are measured from the same diagonal. A block holding global rows
    ``[r0, r0 + n)`` is computed with ``causal="lower_right"`` on K/V cut to their first
    ``Lk' = n + r0 + off`` keys, whose diagonal ``Lk' - n = r0 + off`` is the global one; keys
    beyond it are invisible under causal anyway, so the cut loses nothing and saves work
    (``Lk' <= 0``: every row sees nothing and gets zeros). With lengths, the block's call gets
    ``q_lengths = clip(q_lengths - r0, 0, n)`` and ``kv_lengths = q_lengths_block + r0 + off``
    per sequence, which puts each sequence's diagonal in place. The first block under
    ``"upper_left"`` needs none of this and is a plain call.

    Cases this cannot express keep Lq in ONE chunk (q is rechunked along Lq; heads and batch
    are still split):

    - ``window`` or ``alibi_slopes`` without ``causal`` (keys right of the diagonal count);
    - ``"upper_left"`` with ``kv_lengths`` (a key cut independent of the diagonal; for
      self-attention with ``kv_lengths == q_lengths``, ``"lower_right"`` means the same and
      keeps Lq split);
    - ``"upper_left"`` when a block other than the first reaches past the last key
      (``r0 + n > Lk``, only possible when Lq > Lk).

    Example
    -------
    >>> import dask.array as da
    >>> from dask.distributed import Client
    >>> import fastattn.dask
    >>> client = Client()                                          # or Client("scheduler:8786")
    >>> q = da.random.standard_normal((4, 16, 8192, 64), chunks=(1, 4, 2048, 64)).astype("float32")
    >>> k = da.random.standard_normal((4, 4, 8192, 64), chunks=(1, 1, 8192, 64)).astype("float32")
    >>> v = da.random.standard_normal((4, 4, 8192, 64), chunks=(1, 1, 8192, 64)).astype("float32")
    >>> out = fastattn.dask.attention(q, k, v, causal=True, num_threads=1)   # lazy, chunks of q
    >>> total = out.sum().compute()          # runs on the cluster; only the sum comes back
    """
    q, k, v = (da.asarray(x) for x in (q, k, v))
    _validate(q, k, v, options, backend, num_threads)
    if q.ndim == 2:  # one head (L, D): give it a head axis, and take it off the result
        return attention(q[None], k[None], v[None], backend=backend, num_threads=num_threads, **options)[0]
    # Arrays go to the blocks chunked like q; the other options are passed to every call as they are.
    mask, kv_lengths, q_lengths, alibi_slopes, sinks = (options.pop(name, None) for name in _PER_BLOCK)
    causal, window = options.get("causal", False), options.get("window")

    nb = q.ndim - 3  # batch dimensions; then heads, rows, features
    hq, lq, lk, dv = q.shape[-3], q.shape[-2], k.shape[-2], v.shape[-1]
    group = hq // k.shape[-3] if k.shape[-3] else 1
    mode, _ = _contract.check_alignment(causal, options.get("align"))
    lower_right, is_causal = mode == _contract.LOWER_RIGHT, mode != _contract.NO_CAUSAL

    q = q.rechunk(q.chunks[:nb] + (_group_chunks(q.chunks[nb], group), q.chunks[nb + 1], -1))
    if is_causal or window is not None or alibi_slopes is not None:
        # Can every Lq block put the global diagonal in place (see the docstring)? If not,
        # keep Lq in one chunk, where the options apply as they are.
        starts = np.cumsum((0,) + q.chunks[-2][:-1])
        reaches_past = any(r0 > 0 and r0 + n > lk for r0, n in zip(starts, q.chunks[-2]))
        if not (lower_right or is_causal and kv_lengths is None and not reaches_past):
            q = q.rechunk(q.chunks[:-2] + (-1, -1))
    shift = len(q.chunks[-2]) > 1 and (is_causal or window is not None or alibi_slopes is not None)
    kv_heads = tuple(c // group for c in q.chunks[nb])
    k = k.rechunk(q.chunks[:nb] + (kv_heads, -1, -1))
    v = v.rechunk(q.chunks[:nb] + (kv_heads, -1, -1))

    batch = tuple(f"b{i}" for i in range(nb))
    args = [da.arange(lq, chunks=(q.chunks[-2],)), "i",  # each block's global row indices
            q, batch + ("h", "i", "d"), k, batch + ("h", "j", "d"), v, batch + ("h", "j", "e")]
    for x, index in ((mask, batch + ("h", "i", "j")), (q_lengths, batch), (kv_lengths, batch),
                     (alibi_slopes, batch + ("h",)), (sinks, batch + ("h",))):
        args += [None, None] if x is None else [_chunk_like(da.asarray(x), q, len(index)), index]

    options = dict(options, causal=mode, backend=backend, num_threads=num_threads)
    return da.blockwise(
        _attention_block, batch + ("h", "i", "e"), *args,
        lq=lq, lk=lk, shift=shift, options=options,
        # K/V heads are chunked as q's / g, so Dask must not align chunks; the output's are given.
        align_arrays=False, adjust_chunks={"h": q.chunks[nb], "i": q.chunks[-2], "e": (dv,)},
        # The contracted axes (D, Lk) are one chunk each: no concatenation, which would copy.
        concatenate=False, token="fastattn-attention", meta=np.empty((0,) * q.ndim, q.dtype))


# The options that are arrays: each block gets its chunk of them (the others are passed as they are).
_PER_BLOCK = ("mask", "kv_lengths", "q_lengths", "alibi_slopes", "sinks")


def _attention_block(rows, q, k, v, mask, q_len, kv_len, slopes, sinks, *, lq, lk, shift, options):
    """One output block: q rows [r0, r0 + n) of some heads and batch indices, with the whole K/V
    of those heads. Runs on a worker. options["causal"] is the causal code."""
    q, k, v, mask = (_one_block(x) for x in (q, k, v, mask))
    r0, n = (int(rows[0]) if rows.size else 0), q.shape[-2]
    options = dict(options)
    causal = options.pop("causal")
    lower_right = causal == _contract.LOWER_RIGHT
    if not shift or r0 == 0 and not lower_right:
        # Rows independent of their position, or a block whose diagonal is the global one.
        if q_len is not None:
            q_len = np.clip(q_len - r0, 0, n)
        return _api.attention(q, k, v, causal=_CAUSAL_NAMES[causal], mask=mask, q_lengths=q_len,
                              kv_lengths=kv_len, alibi_slopes=slopes, sinks=sinks, **options)
    # The global diagonal of row i is i + off per sequence (off as fastattn defines it); local
    # row i - r0 under "lower_right" with lengths (q_loc, kv_loc) has kv_loc - q_loc + (i - r0).
    q_b = lq if q_len is None else q_len
    kv_b = lk if kv_len is None else kv_len
    off = kv_b - q_b if lower_right else 0
    q_loc = np.clip(q_b - r0, 0, n)  # rows at or past q_lengths return zeros
    # kv_loc = q_loc + r0 + off puts the diagonal in place; it never exceeds kv_b (lower_right:
    # q_loc <= q_b - r0; upper_left: the caller kept blocks with r0 + n > Lk or kv_lengths
    # unsplit), so that cut hides no key the diagonal shows. Below 0 or with no live row, the
    # block sees no key: 0.
    kv_loc = np.where(q_loc > 0, np.maximum(q_loc + r0 + off, 0), 0)
    lk_loc = int(np.max(kv_loc))  # keys past every row's diagonal are never seen: cut them
    k, v = k[..., :lk_loc, :], v[..., :lk_loc, :]
    if mask is not None and mask.shape[-1] != 1:
        mask = mask[..., :lk_loc]
    lengths = {} if q_len is None and kv_len is None else dict(q_lengths=q_loc, kv_lengths=kv_loc)
    options["align"] = None  # "lower_right" below aligns the block (a shifted block of an upper-left call too)
    return _api.attention(q, k, v, causal="lower_right", mask=mask, alibi_slopes=slopes, sinks=sinks, **lengths,
                          **options)


_CAUSAL_NAMES = {_contract.NO_CAUSAL: False, _contract.UPPER_LEFT: "upper_left", _contract.LOWER_RIGHT: "lower_right"}


def _one_block(x):
    """Blockwise passes an argument with contracted axes (D, Lk) as nested lists of its blocks;
    those axes are one chunk here, so each list holds one block."""
    while isinstance(x, list):
        (x,) = x
    return x


def _group_chunks(chunks, group: int) -> tuple:
    """Head chunks whose sizes are multiples of `group`: each chunk end rounded up to one."""
    ends = sorted({-(-int(e) // group) * group for e in np.cumsum(chunks)})
    return tuple(int(c) for c in np.diff([0] + ends)) or (0,)


def _chunk_like(x, q, ndim: int):
    """x (broadcastable to q's first `ndim` axes, mask: + Lk) with leading size-1 axes added,
    chunked like q on each axis of full size, size-1 axes left as one chunk of 1 (broadcast by
    blockwise, never expanded), anything past q's first axes (the mask's Lk) whole."""
    x = x.reshape((1,) * (ndim - x.ndim) + x.shape)
    chunks = tuple(-1 if a >= q.ndim - 1 or s == 1 else q.chunks[a] for a, s in enumerate(x.shape))
    return x.rechunk(chunks)


def _validate(q, k, v, options, backend, num_threads) -> None:
    """fastattn's own checks, with the same messages, run now on data-free stand-ins."""
    compute = _contract.compute_dtype(q.dtype)

    def stand_in(x, dtype=None):
        # Dask arrays are validated by shape and dtype only; NumPy lengths and slopes are tiny
        # and checked for real.
        return _contract.stand_in(x.shape, dtype or x.dtype) if isinstance(x, da.Array) else x

    given = dict(options)
    mask = given.get("mask")
    if isinstance(mask, (da.Array, np.ndarray)):  # a float mask is converted by each task
        given["mask"] = stand_in(da.asarray(mask), compute if _contract.is_floating(mask.dtype) else None)
    for name in ("kv_lengths", "q_lengths", "alibi_slopes", "sinks"):
        if name in given:
            given[name] = stand_in(given[name])
    _contract.normalise(stand_in(q), stand_in(k), stand_in(v), **given)
    _contract.check_num_threads(num_threads)
    _contract.check_backend(backend)
