"""fastattn.torch.patch() on a small transformer layer: forward + backward, stock torch vs patched.

    python bench/torch_layer.py [--rounds 7] [--dtype float32]

One ``torch.nn.TransformerEncoderLayer`` (dropout 0, batch_first) trains on a random batch: each
timed step is forward, ``loss.backward()`` and zeroing the gradients. Stock and patched steps
alternate round by round in one process (the machine is shared and noisy), and the table gives
medians and their ratio. Needs torch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastattn.torch as fat

CONFIGS = [  # (batch, seq, d_model, heads, causal)
    (8, 128, 256, 4, False),
    (4, 512, 256, 4, False),
    (4, 512, 256, 4, True),
    (2, 1024, 256, 4, True),
    (1, 2048, 512, 8, True),
]


def step_time(layer, x, causal: bool, steps: int) -> float:
    """Seconds per forward + backward step (median of `steps`)."""
    mask = torch.nn.Transformer.generate_square_subsequent_mask(x.shape[1], dtype=x.dtype) if causal else None
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = layer(x, src_mask=mask, is_causal=causal).square().mean()
        loss.backward()
        layer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sdpa_time(fn, q, k, v, causal: bool, steps: int) -> float:
    """Seconds per forward + backward of the attention alone (median of `steps`)."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = fn(q, k, v, is_causal=causal)
        torch.autograd.grad(out, (q, k, v), out)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="steps per round and side")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, "
          f"medians of {args.rounds} alternating rounds x {args.steps} steps")
    print("| batch x seq | d_model / heads | causal | torch ms | fastattn ms | speed-up |")
    print("|---|---|---|---:|---:|---:|")
    attention_only = []
    for batch, seq, d_model, heads, causal in CONFIGS:
        layer = torch.nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0, batch_first=True,
                                                 dtype=dtype)
        x = torch.randn(batch, seq, d_model, dtype=dtype)
        stock, patched = [], []
        step_time(layer, x, causal, 1)  # warm-up, both sides
        with fat.patch():
            step_time(layer, x, causal, 1)
        for _ in range(args.rounds):
            stock.append(step_time(layer, x, causal, args.steps))
            with fat.patch():
                patched.append(step_time(layer, x, causal, args.steps))
        t, f = statistics.median(stock) * 1e3, statistics.median(patched) * 1e3
        print(f"| {batch} x {seq} | {d_model} / {heads} | {causal} | {t:.1f} | {f:.1f} | {t / f:.2f} |")
        attention_only.append((batch, seq, d_model, heads, causal))

    print("\nThe layer's attention alone (F.scaled_dot_product_attention forward + backward):")
    print("| (B, H, L, D) | causal | torch ms | fastattn ms | speed-up |")
    print("|---|---|---:|---:|---:|")
    for batch, seq, d_model, heads, causal in attention_only:
        q, k, v = (torch.randn(batch, heads, seq, d_model // heads, dtype=dtype, requires_grad=True)
                   for _ in range(3))
        stock, ours = [], []
        for fn in (torch.nn.functional.scaled_dot_product_attention, fat.scaled_dot_product_attention):
            sdpa_time(fn, q, k, v, causal, 1)  # warm-up
        for _ in range(args.rounds):
            stock.append(sdpa_time(torch.nn.functional.scaled_dot_product_attention, q, k, v, causal, args.steps))
            ours.append(sdpa_time(fat.scaled_dot_product_attention, q, k, v, causal, args.steps))
        t, f = statistics.median(stock) * 1e3, statistics.median(ours) * 1e3
        print(f"| {batch}, {heads}, {seq}, {d_model // heads} | {causal} | {t:.2f} | {f:.2f} | {t / f:.2f} |")


if __name__ == "__main__":
    main()
