"""Import of the C++ extension (or the reason it is missing)."""

from __future__ import annotations

from typing import Any, Optional

try:
    from . import _core
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _core = None
    IMPORT_ERROR: Optional[ImportError] = exc
else:
    IMPORT_ERROR = None

def cpp_available() -> bool:
    """True when the C++ extension imported."""
    return _core is not None


def require_core(what: str) -> Any:
    """The extension, or a RuntimeError saying that `what` needs it and why it is missing."""
    if _core is None:
        raise RuntimeError(f"{what} needs fastattn's C++ extension, which failed to import: {IMPORT_ERROR}")
    return _core
