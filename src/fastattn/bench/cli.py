"""The command line of ``python -m fastattn.bench``: its options, the two plans (the full run
and ``--quick``'s smoke test), ``main`` (which runs the cases, the training cases, the KVCache
rows and the reliability timings, then reports) and its exit status: 1 when an output check
failed (or, with ``--check-speed``, a reliability timing missed its target), else 0."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from typing import Tuple

from . import reliability
from .cache import CACHE_SHAPE, QUICK_CACHE_SHAPE, cache_row_count, cache_rows, cache_table
from .cases import (DEFAULT_DECODE_SHAPES, DEFAULT_PREFILL_SHAPES, DEFAULT_TRAINING_SHAPES, QUICK_DECODE_SHAPES,
                    QUICK_PREFILL_SHAPES, QUICK_TRAINING_SHAPES, build_cases)
from .environment import describe_machine, fastattn_config, import_torch
from .report import (DEFAULT_PLOT_PATH, Progress, print_header, print_tables, print_training_table, progress_text,
                     write_json, write_plot)
from .runners import CHECK_ATOL, CHECK_RTOL, available_implementations, run_case, run_training_case
from .timing import DEFAULT_SETTINGS, QUICK_SETTINGS, Settings, measure_ceilings


@dataclass(frozen=True)
class Plan:
    """What a run measures. The speed targets (reliability) are graded only where they are
    defined: on the full run's shapes, not on --quick's tiny ones."""

    settings: Settings
    prefill_shapes: list
    decode_shapes: list
    training_shapes: list
    cache_shape: Tuple[int, ...]
    gil_shape: Tuple[int, ...]
    denormal_shape: Tuple[int, ...]
    reliability_seconds: float
    graded: bool


FULL = Plan(DEFAULT_SETTINGS, DEFAULT_PREFILL_SHAPES, DEFAULT_DECODE_SHAPES, DEFAULT_TRAINING_SHAPES, CACHE_SHAPE,
            reliability.GIL_SHAPE, reliability.DENORMAL_SHAPE, 0.4, graded=True)
QUICK = Plan(QUICK_SETTINGS, QUICK_PREFILL_SHAPES, QUICK_DECODE_SHAPES, QUICK_TRAINING_SHAPES, QUICK_CACHE_SHAPE,
             reliability.QUICK_SHAPE, reliability.QUICK_SHAPE, 0.01, graded=False)
SMOKE_NOTE = ("--quick: a smoke test on tiny shapes. It shows that every part runs and checks every output; "
              "its timings are not this machine's speed (a call of microseconds is mostly Python), so the "
              "speed targets, defined for the full run's shapes, are not graded.")


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
                        help="a smoke test: a few tiny shapes and small ceiling measurements, in seconds; "
                             "the speed targets are not graded")
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
                             "default: timings on a shared machine are noisy; not with --quick, whose "
                             "shapes the targets are not defined for")
    args = parser.parse_args(argv)
    if args.quick and args.check_speed:
        parser.error("--check-speed grades the full run's shapes; --quick does not measure them")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    plan = QUICK if args.quick else FULL
    settings = plan.settings
    cases = build_cases(plan.prefill_shapes, plan.decode_shapes)

    torch = import_torch(args.threads)
    config = fastattn_config()
    impls = available_implementations(config, torch, include_numpy=not args.no_numpy)
    machine = describe_machine(config, torch, args.threads)
    print_header(machine)
    if not plan.graded:
        print(SMOKE_NOTE + "\n", flush=True)

    ceilings = measure_ceilings(settings)

    cpp = "cpp" in impls
    training_shapes = plan.training_shapes if cpp else []
    reliable = cpp and not args.no_reliability
    progress = Progress(len(cases) + 2 * len(training_shapes) + (cache_row_count() if cpp else 0)
                        + (reliability.ROW_COUNT if reliable else 0))

    rows = []
    for case in cases:
        rows.append(run_case(case, impls, settings, args.threads, torch, ceilings))
        progress.line(progress_text(rows[-1]))

    training_rows = []
    for shape in training_shapes:
        for causal in (False, True):
            training_rows.append(run_training_case(shape, causal, impls, settings, args.threads, torch, ceilings))
            progress.line(progress_text(training_rows[-1]))

    kv_cache_rows = []
    if cpp:
        kv_cache_rows = cache_rows(plan.cache_shape, settings, args.threads, ceilings, on_row=lambda row: progress.line(
            f"{row['label']:<50} {row['median_s'] * 1e3:.3f} ms  {row['bandwidth_gbs']:.1f} GB/s"))

    reliability_rows = []
    if reliable:
        def on_row(row):
            progress.line(reliability.progress_text(row))

        reliability_rows = (
            reliability.measure_gil(plan.reliability_seconds, plan.gil_shape, plan.graded, on_row)
            + reliability.measure_denormals(plan.reliability_seconds, plan.denormal_shape, plan.graded, on_row))

    print_tables(rows, impls, ceilings)
    if training_rows:
        print_training_table(training_rows, ceilings)
    if kv_cache_rows:
        print(cache_table(kv_cache_rows, ceilings) + "\n", flush=True)
    if reliability_rows:
        graded = ("--check-speed makes a missed target set the exit status" if plan.graded
                  else "smoke shapes: measured, not graded")
        print(f"\nReliability timings (docs/performance.md; {graded}): medians of alternating rounds\n")
        print(reliability.reliability_table(reliability_rows))
    failed = [row["label"] for row in rows + training_rows + kv_cache_rows if not row["check"]["ok"]]
    if failed:
        print(f"OUTPUT CHECK FAILED (rtol {CHECK_RTOL}, atol {CHECK_ATOL}): {', '.join(failed)}")
    missed = [row["check"] for row in reliability_rows if row["ok"] is False]
    if missed and args.check_speed:
        print(f"SPEED TARGET MISSED (--check-speed): {'; '.join(missed)}")
        failed += missed

    elapsed = time.perf_counter() - started
    if args.json:
        report = {"machine": machine, "settings": asdict(settings), "graded": plan.graded,
                  "implementations": impls, "ceilings": ceilings, "rows": rows, "training_rows": training_rows,
                  "cache_rows": kv_cache_rows,
                  "reliability_rows": reliability_rows, "elapsed_s": elapsed}
        write_json(args.json, report)
    if not args.no_plot:
        write_plot(args.plot or DEFAULT_PLOT_PATH, rows, impls, ceilings, machine)
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)
    return 1 if failed else 0
