"""The engines' speed against each other and torch (issues 28 and 29's speed tables).

    python bench/engines_speed.py [--threads 2] [--lengths 1024,2048] [--rounds 5] [--only fwd,train,f16,f32]

Shapes (1, 8, L, D), D = 64 and 128, causal and not. Every implementation of a row runs in each
round, interleaved (the machine is shared and noisy); medians over the rounds.

- fwd:   bfloat16 forward: fastattn on each ISA this CPU runs (avx512: the FMA engine, bf16 widened
         to float32; avx512_bf16: VDPBF16PS; amx: the tiles) at "highest" and "medium", and torch's
         scaled_dot_product_attention (no grad);
- train: bfloat16 forward + backward through fastattn.torch on each ISA, against torch's;
- f16:   float16 forward, fastattn (FMA; amx) against torch;
- f32:   float32 forward, fastattn "highest" (FMA) against "high" (amx: three bf16 parts) and torch.

Prints the CPU, the threads, and per row the milliseconds and GFLOP/s (4·L²·D per head, half for
causal) of each implementation and the ratios the issues ask for. Needs torch and ml_dtypes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import ml_dtypes
import numpy as np
import torch
from ab_compare import cpu_model  # bench/ is this script's directory

import fastattn
import fastattn.torch as fat
from fastattn import _backend

SDPA = torch.nn.functional.scaled_dot_product_attention
HEADS = 8


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def run_rows(impls: dict, rounds: int) -> dict:
    """impls: name -> callable. Median ms of each, interleaved round by round (one warm-up call each)."""
    for fn in impls.values():
        fn()
    times: dict = {name: [] for name in impls}
    for _ in range(rounds):
        for name, fn in impls.items():
            times[name].append(timed(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def with_isa(isa: str, fn):
    def call():
        fastattn.set_isa(isa)
        return fn()
    return call


def tensors(dtype, length: int, depth: int, grad: bool = False):
    g = torch.Generator().manual_seed(length + depth)
    return [torch.randn((1, HEADS, length, depth), generator=g).to(dtype).requires_grad_(grad) for _ in range(3)]


def forward_impls(dtype, length, depth, causal, isas, precisions):
    q, k, v = tensors(dtype, length, depth)
    arrays = [fat._to_numpy(t) for t in (q, k, v)]
    impls = {}
    for isa in isas:
        for precision in precisions:
            impls[f"{isa}/{precision}"] = with_isa(isa, lambda p=precision: fastattn.attention(
                *arrays, causal=causal, precision=p))

    def torch_forward():
        with torch.no_grad():
            SDPA(q, k, v, is_causal=causal)
    impls["torch"] = torch_forward
    return impls


def train_impls(length, depth, causal, isas):
    q, k, v = tensors(torch.bfloat16, length, depth, grad=True)
    dout = torch.randn(q.shape).to(torch.bfloat16)
    impls = {}

    def step(fn):
        def call():
            fn(q, k, v, is_causal=causal).backward(dout)
        return call
    for isa in isas:
        impls[f"{isa}"] = with_isa(isa, step(fat.scaled_dot_product_attention))
        impls[f"{isa}/medium"] = with_isa(isa, step(lambda *a, **kw: fat.scaled_dot_product_attention(
            *a, precision="medium", **kw)))
    impls["torch"] = step(SDPA)
    return impls


def report(title: str, length, depth, causal, times: dict, ratios) -> None:
    flops = 4 * HEADS * length * length * depth / (2 if causal else 1)
    cells = "  ".join(f"{name} {ms:.2f} ms ({flops / ms / 1e6:.0f} GF/s)" for name, ms in times.items())
    quotients = "  ".join(f"{a}/{b} x{times[b] / times[a]:.2f}" for a, b in ratios if a in times and b in times)
    print(f"| {title} | L{length} D{depth} {'causal' if causal else 'full'} | {cells} | {quotients} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", default="1024,2048")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="fwd,train,f16,f32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fastattn.set_num_threads(args.threads)
    supported = _backend._core.supported_isas()
    fma = "avx512" if "avx512" in supported else "avx2"
    matrix = [isa for isa in ("avx512_bf16", "amx") if isa in supported]
    print(f"CPU: {cpu_model()}; threads: {args.threads}; torch {torch.__version__}; ISAs: {supported}")
    previous = fastattn.get_isa()
    lengths = [int(x) for x in args.lengths.split(",")]
    only = args.only.split(",")
    for length in lengths:
        for depth in (64, 128):
            for causal in (False, True):
                if "fwd" in only:
                    impls = forward_impls(torch.bfloat16, length, depth, causal, [fma], ["highest"])
                    impls.update(forward_impls(torch.bfloat16, length, depth, causal, matrix, ["highest", "medium"]))
                    report("bf16 fwd", length, depth, causal, run_rows(impls, args.rounds),
                           [(f"{isa}/{p}", "torch") for isa in matrix for p in ("highest", "medium")]
                           + [(f"{isa}/{p}", f"{fma}/highest") for isa in matrix for p in ("highest", "medium")])
                if "train" in only:
                    report("bf16 fwd+bwd", length, depth, causal,
                           run_rows(train_impls(length, depth, causal, [fma] + matrix), args.rounds),
                           [(isa, "torch") for isa in [fma] + matrix] + [(f"{isa}/medium", "torch") for isa in matrix]
                           + [(isa, fma) for isa in matrix])
                if "f16" in only:
                    isas = [fma] + (["amx"] if "amx" in supported else [])
                    report("f16 fwd", length, depth, causal,
                           run_rows(forward_impls(torch.float16, length, depth, causal, isas, ["highest"]), args.rounds),
                           [(f"{isa}/highest", "torch") for isa in isas])
                if "f32" in only:
                    impls = forward_impls(torch.float32, length, depth, causal, [fma], ["highest"])
                    if "amx" in supported:
                        impls.update(forward_impls(torch.float32, length, depth, causal, ["amx"], ["high", "medium"]))
                    report("f32 fwd", length, depth, causal, run_rows(impls, args.rounds),
                           [("amx/high", f"{fma}/highest"), ("amx/medium", f"{fma}/highest"),
                            (f"{fma}/highest", "torch"), ("amx/high", "torch")])
    fastattn.set_isa(previous)


if __name__ == "__main__":
    main()
