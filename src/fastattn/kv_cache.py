"""KVCache: the keys and values of a batch of sequences of different lengths, for decoding.

**Paging.** Decoding appends one (or, with speculative decoding, a few) tokens per sequence per
step, to sequences whose lengths differ and are not known in advance. Storing each sequence in
one contiguous array would copy it every time it outgrows its buffer, and a padded
``(B, Hkv, Lmax, D)`` array wastes the difference between the longest sequence and the others.
Like vLLM's PagedAttention and OpenVINO's paged cache, ``KVCache`` stores tokens in fixed-size
**blocks** of ``block_size`` tokens taken from one shared **pool**:

- ``k_blocks``: ``(num_blocks, Hkv, block_size, D)`` and ``v_blocks``: ``(num_blocks, Hkv,
  block_size, Dv)``, block-major, then KV head, then token within the block, then feature;
- a **free list** of the block ids not in use;
- per sequence, a **block table** (the ids of its blocks, in token order) and a length: token
  ``t`` of a sequence lives in block ``table[t // block_size]`` at row ``t % block_size``.

Appending writes into the sequence's partly filled tail block and then into blocks taken from
the free list: existing tokens are never copied. Truncating, resetting or freeing a sequence
returns its whole blocks past the new length to the free list, where the next append reuses
them. With ``max_blocks=None`` the pool itself grows when the free list runs out, by doubling
(one copy of the pool, amortised over as many appends as it holds); with an int it is allocated
once at that capacity and an append that does not fit is refused.

**int8 storage** (``dtype="int8"``). Decoding reads the whole cache once per generated token
and does ~2 FLOPs per byte it reads: it is bound by memory bandwidth, so bytes per token are
time per token. With ``"int8"``, keys and values are quantised on append, symmetrically, with
one float32 scale per token and KV head, separately for K and V::

    scale = max(|x[h, t, :]|) / 127            (float32, over the head dimension)
    q     = clip(rint(x / scale), -127, 127)   (int8; a scale of 0 gives q = 0)
    x    ~= q * scale                          (the dequantised value, float32)

The scales live in ``k_scales`` / ``v_scales`` of shape ``(num_blocks, Hkv, block_size)``,
float32. A token of one head then costs ``D + 4`` bytes instead of float32's ``4 D``: 0.26x at
D = 128, 0.27x at D = 64, and about half of float16's. A per-token scale
follows outliers token by token, which a per-tensor scale cannot without an extra pass; the
rounding error of each element is at most half a step, ``scale / 2 = max|x| / 254`` of its
token's largest element. Float inputs are first rounded to float32; a NaN or infinity cannot be
quantised and is refused.

``attention(q, seq_ids, ...)`` attends from new queries to the cached sequences (prefill and
decode, with windows, ALiBi, softcap, sinks and GQA): the C++ kernel reads the blocks in place
through ``block_table`` and dequantises int8 as it reads them. ``gather`` turns sequences back
into a dense, zero-padded batch (a copy): the reference path, the tests' view of the cache, and
what the NumPy backend runs on.

A ``KVCache`` is not thread-safe: calls that modify it must not run concurrently with any other
call on the same cache.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ._backend import call_args, cpp_forward_paged, use_cpp
from ._contract import asarray, check_bool, check_int, check_num_threads, compute_dtype, is_floating, normalise, stand_in

__all__ = ["KVCache"]

_INT8 = np.dtype(np.int8)
_FLOAT32 = np.dtype(np.float32)
_STORAGE_NAMES = 'float32, float16, bfloat16 or "int8"'
_GATHER_NAMES = "float32, float64, float16 or bfloat16"
_QMAX = np.float32(127)
_MIN_GROWTH = 4  # blocks: the first allocation of a growing pool


def _bfloat16() -> np.dtype:
    try:
        import ml_dtypes
    except ImportError:
        raise TypeError("bfloat16 storage needs ml_dtypes: pip install ml_dtypes") from None
    bfloat16: np.dtype = np.dtype(ml_dtypes.bfloat16)
    return bfloat16


def _dtype(dtype: Any, name: str, allowed: Tuple[np.dtype, ...], names: str) -> np.dtype:
    """`dtype` (a name, a NumPy dtype or type, ml_dtypes.bfloat16) as one of `allowed` or
    bfloat16, else a TypeError naming `name`."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        return _bfloat16()
    if dtype is None or isinstance(dtype, bool):
        raise TypeError(f"{name} must be {names}, got {dtype!r}")
    try:
        dt: np.dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be {names}, got {dtype!r}") from None
    if dt in allowed or (dt.name == "bfloat16" and dt.itemsize == 2 and dt.isnative):
        return dt
    raise TypeError(f"{name} (={dt.str if dt.name in ('float32', 'float16') else dt}) must be {names}")


