"""The command line of ``python -m fastattn.bench``: its options, ``main`` (which runs the
cases, the training cases and the reliability timings, then reports) and its exit status:
1 when an output check failed (or, with ``--check-speed``, a reliability timing missed its
target), else 0."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

from . import reliability
from .cache import CACHE_SHAPE, QUICK_CACHE_SHAPE, cache_rows, cache_table
from .cases import (DEFAULT_DECODE_SHAPES, DEFAULT_PREFILL_SHAPES, DEFAULT_TRAINING_SHAPES, QUICK_DECODE_SHAPES,
                    QUICK_PREFILL_SHAPES, QUICK_TRAINING_SHAPES, build_cases)
from .environment import describe_machine, fastattn_config, import_torch
from .report import (DEFAULT_PLOT_PATH, print_header, print_tables, print_training_table, progress_line, write_json,
                     write_plot)
from .runners import CHECK_ATOL, CHECK_RTOL, available_implementations, run_case, run_training_case
from .timing import DEFAULT_SETTINGS, QUICK_SETTINGS, measure_ceilings


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
    parser.add_argument("--check-speed", action="store_true",
                        help="exit with status 1 also when a reliability timing misses its target "
                             "(two threads >= 1.7x one; subnormal inputs <= 2x slower); off by "
                             "default: timings on a shared machine are noisy")
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

    kv_cache_rows = []
    if "cpp" in impls:
        kv_cache_rows = cache_rows(QUICK_CACHE_SHAPE if args.quick else CACHE_SHAPE, settings, args.threads,
                                   ceilings)
        for row in kv_cache_rows:
            print(f"{row['label']:<50} {row['median_s'] * 1e3:.3f} ms  {row['bandwidth_gbs']:.1f} GB/s", flush=True)

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
    if kv_cache_rows:
        print(cache_table(kv_cache_rows, ceilings) + "\n", flush=True)
    if reliability_rows:
        print("\nReliability timings (README \"Performance\"; --check-speed makes them set the exit "
              "status): medians of alternating rounds\n")
        print(reliability.reliability_table(reliability_rows))
    failed = [row["label"] for row in rows + training_rows + kv_cache_rows if not row["check"]["ok"]]
    if failed:
        print(f"OUTPUT CHECK FAILED (rtol {CHECK_RTOL}, atol {CHECK_ATOL}): {', '.join(failed)}")
    missed = [row["check"] for row in reliability_rows if not row["ok"]]
    if missed and args.check_speed:
        print(f"SPEED TARGET MISSED (--check-speed): {'; '.join(missed)}")
        failed += missed

    elapsed = time.perf_counter() - started
    if args.json:
        report = {"machine": machine, "settings": asdict(settings), "implementations": impls,
                  "ceilings": ceilings, "rows": rows, "training_rows": training_rows,
                  "cache_rows": kv_cache_rows,
                  "reliability_rows": reliability_rows, "elapsed_s": elapsed}
        write_json(args.json, report)
    if not args.no_plot:
        write_plot(args.plot or DEFAULT_PLOT_PATH, rows, impls, ceilings, machine)
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)
    return 1 if failed else 0
