"""Bad input, continued (see test_errors.py): the options mask, kv_lengths/q_lengths, window,
alibi_slopes and softcap, refused with a message naming the argument, and their accepted forms
giving the same result as the canonical form.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from fastattn import attention
from error_cases import B, D, DV, HKV, HQ, K_SHAPE, LK, LQ, OUT_SHAPE, Q_SHAPE, V_SHAPE, needs_cpp, qkv, rejected
from oracle import assert_matches_oracle


@pytest.fixture(params=[pytest.param("cpp", marks=needs_cpp), "numpy"])
def backend(request):
    """Errors are raised before either backend runs; both are checked."""
    return request.param


# --- mask, lengths, window, ALiBi, softcap: bad input --------------------------------------

# The valid call of error_cases.py has Hq = 4 != Hkv = 2 (so a mask of Hkv heads is wrong) and Lq = 3 != Lk = 5
# (so a transposed mask is wrong). Every bad call names the argument and shows the value.
TARGET = (B, HQ, LQ, LK)  # what a mask must broadcast to
MASK_TYPE_MESSAGE = "must be bool (True = may attend) or floating (added to the scores)"


def qkv_2d(dtype=np.float32):
    return qkv(dtype, q_shape=(LQ, D), k_shape=(LK, D), v_shape=(LK, DV))


def qkv_3d(dtype=np.float32):
    return qkv(dtype, q_shape=(HQ, LQ, D), k_shape=(HKV, LK, D), v_shape=(HKV, LK, DV))


def qkv_5d(dtype=np.float32, batch=(2, 3)):
    return qkv(dtype, q_shape=batch + Q_SHAPE[1:], k_shape=batch + K_SHAPE[1:], v_shape=batch + V_SHAPE[1:])


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint64, np.complex64, np.complex128,
                                   object, str, "datetime64[s]"], ids=lambda t: np.dtype(t).name)
def test_mask_unsupported_dtype(backend, dtype):
    mask = np.ones(TARGET, dtype)
    with rejected(TypeError, f"mask.dtype (={mask.dtype}) {MASK_TYPE_MESSAGE}"):
        attention(*qkv(), mask=mask, backend=backend)


@pytest.mark.parametrize("mask, shown", [
    ("abc", "<U3"), ({"a": 1}, "object"), (1, "int64"), (1 + 2j, "complex128"), ([[1, 0, 1, 1, 0]], "int64"),
], ids=["str", "dict", "int", "complex", "int-list"])
def test_mask_not_a_bool_or_float_array(backend, mask, shown):
    with rejected(TypeError, f"mask.dtype (={shown}) {MASK_TYPE_MESSAGE}"):
        attention(*qkv(), mask=mask, backend=backend)


@pytest.mark.parametrize("name", ["mask", "kv_lengths", "q_lengths", "alibi_slopes"])
def test_option_ragged_list(backend, name):
    # Like q, k and v (test_non_array_input): the message names the argument, not NumPy's internals.
    ragged = {"mask": [[True] * LK, [True]], "kv_lengths": [[1], [1, 2]], "q_lengths": [[1], [1, 2]],
              "alibi_slopes": [[1.0] * HQ, [1.0]]}[name]
    with rejected(TypeError, f"{name} must be an array, got list"):
        attention(*qkv(), **{name: ragged}, backend=backend)


@pytest.mark.parametrize("dtype", [np.bool_, np.float32])
@pytest.mark.parametrize("shape", [
    (B, HQ, LQ, LK + 1),  # wrong Lk
    (B, HQ, LQ + 1, LK),  # wrong Lq
    (B, HQ, LK, LQ),  # transposed
    (B, HKV, LQ, LK),  # Hkv heads instead of Hq
    (3, HQ, LQ, LK),  # a batch of 3 for a batch of 2
    (1, B, HQ, LQ, LK),  # too many dimensions
    (B, HQ, LQ, LK, 1),  # a trailing axis
    (LK + 1,),
    (LQ, 1, LK),  # Lq where Hq goes (a (Lq, 1) mask meant for the last two axes, plus Lk)
], ids=["Lk", "Lq", "transposed", "Hkv", "batch-3", "5-D", "trailing-1", "1-D", "Lq-as-heads"])
def test_mask_wrong_shape(backend, dtype, shape):
    with rejected(ValueError, f"mask.shape (={shape}) must broadcast to (..., Hq, Lq, Lk) = {TARGET}"):
        attention(*qkv(), mask=np.ones(shape, dtype), backend=backend)


@pytest.mark.parametrize("make, shape", [
    (qkv_2d, (1, LQ, LK)),  # a head axis: a 2-D call has no head axis
    (qkv_2d, (HQ, LQ, LK)),
    (qkv_2d, (LK, LQ)),
    (qkv_2d, (LQ, LK, 1)),
    (qkv_3d, (1, HQ, LQ, LK)),  # a batch axis: a 3-D call has none
    (qkv_3d, (HKV, LQ, LK)),
    (qkv_5d, (2, HQ, LQ, LK)),  # batch (2, 3): axes align at the end, so this 2 meets the 3 ...
    (qkv_5d, (2, 1, 1, 1, 1, LK)),  # ... and there are two batch axes, not three
], ids=["2d-head-axis", "2d-heads", "2d-transposed", "2d-trailing", "3d-batch-axis", "3d-hkv", "5d-batch",
        "5d-6-D"])
def test_mask_wrong_shape_other_ranks(backend, make, shape):
    q, k, v = make()
    target = q.shape[:-1] + (LK,)
    axes = "(Lq, Lk)" if q.ndim == 2 else "(..., Hq, Lq, Lk)"
    with rejected(ValueError, f"mask.shape (={shape}) must broadcast to {axes} = {target}"):
        attention(q, k, v, mask=np.ones(shape, np.bool_), backend=backend)


LENGTHS = [("kv_lengths", "Lk", LK), ("q_lengths", "Lq", LQ)]
LENGTH_IDS = ["kv", "q"]


@pytest.mark.parametrize("value, shown", [
    (np.array([1.0, 2.0]), "float64"), (np.array([1, 2], np.float32), "float32"), ([1.0, 2.0], "float64"),
    (2.0, "float64"), (np.array([True, True]), "bool"), (True, "bool"), (np.array([1, 2], np.complex64), "complex64"),
    ("2", "<U1"), ({"a": 1}, "object"), (np.array([1, 2], object), "object"),
], ids=["float64", "float32", "float-list", "float", "bool-array", "bool", "complex", "str", "dict", "object"])
@pytest.mark.parametrize("name", ["kv_lengths", "q_lengths"])
def test_lengths_wrong_dtype(backend, name, value, shown):
    with rejected(TypeError, f"{name}.dtype (={shown}) must be an integer type"):
        attention(*qkv(), **{name: value}, backend=backend)


@pytest.mark.parametrize("make, shape, batch", [
    (qkv, (B + 1,), (B,)),
    (qkv, (B, 1), (B,)),
    (qkv, (1, B), (B,)),
    (qkv, (B, HQ), (B,)),  # per head: lengths are per sequence
    (qkv_5d, (2,), (2, 3)),  # the first batch axis only: broadcasting aligns trailing axes
    (qkv_5d, (3, 2), (2, 3)),
    (qkv_3d, (1,), ()),  # 3-D and 2-D calls have no batch axis: a scalar only
    (qkv_3d, (HQ,), ()),
    (qkv_2d, (1,), ()),
    (qkv_2d, (1, 1), ()),
], ids=["B+1", "(B,1)", "(1,B)", "per-head", "5d-first-axis", "5d-transposed", "3d-(1,)", "3d-heads", "2d-(1,)",
        "2d-(1,1)"])
@pytest.mark.parametrize("name", ["kv_lengths", "q_lengths"])
def test_lengths_wrong_shape(backend, name, make, shape, batch):
    with rejected(ValueError, f"{name}.shape (={shape}) must broadcast to the batch shape q.shape[:-3] (={batch})"):
        attention(*make(), **{name: np.ones(shape, np.int64)}, backend=backend)


@pytest.mark.parametrize("bad, where", [
    (lambda limit: [-1, 1], "[0] (=-1)"),
    (lambda limit: [1, -1], "[1] (=-1)"),
    (lambda limit: [limit, limit + 1], "[1] (={})"),
    (lambda limit: np.array([limit + 1, -1], np.int8), "[0] (={})"),  # the first bad index is named
    (lambda limit: np.array([1, 2**64 - 1], np.uint64), "[1] (=18446744073709551615)"),
    (lambda limit: np.array([2**63, 1], np.uint64), "[0] (=9223372036854775808)"),  # > int64: no wrap to < 0
    (lambda limit: np.array([np.iinfo(np.int64).min, 0]), "[0] (=-9223372036854775808)"),
    (lambda limit: 2**63, "[0] (=9223372036854775808)"),  # a Python int NumPy stores as uint64
], ids=["negative-0", "negative-1", "limit+1", "int8-first-bad", "uint64-max", "uint64-2**63", "int64-min",
        "python-2**63-scalar"])
@pytest.mark.parametrize("name, limit_name, limit", LENGTHS, ids=LENGTH_IDS)
def test_lengths_out_of_range(backend, name, limit_name, limit, bad, where):
    with rejected(ValueError, f"{name}{where.format(limit + 1)} must be in [0, {limit_name}={limit}]"):
        attention(*qkv(), **{name: bad(limit)}, backend=backend)


@pytest.mark.parametrize("name, limit_name, limit", LENGTHS, ids=LENGTH_IDS)
def test_lengths_out_of_range_multi_index(backend, name, limit_name, limit):
    lengths = np.zeros((2, 3), np.int64)
    lengths[1, 2] = limit + 1
    with rejected(ValueError, f"{name}[1, 2] (={limit + 1}) must be in [0, {limit_name}={limit}]"):
        attention(*qkv_5d(), **{name: lengths}, backend=backend)
    with rejected(ValueError, f"{name}[1, 0] (=-1) must be in [0, {limit_name}={limit}]"):  # (2, 1) broadcast
        attention(*qkv_5d(), **{name: np.array([[0], [-1]])}, backend=backend)


@pytest.mark.parametrize("value", [-1, 10**30, -(10**30)], ids=["-1", "10**30", "-10**30"])
@pytest.mark.parametrize("make", [qkv_2d, qkv_3d], ids=["2-D", "3-D"])
@pytest.mark.parametrize("name, limit_name, limit", LENGTHS, ids=LENGTH_IDS)
def test_lengths_scalar_out_of_range(backend, name, limit_name, limit, make, value):
    # A Python int beyond int64 is still an int whose value is out of range, not a dtype error
    # (compare test_scale_int_too_large_for_float).
    with rejected(ValueError, f"(={value}) must be in [0, {limit_name}={limit}]") as info:
        attention(*make(), **{name: value}, backend=backend)
    assert str(info.value).startswith(name)


@pytest.mark.parametrize("values, index", [([10**30, 1], 0), ([1, -(2**63) - 1], 1), ([2**64, 1], 0),
                                           ([2**63, 1], 0)],
                         ids=["10**30", "below-int64", "2**64", "2**63-with-int"])
@pytest.mark.parametrize("name, limit_name, limit", LENGTHS, ids=LENGTH_IDS)
def test_lengths_python_int_beyond_int64(backend, name, limit_name, limit, values, index):
    # NumPy stores these lists as object ([2**63, 1] as float64): still ints, out of range.
    with rejected(ValueError, f"{name}[{index}] (={values[index]}) must be in [0, {limit_name}={limit}]"):
        attention(*qkv(), **{name: values}, backend=backend)


@pytest.mark.parametrize("window", [3, 3.0, "ab", "a", (1,), (1, 2, 3), [], [1, 2, 3], {1, 2},
                                    {0: 1, 1: 2}, np.array([1, 2]), range(2), b"\x01\x02"],
                         ids=["int", "float", "str-of-2", "str", "1-tuple", "3-tuple", "empty-list",
                              "3-list", "set", "dict", "array", "range", "bytes"])
def test_window_not_a_pair(backend, window):
    with rejected(TypeError, f"window must be a (left, right) pair of ints or None, got {window!r}"):
        attention(*qkv(), window=window, backend=backend)


@pytest.mark.parametrize("side, shown", [
    (2.0, "float"), (np.float64(2), "float64"), (np.float32(2), "float32"), ("1", "str"), (1 + 0j, "complex"),
    ([1], "list"), (Fraction(1), "Fraction"), (True, "bool"), (False, "bool"), (np.True_, "bool"),
], ids=["float", "np.float64", "np.float32", "str", "complex", "list", "Fraction", "True", "False", "np.bool_"])
@pytest.mark.parametrize("i, name", [(0, "left"), (1, "right")])
def test_window_side_not_an_int(backend, i, name, side, shown):
    window = [1, 1]
    window[i] = side
    with rejected(TypeError, f"window[{i}] ({name}) must be an int or None, got {shown}"):
        attention(*qkv(), window=tuple(window), backend=backend)


@pytest.mark.parametrize("side", [-1, np.int64(-3), np.int8(-1), -(10**30)],
                         ids=["-1", "np.int64", "np.int8", "-10**30"])
@pytest.mark.parametrize("i, name", [(0, "left"), (1, "right")])
def test_window_side_negative(backend, i, name, side):
    window = [None, None]
    window[i] = side
    with rejected(ValueError, f"window[{i}] ({name}) (={int(side)}) must be >= 0, or None for unbounded"):
        attention(*qkv(), window=window, backend=backend)


@pytest.mark.parametrize("slopes, shown", [
    ("abc", "<U3"), (["a"] * HQ, "<U1"), (np.ones(HQ, np.complex64), "complex64"), ([1j] * HQ, "complex128"),
    (np.ones(HQ, bool), "bool"), (True, "bool"), (np.ones(HQ, object), "object"), ({"a": 1}, "object"),
], ids=["str", "str-list", "complex64", "complex-list", "bool-array", "bool", "object", "dict"])
def test_alibi_wrong_dtype(backend, slopes, shown):
    with rejected(TypeError, f"alibi_slopes.dtype (={shown}) must be a real type"):
        attention(*qkv(), alibi_slopes=slopes, backend=backend)


@pytest.mark.parametrize("shape", [(HQ + 1,), (HKV,), (3, HQ), (B, HQ, 1), (HQ, 1), (B, 1, HQ), (1, B, HQ)],
                         ids=["Hq+1", "Hkv", "batch-3", "trailing-1", "(Hq,1)", "(B,1,Hq)", "3-D"])
def test_alibi_wrong_shape(backend, shape):
    with rejected(ValueError, f"alibi_slopes.shape (={shape}) must be (Hq,) = ({HQ},) or broadcast to (..., Hq) = "
                              f"({B}, {HQ})"):
        attention(*qkv(), alibi_slopes=np.ones(shape), backend=backend)


@pytest.mark.parametrize("shape", [(2,), (1, 1), (LQ,)], ids=["(2,)", "(1,1)", "(Lq,)"])
def test_alibi_wrong_shape_2d(backend, shape):
    # A 2-D call is one head: a scalar or a (1,) array.
    with rejected(ValueError, f"alibi_slopes.shape (={shape}) must be ") as info:
        attention(*qkv_2d(), alibi_slopes=np.ones(shape), backend=backend)
    assert "()" in str(info.value)


@pytest.mark.parametrize("bad, shown", [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf"),
                                        (np.float32("nan"), "nan")], ids=["nan", "inf", "-inf", "float32-nan"])
def test_alibi_not_finite(backend, bad, shown):
    slopes = np.full(HQ, 0.5, np.asarray(bad).dtype)
    slopes[2] = bad
    with rejected(ValueError, "must be finite") as info:
        attention(*qkv(), alibi_slopes=slopes, backend=backend)
    message = str(info.value)
    assert message.startswith("alibi_slopes") and f"(={shown})" in message, message


def test_alibi_int_too_large_for_float(backend):
    # Like scale=10**400: a real number that is not finite as a float, hence a ValueError.
    with rejected(ValueError, "must be finite") as info:
        attention(*qkv(), alibi_slopes=[0.5, 0.5, 10**400, 0.5], backend=backend)
    assert str(info.value).startswith("alibi_slopes")


@pytest.mark.parametrize("softcap, shown", [
    (0, "0"), (0.0, "0.0"), (-0.0, "-0.0"), (-1, "-1"), (-1e-3, "-0.001"), (np.float32(-2), "-2.0"),
    (math.nan, "nan"), (np.float64("nan"), "nan"), (math.inf, "inf"), (-math.inf, "-inf"), (np.float32("inf"), "inf"),
    (Fraction(-1, 3), "-1/3"), (np.int64(0), "0"),
], ids=["0", "0.0", "-0.0", "-1", "-1e-3", "np.float32--2", "nan", "np.nan", "inf", "-inf", "np.float32-inf",
        "Fraction", "np.int64-0"])
def test_softcap_not_positive_finite(backend, softcap, shown):
    with rejected(ValueError, f"softcap (={shown}) must be a finite number > 0, or None"):
        attention(*qkv(), softcap=softcap, backend=backend)


@pytest.mark.parametrize("softcap", [10**400, -(10**400)], ids=["10**400", "-10**400"])
def test_softcap_int_too_large_for_float(backend, softcap):
    with rejected(ValueError, "must be a finite number > 0, or None") as info:
        attention(*qkv(), softcap=softcap, backend=backend)
    assert str(info.value).startswith("softcap (=")


@pytest.mark.parametrize("softcap", ["5", True, False, np.True_, 1 + 0j, np.complex64(1), [5.0], np.array(5.0)],
                         ids=["str", "True", "False", "np.bool_", "complex", "np.complex64", "list", "0-D-array"])
def test_softcap_wrong_type(backend, softcap):
    with rejected(TypeError, f"softcap must be a real number or None, got {type(softcap).__name__}"):
        attention(*qkv(), softcap=softcap, backend=backend)


# --- mask, lengths, window, ALiBi, softcap: accepted forms ---------------------------------

def assert_same_as(backend, args, given, canonical, changes=True):
    """attention(*args, **given) equals attention(*args, **canonical): exactly on `backend`, and
    closely on NumPy. With `changes`, it must also differ from the call without these options, so
    that an option silently ignored fails."""
    got = attention(*args, return_lse=True, backend=backend, **given)
    want = attention(*args, return_lse=True, backend=backend, **canonical)
    ref = attention(*args, return_lse=True, backend="numpy", **canonical)
    rtol = 1e-12 if got[0].dtype == np.float64 else 2e-6
    for g, w, r in zip(got, want, ref):
        np.testing.assert_array_equal(g, w)
        np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol)
    if changes:
        plain = attention(*args, return_lse=True, backend=backend)
        assert not all(np.array_equal(g, p) for g, p in zip(got, plain)), "the option changed nothing"


def bool_mask(shape, seed=4):
    mask = np.random.default_rng(seed).random(shape) < 0.6
    if shape and shape[-1] > 1:
        mask[..., 0] = True  # no row fully masked
    elif shape:  # a per-row mask: some rows see nothing, others everything
        mask.flat[0], mask.flat[-1] = False, True
    return mask


@pytest.mark.parametrize("shape", [(LK,), (LQ, LK), (LQ, 1), (1, LK), ()], ids=["(Lk,)", "(Lq,Lk)", "(Lq,1)",
                                                                                  "(1,Lk)", "scalar"])
def test_mask_2d_accepted_shapes(backend, shape):
    args = qkv_2d()
    mask = bool_mask(shape) if shape else np.False_
    full = np.ascontiguousarray(np.broadcast_to(mask, (LQ, LK)))
    assert_same_as(backend, args, dict(mask=mask), dict(mask=full))
    additive = np.where(mask, 0.5, -np.inf)  # float64: converted once to float32
    assert_same_as(backend, args, dict(mask=additive), dict(mask=np.ascontiguousarray(
        np.broadcast_to(additive, (LQ, LK)), np.float32)))


@pytest.mark.parametrize("make, shape", [
    (qkv_3d, (HQ, LQ, LK)), (qkv_3d, (HQ, 1, LK)), (qkv_3d, (LQ, LK)), (qkv_3d, (LK,)),
    (qkv, (LK,)), (qkv, (HQ, 1, LK)), (qkv, (B, 1, 1, LK)), (qkv, (1, HQ, LQ, LK)), (qkv, (B, 1, LQ, 1)),
    (qkv_5d, (2, 1, HQ, LQ, LK)),  # broadcast batch axes that do not merge into one stride
    (qkv_5d, (3, HQ, LQ, LK)),
    (qkv_5d, (2, 3, 1, 1, LK)),
], ids=["3d-full", "3d-key-pad", "3d-shared", "3d-keys", "4d-keys", "4d-head-key", "4d-key-pad", "4d-per-head",
        "4d-query-only", "5d-first-batch", "5d-last-batch", "5d-key-pad"])
def test_mask_accepted_shapes(backend, make, shape):
    q, k, v = make()
    mask = bool_mask(shape)
    full = np.ascontiguousarray(np.broadcast_to(mask, q.shape[:-1] + (LK,)))
    assert_same_as(backend, (q, k, v), dict(mask=mask), dict(mask=full))


@pytest.mark.parametrize("layout", ["reversed", "transposed", "fortran", "unaligned", "read-only", "list"])
def test_mask_accepted_layouts(backend, layout):
    args = qkv()
    mask = np.where(bool_mask(TARGET), np.float32(0.25), np.float32(-np.inf))
    if layout == "reversed":
        given = mask[::-1, ::-1, ::-1, ::-1].copy()[::-1, ::-1, ::-1, ::-1]
    elif layout == "transposed":
        given = np.ascontiguousarray(mask.swapaxes(-1, -2)).swapaxes(-1, -2)
    elif layout == "fortran":
        given = np.asfortranarray(mask)
    elif layout == "unaligned":  # strides not a multiple of the itemsize
        record = np.zeros(TARGET, dtype=[("flag", "?"), ("value", "f4")])
        record["value"] = mask
        given = record["value"]
    elif layout == "read-only":
        given = mask.copy()
        given.flags.writeable = False
    else:
        given = mask.tolist()  # float64 after np.asarray
    assert_same_as(backend, args, dict(mask=given), dict(mask=mask))


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.longdouble, "bfloat16"], ids=str)
def test_mask_float_dtypes_are_converted(backend, dtype):
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    args = qkv()
    mask = np.where(bool_mask((B, 1, LQ, LK)), 0.5, -np.inf).astype(dtype)  # exact in every dtype
    assert_same_as(backend, args, dict(mask=mask), dict(mask=mask.astype(np.float32)))


@pytest.mark.parametrize("mask_dtype", [np.float32, np.float16, np.float64, np.bool_])
def test_float16_input_with_float32_mask(backend, mask_dtype):
    q, k, v = qkv(np.float16)
    mask = bool_mask((B, 1, LQ, LK))
    if mask_dtype != np.bool_:
        mask = np.where(mask, np.random.default_rng(5).standard_normal(mask.shape), -np.inf).astype(mask_dtype)
    out, lse = attention(q, k, v, mask=mask, return_lse=True, backend=backend)
    assert out.dtype == np.float16 and lse.dtype == np.float32  # lse in the compute dtype
    assert_matches_oracle(q, k, v, out, lse, mask=mask)
    numpy_ref = attention(q, k, v, mask=mask, return_lse=True, backend="numpy")
    for x, y in zip((out, lse), numpy_ref):
        np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), rtol=2e-3, atol=2e-3)


def test_bfloat16_input_with_every_option(backend):
    bfloat16 = pytest.importorskip("ml_dtypes").bfloat16
    q, k, v = qkv(bfloat16)
    options = dict(mask=np.where(bool_mask((B, 1, LQ, LK)), 0.0, -np.inf).astype(np.float32), kv_lengths=[LK, 4],
                   q_lengths=[LQ, 2], window=(2, None), alibi_slopes=[0.5, 0.25, 0.125, 0.0625], softcap=5,
                   causal="lower_right")
    out, lse = attention(q, k, v, return_lse=True, backend=backend, **options)
    assert out.dtype == bfloat16 and lse.dtype == np.float32 and out.shape == OUT_SHAPE
    assert_matches_oracle(q, k, v, out, lse, **options)
    plain = attention(q, k, v, mask=np.ones(LK, bool), backend=backend)
    assert plain.dtype == bfloat16


@pytest.mark.parametrize("name, limit", [("kv_lengths", LK), ("q_lengths", LQ)], ids=LENGTH_IDS)
@pytest.mark.parametrize("form", ["list", "int32", "uint8", "uint64", "int64-(1,)", "scalar", "np.int16-scalar",
                                  "read-only"])
def test_lengths_accepted_forms(backend, name, limit, form):
    per_sequence = np.array([limit - 1, 2], np.int64)  # the canonical form: (B,) int64
    given, canonical = {
        "list": ([limit - 1, 2], per_sequence),
        "int32": (per_sequence.astype(np.int32), per_sequence),
        "uint8": (per_sequence.astype(np.uint8), per_sequence),
        "uint64": (per_sequence.astype(np.uint64), per_sequence),
        "read-only": (np.broadcast_to(per_sequence[::-1].copy()[::-1], (B,)), per_sequence),
        "int64-(1,)": (np.array([2]), np.full(B, 2, np.int64)),  # broadcast over the batch
        "scalar": (2, np.full(B, 2, np.int64)),
        "np.int16-scalar": (np.int16(2), np.full(B, 2, np.int64)),
    }[form]
    assert_same_as(backend, qkv(), {name: given}, {name: canonical})


@pytest.mark.parametrize("name, limit", [("kv_lengths", LK), ("q_lengths", LQ)], ids=LENGTH_IDS)
def test_lengths_bounds_accepted(backend, name, limit):
    args = qkv()
    out, lse = attention(*args, **{name: [0, limit]}, return_lse=True, backend=backend)
    plain_out, plain_lse = attention(*args, return_lse=True, backend=backend)
    np.testing.assert_array_equal(out[1], plain_out[1])  # the full length: as without lengths
    np.testing.assert_array_equal(out[0], 0)  # length 0: nothing to see, or no row
    assert np.all(np.isneginf(lse[0]))


@pytest.mark.parametrize("make", [qkv_2d, qkv_3d], ids=["2-D", "3-D"])
@pytest.mark.parametrize("n", [3, np.int32(3), np.uint64(3), np.array(3)], ids=["int", "np.int32", "np.uint64", "0-D"])
def test_lengths_scalar_for_2d_and_3d(backend, make, n):
    q, k, v = make()
    # kv_lengths = 3 is the call with only the first 3 keys.
    out, lse = attention(q, k, v, kv_lengths=n, return_lse=True, backend=backend)
    want, want_lse = attention(q, k[..., :3, :], v[..., :3, :], return_lse=True, backend="numpy")
    np.testing.assert_allclose(out, want, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(lse, want_lse, rtol=2e-6, atol=2e-6)
    # q_lengths = 2: the first 2 rows as without lengths, the others zero with lse -inf.
    out, lse = attention(q, k, v, q_lengths=n - 1, return_lse=True, backend=backend)
    want, want_lse = attention(q, k, v, return_lse=True, backend="numpy")
    np.testing.assert_allclose(out[..., :2, :], want[..., :2, :], rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(lse[..., :2], want_lse[..., :2], rtol=2e-6, atol=2e-6)
    assert np.all(out[..., 2:, :] == 0) and np.all(np.isneginf(lse[..., 2:]))


@pytest.mark.parametrize("given, canonical, changes", [
    ((None, None), None, False),
    ([3, 0], (3, 0), True),
    ((np.int64(1), np.uint8(0)), (1, 0), True),
    ((np.intp(0), None), (0, None), True),
    ([None, 1], (None, 1), True),
    ((10**30, 10**30), None, False),  # beyond any length: unbounded
    ((10**30, 0), (None, 0), True),
    ((2**63, np.uint64(2**64 - 1)), None, False),
    ((LK, LK), None, False),
], ids=["None-None", "list", "numpy-ints", "np.intp", "list-None", "10**30", "10**30-left", "beyond-int64", "Lk"])
def test_window_accepted_forms(backend, given, canonical, changes):
    assert_same_as(backend, qkv(), dict(window=given), dict(window=canonical), changes=changes)


@pytest.mark.parametrize("causal", [False, True, "lower_right"])
def test_window_huge_equals_no_window_with_causal(backend, causal):
    assert_same_as(backend, qkv(), dict(window=(10**30, 10**30), causal=causal), dict(causal=causal), changes=False)


def test_window_right_zero_is_causal(backend):
    q, k, v = qkv()
    got = attention(q, k, v, window=(None, 0), backend=backend)
    np.testing.assert_allclose(got, attention(q, k, v, causal=True, backend="numpy"), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("given, canonical", [
    ([0.5, 0.25, 0.125, 0.0625], np.array([0.5, 0.25, 0.125, 0.0625])),
    ([1, 0, 2, 3], np.array([1.0, 0.0, 2.0, 3.0])),
    (np.array([1, 0, 2, 3], np.uint8), np.array([1.0, 0.0, 2.0, 3.0])),
    (np.float32([0.3, 0.2, 0.1, -0.1]), np.float32([0.3, 0.2, 0.1, -0.1]).astype(np.float64)),
    (0.5, np.full(HQ, 0.5)),
    (1, np.full(HQ, 1.0)),
    (np.full((1, HQ), 0.5), np.full(HQ, 0.5)),
    (np.full((B, 1), 0.5), np.full(HQ, 0.5)),
], ids=["float-list", "int-list", "uint8", "float32", "scalar", "int-scalar", "(1,Hq)", "(B,1)"])
def test_alibi_accepted_forms(backend, given, canonical):
    assert_same_as(backend, qkv(), dict(alibi_slopes=given), dict(alibi_slopes=canonical))


@pytest.mark.parametrize("causal", [False, "lower_right"])
def test_alibi_per_batch_slopes(backend, causal):
    # (B, Hq) slopes: sequence b uses row b, the same as calling each sequence alone.
    q, k, v = qkv()
    slopes = np.array([[0.5, 0.25, 0.125, 0.0625], [1.0, 0.0, -0.5, 2.0]])
    out, lse = attention(q, k, v, alibi_slopes=slopes, causal=causal, return_lse=True, backend=backend)
    for b in range(B):
        want, want_lse = attention(q[b], k[b], v[b], alibi_slopes=slopes[b], causal=causal, return_lse=True,
                                   backend="numpy")
        np.testing.assert_allclose(out[b], want, rtol=2e-6, atol=2e-6)
        np.testing.assert_allclose(lse[b], want_lse, rtol=2e-6, atol=2e-6)
    first_row_for_all = attention(q, k, v, alibi_slopes=slopes[0], causal=causal, backend=backend)
    assert not np.allclose(out[1], first_row_for_all[1])  # row b really is per sequence


@pytest.mark.parametrize("make", [qkv_2d, qkv_3d], ids=["2-D", "3-D"])
def test_alibi_scalar_and_one_element_for_few_dims(backend, make):
    args = make()
    heads = 1 if args[0].ndim == 2 else HQ
    assert_same_as(backend, args, dict(alibi_slopes=0.5), dict(alibi_slopes=np.full(heads, 0.5)))
    assert_same_as(backend, args, dict(alibi_slopes=[0.5]), dict(alibi_slopes=np.full(heads, 0.5)))


@pytest.mark.parametrize("softcap", [5, np.float32(5), np.int64(5), np.float16(5), Fraction(5), np.uint8(5)],
                         ids=["int", "np.float32", "np.int64", "np.float16", "Fraction", "np.uint8"])
def test_softcap_accepted_types(backend, softcap):
    args = qkv(np.float64)
    args = (args[0] * 3, args[1], args[2])  # scores of several units: the cap matters
    assert_same_as(backend, args, dict(softcap=softcap), dict(softcap=5.0))


@pytest.mark.parametrize("dtype, softcap", [
    (np.float32, 1e39), (np.float32, 1e300), (np.float32, 10**300), (np.float16, 1e39), (np.float64, 1e300),
    (np.float64, 1e308), (np.float64, 10**308),
], ids=["f32-1e39", "f32-1e300", "f32-int-10**300", "f16-1e39", "f64-1e300", "f64-1e308", "f64-int-10**308"])
def test_softcap_huge_finite_is_no_cap(backend, dtype, softcap):
    # A finite softcap beyond the compute dtype's range caps nothing: the result is the uncapped
    # one (not NaN, not uniform attention from scores / softcap rounding to 0).
    q, k, v = qkv(dtype)
    out, lse = attention(q, k, v, softcap=softcap, return_lse=True, backend=backend)
    want, want_lse = attention(q, k, v, return_lse=True, backend=backend)
    tol = {np.float16: 2e-3, np.float32: 2e-6, np.float64: 1e-9}[dtype]
    np.testing.assert_allclose(out.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)
    np.testing.assert_allclose(lse.astype(np.float64), want_lse.astype(np.float64), rtol=tol, atol=tol)