def _positive(value: Any, name: str) -> int:
    n = check_int(value, name)
    if n < 1:
        raise ValueError(f"{name} (={n}) must be >= 1")
    return n


class _Sequence:
    """One sequence: its block table (block ids, in token order) and its length in tokens."""

    __slots__ = ("blocks", "length")

    def __init__(self) -> None:
        self.blocks: List[int] = []
        self.length = 0


class KVCache:
    """Paged storage of the keys and values of a batch of sequences, for decoding.

    ``KVCache(num_kv_heads, head_dim, *, value_dim=None, dtype="float32", block_size=128,
    max_blocks=None)``

    - ``num_kv_heads`` (Hkv), ``head_dim`` (D), ``value_dim`` (Dv, default D): ints >= 1.
    - ``dtype``: the storage dtype: float32, float16, bfloat16 (``ml_dtypes.bfloat16``, an
      optional dependency; ``"bfloat16"`` imports it) as a name, NumPy dtype or type, or
      ``"int8"``: symmetric quantisation with a float32 scale per token and KV head (see the
      module docstring).
    - ``block_size``: tokens per block, an int >= 1. The kernel streams each head's rows of a
      block contiguously, so larger blocks read faster (decoding 8 × 4096 tokens, Hkv = 8,
      D = 128, AMD EPYC, 2 threads: block_size 16 → 20.0 ms, 128 → 12.8 ms for float32; int8
      8.7 → 6.1 ms); smaller blocks waste less of each sequence's last block.
    - ``max_blocks``: ``None``: the pool grows by doubling when it is full; an int >= 1: the pool
      is allocated once with that many blocks, and an append that needs more raises
      ``ValueError`` (leaving the cache unchanged).

    **Layout** (what a kernel reading the blocks in place relies on):

    - ``k_blocks``: ``(num_blocks, Hkv, block_size, D)``, ``v_blocks``: ``(num_blocks, Hkv,
      block_size, Dv)``, C-contiguous, in the storage dtype (int8 for ``"int8"``): block-major,
      then KV head, then token within the block, then feature.
    - int8 only: ``k_scales`` and ``v_scales``: ``(num_blocks, Hkv, block_size)`` float32; the
      value of element ``[b, h, r, :]`` is ``k_blocks[b, h, r, :] * k_scales[b, h, r]``.
      (``None`` for the float dtypes.)
    - ``block_table(seq_ids)``: ``(table, lengths)``, ``table`` of shape ``(len(seq_ids),
      max blocks used)`` int32 padded with -1, ``lengths`` ``(len(seq_ids),)`` int64: token
      ``t < lengths[i]`` of sequence ``i`` is at ``k_blocks[table[i, t // block_size], :,
      t % block_size, :]``. Rows past a sequence's length in its last block hold stale data.

    The pool arrays are replaced (copied into larger ones) when a growing pool grows: read
    ``k_blocks`` etc. again after an append rather than keeping an old reference.

    **Sequences** are identified by non-negative ints chosen by the caller; ``append`` creates
    them. Every method validates its arguments before changing anything: a call that raises
    (``TypeError`` for types and dtypes, ``ValueError`` for shapes and values, the argument named
    with the expected and the actual value) leaves the cache unchanged.
    """

    def __init__(self, num_kv_heads: int, head_dim: int, *, value_dim: Optional[int] = None,
                 dtype: Any = "float32", block_size: int = 128, max_blocks: Optional[int] = None) -> None:
        self._hkv = _positive(num_kv_heads, "num_kv_heads")
        self._d = _positive(head_dim, "head_dim")
        self._dv = self._d if value_dim is None else _positive(value_dim, "value_dim")
        self._dtype = _dtype(dtype, "dtype", (_FLOAT32, np.dtype(np.float16), _INT8), _STORAGE_NAMES)
        self._block_size = _positive(block_size, "block_size")
        self._max_blocks = None if max_blocks is None else _positive(max_blocks, "max_blocks")
        self._quantized = self._dtype == _INT8
        self._sequences: Dict[int, _Sequence] = {}
        pools = self._allocate(self._max_blocks or 0)
        self._k_blocks, self._v_blocks, self._k_scales, self._v_scales = pools
        # A stack: the next block taken is the last; the lowest ids are taken first.
        self._free: List[int] = list(range((self._max_blocks or 0) - 1, -1, -1))

    # -- properties ---------------------------------------------------------------------------

    @property
    def num_kv_heads(self) -> int:
        return self._hkv

    @property
    def head_dim(self) -> int:
        return self._d

    @property
    def value_dim(self) -> int:
        return self._dv

    @property
    def dtype(self) -> np.dtype:
        """The storage dtype of ``k_blocks`` and ``v_blocks`` (int8 for ``"int8"``)."""
        return self._dtype

    @property
    def quantized(self) -> bool:
        """True for int8 storage (with ``k_scales`` and ``v_scales``)."""
        return self._quantized

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def max_blocks(self) -> Optional[int]:
        """The fixed capacity in blocks, or None for a growing pool."""
        return self._max_blocks

    @property
    def num_blocks(self) -> int:
        """Blocks allocated in the pool (in use or free)."""
        return int(self._k_blocks.shape[0])

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def k_blocks(self) -> np.ndarray:
        """``(num_blocks, Hkv, block_size, D)`` in the storage dtype (see the class docstring)."""
        return self._k_blocks

    @property
    def v_blocks(self) -> np.ndarray:
        """``(num_blocks, Hkv, block_size, Dv)`` in the storage dtype."""
        return self._v_blocks

    @property
    def k_scales(self) -> Optional[np.ndarray]:
        """int8: ``(num_blocks, Hkv, block_size)`` float32 scales of ``k_blocks``; else None."""
        return self._k_scales

    @property
    def v_scales(self) -> Optional[np.ndarray]:
        """int8: ``(num_blocks, Hkv, block_size)`` float32 scales of ``v_blocks``; else None."""
        return self._v_scales

    @property
    def seq_ids(self) -> Tuple[int, ...]:
        """The ids of the sequences in the cache, in the order they were created."""
        return tuple(self._sequences)

    @property
    def block_bytes(self) -> int:
        """Bytes of one block: its keys, values and (int8) scales."""
        per_token = (self._d + self._dv) * self._dtype.itemsize + (8 if self._quantized else 0)
        return self._hkv * self._block_size * per_token

    @property
    def memory_bytes(self) -> int:
        """Bytes of the pool allocated: ``k_blocks``, ``v_blocks`` and the scales."""
        return self.num_blocks * self.block_bytes

    @property
    def used_bytes(self) -> int:
        """Bytes of the blocks in use by sequences."""
        return self.num_used_blocks * self.block_bytes

    def __len__(self) -> int:
        return len(self._sequences)

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._sequences

    def __repr__(self) -> str:
        dtype = '"int8"' if self._quantized else str(self._dtype)
        return (f"KVCache(num_kv_heads={self._hkv}, head_dim={self._d}, value_dim={self._dv}, dtype={dtype}, "
                f"block_size={self._block_size}, max_blocks={self._max_blocks}): {len(self._sequences)} "
                f"sequences, {self.num_used_blocks} of {self.num_blocks} blocks in use")

    # -- reading ------------------------------------------------------------------------------

    def length(self, seq_id: int) -> int:
        """The number of tokens of sequence ``seq_id``."""
        return self._sequence(seq_id, "seq_id").length

    def lengths(self, seq_ids: Sequence[int]) -> np.ndarray:
        """``(len(seq_ids),)`` int64: the lengths of the sequences ``seq_ids`` (repeats allowed)."""
        seqs = self._sequences_of(self._ids(seq_ids, "seq_ids"))
        return np.array([s.length for s in seqs], dtype=np.int64)

    def block_table(self, seq_ids: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
        """``(table, lengths)`` for a kernel that reads the blocks in place: ``table`` of shape
        ``(len(seq_ids), max blocks used by them)`` int32, row ``i`` the block ids of sequence
        ``seq_ids[i]`` in token order, padded with -1; ``lengths`` ``(len(seq_ids),)`` int64.
        A sequence of length L uses ``ceil(L / block_size)`` blocks."""
        seqs = self._sequences_of(self._ids(seq_ids, "seq_ids"))
        width = max((len(s.blocks) for s in seqs), default=0)
        table = np.full((len(seqs), width), -1, dtype=np.int32)
        for row, s in zip(table, seqs):
            row[:len(s.blocks)] = s.blocks
        return table, np.array([s.length for s in seqs], dtype=np.int64)

    def gather(self, seq_ids: Sequence[int], dtype: Any = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The sequences ``seq_ids`` as a dense, zero-padded batch: ``(k, v, kv_lengths)`` with
        ``k`` ``(B, Hkv, Lmax, D)``, ``v`` ``(B, Hkv, Lmax, Dv)``, ``kv_lengths`` ``(B,)`` int64,
        ``B = len(seq_ids)``, ``Lmax = max(kv_lengths)`` (0 for none). Positions past a sequence's
        length are zeros. The result is a copy (the cache is not read in place), in ``dtype``
        (float32, float64, float16 or bfloat16) if given, else in the storage dtype, or float32
        (dequantised: ``q * scale``) for int8.

        ``fastattn.attention(q, k, v, kv_lengths=kv_lengths, causal="lower_right")`` then
        attends over the cache."""
        ids = self._ids(seq_ids, "seq_ids")
        out_dtype = None if dtype is None else _dtype(
            dtype, "dtype", (_FLOAT32, np.dtype(np.float64), np.dtype(np.float16)), _GATHER_NAMES)
        seqs = self._sequences_of(ids)
        lengths = np.array([s.length for s in seqs], dtype=np.int64)
        lmax = int(lengths.max(initial=0))
        rows, positions, blocks, offsets = self._token_slots(seqs)
        results = []
        for pool, scales, dim in ((self._k_blocks, self._k_scales, self._d),
                                  (self._v_blocks, self._v_scales, self._dv)):
            base = _FLOAT32 if self._quantized else self._dtype
            dense = np.zeros((len(seqs), self._hkv, lmax, dim), dtype=base)
            tokens = pool[blocks, :, offsets, :]  # (T, Hkv, dim)
            if scales is not None:
                tokens = tokens.astype(np.float32) * scales[blocks, :, offsets][..., None]
            dense[rows, :, positions, :] = tokens
            results.append(dense if out_dtype is None or out_dtype == base else dense.astype(out_dtype))
        return results[0], results[1], lengths

    def attention(self, q: Any, seq_ids: Sequence[int], *, causal: Any = "lower_right", scale: Any = None,
                  window: Any = None, alibi_slopes: Any = None, softcap: Any = None, sinks: Any = None,
                  q_lengths: Any = None, return_lse: bool = False, backend: str = "auto",
                  num_threads: Optional[int] = None) -> Any:
        """``fastattn.attention`` of the queries ``q`` over the cached keys and values of the
        sequences ``seq_ids``: prefill (Lq > 1) and decode (Lq = 1).

        ``q`` is ``(B, Hq, Lq, D)`` with ``B = len(seq_ids)`` and ``Hq`` a multiple of the cache's
        ``Hkv`` (GQA), in the storage dtype (float32 for an int8 cache). Append the new tokens'
        keys and values first: with the default ``causal="lower_right"``, query row ``i`` of
        sequence ``b`` is at position ``length_b − q_len_b + i`` and sees the keys up to it
        (``q_lengths`` for a ragged prefill: rows past it return zeros). ``window``,
        ``alibi_slopes``, ``softcap``, ``sinks``, ``scale``, ``return_lse``, ``backend`` and
        ``num_threads`` are those of ``fastattn.attention`` (``causal`` too: False attends to the
        whole cache). The result has q's shape with Dv and q's dtype.

        The C++ backend reads the blocks in place through the block table (int8 dequantised
        inside the kernel, per block): no gathered or dequantised copy, and the result equals
        ``fastattn.attention`` over ``gather``'s dense copy bitwise (float storage). The NumPy
        backend runs on that copy.
        """
        from ._api import attention

        ids = self._ids(seq_ids, "seq_ids")
        q = asarray(q, "q")
        want = _FLOAT32 if self._quantized else self._dtype
        if q.dtype != want:
            raise TypeError(f"q.dtype (={q.dtype}) must be the cache's compute dtype {want} "
                            f"(the storage dtype, float32 for int8)")
        if q.ndim != 4 or q.shape[0] != len(ids) or q.shape[-1] != self._d or q.shape[1] % self._hkv:
            raise ValueError(f"q.shape (={q.shape}) must be (len(seq_ids), Hq, Lq, head_dim) = "
                             f"({len(ids)}, Hq, Lq, {self._d}) with Hq a multiple of num_kv_heads (={self._hkv})")
        table, kv_lengths = self.block_table(ids)
        if q_lengths is None and np.any(kv_lengths < q.shape[2]) and causal == "lower_right":
            # A query needs its own key: more queries than cached tokens means the caller forgot to
            # append them (the first rows would see no key at all).
            short = int(np.argmax(kv_lengths < q.shape[2]))
            raise ValueError(f"sequence {ids[short]} holds {int(kv_lengths[short])} tokens, fewer than the "
                             f"{q.shape[2]} queries (q.shape[2]): append their keys and values first")
        options = dict(causal=causal, scale=scale, kv_lengths=kv_lengths, q_lengths=q_lengths, window=window,
                       alibi_slopes=alibi_slopes, softcap=softcap, sinks=sinks)
        if not (use_cpp(backend) and q.size and table.size):  # NumPy, or nothing to read in place
            k, v, _ = self.gather(ids)
            return attention(q, k, v, return_lse=return_lse, backend=backend, num_threads=num_threads, **options)
        lmax = int(kv_lengths.max())
        call = normalise(q, stand_in((len(ids), self._hkv, lmax, self._d), q.dtype),
                         stand_in((len(ids), self._hkv, lmax, self._dv), q.dtype), **options)
        threads = check_num_threads(num_threads)
        check_bool(return_lse, "return_lse")
        out = np.empty(call.out_shape, q.dtype)
        lse = np.empty(call.out_shape[:-1], compute_dtype(q.dtype)) if return_lse else None
        cpp_forward_paged(call.q, self._k_blocks, self._v_blocks, out, lse, np.ascontiguousarray(table),
                          self._k_scales, self._v_scales, call_args(call, threads))
        return (out, lse) if return_lse else out

    # -- writing ------------------------------------------------------------------------------

    def append(self, seq_ids: Sequence[int], k: Any, v: Any) -> None:
        """Append tokens to the sequences ``seq_ids`` (distinct ids; new ids create sequences).

        ``k`` and ``v`` are either lists (or tuples) of ``len(seq_ids)`` arrays, ``k[i]`` of shape
        ``(Hkv, n_i, D)`` and ``v[i]`` ``(Hkv, n_i, Dv)`` (``n_i`` may differ, and be 0), or, when
        every sequence gets the same number ``n`` of tokens, arrays ``(len(seq_ids), Hkv, n, D)``
        and ``(len(seq_ids), Hkv, n, Dv)``. Any floating dtype is accepted and rounded to the
        storage dtype (to nearest); NaN and infinities are stored as they are, except in int8
        storage, which cannot quantise them (``ValueError``). Tokens go into the tail block of
        each sequence and then into free blocks; a growing pool grows if there are too few."""
        ids = self._ids(seq_ids, "seq_ids")
        seen: Dict[int, int] = {}
        for i, sid in enumerate(ids):
            if sid in seen:
                raise ValueError(f"seq_ids[{i}] (={sid}) repeats seq_ids[{seen[sid]}]: "
                                 f"each sequence may appear once in an append")
            seen[sid] = i
        ks = self._per_sequence(k, "k", len(ids), self._d, "head_dim")
        vs = self._per_sequence(v, "v", len(ids), self._dv, "value_dim")
        for i, (ki, vi) in enumerate(zip(ks, vs)):
            if vi.shape[1] != ki.shape[1]:
                raise ValueError(f"v[{i}].shape (={vi.shape}) must be (num_kv_heads, n, value_dim) = "
                                 f"({self._hkv}, {ki.shape[1]}, {self._dv}), with n = k[{i}].shape[1]")
        k_data, k_scales = self._convert(ks, "k", self._d)
        v_data, v_scales = self._convert(vs, "v", self._dv)

        # Blocks: how many each sequence needs, and whether the pool has them.
        bs = self._block_size
        old = [self._sequences.get(sid) for sid in ids]
        old_lengths = [0 if s is None else s.length for s in old]
        new_lengths = [n0 + ki.shape[1] for n0, ki in zip(old_lengths, ks)]
        needs = [-(-n1 // bs) - (0 if s is None else len(s.blocks)) for s, n1 in zip(old, new_lengths)]
        total = sum(needs)
        grown = None
        if total > len(self._free):
            if self._max_blocks is not None:
                raise ValueError(
                    f"append needs {total} free blocks of {bs} tokens, and {len(self._free)} of max_blocks "
                    f"(={self._max_blocks}) are free: free or truncate sequences, or use a larger max_blocks")
            capacity = max(self.num_blocks + total - len(self._free), 2 * self.num_blocks, _MIN_GROWTH)
            grown = self._grown(capacity)  # may raise MemoryError: nothing has changed yet

        # Nothing below can fail: commit.
        if grown is not None:
            old_capacity = self.num_blocks
            self._k_blocks, self._v_blocks, self._k_scales, self._v_scales = grown
            self._free[:0] = range(self.num_blocks - 1, old_capacity - 1, -1)
        tables = []
        for sid, s, need in zip(ids, old, needs):
            if s is None:
                s = self._sequences[sid] = _Sequence()
            if need:
                s.blocks.extend(self._free[:-need - 1:-1])
                del self._free[-need:]
            tables.append(s.blocks)
        rows, positions, blocks, offsets = _slots(tables, old_lengths, new_lengths, bs)
        self._k_blocks[blocks, :, offsets, :] = k_data
        self._v_blocks[blocks, :, offsets, :] = v_data
        if self._k_scales is not None and self._v_scales is not None:
            self._k_scales[blocks, :, offsets] = k_scales
            self._v_scales[blocks, :, offsets] = v_scales
        for sid, n1 in zip(ids, new_lengths):
            self._sequences[sid].length = n1

    def truncate(self, seq_id: int, length: int) -> None:
        """Keep the first ``length`` tokens of sequence ``seq_id`` (0 <= length <= its length),
        e.g. to roll back tokens a speculative-decoding step rejected; whole blocks past them
        return to the free list."""
        s = self._sequence(seq_id, "seq_id")
        n = check_int(length, "length")
        if not 0 <= n <= s.length:
            raise ValueError(f"length (={n}) must be between 0 and length({seq_id}) (={s.length})")
        keep = -(-n // self._block_size)
        self._release(s.blocks[keep:])
        del s.blocks[keep:]
        s.length = n

    def reset(self, seq_id: int) -> None:
        """Empty sequence ``seq_id`` (it stays in the cache with length 0); its blocks are freed."""
        self.truncate(seq_id, 0)

    def free(self, seq_id: int) -> None:
        """Remove sequence ``seq_id`` from the cache; its blocks are freed."""
        s = self._sequence(seq_id, "seq_id")
        self._release(s.blocks)
        del self._sequences[int(seq_id)]

    # -- internals ----------------------------------------------------------------------------

    def _allocate(self, capacity: int) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
        shape = (capacity, self._hkv, self._block_size)
        k = np.zeros(shape + (self._d,), dtype=self._dtype)
        v = np.zeros(shape + (self._dv,), dtype=self._dtype)
        if not self._quantized:
            return k, v, None, None
        return k, v, np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32)

    def _grown(self, capacity: int) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
        """New pool arrays of `capacity` blocks holding the current ones (not installed)."""
        pools = self._allocate(capacity)
        current = (self._k_blocks, self._v_blocks, self._k_scales, self._v_scales)
        for new, old in zip(pools, current):
            if new is not None and old is not None:
                new[:old.shape[0]] = old
        return pools

    def _release(self, blocks: List[int]) -> None:
        self._free.extend(reversed(blocks))

    def _sequence(self, seq_id: Any, name: str) -> _Sequence:
        sid = check_int(seq_id, name, "a non-negative int")
        s = self._sequences.get(sid)
        if s is None:
            raise ValueError(f"{name} (={sid}) is not a sequence of this cache ({_ids_text(self._sequences)})")
        return s

    def _sequences_of(self, ids: List[int]) -> List[_Sequence]:
        for i, sid in enumerate(ids):
            if sid not in self._sequences:
                raise ValueError(f"seq_ids[{i}] (={sid}) is not a sequence of this cache "
                                 f"({_ids_text(self._sequences)})")
        return [self._sequences[sid] for sid in ids]

    @staticmethod
    def _ids(seq_ids: Any, name: str) -> List[int]:
        """`seq_ids` (a list, tuple, range or 1-D integer array) as a list of non-negative ints."""
        if isinstance(seq_ids, np.ndarray):
            if seq_ids.dtype.kind not in "iu":
                raise TypeError(f"{name}.dtype (={seq_ids.dtype}) must be an integer dtype")
            if seq_ids.ndim != 1:
                raise ValueError(f"{name}.ndim (={seq_ids.ndim}) must be 1")
            values: List[int] = seq_ids.tolist()
        elif isinstance(seq_ids, (list, tuple, range)):
            values = [check_int(x, f"{name}[{i}]", "a non-negative int") for i, x in enumerate(seq_ids)]
        else:
            raise TypeError(f"{name} must be a list, tuple or 1-D integer array of sequence ids, "
                            f"got {type(seq_ids).__name__}")
        for i, sid in enumerate(values):
            if sid < 0:
                raise ValueError(f"{name}[{i}] (={sid}) must be >= 0")
        return values

    def _per_sequence(self, x: Any, name: str, count: int, dim: int, dim_name: str) -> List[np.ndarray]:
        """`x` (a list of (Hkv, n_i, dim) arrays or a (count, Hkv, n, dim) array) as a list of
        `count` floating (Hkv, n_i, dim) arrays, checked."""
        if isinstance(x, (list, tuple)):
            if len(x) != count:
                raise ValueError(f"len({name}) (={len(x)}) must equal len(seq_ids) (={count})")
            arrays = [asarray(xi, f"{name}[{i}]") for i, xi in enumerate(x)]
            for i, a in enumerate(arrays):
                _check_floating(a, f"{name}[{i}]")
                if a.ndim != 3 or a.shape[0] != self._hkv or a.shape[2] != dim:
                    raise ValueError(f"{name}[{i}].shape (={a.shape}) must be (num_kv_heads, n, {dim_name}) = "
                                     f"({self._hkv}, n, {dim})")
            return arrays
        a = asarray(x, name)
        _check_floating(a, name)
        if a.ndim != 4 or a.shape[0] != count or a.shape[1] != self._hkv or a.shape[3] != dim:
            raise ValueError(f"{name}.shape (={a.shape}) must be (len(seq_ids), num_kv_heads, n, {dim_name}) = "
                             f"({count}, {self._hkv}, n, {dim}), or {name} a list of (num_kv_heads, n_i, "
                             f"{dim_name}) arrays")
        return list(a)

    def _convert(self, arrays: List[np.ndarray], name: str, dim: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """The tokens of `arrays` as (T, Hkv, dim) in the storage dtype, in append order, and for
        int8 their (T, Hkv) float32 scales. int8: a non-finite token is a ValueError."""
        target = _FLOAT32 if self._quantized else self._dtype
        if not arrays:
            return np.zeros((0, self._hkv, dim), target), np.zeros((0, self._hkv), np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # rounding to a narrower float may overflow to inf
            # Each array is cast on its own (one rounding, no promotion between input dtypes).
            x = np.concatenate([a.transpose(1, 0, 2) for a in arrays], dtype=target, casting="unsafe")
        if not self._quantized:
            return x, None
        finite = np.isfinite(x)
        if not finite.all():
            t, h, j = (int(i) for i in np.argwhere(~finite)[0])
            starts = np.cumsum([0] + [a.shape[1] for a in arrays])
            i = int(np.searchsorted(starts, t, side="right")) - 1
            where = f"[{h}, {t - starts[i]}, {j}]"
            raise ValueError(f"{name}[{i}]{where} (={arrays[i][h, t - starts[i], j]}) is not finite "
                             f"in float32: int8 storage cannot quantise NaN or infinity")
        return quantise(x)

    def _token_slots(self, seqs: List[_Sequence]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return _slots([s.blocks for s in seqs], [0] * len(seqs), [s.length for s in seqs], self._block_size)


def quantise(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantisation of finite float32 `x` (..., D) over its last axis:
    ``(q, scale)`` with ``scale = max|x| / 127`` (float32, shape ``x.shape[:-1]``) and
    ``q = clip(rint(x / scale), -127, 127)`` int8 (0 where the scale is 0)."""
    scale = np.max(np.abs(x), axis=-1, initial=np.float32(0)) / _QMAX
    divisor = np.where(scale > 0, scale, np.float32(1))[..., None]
    q = np.clip(np.rint(x / divisor), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32, copy=False)


def _slots(tables: List[List[int]], starts: List[int], stops: List[int],
           block_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For tokens starts[i] <= t < stops[i] of each sequence i (block table tables[i]), in that
    order: the sequence index, the position t, the block id and the row within the block. Costs
    O(blocks touched), not O(blocks of the sequences): an append to long sequences stays cheap."""
    counts = [b - a for a, b in zip(starts, stops)]
    rows = np.repeat(np.arange(len(counts), dtype=np.intp), counts)
    if not sum(counts):
        empty = np.zeros(0, dtype=np.intp)
        return rows, empty, empty, empty
    positions = np.concatenate([np.arange(a, b, dtype=np.intp) for a, b in zip(starts, stops)])
    firsts = [a // block_size for a in starts]
    touched = [t[f:-(-b // block_size)] for t, f, b in zip(tables, firsts, stops)]
    padded = np.zeros((len(tables), max(map(len, touched))), dtype=np.intp)
    for row, blocks in zip(padded, touched):
        row[:len(blocks)] = blocks
    first = np.array(firsts, dtype=np.intp)[rows]
    return rows, positions, padded[rows, positions // block_size - first], positions % block_size


def _check_floating(a: np.ndarray, name: str) -> None:
    if not is_floating(a.dtype):
        raise TypeError(f"{name}.dtype (={a.dtype}) must be a floating dtype (float16, bfloat16, float32, float64)")


def _ids_text(sequences: Dict[int, _Sequence]) -> str:
    ids = list(sequences)
    if not ids:
        return "it has no sequences"
    shown = ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")
    return f"its {len(ids)} ids: {shown}"
