"""Reliability timings for ``python -m fastattn.bench``: measurements with targets, not
guarantees (docs/performance.md); ``--check-speed`` makes a missed target set the exit status.

* GIL release: two Python threads, each calling with ``num_threads=1``, against the same
  calls made one after the other in one thread. With the GIL released around the kernel the
  two threads share two cores: speedup close to 2 (the target is >= 1.7).
* Subnormal inputs: every value of q, k, v below the smallest normal number, and 1% of v's
  values, against normal inputs of the same shape. The target: no more than 1.5× slower (x86
  cores take a microcode assist per subnormal operand; the kernels count them as zero instead:
  docs/precision.md).

Rounds alternate between the two sides of each comparison, so that a noisy neighbour slows
both alike; the medians of the rounds are compared.

The targets are defined for GIL_SHAPE and DENORMAL_SHAPE. ``--quick`` times QUICK_SHAPE, where
a call is so short that Python's own work between calls decides the two-thread speedup: those
rows are measured and printed but not graded (``graded=False``: no "ok").
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Callable, List, Optional

import numpy as np

import fastattn

GIL_SHAPE = (1, 8, 512, 64)
DENORMAL_SHAPE = (1, 8, 1024, 64)
QUICK_SHAPE = (1, 2, 128, 32)
ROUNDS = 7
ROW_COUNT = 6  # measure_gil's (2) and measure_denormals' (4) rows: forward and backward each


def _inputs(shape, scale: float = 1.0, seed: int = 0, v_fraction: float = 1.0):
    """q, k, v, dout scaled by `scale` (v: only a random `v_fraction` of its values), out, lse."""
    rng = np.random.default_rng(seed)
    q, k, v, dout = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
    if v_fraction == 1.0:
        q, k, v, dout = (x * np.float32(scale) for x in (q, k, v, dout))
    else:
        v = np.where(rng.random(shape) < v_fraction, v * np.float32(scale), v).astype(np.float32)
    out, lse = fastattn.attention(q, k, v, return_lse=True, num_threads=1)
    return q, k, v, dout, out, lse


def _calls(shape, scale: float = 1.0, threads: int = 1, v_fraction: float = 1.0):
    """{"forward": fn, "backward": fn} on inputs of `shape` scaled by `scale`."""
    q, k, v, dout, out, lse = _inputs(shape, scale, v_fraction=v_fraction)
    return {"forward": lambda: fastattn.attention(q, k, v, num_threads=threads),
            "backward": lambda: fastattn.attention_backward(dout, q, k, v, out, lse, num_threads=threads)}


def _serial(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - start


def _two_threads(fn: Callable[[], object], calls: int) -> float:
    """Wall time of two threads making `calls` calls each, started together."""
    barrier = threading.Barrier(3)

    def work():
        barrier.wait()
        for _ in range(calls):
            fn()

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def _calls_for(fn: Callable[[], object], seconds: float) -> int:
    fn()
    once = _serial(fn, 1)
    return max(2, int(seconds / max(once, 1e-6)))


def _graded(ok: bool, graded: bool) -> Optional[bool]:
    return ok if graded else None


def measure_gil(seconds: float = 0.4, shape=GIL_SHAPE, graded: bool = True,
                on_row: Callable[[dict], None] = lambda row: None) -> List[dict]:
    """Two threads × num_threads=1 against the same 2·n calls in one thread."""
    rows = []
    for name, fn in _calls(shape).items():
        n = _calls_for(fn, seconds / 2)
        serial, parallel = [], []
        for _ in range(ROUNDS):
            serial.append(_serial(fn, 2 * n))
            parallel.append(_two_threads(fn, n))
        s, p = statistics.median(serial), statistics.median(parallel)
        rows.append({"check": f"2 threads × num_threads=1, {name} {shape}", "baseline": "serial",
                     "baseline_ms": s / (2 * n) * 1e3, "measured_ms": p / (2 * n) * 1e3, "ratio": s / p,
                     "ratio_name": "speedup", "target": ">= 1.7", "ok": _graded(s / p >= 1.7, graded)})
        on_row(rows[-1])
    return rows


def measure_denormals(seconds: float = 0.3, shape=DENORMAL_SHAPE, graded: bool = True,
                      on_row: Callable[[dict], None] = lambda row: None) -> List[dict]:
    """Subnormal q, k, v (scaled by 1e-41), and 1% of v's values, against normal ones, one thread,
    forward and backward."""
    normal, rows = _calls(shape, 1.0), []
    for what, tiny in (("subnormal inputs", _calls(shape, 1e-41)),
                       ("1% subnormal v", _calls(shape, 1e-41, v_fraction=0.01))):
        for name in normal:
            n = _calls_for(normal[name], seconds)
            base, slow = [], []
            for _ in range(ROUNDS):
                base.append(_serial(normal[name], n))
                slow.append(_serial(tiny[name], n))
            b, s = statistics.median(base) / n, statistics.median(slow) / n
            rows.append({"check": f"{what}, {name} {shape}", "baseline": "normal inputs",
                         "baseline_ms": b * 1e3, "measured_ms": s * 1e3, "ratio": s / b, "ratio_name": "slowdown",
                         "target": "<= 1.5", "ok": _graded(s / b <= 1.5, graded)})
            on_row(rows[-1])
    return rows


def progress_text(row: dict) -> str:
    return f"{row['check']}: {row['ratio_name']} {row['ratio']:.2f}"


MET = {True: "yes", False: "NO", None: "not graded"}


def reliability_table(rows: List[dict]) -> str:
    lines = ["| check | baseline | baseline ms | ms | ratio | target | met |", "|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['check']} | {r['baseline']} | {r['baseline_ms']:.2f} | {r['measured_ms']:.2f} | "
                     f"{r['ratio_name']} {r['ratio']:.2f} | {r['target']} | {MET[r['ok']]} |")
    return "\n".join(lines)
