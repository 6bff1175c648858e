"""KVCache.attention: attention from new queries to cached sequences (prefill and decode), on every
backend, against fastattn.attention over the same keys held densely (bitwise for float storage)
and the float64 oracle on the dequantised keys (int8); a token-by-token decode against full causal
attention; the errors."""

from __future__ import annotations

import numpy as np
import pytest

import fastattn
from oracle import assert_matches_oracle

HKV, HQ, D = 2, 4, 16


def quantised(x):
    """The int8 round trip of KVCache, written independently: per token and head, symmetric."""
    x = x.astype(np.float32)
    scale = np.abs(x).max(axis=-1, keepdims=True) / np.float32(127)
    q = np.where(scale > 0, np.clip(np.rint(x / np.where(scale > 0, scale, 1)), -127, 127), 0)
    return (q.astype(np.int8).astype(np.float32) * scale).astype(np.float32)


def filled_cache(rng, dtype, lengths, value_dim=D):
    """A cache with sequences 0.. of `lengths` tokens appended in ragged pieces, and the dense
    (B, Hkv, Lmax, ·) float64 copy of what was appended."""
    cache = fastattn.KVCache(HKV, D, value_dim=value_dim, dtype=dtype, block_size=4)
    lmax = max(lengths)
    k_all = rng.standard_normal((len(lengths), HKV, lmax, D))
    v_all = rng.standard_normal((len(lengths), HKV, lmax, value_dim))
    start = [0] * len(lengths)
    while any(s < n for s, n in zip(start, lengths)):
        ids = [i for i, n in enumerate(lengths) if start[i] < n]
        sizes = [min(int(rng.integers(1, 6)), lengths[i] - start[i]) for i in ids]
        cache.append(ids, [k_all[i, :, start[i]:start[i] + s] for i, s in zip(ids, sizes)],
                     [v_all[i, :, start[i]:start[i] + s] for i, s in zip(ids, sizes)])
        for i, s in zip(ids, sizes):
            start[i] += s
    return cache, k_all, v_all


def stored(x, dtype):
    """The values the cache holds for float64 input x: rounded to the storage dtype."""
    if dtype == "int8":
        return quantised(x)
    if dtype == "bfloat16":
        return x.astype(np.float32).astype(pytest.importorskip("ml_dtypes").bfloat16)
    return x.astype(dtype)


OPTIONS = {
    "plain": dict(),
    "window_alibi": dict(window=(5, 0), alibi_slopes=[0.1, 0.2, 0.3, 0.4]),
    "softcap_sinks": dict(softcap=3.0, sinks=[0.5, -1.0, 2.0, 0.0]),
    "not_causal": dict(causal=False),
}


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("lq", [1, 3, 70])  # decoding (K/V read in place) and prefill (K/V packed)
def test_float_storage_equals_dense_attention(backend, rng, dtype, lq, options):
    lengths = [23, 5, 40] if lq < 5 else [300, 70, 129]
    cache, k_all, v_all = filled_cache(rng, dtype, lengths)
    k, v = stored(k_all, dtype), stored(v_all, dtype)
    for b, n in enumerate(lengths):  # the dense copy is zero past each length, as gather's
        k[b, :, n:] = 0
        v[b, :, n:] = 0
    q = stored(rng.standard_normal((3, HQ, lq, D)), dtype)
    opts = dict(OPTIONS[options])
    causal = opts.pop("causal", "lower_right")
    got = cache.attention(q, [0, 1, 2], causal=causal, backend=backend, **opts)
    want = fastattn.attention(q, k, v, kv_lengths=lengths, causal=causal, backend=backend, **opts)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("lq", [2, 70])
@pytest.mark.parametrize("options", OPTIONS)
def test_int8_storage_matches_the_oracle_on_dequantised_values(backend, rng, options, lq):
    lengths = [23, 5, 40] if lq < 5 else [300, 70, 129]
    cache, k_all, v_all = filled_cache(rng, "int8", lengths)
    k, v = quantised(k_all), quantised(v_all)
    q = rng.standard_normal((3, HQ, lq, D)).astype(np.float32)
    opts = dict(OPTIONS[options])
    causal = opts.pop("causal", "lower_right")
    out, lse = cache.attention(q, [0, 1, 2], causal=causal, return_lse=True, backend=backend, **opts)
    assert_matches_oracle(q, k, v, out, lse, kv_lengths=lengths, causal=causal, **opts)


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_token_by_token_decode_equals_full_causal_attention(backend, rng, dtype):
    """Prefill 7 tokens, then decode 12 one at a time: each output row is the row of one causal
    attention over the whole sequence (within float32 rounding: the kernel cuts the work
    differently for one row than for a block of rows)."""
    total, prefill = 19, 7
    k_all = rng.standard_normal((2, HKV, total, D))
    v_all = rng.standard_normal((2, HKV, total, D))
    q_all = rng.standard_normal((2, HQ, total, D)).astype(np.float32)
    cache = fastattn.KVCache(HKV, D, dtype=dtype, block_size=4)
    rows = []
    for t0, t1 in [(0, prefill)] + [(t, t + 1) for t in range(prefill, total)]:
        cache.append([0, 1], k_all[:, :, t0:t1], v_all[:, :, t0:t1])
        rows.append(cache.attention(q_all[:, :, t0:t1], [0, 1], backend=backend))
    got = np.concatenate(rows, axis=2)
    k, v = stored(k_all, dtype), stored(v_all, dtype)
    want = fastattn.attention(q_all, k.astype(np.float32), v.astype(np.float32), causal=True, backend=backend)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    assert_matches_oracle(q_all, k.astype(np.float32), v.astype(np.float32), got, causal=True)


