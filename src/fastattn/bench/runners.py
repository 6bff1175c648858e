"""How each implementation is run, checked and timed: fastattn's C++ backend, fastattn's
NumPy backend and torch's SDPA (each when available), forward-only (``run_case``) and
forward + backward (``make_training_runner``, ``run_training_case``). Every implementation's
output is checked against a float64 oracle that is always available (the NumPy backend in
float64 on the first batch entry and query head: heads are independent, so this costs one
head's work), with a loose tolerance."""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

import fastattn

from .cases import Case, make_inputs
from .timing import Settings, time_calls

# Output checks: float32 results against float64 ones agree to ~1e-6; this only catches bugs.
CHECK_RTOL = 1e-3
CHECK_ATOL = 1e-4


def available_implementations(config: dict, torch, include_numpy: bool) -> List[str]:
    impls = []
    if config["backend"] == "cpp":
        impls.append("cpp")
    else:
        print("note: fastattn's C++ extension is not available; skipping fastattn C++", flush=True)
    if include_numpy:
        impls.append("numpy")
    if torch is not None:
        impls.append("torch")
    return impls


def make_torch_runner(torch, q, k, v, causal: bool) -> Callable[[], object]:
    """A call of torch's SDPA on zero-copy views of q, k, v (built here, outside the timing)."""
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    gqa = {"enable_gqa": True} if q.shape[1] != k.shape[1] else {}
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def run():
        with torch.inference_mode():
            return sdpa(tq, tk, tv, is_causal=causal, **gqa)

    return run


def make_runner(impl: str, q, k, v, causal: bool, threads: Optional[int], torch):
    if impl == "cpp":
        return lambda: fastattn.attention(q, k, v, causal=causal, backend="cpp", num_threads=threads)
    if impl == "numpy":
        return lambda: fastattn.attention(q, k, v, causal=causal, backend="numpy")
    return make_torch_runner(torch, q, k, v, causal)


def _arrays(output) -> Tuple[np.ndarray, ...]:
    """An output as a tuple of arrays: (out,) for a forward call, (dq, dk, dv) for a training call."""
    return tuple(np.asarray(a) for a in output) if isinstance(output, tuple) else (np.asarray(output),)


REFERENCE = "float64 NumPy, batch 0, head 0"


