"""Benchmarks of the masking features and 16-bit inputs against their own baselines (issue 3).

Each group times a baseline and its variants side by side in one run; summarize.py prints the
ratio of each variant's median to its baseline's:
  - a key-padding mask (B, 1, 1, Lk) and kv_lengths cost at most 10% against no mask;
  - window=(256, 0) at L = 8192 is at least 8x faster than full causal;
  - float16 and bfloat16 run at least at float32 speed.
test_peak_memory_with_mask measures, in a fresh process, the peak memory a masked call adds
beyond its inputs (the target: output size + 16 MiB).
"""

import json
import subprocess
import sys

import numpy as np
import pytest

import fastattn

BIG = (2, 8, 8192, 64)  # (B, H, L, D)
MEDIUM = (1, 8, 4096, 64)


def inputs(shape, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(shape, dtype=np.float32).astype(dtype) for _ in range(3))


def key_padding(shape):
    """A (B, 1, 1, Lk) mask: the second sequence padded by its last 1000 keys."""
    b, _, lk, _ = shape
    mask = np.ones((b, 1, 1, lk), dtype=bool)
    mask[1:, ..., lk - 1000:] = False
    return mask


def run(benchmark, group, variant, fn, baseline=False, rounds=3):
    benchmark.group = group
    benchmark.extra_info.update(suite="features", case=group, variant=variant, baseline=baseline)
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


MASK_CASES = {
    "no mask": {},
    "key-padding mask (B,1,1,Lk)": {"mask": key_padding(BIG)},
    "kv_lengths": {"kv_lengths": np.array([BIG[2], BIG[2] - 1000])},
}


@pytest.mark.parametrize("variant", MASK_CASES)
def test_mask_overhead(benchmark, variant):
    q, k, v = inputs(BIG)
    run(benchmark, f"mask {BIG}", variant, lambda: fastattn.attention(q, k, v, **MASK_CASES[variant]),
        baseline=variant == "no mask")


WINDOW_CASES = {"causal": {"causal": True}, "causal, window=(256, 0)": {"causal": True, "window": (256, 0)}}


@pytest.mark.parametrize("variant", WINDOW_CASES)
def test_window_speedup(benchmark, variant):
    q, k, v = inputs(BIG)
    run(benchmark, f"window {BIG}", variant, lambda: fastattn.attention(q, k, v, **WINDOW_CASES[variant]),
        baseline=variant == "causal", rounds=3 if variant == "causal" else 10)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_half_precision_speed(benchmark, dtype):
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    q, k, v = inputs(MEDIUM, dtype)
    run(benchmark, f"dtype {MEDIUM}", np.dtype(dtype).name, lambda: fastattn.attention(q, k, v),
        baseline=np.dtype(dtype).name == "float32", rounds=9)


MEMORY_PROBE = """
import json, resource, sys
import numpy as np
import fastattn
b, h, l, d = {shape}
rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal((b, h, l, d), dtype=np.float32) for _ in range(3))
mask = np.ones((b, 1, 1, l), dtype=bool)
mask[1:, ..., l - 1000:] = False
fastattn.attention(q[:, :, :64], k, v, mask=mask)  # load the kernel and the OpenMP pool first
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = fastattn.attention(q, k, v, mask=mask)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"extra_mib": (after - before) / 1024, "out_mib": out.nbytes / 2**20}}))
"""


def test_peak_memory_with_mask(benchmark):
    """Peak extra memory of a key-padding-masked call at BIG: at most the output + 16 MiB."""
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE.format(shape=BIG)], capture_output=True,
                            text=True, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    benchmark.extra_info.update(suite="memory", **measured)
    benchmark.group = f"memory {BIG}"
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # the measurement is above, not a time
    assert measured["extra_mib"] <= measured["out_mib"] + 16, measured
