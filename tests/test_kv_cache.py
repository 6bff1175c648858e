"""fastattn.KVCache: paged K/V storage for decoding.

A dense model (a dict id -> (k, v) arrays) is the oracle: random ragged appends, truncates,
resets and frees must leave `gather` equal to it bit for bit (float storage) or to it quantised
and dequantised by this file's own int8 implementation ("int8"), and the block tables must
describe the pools exactly as the class docstring says. Then: 10,000 ragged appends, no growth
over 20,000 append/truncate cycles, every error (message and an unchanged cache), and the memory
of int8 storage.
"""

from __future__ import annotations

import math
import os
import sys
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastattn
from fastattn import KVCache

STORAGE = ["float32", "float16", "bfloat16", "int8"]


def storage_dtype(name):
    """The storage dtype `name` names; bfloat16 skips without ml_dtypes."""
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(name)


# ---- an independent int8 implementation and the dense model ---------------------------------------

def int8_round_trip(x):
    """x (H, n, D), any float dtype, as the int8 cache returns it: rounded to float32, scaled
    per (head, token) by max|x| / 127, rounded to an int in [-127, 127], scaled back."""
    x = np.asarray(x).astype(np.float32)
    scale = np.abs(x).max(axis=-1, keepdims=True, initial=0).astype(np.float32) / np.float32(127)
    steps = np.divide(x, scale, out=np.zeros_like(x), where=scale != 0)
    q = np.minimum(np.maximum(np.round(steps), -127), 127)
    return (q.astype(np.int8).astype(np.float32) * scale).astype(np.float32)


