"""Accuracy of the kernel's vectorised exp and tanh on every ISA (the bounds in math-inl.hpp)."""

from __future__ import annotations

import numpy as np
import pytest

from fastattn import _backend

pytestmark = pytest.mark.skipif(not _backend.cpp_available(), reason="C++ extension not built")


def kernel(fn, x):
    return _backend._core.math(fn, x)


def ulp_error(got, x, reference):
    want = reference(x.astype(np.longdouble))
    spacing = np.spacing(np.abs(want.astype(got.dtype)))
    return np.abs(got.astype(np.longdouble) - want) / spacing.astype(np.longdouble)


# (dtype, lower bound of the accurate range, upper bound)
EXP_RANGES = [(np.float32, -87.33, 88.0), (np.float64, -708.39, 709.0)]
# exp2 is the kernel's softmax exp: exact 0 below 2^lo, accurate from there to 2^hi.
EXP2_RANGES = [(np.float32, -125.0, 127.0), (np.float64, -1021.0, 1023.0)]


# measured: exp 0.98 (float32), 1.15 (float64); exp2 see math-inl.hpp
@pytest.mark.parametrize("fn, reference, dtype, lo, hi",
                         [("exp", np.exp, *r) for r in EXP_RANGES] + [("exp2", np.exp2, *r) for r in EXP2_RANGES])
def test_exp_accuracy(isa, fn, reference, dtype, lo, hi):
    x = np.concatenate([np.linspace(lo, hi, 200_001), np.linspace(-1, 1, 100_001), [0.0, -0.0]]).astype(dtype)
    got = kernel(fn, x)
    assert got.dtype == dtype
    assert float(ulp_error(got, x, reference).max()) <= 2


@pytest.mark.parametrize("dtype, lo, hi", EXP_RANGES)
def test_exp_special_values(isa, dtype, lo, hi):
    x = np.array([-np.inf, lo * 1.01, -1e30, np.nan, 0.0, 1.0] + [0.5] * 13, dtype=dtype)  # odd length: tail path
    got = kernel("exp", x)
    assert got[0] == 0 and got[1] == 0 and got[2] == 0  # below the range: exactly 0, so masked scores vanish
    assert np.isnan(got[3])  # NaN propagates
    assert got[4] == 1
    np.testing.assert_allclose(got[5:], np.exp(x[5:].astype(np.float64)), rtol=2 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype, lo, hi", EXP2_RANGES)
def test_exp2_special_values(isa, dtype, lo, hi):
    below = np.nextafter(dtype(lo), dtype(-np.inf))
    x = np.array([-np.inf, below, -1e30, np.nan, 0.0, 1.0, lo] + [0.5] * 12, dtype=dtype)  # odd length: tail path
    got = kernel("exp2", x)
    assert got[0] == 0 and got[1] == 0 and got[2] == 0  # below the range: exactly 0, so masked scores vanish
    assert np.isnan(got[3])  # NaN propagates
    assert got[4] == 1 and got[5] == 2
    assert got[6] == np.exp2(dtype(lo))  # the bound itself is a normal number, exactly
    np.testing.assert_allclose(got[7:], np.exp2(x[7:].astype(np.float64)), rtol=2 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_accuracy(isa, dtype):
    tiny = np.geomspace(1e-30, 1, 2001)
    x = np.concatenate([np.linspace(-20, 20, 200_001), np.linspace(-1, 1, 100_001), tiny, -tiny]).astype(dtype)
    got = kernel("tanh", x)
    assert float(ulp_error(got, x, np.tanh).max()) <= 4  # measured: 2.97 (float32), 2.99 (float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_special_values(isa, dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, 1e30, -1e30, 700.0], dtype=dtype)
    got = kernel("tanh", x)
    assert np.isnan(got[0])
    np.testing.assert_array_equal(got[1:], [1, -1, 0, 1, -1, 1])
