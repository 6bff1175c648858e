"""The AMX engine and its software model (issue 29).

Everywhere (every x86 machine with AVX2): the amx-model ISA runs the AMX engine on the model,
and says so. Where AMX is present: the model agrees with the hardware bit for bit, on random
tiles through the engine's own packing and on whole attention calls, forward and backward,
every dtype and precision the tiles run; the amx ISA runs the tiles (asserted, so that a silent
fallback cannot pass for AMX); and a process the kernel refuses tile data to (a too small
alternate signal stack) gets no amx ISA, and no crash.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fastattn
from fastattn import _backend, _contract

pytestmark = pytest.mark.skipif(not _backend.cpp_available(), reason="C++ extension not built")
core = _backend._core
ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
needs_model = pytest.mark.skipif("amx-model" not in (core.supported_isas() if core else []),
                                 reason="the AMX model needs an x86 CPU with AVX2")
needs_amx = pytest.mark.skipif("amx" not in (core.supported_isas() if core else []),
                               reason="no AMX (grep amx_bf16 /proc/cpuinfo), or the OS refused tile data")

# (dtype, precision) -> the tile engine amx-model runs: every one there is.
ENGINES = {
    (BF16, "highest"): "bf16", (BF16, "medium"): "bf16_rounded",
    (np.dtype(np.float16), "highest"): "f16", (np.dtype(np.float16), "medium"): "f16_rounded",
    (np.dtype(np.float32), "high"): "f32x3", (np.dtype(np.float32), "medium"): "f32x2_rounded",
}
# The amx ISA runs those measured faster than its FMA engine (dispatch.cpp): float32 "high" (the
# three-part f32x3) computes as "highest" there.
HARDWARE_ENGINES = {key: name for key, name in ENGINES.items() if name != "f32x3"}


@pytest.fixture
def use_isa():
    previous = core.selected_isa()
    yield core.select_isa
    core.select_isa(previous)
    core._set_amx_model_for_testing(False)


def rand(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


@needs_model
@pytest.mark.parametrize("dtype, precision", list(ENGINES), ids=lambda x: getattr(x, "name", x))
def test_the_model_isa_runs_the_amx_engine(use_isa, rng, dtype, precision):
    use_isa("amx-model")
    q = rand(rng, (1, 2, 40, 16), dtype)
    fastattn.attention(q, q, q, precision=precision)
    assert core._last_engine() == "amx_model_" + ENGINES[dtype, precision]
    fastattn.attention(q.astype(np.float64), q.astype(np.float64), q.astype(np.float64))
    assert core._last_engine() == "avx2_fma"  # float64 stays on the FMA engine


@needs_amx
@pytest.mark.parametrize("dtype, precision", list(HARDWARE_ENGINES), ids=lambda x: getattr(x, "name", x))
def test_the_amx_isa_runs_the_tiles(use_isa, rng, dtype, precision):
    use_isa("amx")
    q = rand(rng, (1, 2, 40, 16), dtype)
    fastattn.attention(q, q, q, precision=precision)
    assert core._last_engine() == "amx_" + ENGINES[dtype, precision]
    out, lse = fastattn.attention(q, q, q, precision=precision, return_lse=True)
    fastattn.attention_backward(out, q, q, q, out, lse, precision=precision)
    assert core._last_engine() == "amx_" + ENGINES[dtype, precision]


@needs_amx
@pytest.mark.parametrize("dtype, precision, rows", [(BF16, "highest", 15), (np.dtype(np.float16), "highest", 31),
                                                    (np.dtype(np.float32), "medium", 31),
                                                    (np.dtype(np.float32), "high", 64)],
                         ids=["bf16-15-rows", "f16-31-rows", "f32-medium-31-rows", "f32-high"])
def test_the_amx_isa_leaves_short_calls_and_float32_high_to_fma(use_isa, rng, dtype, precision, rows):
    """Fewer query rows than a tile engine's minimum (16 for bf16, 32 for the rest), and float32
    "high", run the FMA engine on the amx ISA (measured faster there: dispatch.cpp); forward and
    backward alike (the backward forms the scores as the forward did)."""
    use_isa("amx")
    q = rand(rng, (1, 2, rows, 16), dtype)
    out, lse = fastattn.attention(q, q, q, precision=precision, return_lse=True)
    assert core._last_engine() == "avx512_fma"
    fastattn.attention_backward(out, q, q, q, out, lse, precision=precision)
    assert core._last_engine() == "avx512_fma"
    if precision != "high":  # one row more: the tiles
        q = rand(rng, (1, 2, rows + 1, 16), dtype)
        fastattn.attention(q, q, q, precision=precision)
        assert core._last_engine().startswith("amx_")


def tile_operands(rng, dtype, rows, depth, cols):
    """Random operands with varied exponents, exact zeros and a few subnormals: every path of
    the tile unit's rounding and flushing."""
    a = rand(rng, (rows, depth), np.float32) * np.exp2(rng.integers(-20, 20, (rows, depth)))
    b = rand(rng, (cols, depth), np.float32) * np.exp2(rng.integers(-20, 20, (cols, depth)))
    a[rng.random(a.shape) < 0.05] = 0
    if dtype == BF16 or dtype == np.float32:
        b.flat[rng.integers(0, b.size, 3)] = 1e-39  # subnormal (flushed by the tiles)
    if dtype == np.float16:
        a, b = np.clip(a, -6e4, 6e4), np.clip(b, -6e4, 6e4)
    return a.astype(dtype), b.astype(dtype)


