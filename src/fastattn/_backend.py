"""Import of the C++ extension (or the reason it is missing), and the num_threads check."""

from __future__ import annotations

import operator
from typing import Any, Optional

import numpy as np

try:
    from . import _core
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _core = None
    IMPORT_ERROR: Optional[ImportError] = exc
else:
    IMPORT_ERROR = None

MAX_THREADS = 1024


def cpp_available() -> bool:
    """True when the C++ extension imported."""
    return _core is not None


def require_core(what: str) -> Any:
    """The extension, or a RuntimeError saying that `what` needs it and why it is missing."""
    if _core is None:
        raise RuntimeError(f"{what} needs fastattn's C++ extension, which failed to import: {IMPORT_ERROR}")
    return _core


def _check_num_threads(num_threads: Any) -> int:
    """A per-call num_threads as the kernel takes it: 0 means the default."""
    if num_threads is None:
        return 0
    if isinstance(num_threads, (bool, np.bool_)):
        raise TypeError("num_threads must be an int or None, got bool")
    try:
        n = operator.index(num_threads)
    except TypeError:
        raise TypeError(f"num_threads must be an int or None, got {type(num_threads).__name__}") from None
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"num_threads (={n}) must be between 1 and {MAX_THREADS}, or None")
    return n
