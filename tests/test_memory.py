"""Peak memory: what the README and docs/ promise about memory, measured in a fresh process per call.

- The kernel never builds an Lq×Lk matrix, so memory stays O(L) (README's introduction);
  "neither pass stores an Lq×Lk matrix" (attention_backward).
- float16 and bfloat16 are widened block by block inside the kernel: no full-size float32 copy.
- A mask's size-1 axes are read with stride 0, never expanded to (..., Hq, Lq, Lk).
- KVCache.attention reads the blocks in place, no gathered or dequantised copy; a prefill of
  8192 tokens through the cache adds at most 16 MiB beyond its output (issue 17).

Each case is a fresh Python (nothing else of the test run is counted) that makes its inputs,
runs the call once on tiny inputs (the OpenMP thread pool and other one-time allocations are
not the call's), then measures how far the peak resident set size (VmHWM) rises above the RSS
during the call. A temporary freed before the call returns counts: it raised the peak. Three
things keep the measurement honest, and test_the_measurement_sees_... shows that it can fail:

- the peak is reset to the current RSS right before the call (/proc/self/clear_refs "5"; the
  inputs are made a megabyte at a time besides), so no earlier peak can hide the call's;
- glibc's malloc is told (MALLOC_MMAP_THRESHOLD_) to give every block of 64 KiB or more back to
  the system when it is freed, so the call cannot reuse memory that is still resident unseen;
- not ru_maxrss: a process started by a large one (pytest, after many tests) inherits its
  parent's peak there (a child of a process of 2 GiB starts at ru_maxrss = 2 GiB), which would
  hide everything below it.

The sizes make an Lq×Lk float32 matrix of one head 256 MiB and a full-size float32 copy of the
16-bit inputs 64-128 MiB, against bounds of the result's size + 16 MiB (MARGIN) — plus, for the
backward, its float32 dQ sums (dq_sums_mib). No timing. The C++ backend only: the NumPy
reference is allowed an Lq×Lk matrix per chunk of query rows. Two threads (num_threads=2), so
that per-thread buffers do not grow with the machine. tools/sanitize/run.sh leaves this file out:
AddressSanitizer's shadow memory and quarantine change the RSS, and its Debug build is too slow
at these sizes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from fastattn import _backend

MARGIN = 16  # MiB: what a call may hold beyond its result (the forward's packed K/V panels: 8 MiB)
THREADS = 2
L = 8192  # Lq = Lk: an Lq×Lk float32 matrix of one head is 256 MiB


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status (Linux)")
needs_cpp = pytest.mark.skipif(not _backend.cpp_available(), reason="the C++ extension is not built")

# The measuring process: its inputs, then report(call, warmup) prints one line of JSON (MiB).
CHILD = """
import gc, json
import numpy as np
import fastattn

rng = np.random.default_rng(0)


def normal(shape, dtype=np.float32):
    # One megabyte of standard normal values, repeated: quick to make, and no full-size
    # temporary raises the peak before the call.
    x = np.empty(shape, dtype)
    flat = x.reshape(-1)
    block = rng.standard_normal(min(1 << 18, flat.size), dtype=np.float32).astype(dtype)
    for start in range(0, flat.size, block.size):
        flat[start:start + block.size] = block[:flat.size - start]
    return x


def kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field + " is not in /proc/self/status")


def report(call, warmup):
    warmup()
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak (VmHWM) := the current RSS
        reset = True
    except OSError:
        reset = False
    rss, peak = kib("VmRSS"), kib("VmHWM")
    result = call()
    extra = kib("VmHWM") - peak
    arrays = result if isinstance(result, tuple) else (result,)
    print(json.dumps({"extra": extra / 1024, "result": sum(np.asarray(a).nbytes for a in arrays) / 2**20,
                      "headroom": (peak - rss) / 1024, "reset": reset}))
