"""The C++ extension as a backend: its import (or why it failed), the choice between it and the
NumPy fallback, and its two kernel calls, whose arguments are built here and nowhere else."""

from __future__ import annotations

import glob
import os
import warnings
from typing import Any, Optional

import numpy as np

from ._contract import Call, check_backend, plain_options

def _why_unavailable(exc: ImportError) -> str:
    """Why the extension did not import, in words a user can act on. A source tree imported
    without installing has no compiled _core at all (Python then speaks of a "partially
    initialized module ... circular import", which is not the problem)."""
    here = os.path.dirname(os.path.abspath(__file__))
    built = sorted(glob.glob(os.path.join(here, "_core.*")))
    built = [f for f in built if not f.endswith(".pyi")]
    if not built:
        return (f"fastattn's C++ extension is not built: there is no compiled _core module in {here}. "
                "Install fastattn with pip, which compiles it (`pip install .` in a clone: needs a C++17 "
                "compiler), rather than importing the source tree")
    return f"fastattn's C++ extension {built[0]} failed to load: {exc}"


try:
    from . import _core
except ImportError as exc:  # exercised by tests/test_reliability.py with a copy lacking _core
    _core = None
    IMPORT_ERROR: Optional[ImportError] = exc
    UNAVAILABLE: Optional[str] = _why_unavailable(exc)
else:
    IMPORT_ERROR = UNAVAILABLE = None

_warned_fallback = False


def cpp_available() -> bool:
    """True when the C++ extension imported."""
    return _core is not None


def require_core(what: str) -> Any:
    """The extension, or a RuntimeError saying that `what` needs it and why it is missing."""
    if _core is None:
        raise RuntimeError(f"{what} needs the C++ extension: {UNAVAILABLE}")
    return _core


def use_cpp(backend: Any) -> bool:
    """Whether a call with this `backend` argument runs the C++ kernel. "auto" falls back to
    NumPy with a one-time RuntimeWarning when the extension is missing; "cpp" raises then."""
    global _warned_fallback
    if check_backend(backend) == "numpy":
        return False
    if _core is not None:
        return True
    if backend == "cpp":
        require_core("backend='cpp'")
    if not _warned_fallback:
        _warned_fallback = True
        # stacklevel 3: the warning points at the caller of attention(), not at fastattn.
        warnings.warn(f"{UNAVAILABLE}. Using the NumPy backend: the same results, slower, with "
                      "an Lq×Lk matrix per chunk of rows", RuntimeWarning, stacklevel=3)
    return False


# -- the binding's arguments ------------------------------------------------------------------
# _core.forward(q, k, v, out, lse, lse_lo, options, num_threads) and _core.backward(dout, out, lse,
# lse_lo, dq, dk, dv, q, k, v, options, num_threads) take the call's normalised `Options` as one
# tuple, read by position in C++ (its order is _contract.AttentionOptions', the one list of them),
# and the thread count; both passed positionally: pybind11 matching keywords by name costs about
# 0.1 µs each. `args` below is that pair.

def binding_args(scale: float, causal: int, threads: int) -> tuple:
    """The binding's (options, num_threads) for a call with no option but `scale` and `causal` (its code)."""
    return (plain_options(scale, causal), threads)


def call_args(call: Call, threads: int) -> tuple:
    """The binding's (options, num_threads) for a normalised call."""
    return (call.options, threads)


def cpp_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray, lse: Optional[np.ndarray],
                args: tuple, lse_lo: Optional[np.ndarray] = None) -> None:
    """The forward kernel on 4-D arrays (see _contract.Call), into out (B, Hq, Lq, Dv), lse
    (B, Hq, Lq) or None, and lse_lo (lse's rounding error, with lse) or None; `args` from
    binding_args or call_args."""
    _core.forward(q, k, v, out, lse, lse_lo, *args)


def cpp_forward_paged(q: np.ndarray, k_pool: np.ndarray, v_pool: np.ndarray, out: np.ndarray,
                      lse: Optional[np.ndarray], table: np.ndarray, k_scale: Optional[np.ndarray],
                      v_scale: Optional[np.ndarray], args: tuple) -> None:
    """The forward kernel over a KVCache's block pools (num_blocks, Hkv, block_size, D | Dv) read
    through `table` (B, width) int32 (int8 pools with their float32 scales); `args` from call_args
    of a call whose kv_lengths are the sequences' lengths."""
    _core.forward_paged(q, k_pool, v_pool, out, lse, table, k_scale, v_scale, *args)


def cpp_backward(dout: np.ndarray, out: np.ndarray, lse: np.ndarray, dq: np.ndarray, dk: np.ndarray,
                 dv: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, args: tuple,
                 lse_lo: Optional[np.ndarray] = None) -> None:
    """The backward kernel on 4-D arrays, into dq, dk, dv (of q, k, v's shapes), P recomputed
    from lse (+ lse_lo, when given); `args` from call_args."""
    _core.backward(dout, out, lse, lse_lo, dq, dk, dv, q, k, v, *args)
