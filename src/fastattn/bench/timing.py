"""How long things take: ``Settings`` (repeats, pauses, the sizes of the ceiling
measurements), ``time_calls`` (the median of adaptive repeats after a pause and a warm-up)
and this machine's two ceilings, float32 GEMM GFLOP/s and one thread's read GB/s."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, List

import numpy as np

from .cases import FLOAT32_BYTES


@dataclass(frozen=True)
class Settings:
    """How long to time each implementation and how big the ceiling measurements are."""

    min_repeats: int = 5
    min_seconds: float = 0.5
    max_repeats: int = 10_000
    settle_seconds: float = 0.2  # pause before each timing: see time_calls
    warmup_seconds: float = 0.05
    gemm_size: int = 2048
    read_mib: int = 1024


DEFAULT_SETTINGS = Settings()
QUICK_SETTINGS = Settings(min_seconds=0.02, settle_seconds=0.1, warmup_seconds=0.02,
                          gemm_size=512, read_mib=64)


def warm_up(fn: Callable[[], object], seconds: float) -> None:
    """Call fn at least once and for at least `seconds`."""
    start = time.perf_counter()
    fn()
    while time.perf_counter() - start < seconds:
        fn()


def time_calls(fn: Callable[[], object], settings: Settings) -> dict:
    """Median wall time of fn() over adaptive repeats, after a pause and a warm-up.

    The pause lets the thread pools of whatever ran before (OpenBLAS, torch's OpenMP) stop
    busy-waiting, which otherwise steals cores from fn for ~0.1 s; the warm-up then wakes
    fn's own threads and caches.
    """
    time.sleep(settings.settle_seconds)
    warm_up(fn, settings.warmup_seconds)
    times: List[float] = []
    total = 0.0
    while len(times) < settings.min_repeats or (
            total < settings.min_seconds and len(times) < settings.max_repeats):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        total += elapsed
    return {"median_s": statistics.median(times), "repeats": len(times), "total_s": total}


def measure_gemm_gflops(settings: Settings) -> dict:
    """float32 numpy.matmul throughput on two n x n matrices."""
    n = settings.gemm_size
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    timing = time_calls(lambda: np.matmul(a, b, out=c), settings)
    return {"gemm_size": n, "gemm_median_s": timing["median_s"],
            "gemm_gflops": 2.0 * n ** 3 / timing["median_s"] / 1e9}


def measure_read_bandwidth(settings: Settings) -> dict:
    """GB/s of numpy.sum over one float32 array of settings.read_mib MiB (one thread)."""
    nbytes = settings.read_mib * 2 ** 20
    array = np.ones(nbytes // FLOAT32_BYTES, dtype=np.float32)  # allocated and touched once
    timing = time_calls(array.sum, settings)
    del array
    return {"read_bytes": nbytes, "read_median_s": timing["median_s"],
            "read_bandwidth_gbs": nbytes / timing["median_s"] / 1e9}


def measure_ceilings(settings: Settings) -> dict:
    print("Measuring the ceilings ...", flush=True)
    ceilings = {**measure_gemm_gflops(settings), **measure_read_bandwidth(settings)}
    n, mib = ceilings["gemm_size"], settings.read_mib
    print(f"GEMM ceiling:   {ceilings['gemm_gflops']:.1f} GFLOP/s "
          f"(float32 numpy.matmul {n}x{n}, median)")
    print(f"read bandwidth: {ceilings['read_bandwidth_gbs']:.1f} GB/s "
          f"(numpy.sum over {mib} MiB float32, one thread, median)")
    print(flush=True)
    return ceilings
