"""Gradient accuracy on peaked softmax rows against torch (issue 20's acceptance table).

    python bench/grad_accuracy.py [--dtypes float32,float16,bfloat16] [--seeds 30]

Inputs as torch's own sample inputs for scaled_dot_product_attention: uniform in [-9, 9] (so
the scores reach about ±100 and rows are nearly one-hot), q, k, v and the upstream gradient.
For each dtype, ISA this CPU runs, shape and causal flag, over `seeds` problems: the error of
dq, dk, dv against torch in float64 on the same (rounded) inputs, for fastattn.torch, torch's
default kernel for the call (flash for 4-D inputs, math for 3-D) and torch's math path. The
table gives fastattn's RMS and max-abs error over torch's, for each gradient (dq dk dv).
Needs torch (and ml_dtypes for bfloat16).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from ab_compare import cpu_model  # bench/ is this script's directory
from torch.nn.attention import SDPBackend, sdpa_kernel

import fastattn
import fastattn.torch as fat

SDPA = torch.nn.functional.scaled_dot_product_attention
SHAPES = {"(4,4,3,8) k,v (4,4,6,8)": ((4, 4, 3, 8), (4, 4, 6, 8)), "(4,3,8) k,v (4,6,8)": ((4, 3, 8), (4, 6, 8)),
          "(2,4,64,64)": ((2, 4, 64, 64),) * 2, "(1,2,128,16)": ((1, 2, 128, 16),) * 2}


def grads(fn, q, k, v, dout, causal):
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    fn(*inputs, is_causal=causal).backward(dout)
    return [t.grad.double() for t in inputs]


def math_sdpa(*args, **kwargs):
    with sdpa_kernel(SDPBackend.MATH):
        return SDPA(*args, **kwargs)


def errors(dtype, shapes, causal, seeds):
    """(implementation, gradient) → (sum of squared errors, max abs error)."""
    q_shape, kv_shape = shapes
    sq = {name: np.zeros(3) for name in ("ours", "torch", "math")}
    mx = {name: np.zeros(3) for name in sq}
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        q, k, v = ((torch.rand(s, generator=g, dtype=torch.float64) * 18 - 9).to(dtype)
                   for s in (q_shape, kv_shape, kv_shape))
        dout = (torch.rand(q_shape[:-1] + kv_shape[-1:], generator=g, dtype=torch.float64) * 18 - 9).to(dtype)
        exact = grads(SDPA, q.double(), k.double(), v.double(), dout.double(), causal)
        for name, fn in (("ours", fat.scaled_dot_product_attention), ("torch", SDPA), ("math", math_sdpa)):
            for i, (got, want) in enumerate(zip(grads(fn, q, k, v, dout, causal), exact)):
                sq[name][i] += float(((got - want) ** 2).sum())
                mx[name][i] = max(mx[name][i], float((got - want).abs().max()))
    return sq, mx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtypes", default="float32,float16,bfloat16")
    ap.add_argument("--seeds", type=int, default=30)
    args = ap.parse_args()
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; {args.seeds} problems per row\n")
    print("| dtype | ISA | q | causal | RMS / torch | RMS / torch math | max / torch | max / torch math |")
    print("|---|---|---|---|---|---|---|---|")
    fmt = lambda x: " ".join(f"{v:.2f}" for v in x)
    isas = fastattn.show_config()["supported_isas"]
    previous = fastattn.get_isa()
    try:
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            for isa in isas:
                fastattn.set_isa(isa)
                for name, shapes in SHAPES.items():
                    for causal in (False, True):
                        sq, mx = errors(dtype, shapes, causal, args.seeds)
                        rms = {k: np.sqrt(v) for k, v in sq.items()}
                        print(f"| {dtype_name} | {isa} | {name} | {int(causal)} | {fmt(rms['ours'] / rms['torch'])} | "
                              f"{fmt(rms['ours'] / rms['math'])} | {fmt(mx['ours'] / mx['torch'])} | "
                              f"{fmt(mx['ours'] / mx['math'])} |", flush=True)
    finally:
        fastattn.set_isa(previous)


if __name__ == "__main__":
    main()
