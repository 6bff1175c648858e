"""precision= (docs/precision.md) on every ISA this CPU supports, forward and backward.

- float32 "high" (three bf16 parts on the AMX tiles; float32 FMA products elsewhere): error
  against the float64 oracle within 2x the default ("highest") float32 path's on the same inputs.
- "medium" for every dtype: P and dS rounded to bf16 at most (relative 2^-9 per weight), so the
  error is bounded by a few bf16 units of the result's scale.
- every mode: bitwise the same results on 1 and 2 threads, and on the model and the hardware
  (tests/test_amx.py) where both run.

amx-model runs these at small shapes everywhere with AVX2: the AMX engine's packing, tails and
the split products are checked on machines without AMX too.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastattn
from fastattn import _backend

from oracle import max_err, oracle, oracle_grads

pytestmark = pytest.mark.skipif(not _backend.cpp_available(), reason="C++ extension not built")
ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16, F32 = np.dtype(np.float16), np.dtype(np.float32)

# Options that change what the tiles see: masks (and rows that see nothing), GQA, windows,
# softcap, sinks, a causal diagonal at an offset, a short last key block.
CASES = {
    "plain": (dict(), (1, 2, 37, 70, 2)),
    "causal-gqa": (dict(causal="lower_right"), (2, 4, 45, 77, 2)),
    "mask": (dict(mask="random"), (1, 2, 33, 65, 1)),
    "window-softcap": (dict(window=(20, 3), softcap=4.0), (1, 2, 64, 64, 2)),
    "sinks": (dict(sinks=True), (1, 4, 40, 50, 2)),
}


def _inputs(rng, case, dtype, depth=32):
    options, (batch, hq, lq, lk, hkv) = CASES[case]
    options = dict(options)
    q = rng.standard_normal((batch, hq, lq, depth)) * 1.5
    k = rng.standard_normal((batch, hkv, lk, depth))
    v = rng.standard_normal((batch, hkv, lk, depth))
    dout = rng.standard_normal((batch, hq, lq, depth))
    if options.get("mask") == "random":
        mask = rng.random((lq, lk)) < 0.7
        mask[3] = False  # a row that sees no key
        options["mask"] = mask
    if options.get("sinks"):
        options["sinks"] = rng.standard_normal(hq).astype(np.float32)
    return tuple(x.astype(dtype) for x in (q, k, v, dout)), options


def _errors(inputs, options, precision):
    """Max errors of out and each gradient against the float64 oracle."""
    q, k, v, dout = inputs
    out, lse = fastattn.attention(q, k, v, precision=precision, return_lse=True, **options)
    grads = fastattn.attention_backward(dout, q, k, v, out, lse, precision=precision, **options)
    wide = [x.astype(np.float64) for x in (q, k, v, dout)]
    want_out, _ = oracle(*wide[:3], **options)
    want_grads = oracle_grads(*wide, **options)
    got = (out,) + tuple(grads)
    want = (want_out,) + tuple(want_grads[:3])
    if len(want_grads) > 3:  # d sinks: the oracle's per batch, fastattn's summed over it (one per head)
        want += (want_grads[3].reshape(-1, want_grads[3].shape[-1]).sum(axis=0),)
    return [max_err(g, w) for g, w in zip(got, want)], [float(np.max(np.abs(w), initial=0.0)) for w in want]


@pytest.mark.parametrize("case", list(CASES))
def test_float32_high_within_twice_the_default_error(isa, rng, case):
    inputs, options = _inputs(rng, case, F32)
    highest, scales = _errors(inputs, options, "highest")
    high, _ = _errors(inputs, options, "high")
    eps = np.finfo(np.float32).eps
    for name, h, d, s in zip(("out", "dq", "dk", "dv", "dsinks"), high, highest, scales):
        # 2x the default's error, and a float32 unit of the result's scale (where the default is
        # exact by luck, twice zero leaves nothing).
        assert h <= 2 * d + eps * s, f"{isa} {case} {name}: high {h:.3g} > 2 x highest {d:.3g}"


@pytest.mark.parametrize("dtype", [BF16, F16, F32], ids=lambda d: d.name)
@pytest.mark.parametrize("case", list(CASES))
def test_medium_rounds_the_weights_to_bfloat16_at_most(isa, rng, case, dtype):
    inputs, options = _inputs(rng, case, dtype)
    medium, scales = _errors(inputs, options, "medium")
    highest, _ = _errors(inputs, options, "highest")
    # Each weight is off by at most 2^-9 relatively; a sum of products of such weights is off by
    # 2^-9 of the sum of the absolute products, at most a few times the result's scale at these
    # shapes (the backward's dS = P (dP - D) cancels: allow 4 units; measured up to 1.7 on amx).
    for name, m, d, s in zip(("out", "dq", "dk", "dv", "dsinks"), medium, highest, scales):
        assert m <= d + 4 * 2.0**-9 * s, f"{isa} {case} {name}: medium {m:.3g}, highest {d:.3g}, scale {s:.3g}"


@pytest.mark.parametrize("dtype, precision", [(BF16, "highest"), (BF16, "medium"), (F16, "highest"),
                                              (F16, "medium"), (F32, "high"), (F32, "medium")],
                         ids=lambda x: getattr(x, "name", x))
def test_every_mode_is_bitwise_independent_of_the_thread_count(isa, rng, dtype, precision):
    inputs, options = _inputs(rng, "causal-gqa", dtype)
    q, k, v, dout = inputs
    results = []
    for threads in (1, 2):
        out, lse = fastattn.attention(q, k, v, precision=precision, return_lse=True, num_threads=threads, **options)
        grads = fastattn.attention_backward(dout, q, k, v, out, lse, precision=precision, num_threads=threads,
                                            **options)
        results.append((out, lse) + tuple(grads))
    for one, two in zip(*results):
        assert one.tobytes() == two.tobytes()


@pytest.mark.parametrize("precision", ["highest", "high", "medium"])
def test_float64_ignores_the_precision(isa, rng, precision):
    inputs, options = _inputs(rng, "plain", np.dtype(np.float64))
    q, k, v, _ = inputs
    want = fastattn.attention(q, k, v, **options)
    assert fastattn.attention(q, k, v, precision=precision, **options).tobytes() == want.tobytes()


@pytest.mark.parametrize("bad, error", [("low", ValueError), ("HIGHEST", ValueError), (1, TypeError),
                                        (None, TypeError)])
def test_other_values_are_refused_by_name(rng, bad, error):
    q = rng.standard_normal((4, 8)).astype(np.float32)
    with pytest.raises(error, match="precision"):
        fastattn.attention(q, q, q, precision=bad)
    out, lse = fastattn.attention(q, q, q, return_lse=True)
    with pytest.raises(error, match="precision"):
        fastattn.attention_backward(q, q, q, q, out, lse, precision=bad)
