"""What one attention call costs through each door: torch's SDPA, fastattn.torch, and the NumPy route.

    python bench/torch_doorway.py [--rounds 7] [--calls 300]

Issue 27's small shapes, one call at a time (float32, no grad unless said):

- torch: ``torch.nn.functional.scaled_dot_product_attention``;
- fastattn.torch: ``fastattn.torch.scaled_dot_product_attention`` (the lean door without grad);
- custom op: the same call through the custom op ``fastattn::sdpa`` (what every call took before the
  lean door: torch.library dispatch, the lse and its residual kept for a backward);
- NumPy route: ``fastattn.attention`` on the tensors' NumPy views (C-contiguous arrays).

"alone" calls it back to back; "between matmuls" runs a decoder layer's matmuls (hidden 512: q/k/v and
output projections, an MLP of 1408) before each call, as inside a model, and times the call only. With
"grad", each call is a forward and a backward (``torch.autograd.grad``). The implementations take
turns call by call, round by round (the machine is shared); medians of the rounds' medians, in µs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastattn
import fastattn.torch as fat
from fastattn.bench.environment import cpu_model

F = torch.nn.functional
SHAPES = [  # (label, q shape, k/v shape)
    ("1x1x12x12x16", (1, 1, 12, 16), (1, 1, 12, 16)),
    ("1x12x16x16x32 (a MiniLM sentence)", (1, 12, 16, 32), (1, 12, 16, 32)),
    ("1x8x64x64x64", (1, 8, 64, 64), (1, 8, 64, 64)),
    ("decode q 1x32x1x64, k/v 1x4x530x64", (1, 32, 1, 64), (1, 4, 530, 64)),
]


def decoder_matmuls():
    """A decode step's matmuls around the attention of a hidden-512 layer (weights outside the caches)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 512, generator=g)
    weights = [torch.randn(512, 768, generator=g), torch.randn(512, 512, generator=g),
               torch.randn(512, 2816, generator=g), torch.randn(1408, 512, generator=g)]

    def run():
        with torch.no_grad():
            torch.matmul(x, weights[0])
            torch.matmul(x, weights[1])
            h = torch.matmul(x, weights[2])
            torch.matmul(h[:, :1408], weights[3])
    return run


def runners(q, k, v, grad: bool):
    gqa = q.shape[1] != k.shape[1]
    qn, kn, vn = q.numpy(), k.numpy(), v.numpy()
    scale = 1.0 / q.shape[-1] ** 0.5
    if grad:
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]

        def with_grad(fn):
            def run():
                out = fn(*leaves, enable_gqa=gqa)
                torch.autograd.grad(out, leaves, out)
            return run
        return {"torch": with_grad(F.scaled_dot_product_attention),
                "fastattn.torch": with_grad(fat.scaled_dot_product_attention)}

    def no_grad(fn):  # (q, k, v require no grad: no torch.no_grad() block, whose ~1 µs the NumPy route has not)
        def run():
            fn(q, k, v, enable_gqa=gqa)
        return run

    def custom_op():
        fat._sdpa(q, k, v, None, 0, scale, False)

    return {"torch": no_grad(F.scaled_dot_product_attention), "fastattn.torch": no_grad(fat.scaled_dot_product_attention),
            "custom op": custom_op, "NumPy route": lambda: fastattn.attention(qn, kn, vn)}


def measure(run, calls, between):
    times = []
    for _ in range(calls):
        between()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=300, help="timed calls per implementation and round")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}; torch {torch.__version__} ({torch.get_num_threads()} threads), fastattn "
          f"({fastattn.get_num_threads()} threads, {fastattn.get_isa()}); float32; medians of {args.rounds} rounds "
          f"of {args.calls} calls, µs", flush=True)
    matmuls = decoder_matmuls()
    rows = []
    g = torch.Generator().manual_seed(0)
    for label, q_shape, kv_shape in SHAPES:
        q, k, v = torch.randn(q_shape, generator=g), torch.randn(kv_shape, generator=g), torch.randn(kv_shape, generator=g)
        settings = [("alone", False, lambda: None)]
        if label.startswith("decode"):
            settings.append(("between matmuls", False, matmuls))
        else:
            settings.append(("alone, grad", True, lambda: None))
        for setting, grad, between in settings:
            impls = runners(q, k, v, grad)
            for run in impls.values():  # warm-up
                for _ in range(20):
                    run()
            times = {name: [] for name in impls}
            for r in range(args.rounds):
                order = list(impls) if r % 2 == 0 else list(reversed(impls))
                for name in order:
                    times[name].append(measure(impls[name], args.calls, between))
                print(f"\r{label}, {setting}: round {r + 1}/{args.rounds}", end="", flush=True)
            rows.append((label, setting, {name: statistics.median(t) * 1e6 for name, t in times.items()}))
    print()
    names = ["torch", "fastattn.torch", "custom op", "NumPy route"]
    print("\n| call | setting | " + " | ".join(names) + " | fastattn.torch / NumPy route |")
    print("|---|---|" + "---:|" * (len(names) + 1))
    for label, setting, medians in rows:
        cells = [f"{medians[n]:.1f}" if n in medians else "" for n in names]
        ratio = medians["fastattn.torch"] / medians["NumPy route"] if "NumPy route" in medians else float("nan")
        print(f"| {label} | {setting} | " + " | ".join(cells) + (f" | {ratio:.2f} |" if ratio == ratio else " | |"))


if __name__ == "__main__":
    main()
