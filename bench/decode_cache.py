"""Decoding over a KVCache against dense attention, interleaved (issue 17's acceptance case).

    python bench/decode_cache.py [--batch 8] [--hq 32] [--hkv 8] [--d 128] [--tokens 4096]
                                 [--block-size 128] [--threads 2] [--reps 30] [--no-torch]

One query token per sequence attends to ``tokens`` cached tokens. Every implementation runs
once per round, rounds alternate, and the table gives each one's median, the bytes it reads
(K and V, plus the int8 scales), those bytes over the median, and the fraction of this
machine's read bandwidth (``threads`` threads summing a 1 GiB array, the best of 5). Every
implementation reads the same values: the int8 cache's dequantised K/V rounded to bfloat16,
which the dense arrays and the float caches hold exactly. torch SDPA (over dense bfloat16
tensors) runs when torch imports.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import numpy as np
from ab_compare import cpu_model  # bench/ is this script's directory

import fastattn


def read_bandwidth(threads: int, mib: int = 1024, rounds: int = 5) -> float:
    """GB/s of `threads` threads each summing its share of one array (NumPy releases the GIL)."""
    data = np.ones(mib * (1 << 20) // 4, dtype=np.float32)
    parts = np.array_split(data, threads)
    best = 0.0
    for _ in range(rounds):
        workers = [threading.Thread(target=np.add.reduce, args=(part,)) for part in parts]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, data.nbytes / (time.perf_counter() - start) / 1e9)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hq", type=int, default=32)
    parser.add_argument("--hkv", type=int, default=8)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated names to run (default: all)")
    args = parser.parse_args(argv)
    import ml_dtypes

    bf16 = np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(0)
    b, hq, hkv, d, n = args.batch, args.hq, args.hkv, args.d, args.tokens
    k = rng.standard_normal((b, hkv, n, d), dtype=np.float32)
    v = rng.standard_normal((b, hkv, n, d), dtype=np.float32)
    q = rng.standard_normal((b, hq, 1, d), dtype=np.float32)
    seqs = list(range(b))

    def filled(dtype, k_values, v_values):
        cache = fastattn.KVCache(hkv, d, dtype=dtype, block_size=args.block_size)
        cache.append(seqs, list(k_values), list(v_values))
        return cache

    int8 = filled("int8", k, v)
    k_deq, v_deq, _ = int8.gather(seqs)  # the values every implementation reads
    k_bf, v_bf = k_deq.astype(bf16), v_deq.astype(bf16)
    k_f32, v_f32 = k_bf.astype(np.float32), v_bf.astype(np.float32)  # every side reads these values
    caches = {"float32": filled(np.float32, k_f32, v_f32), "bfloat16": filled(bf16, k_bf, v_bf), "int8": int8}
    q_bf = q.astype(bf16)
    t = args.threads
    runs = {
        "dense float32 attention": (lambda: fastattn.attention(q, k_f32, v_f32, num_threads=t), k_f32.nbytes * 2),
        "dense bfloat16 attention": (lambda: fastattn.attention(q_bf, k_bf, v_bf, num_threads=t), k_bf.nbytes * 2),
    }
    for name, cache in caches.items():
        qc = q_bf if name == "bfloat16" else q
        scale_bytes = 2 * b * hkv * n * 4 if name == "int8" else 0
        runs[f"KVCache {name}"] = (lambda c=cache, qc=qc: c.attention(qc, seqs, num_threads=t),
                                   b * hkv * n * (d + d) * np.dtype(cache.dtype).itemsize + scale_bytes)
    torch = None
    if not args.no_torch:
        try:
            import torch  # type: ignore[no-redef]
        except ImportError:
            print("torch not importable: no torch row")
    if torch is not None:
        torch.set_num_threads(t)
        tq, tk, tv = (torch.from_numpy(x).to(torch.bfloat16) for x in (q, k_f32, v_f32))
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def run_torch():
            with torch.inference_mode():
                return sdpa(tq, tk, tv, enable_gqa=True)

        runs[f"torch {torch.__version__} SDPA bfloat16"] = (run_torch, k_bf.nbytes * 2)
    if args.only:
        wanted = args.only.split(",")
        runs = {name: run for name, run in runs.items() if any(w in name for w in wanted)}

    reference = fastattn.attention(q, k_f32, v_f32)
    for name, (fn, _) in runs.items():
        out = fn()
        out = np.asarray(out.float().numpy() if hasattr(out, "float") else out, dtype=np.float32)
        print(f"{name:32s} max |out - dense float32| = {np.max(np.abs(out - reference)):.2e}")
    times = {name: [] for name in runs}
    for _ in range(args.reps):
        for name, (fn, _) in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    bandwidth = read_bandwidth(t)
    print(f"\n{cpu_model()}, isa {fastattn.get_isa()}, {t} threads, B={b} Hq={hq} Hkv={hkv} D={d} tokens={n} "
          f"block_size={args.block_size}, {args.reps} interleaved rounds; read bandwidth {bandwidth:.1f} GB/s")
    print(f"\n| case | median ms | MB read | GB/s | of read bandwidth |\n|---|---:|---:|---:|---:|")
    medians = {}
    for name, (_, nbytes) in runs.items():
        med = medians[name] = statistics.median(times[name])
        print(f"| {name} | {med * 1e3:.2f} | {nbytes / 1e6:.1f} | {nbytes / med / 1e9:.1f} | "
              f"{nbytes / med / 1e9 / bandwidth:.0%} |")
    ratio = lambda a, b: medians[a] / medians[b] if a in medians and b in medians else float("nan")  # noqa: E731
    print(f"\nKVCache float32 / dense float32: {ratio('KVCache float32', 'dense float32 attention'):.3f}")
    print(f"KVCache bfloat16 / KVCache int8: {ratio('KVCache bfloat16', 'KVCache int8'):.3f}")
    for name in medians:
        if name.startswith("torch"):
            print(f"{name} / KVCache int8: {ratio(name, 'KVCache int8'):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
