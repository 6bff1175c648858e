"""Import of the C++ extension (or the reason it is missing), ISA selection, show_config()."""

from __future__ import annotations

import operator
import os
from importlib import metadata
from typing import Any, Optional

import numpy as np

try:
    from . import _core
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _core = None
    IMPORT_ERROR: Optional[ImportError] = exc
else:
    IMPORT_ERROR = None

ISA_ENV = "FASTATTN_ISA"
MAX_THREADS = 1024


def cpp_available() -> bool:
    """True when the C++ extension imported."""
    return _core is not None


def _require_core(what: str) -> Any:
    if _core is None:
        raise RuntimeError(f"{what} needs fastattn's C++ extension, which failed to import: {IMPORT_ERROR}")
    return _core


def set_isa(name: str) -> str:
    """Select the kernel's instruction set for every later call; returns the previous one.

    ``name`` is one of ``fastattn.show_config()["supported_isas"]`` (e.g. ``"scalar"``,
    ``"avx2"``, ``"avx512"``, ``"neon"``) or ``"auto"`` for the best one. An ISA this CPU
    cannot run, or one not compiled in, raises ``ValueError`` listing what is available.
    The environment variable ``FASTATTN_ISA`` does the same at import.
    """
    core = _require_core("set_isa")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    previous = core.selected_isa()
    try:
        core.select_isa(name)
    except ValueError as exc:
        raise ValueError(f"name (={name!r}): {exc}") from None
    return previous


def get_isa() -> Optional[str]:
    """The ISA the C++ kernel runs with, or None without the extension."""
    return _core.selected_isa() if _core is not None else None


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


_chosen_num_threads: Optional[int] = None  # set_num_threads' value, for the NumPy-only build


def set_num_threads(n: Optional[int]) -> Optional[int]:
    """Set how many threads a call with ``num_threads=None`` uses, from any thread of the process;
    returns the previous setting (None = never set).

    ``n`` is an int in [1, 1024], or None to go back to the OpenMP default (``OMP_NUM_THREADS``,
    else one thread per processor). The OpenMP limit of the calling thread stays an upper bound:
    ``OMP_NUM_THREADS`` and ``threadpoolctl.threadpool_limits(...)`` (which sets that limit with
    ``omp_set_num_threads``) cap it, and so does the number of processors. A per-call
    ``num_threads=`` overrides all of this. Results never depend on the thread count.

    In a thread pool of W workers each calling fastattn, ``set_num_threads(max(1, cores // W))``
    keeps the process at one thread per core. (A ``threadpool_limits`` block entered in the main
    thread does not reach the pool's worker threads: OpenMP limits are per thread.)
    """
    global _chosen_num_threads
    threads = _check_num_threads(n)
    previous = _chosen_num_threads
    if _core is not None:
        _core.set_default_num_threads(threads)
    _chosen_num_threads = threads or None
    return previous


def get_num_threads() -> int:
    """The number of threads a call with ``num_threads=None`` uses from this thread now (small calls
    use fewer: a thread is only opened for enough work). 1 without OpenMP or the extension."""
    return int(_core.default_num_threads()) if _core is not None else 1


def _apply_isa_env() -> None:
    requested = os.environ.get(ISA_ENV, "").strip()
    if not requested or _core is None:
        return
    try:
        _core.select_isa(requested)
    except ValueError as exc:
        raise ValueError(f"{ISA_ENV}={requested!r}: {exc}") from None


def show_config() -> dict:
    """Print and return the build and runtime configuration.

    Keys: ``version``, ``backend`` ("cpp" or "numpy"), ``compiled_isas``, ``supported_isas``
    (compiled and runnable on this CPU), ``selected_isa``, ``openmp`` (bool), ``num_threads``
    (what a call with ``num_threads=None`` uses from this thread, as ``get_num_threads()``), and ``import_error`` when the extension is missing.
    """
    config: dict = {"version": metadata.version("fastattn"), "backend": "cpp" if _core else "numpy"}
    if _core is not None:
        config.update(
            compiled_isas=list(_core.compiled_isas()),
            supported_isas=list(_core.supported_isas()),
            selected_isa=_core.selected_isa(),
            openmp=bool(_core.have_openmp()),
            num_threads=int(_core.default_num_threads()),
        )
    else:
        config.update(compiled_isas=[], supported_isas=[], selected_isa=None, openmp=False,
                      num_threads=1, import_error=str(IMPORT_ERROR))
    width = max(len(key) for key in config)
    for key, value in config.items():
        if isinstance(value, list):
            value = ", ".join(value) or "-"
        elif isinstance(value, bool):
            value = "on" if value else "off"
        print(f"{key:<{width}}  {value}")
    return config


_apply_isa_env()
