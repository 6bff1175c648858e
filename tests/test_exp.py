"""Accuracy of the kernel's vectorised exp on every ISA (the bound documented in exp-inl.hpp)."""

from __future__ import annotations

import numpy as np
import pytest

from fastattn import _backend

pytestmark = pytest.mark.skipif(not _backend.cpp_available(), reason="C++ extension not built")

# (dtype, lower bound of the accurate range, upper bound, documented max ulp error)
CASES = [(np.float32, -87.33, 88.0, 2), (np.float64, -708.39, 709.0, 2)]


def ulp_error(got, x):
    want = np.exp(x.astype(np.longdouble))
    spacing = np.spacing(np.abs(want.astype(got.dtype)))
    return np.abs(got.astype(np.longdouble) - want) / spacing.astype(np.longdouble)


@pytest.mark.parametrize("dtype, lo, hi, max_ulp", CASES)
def test_exp_accuracy(isa, dtype, lo, hi, max_ulp):
    x = np.concatenate([np.linspace(lo, hi, 200_001), np.linspace(-1, 1, 100_001), [0.0, -0.0]]).astype(dtype)
    got = _backend._core.exp(x)
    assert got.dtype == dtype
    assert float(ulp_error(got, x).max()) <= max_ulp


@pytest.mark.parametrize("dtype, lo, hi, max_ulp", CASES)
def test_exp_special_values(isa, dtype, lo, hi, max_ulp):
    x = np.array([-np.inf, lo * 1.01, -1e30, np.nan, 0.0, 1.0] + [0.5] * 13, dtype=dtype)  # odd length: tail path
    got = _backend._core.exp(x)
    assert got[0] == 0 and got[1] == 0 and got[2] == 0  # below the range: exactly 0, so masked scores vanish
    assert np.isnan(got[3])  # NaN propagates
    assert got[4] == 1
    np.testing.assert_allclose(got[5:], np.exp(x[5:].astype(np.float64)), rtol=2 * np.finfo(dtype).eps)