"""


def peak_extra(case: str) -> dict:
    """Runs CHILD + case (which ends with a report(...) call) in a fresh Python: {"extra": how far
    the call raised the peak RSS, "result": the size of what it returned, "headroom": the peak
    before the call minus the RSS} in MiB, and whether the peak could be reset."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # freed blocks >= 64 KiB leave the RSS
    proc = subprocess.run([sys.executable, "-c", CHILD + textwrap.dedent(case)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    measured = json.loads(proc.stdout.splitlines()[-1])
    if measured["headroom"] > 2:  # an earlier peak above the RSS would hide what the call adds
        if not measured["reset"]:  # a measurement that cannot be made is a failure, not a skip
            pytest.fail(f"/proc/self/clear_refs cannot reset the peak RSS here, and the peak is "
                        f"{measured['headroom']:.1f} MiB above the RSS before the call")
        pytest.fail(f"the peak RSS is above the RSS right after its reset: {measured}")
    return measured


def assert_within(measured: dict, bound: float, what: str) -> None:
    assert measured["extra"] <= bound, (
        f"the call raised the peak RSS by {measured['extra']:.1f} MiB, more than {bound:.1f} MiB ({what}); {measured}")


def dq_sums_mib(batch: int, hq: int, hkv: int, lq: int, d: int) -> float:
    """What the backward kernel holds besides the gradients (docs/training.md: it "sums partial dq in a
    fixed order"): float32 dQ sums, D padded to 16 — one (batch, K/V head)'s per thread or, when
    few such pairs split their keys into shares, one dQ per share, at most 32 shares and 64 MiB
    (kSplitItems, kPartialBudgetBytes). O(Lq·D) either way, never O(Lq·Lk)."""
    whole = batch * hq * lq * (-(-d // 16) * 16) * 4 / 2**20
    return max(min(64.0, 32 * whole), THREADS * whole / (batch * hkv))


def plain_inputs(shape, dtype="np.float32"):
    return f"""
        q, k, v = (normal({shape}, {dtype}) for _ in range(3))
        tiny = tuple(x[..., :64, :] for x in (q, k, v))
    """


# ---- forward and backward: O(L) ------------------------------------------------------------------

@needs_cpp
@pytest.mark.parametrize("return_lse", [False, True], ids=["out", "out+lse"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_forward_adds_only_its_output(causal, return_lse):
    """The forward at Lq = Lk = 8192 (one head's Lq×Lk float32 matrix: 256 MiB) raises the peak
    by at most its output (and lse) + 16 MiB."""
    measured = peak_extra(plain_inputs((1, 2, L, 16)) + f"""
        options = dict(causal={causal}, return_lse={return_lse}, num_threads={THREADS})
        report(lambda: fastattn.attention(q, k, v, **options), warmup=lambda: fastattn.attention(*tiny, **options))
    """)
    assert_within(measured, measured["result"] + MARGIN, "output + margin")


@needs_cpp
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_backward_adds_only_its_gradients(causal):
    """attention_backward at Lq = Lk = 8192 raises the peak by at most the gradients, its float32
    dQ sums (32 MiB here) + 16 MiB: no Lq×Lk matrix (256 MiB per head) of P or dS."""
    b, h, d = 1, 2, 16
    measured = peak_extra(plain_inputs((b, h, L, d)) + f"""
        options = dict(causal={causal}, num_threads={THREADS})
        out, lse = fastattn.attention(q, k, v, return_lse=True, **options)
        dout = normal(out.shape)
        report(lambda: fastattn.attention_backward(dout, q, k, v, out, lse, **options),
               warmup=lambda: fastattn.attention_backward(dout[..., :64, :], *tiny, out[..., :64, :],
                                                          lse[..., :64], **options))
    """)
    assert_within(measured, measured["result"] + dq_sums_mib(b, h, h, L, d) + MARGIN, "gradients + dQ sums + margin")


# ---- 16-bit inputs: widened block by block ------------------------------------------------------

HALF_SHAPES = {  # (Lq, Lk) at 2 heads, D = 128
    "long-keys": (64, 65536),  # a float32 copy of K and V: 128 MiB
    "long-queries": (65536, 64),  # of Q: 64 MiB, beside an output of 32 MiB
}


def half_dtype(name):
    if name == "bfloat16":
        pytest.importorskip("ml_dtypes")
        return "ml_dtypes.bfloat16"
    return "np.float16"


def half_inputs(dtype, lq, lk):
    return f"""
        {"import ml_dtypes" if "ml_dtypes" in dtype else ""}
        q = normal((1, 2, {lq}, 128), {dtype})
        k, v = (normal((1, 2, {lk}, 128), {dtype}) for _ in range(2))
        tiny = (q[..., :16, :], k[..., :16, :], v[..., :16, :])
    """


@needs_cpp
@pytest.mark.parametrize("shape", HALF_SHAPES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_forward_has_no_float32_copy(dtype, shape):
    """docs/api.md: float16/bfloat16 are widened to float32 block by block — no full-size float32
    copy of q, k or v (nor a float32 output): the peak rises by at most the output + 16 MiB."""
    measured = peak_extra(half_inputs(half_dtype(dtype), *HALF_SHAPES[shape]) + f"""
        report(lambda: fastattn.attention(q, k, v, num_threads={THREADS}),
               warmup=lambda: fastattn.attention(*tiny, num_threads={THREADS}))
    """)
    assert_within(measured, measured["result"] + MARGIN, "output + margin")


@needs_cpp
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_backward_has_no_float32_copy(dtype):
    """The backward of 16-bit inputs with 65536 keys: no float32 copy of K and V (128 MiB) nor
    float32 dK, dV: at most the gradients + the dQ sums + 16 MiB."""
    lq, lk = HALF_SHAPES["long-keys"]
    measured = peak_extra(half_inputs(half_dtype(dtype), lq, lk) + f"""
        out, lse = fastattn.attention(q, k, v, return_lse=True, num_threads={THREADS})
        dout = normal(out.shape, q.dtype)
        report(lambda: fastattn.attention_backward(dout, q, k, v, out, lse, num_threads={THREADS}),
               warmup=lambda: fastattn.attention_backward(dout[..., :16, :], *tiny, out[..., :16, :],
                                                          lse[..., :16], num_threads={THREADS}))
    """)
    assert_within(measured, measured["result"] + dq_sums_mib(1, 2, 2, lq, 128) + MARGIN,
                  "gradients + dQ sums + margin")


# ---- masks: never expanded -----------------------------------------------------------------------

MASKS = {  # for q (2, 2, L, 16): expanded to (B, Hq, Lq, Lk), a bool mask is 256 MiB, a float32 one 1 GiB
    "key-padding-bool": "keep = np.ones((2, L), bool); keep[1, L - 1000:] = False; mask = keep[:, None, None, :]",
    "key-padding-additive": "bias = np.zeros((2, L), np.float32); bias[1, L - 1000:] = -np.inf; "
                            "mask = bias[:, None, None, :]",
    "causal-like-Lq-Lk": "mask = np.tri(L, dtype=bool)",  # (Lq, Lk), shared by the batch and the heads
}


@needs_cpp
@pytest.mark.parametrize("kind", MASKS)
def test_mask_is_not_expanded(kind):
    """docs/api.md: a mask's size-1 axes are read with stride 0, never expanded: a (B, 1, 1, Lk)
    key-padding view and an (Lq, Lk) mask shared by batch and heads add nothing to the forward's
    peak beyond its output + 16 MiB (expanded, the bool mask would be 256 MiB)."""
    measured = peak_extra(plain_inputs((2, 2, L, 16)) + f"""
        L = {L}
        {MASKS[kind]}
        small = mask[..., :64, :64] if mask.shape[-2] > 1 else mask[..., :64]
        report(lambda: fastattn.attention(q, k, v, mask=mask, num_threads={THREADS}),
               warmup=lambda: fastattn.attention(*tiny, mask=small, num_threads={THREADS}))
    """)
    assert_within(measured, measured["result"] + MARGIN, "output + margin")


@needs_cpp
def test_backward_mask_is_not_expanded():
    """The backward with a (B, 1, 1, Lk) key-padding view: at most the gradients + the dQ sums +
    16 MiB (the expanded mask: 256 MiB)."""
    b, h, d = 2, 2, 16
    measured = peak_extra(plain_inputs((b, h, L, d)) + f"""
        L = {L}
        {MASKS["key-padding-bool"]}
        options = dict(mask=mask, num_threads={THREADS})
        out, lse = fastattn.attention(q, k, v, return_lse=True, **options)
        dout = normal(out.shape)
        report(lambda: fastattn.attention_backward(dout, q, k, v, out, lse, **options),
               warmup=lambda: fastattn.attention_backward(dout[..., :64, :], *tiny, out[..., :64, :], lse[..., :64],
                                                          mask=mask[..., :64], num_threads={THREADS}))
    """)
    assert_within(measured, measured["result"] + dq_sums_mib(b, h, h, L, d) + MARGIN, "gradients + dQ sums + margin")


# ---- KVCache: read in place ----------------------------------------------------------------------

def cache_inputs(storage, hkv, d, tokens, lq):
    return f"""
        cache = fastattn.KVCache({hkv}, {d}, dtype="{storage}", block_size=128)
        cache.append([0], normal((1, {hkv}, {tokens}, {d})), normal((1, {hkv}, {tokens}, {d})))
        q = normal((1, {hkv}, {lq}, {d}))
        gc.collect()
        report(lambda: cache.attention(q, [0], num_threads={THREADS}),
               warmup=lambda: cache.attention(q[..., -4:, :], [0], num_threads={THREADS}))
    """


@needs_cpp
@pytest.mark.parametrize("storage", ["float32", "int8"])
def test_kv_cache_prefill_of_8192_tokens(storage):
    """Issue 17: a causal prefill of 8192 tokens through a KVCache (2 heads, D = 64) adds at most
    16 MiB beyond its output — no Lq×Lk matrix (256 MiB per head)."""
    measured = peak_extra(cache_inputs(storage, 2, 64, L, L))
    assert_within(measured, measured["result"] + 16, "output + 16 MiB")


@needs_cpp
@pytest.mark.parametrize("storage", ["float32", "int8"])
def test_kv_cache_is_read_in_place(storage):
    """docs/kv-cache.md: the kernel reads the cache's blocks in place, int8 widened as it reads: 16 queries
    over a 32768-token cache (2 heads, D = 128) add at most their output + 16 MiB, where a
    gathered or dequantised float32 copy of K and V would be 64 MiB."""
    measured = peak_extra(cache_inputs(storage, 2, 128, 32768, 16))
    assert_within(measured, measured["result"] + MARGIN, "output + margin")


# ---- the measurement can fail --------------------------------------------------------------------

PLANTED = {  # (setup, call, MiB it allocates on the way): each must fail the bound of the tests above
    "Lq-Lk-float32-matrix": ("", "float(np.ones((L, L), np.float32).sum())", 256),
    "numpy-backend-score-chunk": (  # the NumPy reference's (B, Hq, 1024 rows, Lk) float32 scores
        plain_inputs((1, 2, L, 16)), "fastattn.attention(q[..., :1024, :], k, v, backend='numpy')", 64),
    "float32-copy-of-16-bit-k-v": (  # what widening the whole inputs first would cost
        half_inputs("np.float16", *HALF_SHAPES["long-keys"]),
        "fastattn.attention(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32)).astype(q.dtype)",
        128),
}


@pytest.mark.parametrize("case", PLANTED)
def test_the_measurement_sees_a_planted_allocation(case):
    """The harness is not blind: a call that allocates an Lq×Lk matrix, the NumPy backend's score
    chunk or a float32 copy of 16-bit K and V — even when freed before it returns — is measured
    at (nearly) that size, and fails the bound that the tests above assert."""
    setup, call, planted = PLANTED[case]
    measured = peak_extra(setup + f"""
        L = {L}
        report(lambda: {call}, warmup=lambda: None)
    """)
    assert measured["extra"] >= 0.9 * planted, measured
    assert measured["extra"] > measured["result"] + MARGIN, measured
