"""Bad input: every invalid call raises TypeError (types, dtypes) or ValueError (shapes, options)
before any kernel runs, with a message that names the argument and gives the actual value
(docs/architecture.md, "The contract the tests pin"). Valid edge cases (empty sizes, scale 0, ...)
must not raise. Shapes, dtypes, scale, causal, out, ISA selection here; the options (mask,
lengths, window, ALiBi, softcap) in test_errors_options.py.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

import fastattn
from fastattn import attention
from error_cases import (B, D, DV, HKV, HQ, K_SHAPE, LK, LQ, OUT_SHAPE, Q_SHAPE, V_SHAPE, arr,
                         needs_cpp, qkv, rejected)


@pytest.fixture(params=[pytest.param("cpp", marks=needs_cpp), "numpy"])
def backend(request):
    """Errors are raised before either backend runs; both are checked."""
    return request.param


# --- shapes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("q", [np.ones(8, np.float32), np.float32(1.0), np.array(1.0, np.float32)],
                         ids=["1-D", "numpy-scalar", "0-D"])
def test_q_ndim_below_two(backend, q):
    k = v = arr((LK, D))
    with rejected(ValueError, f"q.ndim (={q.ndim}) must be >= 2"):
        attention(q, k, v, backend=backend)


@pytest.mark.parametrize("name, shapes, ndim, q_ndim", [
    ("k", ((LQ, D), (1, LK, D), (LK, DV)), 3, 2),
    ("k", ((1, LQ, D), (D,), (LK, DV)), 1, 3),
    ("v", ((LQ, D), (LK, D), (1, LK, DV)), 3, 2),
    ("v", (Q_SHAPE, K_SHAPE, (HKV, LK, DV)), 3, 4),
], ids=["k-3d-q-2d", "k-1d-q-3d", "v-3d-q-2d", "v-3d-q-4d"])
def test_kv_ndim_differs_from_q(backend, name, shapes, ndim, q_ndim):
    q, k, v = (arr(s) for s in shapes)
    with rejected(ValueError, f"{name}.ndim (={ndim}) must equal q.ndim (={q_ndim})"):
        attention(q, k, v, backend=backend)


@pytest.mark.parametrize("name, q_batch, kv_batch", [
    ("k", (2,), (3,)),
    ("v", (2,), (3,)),
    ("k", (2, 3), (2, 4)),
    ("v", (2, 3), (3, 2)),
])
def test_batch_dims_differ(backend, name, q_batch, kv_batch):
    k_batch = kv_batch if name == "k" else q_batch
    v_batch = kv_batch if name == "v" else q_batch
    q, k, v = qkv(q_shape=q_batch + Q_SHAPE[1:], k_shape=k_batch + K_SHAPE[1:], v_shape=v_batch + V_SHAPE[1:])
    with rejected(ValueError, f"{name}.shape[:-3] (={kv_batch}) must equal q.shape[:-3] (={q_batch})"):
        attention(q, k, v, backend=backend)


def test_hkv_differs_between_k_and_v(backend):
    q, k, v = qkv(v_shape=(B, 1, LK, DV))
    with rejected(ValueError, f"v.shape[-3] (=1) must equal k.shape[-3] (={HKV})"):
        attention(q, k, v, backend=backend)


@pytest.mark.parametrize("hq, hkv", [(3, 2), (2, 4), (5, 3)])
def test_hq_not_a_multiple_of_hkv(backend, hq, hkv):
    q, k, v = qkv(q_shape=(B, hq, LQ, D), k_shape=(B, hkv, LK, D), v_shape=(B, hkv, LK, DV))
    with rejected(ValueError, f"q.shape[-3] (={hq}) must be a multiple of k.shape[-3] (={hkv})"):
        attention(q, k, v, backend=backend)


def test_zero_kv_heads_with_query_heads(backend):
    q, k, v = qkv(k_shape=(B, 0, LK, D), v_shape=(B, 0, LK, DV))
    with rejected(ValueError, f"k.shape[-3] (=0) must be >= 1 when q has heads (q.shape[-3] = {HQ})"):
        attention(q, k, v, backend=backend)


@pytest.mark.parametrize("lk_v", [LK - 1, LK + 1, 0])
def test_lk_differs_between_k_and_v(backend, lk_v):
    q, k, v = qkv(v_shape=(B, HKV, lk_v, DV))
    with rejected(ValueError, f"v.shape[-2] (={lk_v}) must equal k.shape[-2] (={LK})"):
        attention(q, k, v, backend=backend)


@pytest.mark.parametrize("dq, dk", [(64, 63), (8, 0), (0, 8), (1, 2)])
def test_head_dim_differs(backend, dq, dk):
    q, k, v = qkv(q_shape=(LQ, dq), k_shape=(LK, dk), v_shape=(LK, DV))
    with rejected(ValueError, f"k.shape[-1] (={dk}) must equal q.shape[-1] (={dq})"):
        attention(q, k, v, backend=backend)


@pytest.mark.parametrize("shapes", [((LQ, 0), (LK, 0), (LK, DV)), (Q_SHAPE[:-1] + (0,), K_SHAPE[:-1] + (0,), V_SHAPE)],
                         ids=["2-D", "4-D"])
def test_head_dim_zero(backend, shapes):
    q, k, v = (arr(s) for s in shapes)
    with rejected(ValueError, "q.shape[-1] (=0) must be >= 1"):
        attention(q, k, v, backend=backend)


# --- dtypes and non-arrays ------------------------------------------------------------------

def test_sizes_that_overflow_64_bit_index_arithmetic(backend):
    # q (1, 8, 4, 1) against one stride-0 K/V head of 2**60 keys: 2**65 multiply-adds. Once ran for ever.
    q = np.ones((1, 8, 4, 1), np.float32)
    kv = np.lib.stride_tricks.as_strided(np.ones(1, np.float32), shape=(1, 1, 2 ** 60, 1), strides=(0,) * 4)
    with rejected(ValueError, "the call is too large for 64-bit index arithmetic: query rows (=32) × Lk"):
        attention(q, kv, kv, backend=backend)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_np_matrix_is_refused_by_name(backend, name):
    arrays = dict(zip("qkv", (np.ones((4, 8), np.float32),) * 3))
    arrays[name] = np.asmatrix(arrays[name])
    with rejected(TypeError, f"{name} must be an array, got np.matrix (always 2-D): pass np.asarray({name})"):
        attention(arrays["q"], arrays["k"], arrays["v"], backend=backend)


@pytest.mark.parametrize("name", ["q", "k", "v", "mask"])
def test_masked_array_is_refused_not_silently_unmasked(backend, name):
    arrays = dict(zip("qkv", qkv()), mask=np.ones((LQ, LK), bool))
    arrays[name] = np.ma.masked_array(arrays[name], mask=np.zeros(arrays[name].shape, bool))
    arrays[name].mask.flat[0] = True
    with rejected(TypeError, f"{name} is a masked array, whose mask fastattn would not see"):
        attention(arrays["q"], arrays["k"], arrays["v"], mask=arrays["mask"], backend=backend)
    # Dropping the mask deliberately works, and gives what the plain array gives.
    plain = {n: np.asarray(a) for n, a in arrays.items()}
    got = attention(plain["q"], plain["k"], plain["v"], mask=plain["mask"], backend=backend)
    assert np.array_equal(got, attention(*qkv(), mask=np.ones((LQ, LK), bool), backend=backend))


BAD_DTYPES = [np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128, object, str,
              np.longdouble]


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_unsupported_dtype(backend, name, dtype):
    arrays = dict(zip("qkv", qkv()))
    arrays[name] = arrays[name].astype(dtype)
    with rejected(TypeError, f"{name}.dtype (={arrays[name].dtype}) must be float32, float64, float16 or bfloat16"):
        attention(arrays["q"], arrays["k"], arrays["v"], backend=backend)


@pytest.mark.parametrize("q_dtype, name, other", [
    (np.float32, "k", np.float64),
    (np.float32, "v", np.float64),
    (np.float64, "k", np.float32),
    (np.float64, "v", np.float32),
])
def test_mixed_dtypes(backend, q_dtype, name, other):
    arrays = dict(zip("qkv", qkv(q_dtype)))
    arrays[name] = arrays[name].astype(other)
    with rejected(TypeError, f"{name}.dtype (={np.dtype(other)}) must equal q.dtype (={np.dtype(q_dtype)})"):
        attention(arrays["q"], arrays["k"], arrays["v"], backend=backend)


@pytest.mark.parametrize("dtype", [">f4", ">f8"])
@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_non_native_byte_order(backend, name, dtype):
    native = np.dtype(dtype).newbyteorder("=")
    arrays = dict(zip("qkv", qkv(native)))
    arrays[name] = arrays[name].astype(dtype)
    with rejected(TypeError, f"{name}.dtype (={dtype}) must be float32, float64, float16 or bfloat16; convert with "
                             f"{name}.astype({name}.dtype.newbyteorder('='))"):
        attention(arrays["q"], arrays["k"], arrays["v"], backend=backend)


@pytest.mark.parametrize("obj, message", [
    (None, "{} must be an array of float32, float64, float16 or bfloat16, got NoneType"),
    ("abc", "{}.dtype (=<U3) must be float32, float64, float16 or bfloat16"),
    ([[1.0, 2.0], [3.0]], "{} must be an array, got list"),
    ({"a": 1.0}, "{} must be an array of float32, float64, float16 or bfloat16, got dict"),
], ids=["None", "str", "ragged-list", "dict"])
@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_non_array_input(backend, name, obj, message):
    arrays = dict(zip("qkv", qkv(np.float64)))
    arrays[name] = obj
    with rejected(TypeError, message.format(name)):
        attention(arrays["q"], arrays["k"], arrays["v"], backend=backend)


# --- options --------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", ["0.5", True, np.True_, 1 + 0j, np.complex64(1), [0.5], np.array([0.5])],
                         ids=["str", "bool", "np.bool_", "complex", "np.complex64", "list", "1-elem-array"])
def test_scale_wrong_type(backend, scale):
    with rejected(TypeError, f"scale must be a real number or None, got {type(scale).__name__}"):
        attention(*qkv(), scale=scale, backend=backend)


@pytest.mark.parametrize("scale, shown", [
    (math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf"), (np.float32("nan"), "nan"),
    (np.float64("-inf"), "-inf"),
])
def test_scale_not_finite(backend, scale, shown):
    with rejected(ValueError, f"scale (={shown}) must be finite"):
        attention(*qkv(), scale=scale, backend=backend)


def test_scale_int_too_large_for_float(backend):
    # float(10**400) raises OverflowError; it is still a real number that is not finite.
    with rejected(ValueError, "must be finite") as info:
        attention(*qkv(), scale=10**400, backend=backend)
    assert str(info.value).startswith("scale (=")


@pytest.mark.parametrize("causal", ["lower-right", "upper", "True", "", "LOWER_RIGHT"])
def test_causal_unknown_string(backend, causal):
    with rejected(ValueError, f"causal (={causal!r}) must be False, True, 'upper_left' or 'lower_right'"):
        attention(*qkv(), causal=causal, backend=backend)


@pytest.mark.parametrize("causal", [1, 0, None, 1.0, np.int64(1), b"upper_left"],
                         ids=["int-1", "int-0", "None", "float", "np.int64", "bytes"])
def test_causal_wrong_type(backend, causal):
    with rejected(TypeError, f"causal must be a bool or a str, got {type(causal).__name__}"):
        attention(*qkv(), causal=causal, backend=backend)


@pytest.mark.parametrize("return_lse", [1, 0, None, "yes", np.int64(1)], ids=["1", "0", "None", "str", "np.int64"])
def test_return_lse_not_bool(backend, return_lse):
    with rejected(TypeError, f"return_lse must be a bool, got {type(return_lse).__name__}"):
        attention(*qkv(), return_lse=return_lse, backend=backend)


@pytest.mark.parametrize("name", ["torch", "CPP", "", "c++", "numpy "])
def test_backend_unknown(name):
    with rejected(ValueError, f"backend (={name!r}) must be one of 'auto', 'cpp', 'numpy'"):
        attention(*qkv(), backend=name)


@pytest.mark.parametrize("name", [None, 1, b"cpp", ["cpp"]], ids=["None", "int", "bytes", "list"])
def test_backend_wrong_type(name):
    with rejected(TypeError, f"backend must be a str, got {type(name).__name__}"):
        attention(*qkv(), backend=name)


@pytest.mark.parametrize("n", [0, -1, 1025, 2**40, np.int64(0)], ids=["0", "-1", "1025", "2**40", "np.int64-0"])
def test_num_threads_out_of_range(backend, n):
    with rejected(ValueError, f"num_threads (={int(n)}) must be between 1 and 1024, or None"):
        attention(*qkv(), num_threads=n, backend=backend)


@pytest.mark.parametrize("n", [True, False, np.True_, 2.0, np.float64(2), "2", [2]],
                         ids=["True", "False", "np.bool_", "float", "np.float64", "str", "list"])
def test_num_threads_wrong_type(backend, n):
    kind = "bool" if isinstance(n, (bool, np.bool_)) else type(n).__name__
    with rejected(TypeError, f"num_threads must be an int or None, got {kind}"):
        attention(*qkv(), num_threads=n, backend=backend)


# --- out ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(B, HQ, LQ, D), (HQ, LQ, DV), (B, HKV, LQ, DV), (B, HQ, LQ, DV, 1), (B * HQ * LQ * DV,)],
                         ids=["D-not-Dv", "missing-batch", "Hkv-heads", "extra-dim", "flat"])
def test_out_wrong_shape(backend, shape):
    with rejected(ValueError, f"out.shape (={shape}) must be {OUT_SHAPE}"):
        attention(*qkv(), out=np.empty(shape, np.float32), backend=backend)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, ">f4"], ids=str)
def test_out_wrong_dtype(backend, dtype):
    out = np.empty(OUT_SHAPE, dtype)
    with rejected(TypeError, f"out.dtype (={out.dtype}) must equal q.dtype (=float32)"):
        attention(*qkv(), out=out, backend=backend)


@pytest.mark.parametrize("make", [
    lambda: np.empty(OUT_SHAPE[:-1] + (2 * DV,), np.float32)[..., ::2],
    lambda: np.empty(OUT_SHAPE[::-1], np.float32).T,
    lambda: np.empty(OUT_SHAPE, np.float32, order="F"),
    lambda: np.empty((B, HQ, LQ + 1, DV), np.float32)[:, :, 1:],
], ids=["strided-last-axis", "transposed", "fortran", "row-slice"])
def test_out_not_c_contiguous(backend, make):
    with rejected(ValueError, "out must be C-contiguous"):
        attention(*qkv(), out=make(), backend=backend)


def test_out_read_only(backend):
    out = np.zeros(OUT_SHAPE, np.float32)
    out.flags.writeable = False
    with rejected(ValueError, "out must be writeable"):
        attention(*qkv(), out=out, backend=backend)
    assert not out.any()


@pytest.mark.parametrize("out", [np.zeros(OUT_SHAPE, np.float32).tolist(), 0.0, memoryview(np.zeros(OUT_SHAPE, np.float32))],
                         ids=["list", "float", "memoryview"])
def test_out_not_an_ndarray(backend, out):
    with rejected(TypeError, f"out must be a numpy.ndarray or None, got {type(out).__name__}"):
        attention(*qkv(), out=out, backend=backend)


@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_out_overlaps_an_input(backend, name):
    # 2-D with Lq = Lk and D = Dv, so out can be an input itself (q) or a view of one (k, v).
    q, k, v = qkv(q_shape=(LK, D), k_shape=(LK + 2, D), v_shape=(LK + 2, D))
    out = {"q": q, "k": k[1:LK + 1], "v": v[2:]}[name]
    before = out.copy()
    with rejected(ValueError, f"out must not share memory with {name}"):
        attention(q, k, v, out=out, backend=backend)
    np.testing.assert_array_equal(out, before)


# --- ISA selection --------------------------------------------------------------------------

@pytest.fixture
def restore_isa():
    previous = fastattn.get_isa()
    yield
    if previous is not None:
        fastattn.set_isa(previous)


@needs_cpp
@pytest.mark.parametrize("name", ["bogus", "AVX2", "", " avx2", "sse"])
def test_set_isa_unknown(restore_isa, name):
    before = fastattn.get_isa()
    with pytest.raises(ValueError, match=re.escape(f"unknown ISA {name!r} (compiled: ")):
        fastattn.set_isa(name)
    assert fastattn.get_isa() == before


@needs_cpp
def test_set_isa_not_runnable_here(restore_isa):
    config = fastattn.show_config()
    unrunnable = [isa for isa in config["compiled_isas"] if isa not in config["supported_isas"]]
    if not unrunnable:
        pytest.skip("this CPU runs every compiled ISA")
    before = fastattn.get_isa()
    with pytest.raises(ValueError, match=re.escape(f"ISA '{unrunnable[0]}' is not supported by this CPU (supported: ")):
        fastattn.set_isa(unrunnable[0])
    assert fastattn.get_isa() == before


@needs_cpp
@pytest.mark.parametrize("name", [None, 2, b"avx2", ["avx2"]], ids=["None", "int", "bytes", "list"])
def test_set_isa_not_a_str(restore_isa, name):
    with pytest.raises(TypeError, match=re.escape(f"name must be a str, got {type(name).__name__}")):
        fastattn.set_isa(name)


def _import_with_isa(value):
    env = dict(os.environ, FASTATTN_ISA=value)
    return subprocess.run([sys.executable, "-c", "import fastattn; print(fastattn.get_isa())"],
                          env=env, capture_output=True, text=True, timeout=120)


@needs_cpp
def test_isa_env_unknown_fails_import():
    result = _import_with_isa("bogus")
    assert result.returncode != 0
    assert "ValueError: FASTATTN_ISA='bogus': unknown ISA 'bogus' (compiled: " in result.stderr, result.stderr


@needs_cpp
def test_isa_env_valid_is_applied():
    # The control for the test above: the same subprocess imports fine with a valid name.
    result = _import_with_isa("scalar")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "scalar"


# --- valid edge cases: these must not raise --------------------------------------------------

def naive(q, k, v, scale=None, causal=False):
    """float64 softmax(q·kᵀ·scale)·v and lse for 2-D inputs."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ k.T * scale
    if causal:
        s = np.where(np.arange(k.shape[0]) <= np.arange(q.shape[0])[:, None], s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    p = np.exp(s - m)
    return p @ v / p.sum(-1, keepdims=True), (m + np.log(p.sum(-1, keepdims=True)))[:, 0]


@pytest.mark.parametrize("causal", [False, True, "lower_right"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_lq(backend, causal, dtype):
    q, k, v = qkv(dtype, q_shape=(B, HQ, 0, D))
    out, lse = attention(q, k, v, causal=causal, return_lse=True, backend=backend)
    assert out.shape == (B, HQ, 0, DV) and out.dtype == dtype
    assert lse.shape == (B, HQ, 0) and lse.dtype == dtype


@pytest.mark.parametrize("shapes, out_shape", [
    (((0,) + Q_SHAPE[1:], (0,) + K_SHAPE[1:], (0,) + V_SHAPE[1:]), (0,) + OUT_SHAPE[1:]),
    (((3, 0) + Q_SHAPE[1:], (3, 0) + K_SHAPE[1:], (3, 0) + V_SHAPE[1:]), (3, 0) + OUT_SHAPE[1:]),
    (((B, 0, LQ, D), (B, 0, LK, D), (B, 0, LK, DV)), (B, 0, LQ, DV)),
    (((B, 0, LQ, D), K_SHAPE, V_SHAPE), (B, 0, LQ, DV)),
], ids=["B=0", "B=(3,0)", "Hq=Hkv=0", "Hq=0"])
def test_empty_batch_or_heads(backend, shapes, out_shape):
    q, k, v = (arr(s) for s in shapes)
    out, lse = attention(q, k, v, return_lse=True, backend=backend)
    assert out.shape == out_shape and lse.shape == out_shape[:-1]


@pytest.mark.parametrize("causal", [False, True, "lower_right"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_lk_gives_zeros_and_minus_inf(backend, causal, dtype):
    q, k, v = qkv(dtype, k_shape=(B, HKV, 0, D), v_shape=(B, HKV, 0, DV))
    out = np.full(OUT_SHAPE, np.nan, dtype)
    result, lse = attention(q, k, v, causal=causal, return_lse=True, out=out, backend=backend)
    assert result is out
    np.testing.assert_array_equal(out, 0)
    assert lse.shape == OUT_SHAPE[:-1] and lse.dtype == dtype
    assert np.all(lse == -np.inf)


@pytest.mark.parametrize("causal", [False, True, "lower_right"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_dv_keeps_lse(backend, causal, dtype):
    q, k, v = qkv(dtype, v_shape=(B, HKV, LK, 0))
    out, lse = attention(q, k, v, causal=causal, return_lse=True, backend=backend)
    assert out.shape == (B, HQ, LQ, 0) and lse.shape == (B, HQ, LQ) and lse.dtype == dtype
    _, lse_numpy = attention(q, k, v, causal=causal, return_lse=True, backend="numpy")
    _, lse_with_v = attention(q, k, arr(V_SHAPE, dtype), causal=causal, return_lse=True, backend=backend)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(lse, lse_numpy, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(lse, lse_with_v, rtol=rtol, atol=rtol)
    assert np.all(np.isfinite(lse))


@pytest.mark.parametrize("scale", [0, 0.0, -0.0, -0.5, -3, np.float32(-1.25), Fraction(-1, 3), 1e-30, -1e4],
                         ids=["0", "0.0", "-0.0", "-0.5", "-3", "np.float32", "Fraction", "tiny", "-1e4"])
@pytest.mark.parametrize("causal", [False, True])
def test_zero_and_negative_scale(backend, scale, causal):
    q, k, v = qkv(np.float64, q_shape=(LQ, D), k_shape=(LK, D), v_shape=(LK, DV))
    out, lse = attention(q, k, v, scale=scale, causal=causal, return_lse=True, backend=backend)
    ref_out, ref_lse = naive(q, k, v, float(scale), causal)
    np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-10, atol=1e-12)
    if scale == 0 and not causal:
        np.testing.assert_allclose(out, np.broadcast_to(v.mean(axis=0), out.shape), rtol=1e-12)
        np.testing.assert_allclose(lse, math.log(LK), rtol=1e-12)


@pytest.mark.parametrize("n", [np.int64(2), np.int32(1), np.uint8(3), np.intp(1024), 1, 1024],
                         ids=["np.int64", "np.int32", "np.uint8", "np.intp-1024", "1", "1024"])
def test_num_threads_integer_types_and_bounds(backend, n):
    q, k, v = qkv()
    expected = attention(q, k, v, backend=backend)
    np.testing.assert_array_equal(attention(q, k, v, num_threads=n, backend=backend), expected)
