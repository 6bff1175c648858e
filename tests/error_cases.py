"""The shared setting of the bad-input tests (test_errors.py, test_errors_options.py): one valid
GQA call and `rejected`, which expects an error raised before any kernel runs."""

from __future__ import annotations

import contextlib
import re

import numpy as np
import pytest

from fastattn import _backend, _reference


HAVE_CPP = _backend.cpp_available()
needs_cpp = pytest.mark.skipif(not HAVE_CPP, reason="the C++ extension is not built")

# A valid GQA call: q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv), out (B, Hq, Lq, Dv).
B, HQ, HKV, LQ, LK, D, DV = 2, 4, 2, 3, 5, 8, 6
Q_SHAPE, K_SHAPE, V_SHAPE, OUT_SHAPE = (B, HQ, LQ, D), (B, HKV, LK, D), (B, HKV, LK, DV), (B, HQ, LQ, DV)


def arr(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def qkv(dtype=np.float32, q_shape=Q_SHAPE, k_shape=K_SHAPE, v_shape=V_SHAPE):
    return arr(q_shape, dtype, 1), arr(k_shape, dtype, 2), arr(v_shape, dtype, 3)


def _no_kernel(*args, **kwargs):
    raise AssertionError("a backend ran: the error must be raised before the kernel call")


@contextlib.contextmanager
def rejected(exc, message):
    """Expect ``exc`` whose message contains the literal ``message``; no backend may run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_reference, "forward", _no_kernel)
        if HAVE_CPP:
            mp.setattr(_backend._core, "forward", _no_kernel)
        with pytest.raises(exc, match=re.escape(message)) as info:
            yield info
