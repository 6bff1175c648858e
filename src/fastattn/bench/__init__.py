"""Benchmark fastattn against torch's scaled_dot_product_attention, next to the machine's ceilings.

Usage::

    python -m fastattn.bench                      # the default table of shapes, float32
    python -m fastattn.bench --quick              # a few tiny shapes: a smoke test, ~seconds
    python -m fastattn.bench --no-numpy           # skip the (slow) NumPy backend
    python -m fastattn.bench --threads 4          # num_threads for fastattn, torch.set_num_threads
    python -m fastattn.bench --json results.json --plot throughput.png

What it does, in order:

1. Prints a header: fastattn's configuration (from ``fastattn.show_config()``), the CPU model,
   the NumPy and torch versions and the thread counts.
2. Measures two ceilings of this machine: float32 GEMM throughput (``numpy.matmul`` of two
   2048x2048 matrices, GFLOP/s) and read bandwidth (``numpy.sum`` over a 1 GiB float32 array,
   GB/s). ``numpy.sum`` runs on one thread, so the bandwidth is what one core can read, and
   NumPy's BLAS picks its own thread count for the GEMM (``--threads`` does not change it).
3. For each shape (B, Hq, Hkv, Lq, Lk, D), float32, runs the implementations: fastattn's C++
   backend, fastattn's NumPy backend and torch's SDPA (each only when available). The output
   of each one's first call is checked against torch's (or, without torch, against the
   NumPy backend's) with a loose tolerance. Then each is timed in turn: a 0.2 s pause (so
   the previous one's threads stop spinning), warm-up calls, then repeated calls (at least
   5, and at least 0.5 s in all, at most 10000), keeping the median.
4. Prints one progress line per shape as it finishes, then Markdown tables: time,
   GFLOP/s and its fraction of the GEMM ceiling per implementation, the ratio torch time / fastattn C++ time (> 1: fastattn is
   faster) and, for decode shapes (Lq = 1), the bandwidth achieved reading K and V and its
   fraction of the measured read bandwidth.
5. Training: for (B, H, L, D) = (1, 8, 2048, 64), non-causal and causal, times forward +
   backward: ``attention(..., return_lse=True)`` then ``attention_backward`` against torch's
   SDPA forward and ``.backward()`` (autograd), after checking that the gradients agree. Its
   FLOPs are 14·B·H·L²·D (seven matrix products), halved for causal.
6. Reliability (README "Guarantees"; ``--no-reliability`` skips it): two Python threads each
   calling with ``num_threads=1`` against the same calls made serially (the GIL is released
   around the kernel, so on 2 cores the speedup should be >= 1.7), and subnormal against
   normal inputs (no more than 2× slower), forward and backward, in alternating rounds.
7. Writes every result to ``--json FILE`` and, when matplotlib is installed, a PNG
   (``--plot FILE``, default ``fastattn-bench.png``; ``--no-plot`` to skip) of GFLOP/s
   against L for the square non-causal B=1 H=8 D=64 shapes, with the GEMM ceiling dashed.

FLOPs per call are 4·B·Hq·Lq·Lk·D (two matrix products), halved for causal when Lq = Lk.
The exit status is 1 when an output check failed, else 0.

torch and matplotlib are optional: without them their parts are skipped with a note.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

from . import reliability
from .cases import (DEFAULT_DECODE_SHAPES, DEFAULT_PREFILL_SHAPES, DEFAULT_TRAINING_SHAPES, QUICK_DECODE_SHAPES,
                    QUICK_PREFILL_SHAPES, QUICK_TRAINING_SHAPES, build_cases)
from .environment import describe_machine, fastattn_config, import_torch
from .report import (DEFAULT_PLOT_PATH, print_header, print_tables, print_training_table, progress_line, write_json,
                     write_plot)
from .runners import (CHECK_ATOL, CHECK_RTOL, available_implementations, make_training_runner, run_case,
                      run_training_case)
from .timing import DEFAULT_SETTINGS, QUICK_SETTINGS, measure_ceilings


# ----------------------------------------------------------------------------- main

def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fastattn.bench",
        description="Time fastattn (C++ and NumPy backends) and torch SDPA over a table of "
                    "float32 shapes, next to this machine's GEMM and read-bandwidth ceilings.")
    parser.add_argument("--quick", action="store_true",
                        help="a few tiny shapes and small ceiling measurements (a smoke test)")
    parser.add_argument("--no-numpy", action="store_true",
                        help="skip fastattn's NumPy backend (slow on the larger shapes)")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="num_threads for fastattn and torch.set_num_threads(N)")
    parser.add_argument("--json", metavar="FILE", help="write all results to FILE as JSON")
    parser.add_argument("--plot", metavar="FILE.png",
                        help=f"write the throughput plot here (default {DEFAULT_PLOT_PATH}; "
                             "needs matplotlib)")
    parser.add_argument("--no-plot", action="store_true", help="write no plot")
    parser.add_argument("--no-reliability", action="store_true",
                        help="skip the GIL-release and subnormal-input timings")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    settings = QUICK_SETTINGS if args.quick else DEFAULT_SETTINGS
    cases = (build_cases(QUICK_PREFILL_SHAPES, QUICK_DECODE_SHAPES) if args.quick
             else build_cases(DEFAULT_PREFILL_SHAPES, DEFAULT_DECODE_SHAPES))

    torch = import_torch(args.threads)
    config = fastattn_config()
    impls = available_implementations(config, torch, include_numpy=not args.no_numpy)
    machine = describe_machine(config, torch, args.threads)
    print_header(machine)

    ceilings = measure_ceilings(settings)

    rows = []
    for index, case in enumerate(cases, start=1):
        row = run_case(case, impls, settings, args.threads, torch, ceilings)
        print(progress_line(index, len(cases), row), flush=True)
        rows.append(row)

    training_rows = []
    training_shapes = (QUICK_TRAINING_SHAPES if args.quick else DEFAULT_TRAINING_SHAPES) if "cpp" in impls else []
    for shape in training_shapes:
        for causal in (False, True):
            row = run_training_case(shape, causal, impls, settings, args.threads, torch, ceilings)
            print(progress_line(len(rows) + len(training_rows) + 1, len(cases) + 2 * len(training_shapes), row),
                  flush=True)
            training_rows.append(row)

    reliability_rows = []
    if "cpp" in impls and not args.no_reliability:
        if args.quick:
            shapes, seconds = (reliability.QUICK_SHAPE,) * 2, 0.01
        else:
            shapes, seconds = (reliability.GIL_SHAPE, reliability.DENORMAL_SHAPE), 0.4
        reliability_rows = (reliability.measure_gil(seconds, shapes[0]) +
                            reliability.measure_denormals(seconds, shapes[1]))

    print_tables(rows, impls, ceilings)
    if training_rows:
        print_training_table(training_rows, ceilings)
    if reliability_rows:
        print("\nReliability (README \"Guarantees\"): medians of alternating rounds\n")
        print(reliability.reliability_table(reliability_rows))
    failed = [row["label"] for row in rows + training_rows if not row["check"]["ok"]]
    if failed:
        print(f"OUTPUT CHECK FAILED (rtol {CHECK_RTOL}, atol {CHECK_ATOL}): {', '.join(failed)}")

    elapsed = time.perf_counter() - started
    if args.json:
        report = {"machine": machine, "settings": asdict(settings), "implementations": impls,
                  "ceilings": ceilings, "rows": rows, "training_rows": training_rows,
                  "reliability_rows": reliability_rows, "elapsed_s": elapsed}
        write_json(args.json, report)
    if not args.no_plot:
        write_plot(args.plot or DEFAULT_PLOT_PATH, rows, impls, ceilings, machine)
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)
    return 1 if failed else 0