def first_head(*arrays: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Batch entry 0 and head 0 of each (B, H, L, D) array, in float64: the oracle's inputs."""
    return tuple(np.asarray(a)[:1, :1].astype(np.float64) for a in arrays)


def check_outputs(outputs: Dict[str, object], reference: Tuple[np.ndarray, ...]) -> dict:
    """Compare each output's batch 0, head 0 with the float64 `reference` (first_head's arrays'
    result); max abs differences, and ok unless one is beyond the tolerance.

    An output is an array or a tuple of arrays (the gradients), compared array by array.
    """
    check: dict = {"reference": REFERENCE, "max_abs_diff": {}, "ok": True}
    for impl, output in outputs.items():
        pairs = [(got[:1, :1], want) for got, want in zip(_arrays(output), reference)]
        assert len(pairs) == len(reference)
        check["max_abs_diff"][impl] = max(float(np.max(np.abs(got - want))) for got, want in pairs)
        if not all(np.allclose(got, want, rtol=CHECK_RTOL, atol=CHECK_ATOL) for got, want in pairs):
            check["ok"] = False
    return check


def check_then_time(runners: Dict[str, Callable[[], object]], reference: Callable[[], Tuple[np.ndarray, ...]],
                    settings: Settings, summarize: Callable[[dict], dict]) -> Tuple[dict, Dict[str, dict]]:
    """(check, results): each runner's first call checked against reference() (check_outputs),
    then each timed in turn."""
    outputs = {impl: runner() for impl, runner in runners.items()}  # first calls
    check = check_outputs(outputs, reference())
    del outputs
    results = {impl: summarize(time_calls(runner, settings)) for impl, runner in runners.items()}
    return check, results


def throughput(timing: dict, flops: float, ceilings: dict) -> dict:
    """The timing, with the GFLOP/s it achieved and their fraction of the GEMM ceiling."""
    gflops = flops / timing["median_s"] / 1e9
    return dict(timing, gflops=gflops, gemm_fraction=gflops / ceilings["gemm_gflops"])


def summarize_timing(case: Case, timing: dict, ceilings: dict) -> dict:
    result = throughput(timing, case.flops, ceilings)
    if case.is_decode:
        bandwidth = case.kv_bytes / timing["median_s"] / 1e9
        result["bandwidth_gbs"] = bandwidth
        result["bandwidth_fraction"] = bandwidth / ceilings["read_bandwidth_gbs"]
    return result


def torch_over_cpp(results: Dict[str, dict]) -> Optional[float]:
    """torch's median time over fastattn C++'s (> 1: fastattn is faster); None unless both ran."""
    if "torch" in results and "cpp" in results:
        return results["torch"]["median_s"] / results["cpp"]["median_s"]
    return None


def run_case(case: Case, impls: List[str], settings: Settings, threads: Optional[int],
             torch, ceilings: dict) -> dict:
    """Warm up and check each implementation, then time each; one result row."""
    q, k, v = make_inputs(case)
    runners = {impl: make_runner(impl, q, k, v, case.causal, threads, torch) for impl in impls}
    def reference():
        return (fastattn.attention(*first_head(q, k, v), causal=case.causal, backend="numpy"),)

    check, results = check_then_time(runners, reference, settings,
                                     lambda timing: summarize_timing(case, timing, ceilings))
    return dict(asdict(case), label=case.label, flops=case.flops, kv_bytes=case.kv_bytes,
                check=check, results=results, torch_over_cpp=torch_over_cpp(results))


def make_training_runner(impl: str, q, k, v, dout, causal: bool, threads: Optional[int], torch):
    """A forward + backward call returning (dq, dk, dv)."""
    if impl == "cpp":
        def run():
            out, lse = fastattn.attention(q, k, v, causal=causal, return_lse=True, backend="cpp",
                                          num_threads=threads)
            return fastattn.attention_backward(dout, q, k, v, out, lse, causal=causal, backend="cpp",
                                               num_threads=threads)
        return run
    leaves = [torch.from_numpy(a).requires_grad_() for a in (q, k, v)]
    t_dout = torch.from_numpy(dout)

    def run_torch():
        for leaf in leaves:
            leaf.grad = None
        torch.nn.functional.scaled_dot_product_attention(*leaves, is_causal=causal).backward(t_dout)
        return tuple(leaf.grad.numpy() for leaf in leaves)

    return run_torch


def run_training_case(shape, causal: bool, impls: List[str], settings: Settings, threads: Optional[int],
                      torch, ceilings: dict) -> dict:
    batch, heads, length, d = shape
    case = Case(batch, heads, heads, length, length, d, causal)
    q, k, v = make_inputs(case)
    dout = np.random.default_rng(1).standard_normal(q.shape, dtype=np.float32)
    impls = [impl for impl in impls if impl != "numpy"]  # the NumPy backward of every head: minutes
    runners = {impl: make_training_runner(impl, q, k, v, dout, causal, threads, torch) for impl in impls}
    flops = 3.5 * case.flops  # seven matrix products to the forward's two
    def reference():  # one head's forward and backward in float64
        q1, k1, v1, dout1 = first_head(q, k, v, dout)
        out, lse = fastattn.attention(q1, k1, v1, causal=causal, return_lse=True, backend="numpy")
        return fastattn.attention_backward(dout1, q1, k1, v1, out, lse, causal=causal, backend="numpy")

    check, results = check_then_time(runners, reference, settings,
                                     lambda timing: throughput(timing, flops, ceilings))
    return dict(asdict(case), label=case.label + " fwd+bwd", flops=flops, check=check, results=results,
                torch_over_cpp=torch_over_cpp(results))
