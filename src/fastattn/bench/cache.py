"""The benchmark's KVCache rows: decoding (one query token per sequence, GQA) over a
``fastattn.KVCache`` of each storage dtype — float32, bfloat16 (when ml_dtypes imports) and
int8 — next to dense float32 ``attention`` over the same values, each timed like the other
cases. Bytes read are the cached tokens' K and V (and int8's float32 scales)."""

from __future__ import annotations

from typing import Callable, List, Optional

import numpy as np

import fastattn

from .report import READ_NOTE, format_ms, markdown_table, percent, with_note
from .runners import CHECK_ATOL, CHECK_RTOL
from .timing import Settings, time_calls

# (B, Hq, Hkv, cached tokens, D): the serving issue's acceptance case, and a tiny one.
CACHE_SHAPE = (8, 32, 8, 4096, 128)
QUICK_CACHE_SHAPE = (2, 4, 2, 256, 32)
BLOCK_SIZE = 128  # KVCache's default
BFLOAT16_ATOL = 2e-2  # a bfloat16 output against float32 (8 significant bits)


def _bfloat16() -> Optional[np.dtype]:
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def cache_row_count() -> int:
    """How many rows cache_rows makes: dense float32, then the cache's float32, bfloat16 (when
    ml_dtypes imports) and int8."""
    return 4 if _bfloat16() is not None else 3


def cache_rows(shape, settings: Settings, threads: Optional[int], ceilings: dict,
               on_row: Callable[[dict], None] = lambda row: None) -> List[dict]:
    """One row for dense float32 attention, then one per storage dtype of the cache; each row is
    passed to on_row as it is measured."""
    batch, hq, hkv, tokens, d = shape
    rng = np.random.default_rng(0)
    k, v = (rng.standard_normal((batch, hkv, tokens, d), dtype=np.float32) for _ in range(2))
    q = rng.standard_normal((batch, hq, 1, d), dtype=np.float32)
    seqs = list(range(batch))

    def filled(dtype, keys, values) -> fastattn.KVCache:
        cache = fastattn.KVCache(hkv, d, dtype=dtype, block_size=BLOCK_SIZE)
        cache.append(seqs, list(keys), list(values))
        return cache

    int8 = filled("int8", k, v)
    k, v, _ = int8.gather(seqs)  # every row reads these values (dequantised int8; rounded for bfloat16)
    dense = fastattn.attention(q, k, v, num_threads=threads)
    elements = batch * hkv * tokens * 2 * d
    label = f"B{batch} H{hq}/{hkv} Lq1 Lk{tokens} D{d}"
    cases = [("dense float32 attention", lambda: fastattn.attention(q, k, v, num_threads=threads),
              elements * 4, CHECK_ATOL)]
    cases.append(("KVCache float32", lambda c=filled(np.float32, k, v): c.attention(q, seqs, num_threads=threads),
                  elements * 4, CHECK_ATOL))
    bfloat16 = _bfloat16()
    if bfloat16 is not None:
        q16 = q.astype(bfloat16)
        cases.append(("KVCache bfloat16",
                      lambda c=filled(bfloat16, k, v): c.attention(q16, seqs, num_threads=threads),
                      elements * 2, BFLOAT16_ATOL))
    cases.append(("KVCache int8", lambda: int8.attention(q, seqs, num_threads=threads),
                  elements + batch * hkv * tokens * 2 * 4, CHECK_ATOL))

    rows = []
    for name, run, nbytes, atol in cases:
        diff = np.abs(np.asarray(run(), dtype=np.float32) - dense)
        ok = bool(np.all(diff <= atol + CHECK_RTOL * np.abs(dense)))
        timing = time_calls(run, settings)
        bandwidth = nbytes / timing["median_s"] / 1e9
        rows.append(dict(timing, label=f"{name} {label}", name=name, shape=list(shape), block_size=BLOCK_SIZE,
                         bytes_read=nbytes, bandwidth_gbs=bandwidth,
                         bandwidth_fraction=bandwidth / ceilings["read_bandwidth_gbs"],
                         check={"reference": "dense float32 attention", "max_abs_diff": float(diff.max()),
                                "ok": ok}))
        on_row(rows[-1])
    dense_s = rows[0]["median_s"]
    for row in rows:
        row["over_dense_float32"] = row["median_s"] / dense_s
    return rows


def cache_table(rows: List[dict], ceilings: dict) -> str:
    headers = ["case", "ms", "MiB read", "GB/s", "% of read BW", "time / dense float32", "check (max abs diff)"]
    body = [[row["label"], format_ms(row["median_s"]), f"{row['bytes_read'] / 2 ** 20:.1f}",
             f"{row['bandwidth_gbs']:.1f}", percent(row["bandwidth_fraction"]),
             f"{row['over_dense_float32']:.2f}",
             f"{'ok' if row['check']['ok'] else 'FAIL'} {row['check']['max_abs_diff']:.0e}"] for row in rows]
    return (f"## KVCache decode (block_size {BLOCK_SIZE}; the int8 cache's values in every row, rounded for "
            f"bfloat16; read bandwidth "
            f"{ceilings['read_bandwidth_gbs']:.1f} GB/s, one thread)\n\n" + with_note(markdown_table(headers, body), READ_NOTE))