@pytest.mark.parametrize("lq", [1, 70])
def test_the_kernel_reads_the_blocks_in_place(rng, monkeypatch, lq):
    """With the C++ backend nothing is gathered: the kernel reads the pools through the table."""
    if not fastattn.show_config()["backend"] == "cpp":
        pytest.skip("the C++ extension is not built")
    cache, _, _ = filled_cache(rng, "int8", [200, 90])
    want = cache.attention(np.ones((2, HQ, lq, D), np.float32), [0, 1], backend="numpy")

    def no_gather(*args, **kwargs):
        raise AssertionError("gathered")

    monkeypatch.setattr(cache, "gather", no_gather)
    got = cache.attention(np.ones((2, HQ, lq, D), np.float32), [0, 1], backend="cpp")
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_ragged_prefill_with_q_lengths(rng):
    lengths = [9, 4]
    cache, k_all, v_all = filled_cache(rng, "float32", lengths)
    q = rng.standard_normal((2, HQ, 3, D)).astype(np.float32)
    got = cache.attention(q, [0, 1], q_lengths=[3, 2])
    k, v = k_all.astype(np.float32), v_all.astype(np.float32)
    k[1, :, 4:] = 0
    v[1, :, 4:] = 0
    want = fastattn.attention(q, k, v, kv_lengths=lengths, q_lengths=[3, 2], causal="lower_right")
    np.testing.assert_array_equal(got, want)
    assert np.all(got[1, :, 2] == 0)  # past q_lengths: padding


@pytest.mark.parametrize("make_q, exc, message", [
    (lambda rng: rng.standard_normal((2, HQ, 1, D)), TypeError, "q.dtype (=float64) must be the cache's compute dtype float32"),
    (lambda rng: np.zeros((3, HQ, 1, D), np.float32), ValueError, "q.shape (=(3, 4, 1, 16)) must be (len(seq_ids), Hq, Lq, head_dim) = (2, Hq, Lq, 16)"),
    (lambda rng: np.zeros((2, 3, 1, D), np.float32), ValueError, "with Hq a multiple of num_kv_heads (=2)"),
    (lambda rng: np.zeros((2, HQ, 6, D), np.float32), ValueError, "sequence 1 holds 5 tokens, fewer than the 6 queries"),
])
def test_errors(rng, make_q, exc, message):
    cache, _, _ = filled_cache(rng, "float32", [8, 5])
    with pytest.raises(exc) as info:
        cache.attention(make_q(rng), [0, 1])
    assert message in str(info.value)
    with pytest.raises(ValueError, match="seq_id"):
        cache.attention(np.zeros((1, HQ, 1, D), np.float32), [7])


def test_decode_cycles_do_not_leak():
    """20,000 decode steps (append a token, attend, roll back past 64 tokens) keep the pool and
    the process's memory bounded: the kernel's workspaces and the Python side free what they
    take."""
    import os

    if not os.path.exists("/proc/self/statm"):
        pytest.skip("RSS is read from /proc/self/statm")

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    rng = np.random.default_rng(5)
    cache = fastattn.KVCache(HKV, D, dtype="int8", block_size=8)
    k = rng.standard_normal((2, HKV, 1, D)).astype(np.float32)
    q = rng.standard_normal((2, HQ, 1, D)).astype(np.float32)

    def steps(n):
        for _ in range(n):
            cache.append([0, 1], k, k)
            cache.attention(q, [0, 1], sinks=[0.0, 1.0, 2.0, 3.0])  # the C++ kernel when built
            if cache.length(0) > 64:
                cache.truncate(0, 3)
                cache.truncate(1, 5)

    steps(1_000)  # warm up
    before = rss()
    steps(20_000)
    assert cache.num_blocks <= 32
    assert rss() - before < 2 * 2**20, f"RSS grew by {(rss() - before) / 2**20:.2f} MiB over 20,000 decode steps"
