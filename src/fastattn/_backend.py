"""Import of the C++ extension (or the reason it is missing), ISA selection, show_config()."""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any, Optional

try:
    from . import _core
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _core = None
    IMPORT_ERROR: Optional[ImportError] = exc
else:
    IMPORT_ERROR = None

ISA_ENV = "FASTATTN_ISA"


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
    (what a call with ``num_threads=None`` uses: ``OMP_NUM_THREADS`` or the OpenMP default, capped
    at the number of processors), and ``import_error`` when the extension is missing.
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
