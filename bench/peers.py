"""float32 forward against the peers and against sgemm (issue 29's float32 item).

    python bench/peers.py [--threads 2] [--lengths 1024,2048] [--rounds 7]

Shapes (1, 8, L, D), D = 64 and 128, causal and not, float32, forward only, every implementation
at `--threads` threads, interleaved round by round (the machine is shared and noisy), medians:

- fastattn (the ISA "auto" picks; float32 runs the FMA engine there);
- torch: scaled_dot_product_attention (no grad);
- ONNX Runtime: the ONNX `Attention` operator (opset 23), intra-op threads = `--threads`, not
  spinning between calls (OMP_WAIT_POLICY=PASSIVE likewise for libgomp's threads: on 2 cores a
  spinning idle pool takes the timed one's cores);
- OpenVINO: `ScaledDotProductAttention` (opset 13) on the CPU plugin, inference precision f32
  (its default on an AMX or AVX512-BF16 CPU would be bf16), `--threads` streams' threads;
- sgemm: NumPy's float32 matmuls of naive attention's two products on the same shapes (Q·Kᵀ,
  then P·V with P of the same size), OpenBLAS at `--threads` threads, as GFLOP/s: the rate a
  kernel whose work is those products could reach on this machine.

Prints the CPU, the versions, and per shape the GFLOP/s of each (4·L²·D per head, half for causal;
sgemm's always the full 4·L²·D: it has no causal form), fastattn over the best peer, and fastattn
over sgemm. Peers that are not installed are left out (pip install onnxruntime onnx openvino).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# Idle threads must not spin on the cores the timed implementation needs (2 cores here): libgomp
# (fastattn's and torch's) waits passively, ONNX Runtime's pool does not spin (below).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # OpenBLAS's threads: 2^4 cycles of spinning

import numpy as np  # noqa: E402
from ab_compare import cpu_model  # noqa: E402  (bench/ is this script's directory)

import fastattn  # noqa: E402

HEADS = 8


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def torch_impl(q, k, v, causal, threads):
    import torch
    torch.set_num_threads(threads)
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))

    def call():
        with torch.no_grad():
            torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
    return call, f"torch {torch.__version__}"


def ort_impl(q, k, v, causal, threads):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    shape = list(q.shape)
    node = helper.make_node("Attention", ["Q", "K", "V"], ["Y"], is_causal=int(causal))
    graph = helper.make_graph([node], "attention",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("Q", "K", "V")],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {"Q": q, "K": k, "V": v}
    return (lambda: session.run(None, feeds)), f"onnxruntime {ort.__version__} (onnx {onnx.__version__})"


def openvino_impl(q, k, v, causal, threads):
    import openvino as ov
    import openvino.opset13 as ops
    params = [ops.parameter(list(x.shape), np.float32) for x in (q, k, v)]
    model = ov.Model([ops.scaled_dot_product_attention(*params, causal=causal)], params)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                      "INFERENCE_PRECISION_HINT": "f32",
                                                      "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return (lambda: request.infer([q, k, v])), f"openvino {ov.__version__}"


def sgemm_impl(q, k, v, causal, threads):
    p = np.empty(q.shape[:-1] + (k.shape[-2],), np.float32)
    out = np.empty(q.shape[:-1] + (v.shape[-1],), np.float32)
    kt = np.ascontiguousarray(np.swapaxes(k, -1, -2))

    def call():
        np.matmul(q, kt, out=p)
        np.matmul(p, v, out=out)
    return call, "numpy sgemm"


PEERS = {"torch": torch_impl, "onnxruntime": ort_impl, "openvino": openvino_impl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", default="1024,2048")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if os.environ.get("OPENBLAS_NUM_THREADS") != str(args.threads):
        print(f"(set OPENBLAS_NUM_THREADS={args.threads} for the sgemm row's thread count)")
    fastattn.set_num_threads(args.threads)
    versions = {}
    print(f"CPU: {cpu_model()}; threads: {args.threads}; fastattn ISA: {fastattn.get_isa()}")
    print("\n| shape | " + " | ".join(["fastattn"] + list(PEERS) + ["sgemm"])
          + " | fastattn / best peer | fastattn / sgemm |")
    print("|---|" + "---|" * (len(PEERS) + 4))
    for length in [int(x) for x in args.lengths.split(",")]:
        for depth in (64, 128):
            for causal in (False, True):
                rng = np.random.default_rng(length + depth)
                q, k, v = (rng.standard_normal((1, HEADS, length, depth)).astype(np.float32) for _ in range(3))
                impls = {"fastattn": lambda: fastattn.attention(q, k, v, causal=causal)}
                for name, make in list(PEERS.items()) + [("sgemm", sgemm_impl)]:
                    try:
                        impls[name], versions[name] = make(q, k, v, causal, args.threads)
                    except ImportError:
                        versions[name] = "not installed"
                for fn in impls.values():
                    fn()
                times: dict = {name: [] for name in impls}
                for _ in range(args.rounds):
                    for name, fn in impls.items():
                        time.sleep(0.02)  # whatever still spins from the one before goes idle
                        times[name].append(timed(fn))
                flops = 4 * HEADS * length * length * depth
                rate = {name: (flops if name == "sgemm" else flops / (2 if causal else 1)) / statistics.median(ts) / 1e9
                        for name, ts in times.items()}
                peers = [rate[p] for p in PEERS if p in rate]
                cells = [f"{rate[n]:.0f}" if n in rate else "-" for n in ["fastattn"] + list(PEERS) + ["sgemm"]]
                best = f"{rate['fastattn'] / max(peers):.2f}" if peers else "-"
                print(f"| L{length} D{depth} {'causal' if causal else 'full'} | " + " | ".join(cells)
                      + f" | {best} | {rate['fastattn'] / rate['sgemm']:.2f} |", flush=True)
    print("\nGFLOP/s; " + "; ".join(f"{k}: {v}" for k, v in versions.items()))


if __name__ == "__main__":
    main()