@needs_amx
@pytest.mark.parametrize("dtype, precision", list(ENGINES), ids=lambda x: getattr(x, "name", x))
@pytest.mark.parametrize("rows, depth, cols", [(32, 32, 32), (16, 64, 48), (7, 130, 70)])
def test_model_and_hardware_agree_bit_for_bit_on_random_tiles(rng, dtype, precision, rows, depth, cols):
    code = _contract.PRECISIONS[precision]
    for sums in (False, True):
        a, b = tile_operands(rng, dtype, rows, depth, cols)
        if sums:  # weights: float32, a row per output row, terms as depth
            a = np.abs(a.astype(np.float32))
            b = rand(rng, (depth, cols), dtype)
        results = []
        for model in (False, True):
            core._set_amx_model_for_testing(model)
            out = np.full((rows, cols), 0.25, np.float32)
            try:
                core._engine_products("amx", a, b, out, code, sums, False, False, 1, depth, 0.7,
                                      np.full(rows, 0.5, np.float32))
            finally:
                core._set_amx_model_for_testing(False)
            results.append(out)
        np.testing.assert_array_equal(results[0].view(np.uint32), results[1].view(np.uint32))


@needs_amx
@pytest.mark.parametrize("dtype, precision", list(HARDWARE_ENGINES), ids=lambda x: getattr(x, "name", x))
@pytest.mark.parametrize("options", [
    dict(causal=True),
    dict(window=(20, 3), align="lower_right", softcap=8.0),
    dict(mask=np.arange(90) % 7 != 3, alibi_slopes=[0.1, 0.2, 0.3, 0.4], sinks=[0.5, -1.0, 2.0, 0.0]),
], ids=["causal", "window-softcap", "mask-alibi-sinks"])
def test_model_and_hardware_agree_bit_for_bit_on_whole_calls(use_isa, rng, dtype, precision, options):
    use_isa("amx")
    q = rand(rng, (2, 4, 70, 40), dtype, 2.0)
    k, v = rand(rng, (2, 2, 90, 40), dtype, 2.0), rand(rng, (2, 2, 90, 24), dtype)
    dout = rand(rng, (2, 4, 70, 24), dtype)
    results = []
    for model in (False, True):
        core._set_amx_model_for_testing(model)
        try:
            out, lse = fastattn.attention(q, k, v, return_lse=True, precision=precision, **options)
            grads = fastattn.attention_backward(dout, q, k, v, out, lse, precision=precision, **options)
        finally:
            core._set_amx_model_for_testing(False)
        results.append((out, lse) + tuple(grads))
    for hardware, model in zip(*results):
        np.testing.assert_array_equal(np.asarray(hardware).view(np.uint8), np.asarray(model).view(np.uint8))


@needs_amx
def test_a_refused_permission_means_no_amx_and_no_crash():
    # Linux refuses tile data to a process whose alternate signal stack is too small to hold the
    # tile state (Documentation/arch/x86/xstate.rst): fastattn must then not offer amx.
    code = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
class stack_t(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]
buffer = ctypes.create_string_buffer(4096)
assert libc.sigaltstack(ctypes.byref(stack_t(ctypes.cast(buffer, ctypes.c_void_p), 0, 4096)), None) == 0
import numpy as np, fastattn
from fastattn import _backend
assert "amx" not in _backend._core.supported_isas(), _backend._core.supported_isas()
try:
    fastattn.set_isa("amx")
except ValueError as exc:
    assert "not supported by this CPU" in str(exc), exc
else:
    sys.exit("set_isa('amx') was accepted")
q = np.ones((1, 1, 4, 8), np.float32)
assert fastattn.attention(q, q, q).shape == (1, 1, 4, 8)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in os.environ.items() if k != "FASTATTN_ISA"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