class Model:
    """The dense truth: per id, (k (H, L, D), v (H, L, Dv)) as the cache should return them."""

    def __init__(self, cache):
        self.cache = cache
        self.quantized = cache.dtype == np.int8
        self.seqs = {}

    def stored(self, x):
        x = np.asarray(x)
        return int8_round_trip(x) if self.quantized else x.astype(self.cache.dtype)

    def append(self, ids, ks, vs):
        for sid, k, v in zip(ids, ks, vs):
            old_k, old_v = self.seqs.get(sid, (self.empty(self.cache.head_dim), self.empty(self.cache.value_dim)))
            self.seqs[sid] = (np.concatenate([old_k, self.stored(k)], axis=1),
                              np.concatenate([old_v, self.stored(v)], axis=1))

    def empty(self, dim):
        return np.zeros((self.cache.num_kv_heads, 0, dim), np.float32 if self.quantized else self.cache.dtype)

    def truncate(self, sid, n):
        k, v = self.seqs[sid]
        self.seqs[sid] = (k[:, :n], v[:, :n])

    def blocks_needed(self, sid, extra):
        n = self.seqs[sid][0].shape[1] if sid in self.seqs else 0
        return -(-(n + extra) // self.cache.block_size)


def same(a, b):
    """Bitwise equality of dtype, shape and bytes (NaN equals itself, -0.0 is not 0.0)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def from_blocks(cache, seq_ids):
    """The sequences read through block_table from the pools, as a kernel would (the documented
    layout), dequantised for int8: a path independent of gather."""
    table, lengths = cache.block_table(seq_ids)
    assert table.dtype == np.int32 and lengths.dtype == np.int64
    bs = cache.block_size
    out = []
    for row, n in zip(table, lengths):
        assert list(row >= 0) == [i < -(-n // bs) for i in range(len(row))]  # -1 padding only at the end
        ks, vs = [], []
        for t in range(n):
            b, r = row[t // bs], t % bs
            k, v = cache.k_blocks[b, :, r, :], cache.v_blocks[b, :, r, :]
            if cache.quantized:
                k = k.astype(np.float32) * cache.k_scales[b, :, r][:, None]
                v = v.astype(np.float32) * cache.v_scales[b, :, r][:, None]
            ks.append(k)
            vs.append(v)
        shape = (cache.num_kv_heads, 0)
        dt = np.float32 if cache.quantized else cache.dtype
        out.append((np.stack(ks, axis=1) if ks else np.zeros(shape + (cache.head_dim,), dt),
                    np.stack(vs, axis=1) if vs else np.zeros(shape + (cache.value_dim,), dt)))
    return out


def check_against(model):
    cache = model.cache
    ids = list(model.seqs)
    assert sorted(cache.seq_ids) == sorted(ids) and len(cache) == len(ids)
    k, v, lengths = cache.gather(ids)
    assert list(lengths) == [model.seqs[s][0].shape[1] for s in ids] == list(cache.lengths(ids))
    lmax = int(lengths.max(initial=0))
    dt = np.float32 if model.quantized else cache.dtype
    assert k.shape == (len(ids), cache.num_kv_heads, lmax, cache.head_dim) and k.dtype == dt
    assert v.shape == (len(ids), cache.num_kv_heads, lmax, cache.value_dim) and v.dtype == dt
    for i, sid in enumerate(ids):
        mk, mv = model.seqs[sid]
        n = mk.shape[1]
        assert same(k[i, :, :n], mk) and same(v[i, :, :n], mv), f"sequence {sid}"
        assert not k[i, :, n:].astype(np.float32).any() and not v[i, :, n:].astype(np.float32).any()
    for (bk, bv), sid in zip(from_blocks(cache, ids), ids):
        assert same(bk, model.seqs[sid][0]) and same(bv, model.seqs[sid][1]), f"blocks of sequence {sid}"
    # Each block is used by at most one sequence; used + free = the pool.
    table, _ = cache.block_table(ids)
    used = table[table >= 0]
    assert len(set(used.tolist())) == used.size == cache.num_used_blocks
    assert used.size + cache.num_free_blocks == cache.num_blocks
    assert (used < cache.num_blocks).all()
    assert cache.used_bytes == used.size * cache.block_bytes
    pools = [cache.k_blocks, cache.v_blocks] + ([cache.k_scales, cache.v_scales] if cache.quantized else [])
    assert cache.memory_bytes == sum(p.nbytes for p in pools)


# ---- the property test --------------------------------------------------------------------------

@st.composite
def scripts(draw):
    config = dict(num_kv_heads=draw(st.integers(1, 3)), head_dim=draw(st.integers(1, 6)),
                  value_dim=draw(st.integers(1, 6)), block_size=draw(st.integers(1, 5)),
                  max_blocks=draw(st.one_of(st.none(), st.integers(1, 12))))
    ops = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["append", "append", "append", "truncate", "reset", "free"]))
        if kind == "append":
            ids = draw(st.lists(st.integers(0, 5), min_size=0, max_size=4, unique=True))
            sizes = draw(st.lists(st.integers(0, 11), min_size=len(ids), max_size=len(ids)))
            ops.append((kind, ids, sizes, draw(st.sampled_from(["float32", "float64", "float16"])),
                        draw(st.booleans()), draw(st.integers(0, 2**32 - 1))))
        else:
            ops.append((kind, draw(st.integers(0, 5)), draw(st.floats(0, 1))))
    return config, ops


@pytest.mark.parametrize("name", STORAGE)
@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(script=scripts())
def test_random_operations_match_a_dense_model(name, script):
    config, ops = script
    cache = KVCache(dtype=storage_dtype(name), **config)
    model = Model(cache)
    for op in ops:
        if op[0] == "append":
            _, ids, sizes, input_dtype, dense, seed = op
            rng = np.random.default_rng(seed)
            if dense and ids:  # the (B, Hkv, n, D) form: every sequence gets the same count
                sizes = [sizes[0]] * len(ids)
            ks = [rng.standard_normal((cache.num_kv_heads, n, cache.head_dim)).astype(input_dtype) for n in sizes]
            vs = [rng.standard_normal((cache.num_kv_heads, n, cache.value_dim)).astype(input_dtype) for n in sizes]
            args = (np.stack(ks), np.stack(vs)) if dense and ids else (ks, vs)
            need = sum(model.blocks_needed(s, n) - (model.blocks_needed(s, 0)) for s, n in zip(ids, sizes))
            if cache.max_blocks is not None and need > cache.num_free_blocks:
                with pytest.raises(ValueError, match="max_blocks"):
                    cache.append(ids, *args)
            else:
                cache.append(ids, *args)
                model.append(ids, ks, vs)
        else:
            kind, sid, fraction = op
            if sid not in model.seqs:
                with pytest.raises(ValueError, match="is not a sequence of this cache"):
                    getattr(cache, kind)(sid, *([0] if kind == "truncate" else []))
            elif kind == "truncate":
                n = int(fraction * model.seqs[sid][0].shape[1])
                cache.truncate(sid, n)
                model.truncate(sid, n)
            elif kind == "reset":
                cache.reset(sid)
                model.truncate(sid, 0)
            else:
                cache.free(sid)
                del model.seqs[sid]
        check_against(model)


def test_ten_thousand_ragged_appends():
    # 10,000 appends, each to a random subset of 16 sequences with 0 to 8 tokens per sequence
    # (~85,000 sequence appends, ~340,000 tokens), then every sequence checked exactly.
    rng = np.random.default_rng(7)
    hkv, d, dv, sequences = 2, 4, 3, 16
    source = rng.standard_normal((hkv, 4096, d + dv), dtype=np.float32)  # tokens are windows of this
    cache = KVCache(hkv, d, value_dim=dv, block_size=8)
    truth = {s: [] for s in range(sequences)}
    start = time.perf_counter()
    for _ in range(10_000):
        ids = rng.permutation(sequences)[:rng.integers(1, sequences + 1)].tolist()
        windows = [source[:, a:a + n] for a, n in zip(rng.integers(0, 4088, len(ids)), rng.integers(0, 9, len(ids)))]
        cache.append(ids, [w[..., :d] for w in windows], [w[..., d:] for w in windows])
        for s, w in zip(ids, windows):
            truth[s].append(w)
    elapsed = time.perf_counter() - start
    ids = list(range(sequences))
    k, v, lengths = cache.gather(ids)
    for i in ids:
        want = np.concatenate(truth[i], axis=1)
        assert lengths[i] == want.shape[1]
        assert same(k[i, :, :lengths[i]], want[..., :d].copy()) and same(v[i, :, :lengths[i]], want[..., d:].copy())
    # The pool holds what the sequences need, and at most twice that (it grows by doubling).
    needed = sum(-(-int(n) // 8) for n in lengths)
    assert cache.num_used_blocks == needed and cache.num_blocks <= 2 * needed
    assert elapsed < 10, f"10,000 appends took {elapsed:.1f} s"


# ---- no leaks ------------------------------------------------------------------------------------

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS is read from /proc/self/statm")
def test_append_truncate_cycles_reuse_blocks():
    rng = np.random.default_rng(3)
    cycles_total = 2_000 + 20_000 + 2_000
    cache = KVCache(2, 8, block_size=8)
    sizes = rng.integers(0, 9, size=(cycles_total, 4))
    keeps = rng.integers(0, 65, size=(cycles_total, 4))
    data = rng.standard_normal((2, 8, 8), dtype=np.float32)

    def cycles(rows):
        for i in rows:
            cache.append([0, 1, 2, 3], [data[:, :n] for n in sizes[i]], [data[:, :n] for n in sizes[i]])
            for s in range(4):
                if cache.length(s) > 64:
                    cache.truncate(s, int(keeps[i, s]))

    cycles(range(2_000))  # warm up
    before = rss()
    cycles(range(2_000, 22_000))
    rss_growth = rss() - before
    # At most 4 sequences of 72 tokens are in use: 36 blocks of 8; the pool doubles from 4.
    assert cache.num_blocks <= 64 and cache.memory_bytes <= 64 * cache.block_bytes
    assert rss_growth < 2 * 2**20, f"RSS grew by {rss_growth / 2**20:.2f} MiB over 20,000 cycles"
    # tracemalloc slows NumPy's allocations ~6x: it watches a shorter run, byte by byte.
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cycles(range(22_000, cycles_total))
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert growth < 8 * 1024, f"traced memory grew by {growth} bytes over 2,000 cycles"


# ---- behaviour -----------------------------------------------------------------------------------

def test_appends_write_in_place_and_blocks_are_reused():
    cache = KVCache(1, 2, block_size=4, max_blocks=3)
    pool = cache.k_blocks
    cache.append([5], [np.ones((1, 3, 2))], [np.ones((1, 3, 2))])
    cache.append([5], [np.full((1, 2, 2), 2.0)], [np.full((1, 2, 2), 2.0)])  # fills the tail block, then one more
    table, lengths = cache.block_table([5])
    assert table.tolist() == [[0, 1]] and lengths.tolist() == [5]
    assert cache.k_blocks is pool  # a fixed pool is never reallocated
    cache.truncate(5, 4)  # block 1 returns to the free list ...
    cache.append([6], [np.zeros((1, 4, 2))], [np.zeros((1, 4, 2))])
    assert cache.block_table([6])[0].tolist() == [[1]]  # ... and is the next one taken
    cache.free(5)
    assert cache.seq_ids == (6,) and cache.num_free_blocks == 2
    cache.reset(6)
    assert cache.seq_ids == (6,) and cache.length(6) == 0 and cache.num_free_blocks == 3
    assert cache.block_table([6])[0].shape == (1, 0)


def test_a_growing_pool_doubles_and_keeps_its_contents():
    cache = KVCache(1, 3, block_size=2)
    assert cache.num_blocks == 0 and cache.memory_bytes == 0
    x = np.arange(3 * 40, dtype=np.float32).reshape(1, 40, 3)
    counts = []
    for t in range(40):
        cache.append([0], [x[:, t:t + 1]], [x[:, t:t + 1]])
        counts.append(cache.num_blocks)
    assert sorted(set(counts)) == [4, 8, 16, 32]
    k, v, _ = cache.gather([0])
    assert same(k[0], x) and same(v[0], x)


def test_dtypes_accepted():
    assert KVCache(1, 4, dtype=np.float16).dtype == np.float16
    assert KVCache(1, 4, dtype="f4").dtype == np.float32
    assert KVCache(1, 4, dtype=np.dtype("float32")).dtype == np.float32
    cache = KVCache(1, 4, dtype="int8")
    assert cache.dtype == np.int8 and cache.quantized and cache.k_scales is not None
    assert KVCache(1, 4, dtype=np.int8).quantized
    assert KVCache(1, 4).k_scales is None and not KVCache(1, 4).quantized


def test_bfloat16_storage():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    for dtype in ("bfloat16", ml_dtypes.bfloat16, np.dtype(ml_dtypes.bfloat16)):
        cache = KVCache(2, 4, dtype=dtype)
        assert cache.dtype == np.dtype(ml_dtypes.bfloat16) and cache.block_bytes == 2 * 128 * 8 * 2  # the default block_size: 128
    x = np.float32([1 + 2**-8, 1 + 3 * 2**-8, -2.5, 1e30]).reshape(1, 1, 4)  # ties round to even
    cache = KVCache(1, 4, dtype="bfloat16")
    cache.append([0], [x], [x])
    k, _, _ = cache.gather([0])
    assert same(k[0], x.astype(ml_dtypes.bfloat16))
    assert same(cache.gather([0], dtype=np.float32)[0][0], x.astype(ml_dtypes.bfloat16).astype(np.float32))
    # bfloat16 inputs, mixed with others in one append (each is cast on its own, no promotion).
    y = np.float32([1 + 2**-8, -3.3, 0.1, 6e4]).reshape(1, 1, 4)
    inputs = [y.astype(ml_dtypes.bfloat16), y.astype(np.float16), y.astype(np.float64)]
    for name in ("float32", "float16", "int8"):
        cache = KVCache(1, 4, dtype=name)
        cache.append([0, 1, 2], inputs, inputs)
        model = Model(cache)
        model.append([0, 1, 2], inputs, inputs)
        check_against(model)


def test_bfloat16_without_ml_dtypes(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes now raises ImportError
    with pytest.raises(TypeError, match=r"bfloat16 storage needs ml_dtypes"):
        KVCache(1, 4, dtype="bfloat16")


def test_non_finite_values_are_stored_as_they_are():
    x = np.float32([np.nan, np.inf, -np.inf, -0.0]).reshape(1, 1, 4)
    for dtype in ("float32", "float16"):
        cache = KVCache(1, 4, dtype=dtype)
        cache.append([0], [x], [x])
        assert same(cache.gather([0])[0][0], x.astype(dtype))
    cache = KVCache(1, 4, dtype="float16")
    cache.append([0], [np.full((1, 1, 4), 1e300)], [np.zeros((1, 1, 4))])  # float64 beyond float16: inf
    assert np.isposinf(cache.gather([0])[0]).all()


def test_int8_quantisation_rules():
    x = np.float32([[0, 0, 0, 0], [127, -63.5, 0.5, -127], [1e-3, -2e-3, 4e-3, 0], [1e-44, 0, 0, 0]])
    x = x.reshape(1, 4, 4)
    cache = KVCache(1, 4, dtype="int8", block_size=8)
    cache.append([0], [x], [-x])
    scales = cache.k_scales[0, 0, :4]
    assert scales.tolist() == [0, 1, np.float32(4e-3) / np.float32(127), np.float32(1e-44) / np.float32(127)]
    q = cache.k_blocks[0, 0, :4]
    assert q[0].tolist() == [0] * 4 and q[1].tolist() == [127, -64, 0, -127]  # rint: ties to even
    assert q[3].tolist() == [0] * 4  # the scale underflows to 0: zeros
    assert same(cache.v_blocks[0, 0, :4], -q) and same(cache.v_scales[0, 0, :4], scales)
    k, v, _ = cache.gather([0])
    assert same(k[0], int8_round_trip(x)) and same(v[0], int8_round_trip(-x))
    assert same(cache.gather([0], dtype=np.float64)[0], k.astype(np.float64))
    # The error of each element is at most half a step of its token's scale.
    rng = np.random.default_rng(1)
    y = rng.standard_normal((2, 50, 16)).astype(np.float32) * rng.uniform(0.01, 100, size=(2, 50, 1))
    cache = KVCache(2, 16, dtype="int8")
    cache.append([0], [y], [y])
    err = np.abs(cache.gather([0])[0][0] - y)
    assert (err <= np.abs(y).max(axis=-1, keepdims=True) / 254 * (1 + 1e-6)).all()


def test_int8_memory_is_about_a_quarter_of_float32():
    rng = np.random.default_rng(2)
    lengths = [1, 17, 300, 64, 129]
    caches = {name: KVCache(8, 128, dtype=name) for name in ("float32", "float16", "int8")}
    for cache in caches.values():
        for sid, n in enumerate(lengths):
            x = rng.standard_normal((8, n, 128), dtype=np.float32)
            cache.append([sid], [x], [x])
    f32, f16, i8 = (caches[n] for n in ("float32", "float16", "int8"))
    assert i8.num_blocks == f32.num_blocks and i8.num_used_blocks == f32.num_used_blocks
    assert i8.memory_bytes <= 0.27 * f32.memory_bytes and i8.used_bytes <= 0.27 * f32.used_bytes
    assert i8.memory_bytes / f32.memory_bytes == pytest.approx((128 + 4) / (4 * 128))
    assert f16.memory_bytes * 2 == f32.memory_bytes


def test_gathered_cache_feeds_attention():
    rng = np.random.default_rng(4)
    cache = KVCache(2, 16, block_size=4)
    seqs = {3: 9, 1: 1, 8: 14}
    for sid, n in seqs.items():
        cache.append([sid], [rng.standard_normal((2, n, 16))], [rng.standard_normal((2, n, 16))])
    ids = list(seqs)
    k, v, lengths = cache.gather(ids)
    q = rng.standard_normal((3, 4, 1, 16)).astype(np.float32)
    out = fastattn.attention(q, k, v, kv_lengths=lengths, causal="lower_right")
    for i, n in enumerate(lengths):
        alone = fastattn.attention(q[i:i + 1], k[i:i + 1, :, :n], v[i:i + 1, :, :n])
        np.testing.assert_allclose(out[i:i + 1], alone, rtol=1e-5, atol=1e-6)


# ---- errors --------------------------------------------------------------------------------------

H, D, DV, BS = 2, 64, 3, 4


def filled(dtype="float32", max_blocks=None):
    """Sequences 0 (5 tokens) and 1 (3 tokens): 3 blocks of 4; a fixed pool of 4 has 1 free."""
    cache = KVCache(H, D, value_dim=DV, dtype=dtype, block_size=BS, max_blocks=max_blocks)
    rng = np.random.default_rng(5)
    for sid, n in ((0, 5), (1, 3)):
        cache.append([sid], [rng.standard_normal((H, n, D))], [rng.standard_normal((H, n, DV))])
    return cache


def kv(n, d=D, dv=DV, h=H, dtype=np.float32):
    return np.ones((h, n, d), dtype), np.ones((h, n, dv), dtype)


def with_value(x, index, value):
    x = x.copy()
    x[index] = value
    return x


def state(cache):
    ids = list(cache.seq_ids)
    k, v, lengths = cache.gather(ids)
    pools = [cache.k_blocks, cache.v_blocks] + ([cache.k_scales, cache.v_scales] if cache.quantized else [])
    return (ids, lengths.tolist(), cache.block_table(ids)[0].tolist(), k.tobytes(), v.tobytes(),
            cache.num_blocks, cache.num_free_blocks, cache.memory_bytes, [p.tobytes() for p in pools])


K1, V1 = kv(1)
K3, V3 = kv(3)

ERRORS = [
    # append: seq_ids
    ("float32", lambda c: c.append(0, [K1], [V1]), TypeError,
     "seq_ids must be a list, tuple or 1-D integer array of sequence ids, got int"),
    ("float32", lambda c: c.append([0, 1.0], [K1, K1], [V1, V1]), TypeError,
     "seq_ids[1] must be a non-negative int, got float"),
    ("float32", lambda c: c.append(np.array([0.0]), [K1], [V1]), TypeError, "seq_ids.dtype (=float64) must be an integer"),
    ("float32", lambda c: c.append(np.array([[0]]), [K1], [V1]), ValueError, "seq_ids.ndim (=2) must be 1"),
    ("float32", lambda c: c.append([2, -1], [K1, K1], [V1, V1]), ValueError, "seq_ids[1] (=-1) must be >= 0"),
    ("float32", lambda c: c.append([1, 2, 1], [K1] * 3, [V1] * 3), ValueError, "seq_ids[2] (=1) repeats seq_ids[0]"),
    # append: k and v
    ("float32", lambda c: c.append([0, 1], [K1], [V1, V1]), ValueError, "len(k) (=1) must equal len(seq_ids) (=2)"),
    ("float32", lambda c: c.append([0, 1], [K1, K1], (V1,)), ValueError, "len(v) (=1) must equal len(seq_ids) (=2)"),
    ("float32", lambda c: c.append([0, 1], [K1, kv(3, d=63)[0]], [V1, V3]), ValueError,
     "k[1].shape (=(2, 3, 63)) must be (num_kv_heads, n, head_dim) = (2, n, 64)"),
    ("float32", lambda c: c.append([0, 1], [K1, kv(3, h=3)[0]], [V1, V3]), ValueError,
     "k[1].shape (=(3, 3, 64)) must be (num_kv_heads, n, head_dim) = (2, n, 64)"),
    ("float32", lambda c: c.append([0], [K1[0]], [V1]), ValueError,
     "k[0].shape (=(1, 64)) must be (num_kv_heads, n, head_dim) = (2, n, 64)"),
    ("float32", lambda c: c.append([0, 1], [K1, K3], [V1, kv(3, dv=4)[1]]), ValueError,
     "v[1].shape (=(2, 3, 4)) must be (num_kv_heads, n, value_dim) = (2, n, 3)"),
    ("float32", lambda c: c.append([0, 1], [K1, K3], [V1, V1]), ValueError,
     "v[1].shape (=(2, 1, 3)) must be (num_kv_heads, n, value_dim) = (2, 3, 3), with n = k[1].shape[1]"),
    ("float32", lambda c: c.append([0, 1], np.stack([K3, K3]), np.stack([V3, V3])[:, :, :2]), ValueError,
     "v[0].shape (=(2, 2, 3)) must be (num_kv_heads, n, value_dim) = (2, 3, 3)"),
    ("float32", lambda c: c.append([0, 1], np.stack([K3]), [V3, V3]), ValueError,
     "k.shape (=(1, 2, 3, 64)) must be (len(seq_ids), num_kv_heads, n, head_dim) = (2, 2, n, 64)"),
    ("float32", lambda c: c.append([0], K3, [V3]), ValueError,
     "k.shape (=(2, 3, 64)) must be (len(seq_ids), num_kv_heads, n, head_dim) = (1, 2, n, 64)"),
    ("float32", lambda c: c.append([0, 1], [K1, K1.astype(np.int64)], [V1, V1]), TypeError,
     "k[1].dtype (=int64) must be a floating dtype"),
    ("float32", lambda c: c.append([0], [K1], V1[None].astype(np.complex64)), TypeError,
     "v.dtype (=complex64) must be a floating dtype"),
    ("float32", lambda c: c.append([0], [[[1.0], [1.0, 2.0]]], [V1]), TypeError, "k[0] must be an array"),
    ("float32", lambda c: c.append([0], [None], [V1]), TypeError, "k[0].dtype (=object) must be a floating dtype"),
    # append: capacity (sequence 0 fits in the free block, sequence 1 does not)
    ("fixed", lambda c: c.append([0, 1], [K3, kv(6)[0]], [V3, kv(6)[1]]), ValueError,
     "append needs 2 free blocks of 4 tokens, and 1 of max_blocks (=4) are free"),
    ("fixed", lambda c: c.append([9], [kv(5)[0]], [kv(5)[1]]), ValueError, "append needs 2 free blocks"),
    # append: int8 cannot quantise NaN or infinity
    ("int8", lambda c: c.append([0, 1], [K3, with_value(K3, (1, 2, 7), np.nan)], [V3, V3]), ValueError,
     "k[1][1, 2, 7] (=nan) is not finite in float32: int8 storage cannot quantise NaN or infinity"),
    ("int8", lambda c: c.append([0, 5], [K1, K1], [V1, with_value(V1, (0, 0, 2), -np.inf)]), ValueError,
     "v[1][0, 0, 2] (=-inf) is not finite in float32"),
    ("int8", lambda c: c.append([0], np.stack([with_value(K1.astype(np.float64), (1, 0, 0), 1e300)]), [V1]),
     ValueError, "k[0][1, 0, 0] (=1e+300) is not finite in float32"),
    # truncate, reset, free
    ("float32", lambda c: c.truncate(7, 0), ValueError, "seq_id (=7) is not a sequence of this cache (its 2 ids: 0, 1)"),
    ("float32", lambda c: c.truncate(0, -1), ValueError, "length (=-1) must be between 0 and length(0) (=5)"),
    ("float32", lambda c: c.truncate(1, 4), ValueError, "length (=4) must be between 0 and length(1) (=3)"),
    ("float32", lambda c: c.truncate(0, 2.0), TypeError, "length must be an int, got float"),
    ("float32", lambda c: c.truncate("0", 1), TypeError, "seq_id must be a non-negative int, got str"),
    ("float32", lambda c: c.truncate(True, 1), TypeError, "seq_id must be a non-negative int, got bool"),
    ("float32", lambda c: c.reset(2), ValueError, "seq_id (=2) is not a sequence of this cache"),
    ("float32", lambda c: c.free(-1), ValueError, "seq_id (=-1) is not a sequence of this cache"),
    # reading
    ("float32", lambda c: c.length(3), ValueError, "seq_id (=3) is not a sequence of this cache"),
    ("float32", lambda c: c.lengths([0, 3]), ValueError, "seq_ids[1] (=3) is not a sequence of this cache"),
    ("float32", lambda c: c.block_table([4]), ValueError, "seq_ids[0] (=4) is not a sequence of this cache"),
    ("float32", lambda c: c.gather([0, 1, 2]), ValueError, "seq_ids[2] (=2) is not a sequence of this cache"),
    ("float32", lambda c: c.gather({0, 1}), TypeError, "seq_ids must be a list, tuple or 1-D integer array"),
    ("float32", lambda c: c.gather([0], dtype=np.int32), TypeError,
     "dtype (=int32) must be float32, float64, float16 or bfloat16"),
    ("int8", lambda c: c.gather([0], dtype="int8"), TypeError, "dtype (=int8) must be float32, float64"),
]


@pytest.mark.parametrize("kind, call, error, message", ERRORS, ids=[f"{e[2].__name__}: {e[3][:50]}" for e in ERRORS])
def test_bad_call_names_the_argument_and_leaves_the_cache_unchanged(kind, call, error, message):
    cache = filled("int8") if kind == "int8" else filled(max_blocks=4 if kind == "fixed" else None)
    before = state(cache)
    with pytest.raises(error) as info:
        call(cache)
    assert message in str(info.value)
    assert state(cache) == before


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(num_kv_heads=0), ValueError, "num_kv_heads (=0) must be >= 1"),
    (dict(head_dim=2.5), TypeError, "head_dim must be an int, got float"),
    (dict(head_dim=-3), ValueError, "head_dim (=-3) must be >= 1"),
    (dict(value_dim=True), TypeError, "value_dim must be an int, got bool"),
    (dict(value_dim=0), ValueError, "value_dim (=0) must be >= 1"),
    (dict(block_size=0), ValueError, "block_size (=0) must be >= 1"),
    (dict(block_size=None), TypeError, "block_size must be an int, got NoneType"),
    (dict(max_blocks=0), ValueError, "max_blocks (=0) must be >= 1"),
    (dict(max_blocks="8"), TypeError, "max_blocks must be an int, got str"),
    (dict(dtype="float64"), TypeError, 'dtype (=float64) must be float32, float16, bfloat16 or "int8"'),
    (dict(dtype=np.int16), TypeError, "dtype (=int16) must be"),
    (dict(dtype=">f4"), TypeError, "dtype (=>f4) must be"),
    (dict(dtype=None), TypeError, "dtype must be float32, float16, bfloat16 or \"int8\", got None"),
    (dict(dtype="int9"), TypeError, "dtype must be float32, float16, bfloat16 or \"int8\", got 'int9'"),
])
def test_bad_constructor_arguments(kwargs, error, message):
    args = dict(num_kv_heads=2, head_dim=8) | kwargs
    with pytest.raises(error) as info:
        KVCache(args.pop("num_kv_heads"), args.pop("head_dim"), **args)
    assert message in str(info.value)


def test_a_failed_append_leaves_the_cache_usable():
    cache = filled(max_blocks=4)
    with pytest.raises(ValueError):
        cache.append([0, 1], [kv(3)[0], kv(6)[0]], [kv(3)[1], kv(6)[1]])
    cache.append([0, 1], [kv(3)[0], kv(5)[0]], [kv(3)[1], kv(5)[1]])  # exactly fills the pool
    assert cache.lengths([0, 1]).tolist() == [8, 8] and cache.num_free_blocks == 0
    assert math.isclose(cache.used_bytes, cache.memory_bytes)
