"""Process-wide settings of the C++ kernel: ISA selection (also from FASTATTN_ISA at import), the
default thread count, and show_config()."""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any, Dict, Optional

from . import _backend
from . import _contract
from ._contract import check_num_threads

ISA_ENV = "FASTATTN_ISA"


def set_isa(name: str) -> str:
    """Select the kernel's instruction set for every later call; returns the previous one.

    ``name`` is one of ``fastattn.show_config()["supported_isas"]`` (e.g. ``"scalar"``,
    ``"avx2"``, ``"avx512"``, ``"neon"``) or ``"auto"`` for the best one. An ISA this CPU
    cannot run, or one not compiled in, raises ``ValueError`` listing what is available.
    The environment variable ``FASTATTN_ISA`` does the same at import.
    """
    core = _backend.require_core("set_isa")
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
    core = _backend._core
    return core.selected_isa() if core is not None else None


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
    threads = check_num_threads(n)
    previous = _chosen_num_threads
    if _backend._core is not None:
        _backend._core.set_default_num_threads(threads)
    _chosen_num_threads = threads or None
    return previous


def get_num_threads() -> int:
    """The number of threads a call with ``num_threads=None`` uses from this thread now (small calls
    use fewer: a thread is only opened for enough work). 1 without OpenMP or the extension."""
    core = _backend._core
    return int(core.default_num_threads()) if core is not None else 1


def _apply_isa_env() -> None:
    requested = os.environ.get(ISA_ENV, "").strip()
    if not requested or _backend._core is None:
        return
    try:
        _backend._core.select_isa(requested)
    except ValueError as exc:
        raise ValueError(f"{ISA_ENV}={requested!r}: {exc}") from None


class Config(Dict[str, Any]):
    """show_config()'s dict, whose repr (and str) is the table ``key  value``, one line a key:
    a REPL or notebook shows it once; ``print(show_config())`` prints it. Any key is shown: a list
    as its items, a dict as ``key value`` pairs, a bool as on/off."""

    def __repr__(self) -> str:
        width = max((len(key) for key in self), default=0)
        return "\n".join(f"{key:<{width}}  {_shown(value)}" for key, value in self.items())

    __str__ = __repr__

    def _repr_pretty_(self, printer, cycle) -> None:  # IPython and Jupyter: the table, not a dict
        printer.text(repr(self))


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{key} {item}" for key, item in value.items()) or "-"
    return str(value)


def show_config() -> Config:
    """The build and runtime configuration: a dict, shown as a table (its repr); print it in a
    script, ``print(fastattn.show_config())``.

    Keys: ``version``, ``backend`` ("cpp" or "numpy"), ``compiled_isas``, ``supported_isas``
    (compiled and runnable on this CPU), ``selected_isa``, ``openmp`` (bool), ``num_threads``
    (what a call with ``num_threads=None`` uses from this thread, as ``get_num_threads()``),
    ``engines`` (the engine that multiplies each dtype's matrices on the selected ISA, e.g.
    ``{"float32": "avx512_fma", ..., "bfloat16": "avx512_bf16"}``, with ``"<dtype>/<precision>"``
    entries where a ``precision=`` other than "highest" runs another engine), and
    ``import_error`` when the extension is missing.
    """
    core = _backend._core
    config = Config(version=metadata.version("fastattn"), backend="cpp" if core else "numpy")
    if core is not None:
        config.update(
            compiled_isas=list(core.compiled_isas()),
            supported_isas=list(core.supported_isas()),
            selected_isa=core.selected_isa(),
            openmp=bool(core.have_openmp()),
            num_threads=int(core.default_num_threads()),
            engines=_engines(core),
        )
    else:
        config.update(compiled_isas=[], supported_isas=[], selected_isa=None, openmp=False,
                      num_threads=1, engines={}, import_error=_backend.UNAVAILABLE)
    return config


def _engines(core) -> dict:
    """{dtype: engine} at precision "highest", and {"dtype/precision": engine} where another
    precision runs another engine."""
    dtypes = {_contract.F32: "float32", _contract.F64: "float64", _contract.F16: "float16", _contract.BF16: "bfloat16"}
    precisions = {code: name for name, code in _contract.PRECISIONS.items()}
    table = {(dtype, precision): name for dtype, precision, name in core.engines()}
    engines = {}
    for dtype, dtype_name in dtypes.items():
        engines[dtype_name] = table[dtype, _contract.HIGHEST]
        for precision, precision_name in precisions.items():
            if table[dtype, precision] != engines[dtype_name]:
                engines[f"{dtype_name}/{precision_name}"] = table[dtype, precision]
    return engines


_apply_isa_env()
