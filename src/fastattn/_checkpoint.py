"""The file format of ``MultiHeadAttention.save`` and ``Adam.save``: a NumPy ``.npz`` archive.

An ``.npz`` file is a zip of ``.npy`` arrays (NumPy's documented format, readable by any NumPy
and by most array libraries), written here without pickles and read with
``allow_pickle=False``, so loading a file never runs code. Besides the arrays, each file holds
one 0-d string array ``__fastattn__``: a JSON object with ``format`` (what the file is, e.g.
``"fastattn.MultiHeadAttention"``), ``version`` (of that format, 1) and the object's
configuration. Readers check all of it, and every array's name, shape and dtype, before they
change anything: a file of another kind, shape or dtype, a truncated or corrupt file, or one
from a newer version raises ``ValueError`` and leaves the caller's objects as they were.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import Any, Dict, Mapping, Tuple

import numpy as np

VERSION = 1
_META = "__fastattn__"


def write(path, kind: str, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Writes ``arrays`` and the header {format: kind, version, **config} to ``path`` (a path,
    written whole or not at all: through a temporary file renamed over it; or a writable binary
    file object). The name is used as given: no ``.npz`` is appended."""
    header = json.dumps({"format": f"fastattn.{kind}", "version": VERSION, **config}, sort_keys=True)
    contents = {_META: np.array(header), **{name: np.ascontiguousarray(a) for name, a in arrays.items()}}
    if not isinstance(path, (str, os.PathLike)):
        np.savez(path, **contents)
        return
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".fastattn-", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **contents)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def describe(path) -> str:
    """How error messages name the file."""
    return repr(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else "the file"


_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first entry, or an empty zip's directory


def _not_a_zip(path) -> str:
    """Why ``path`` is no .npz archive, or "" when it starts like one. Only the first bytes are read
    (a file object is put back where it was): np.load would take any other file for a pickle and
    refuse it with advice on unpickling, which fits neither a text file nor fastattn's format."""
    if isinstance(path, (str, os.PathLike)):
        with open(path, "rb") as f:
            head = f.read(16)
    else:
        start = path.tell()
        head = path.read(16)
        path.seek(start)
    if head.startswith(_ZIP_MAGICS):
        return ""
    if not head:
        return "it is empty"
    if head.startswith(b"\x93NUMPY"):
        return "it is a single .npy array"
    return f"it does not start as a zip archive does (its first bytes: {head!r})"


def read(path, kind: str) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """The header (without format and version) and every array of a file ``write`` made for
    ``kind``. ValueError for anything else: not an .npz, corrupt, pickled, another kind, a
    newer version. A missing file, a directory or an unreadable one: the usual OSError."""
    what = describe(path)
    reason = _not_a_zip(path)  # a missing file, a directory, an unreadable one: the OSError as is
    if reason:
        raise ValueError(f"{what} is not a fastattn {kind} file (expected a NumPy .npz archive, as "
                         f"{kind}.save writes): {reason}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}  # reads (and CRC-checks) all
    # What np.load and zipfile raise for a corrupt, truncated or foreign archive (found by
    # truncating and bit-flipping saved files: tests/test_checkpoint.py).
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
        detail = str(exc)
        if "allow_pickle" in detail:  # np.load's advice on an object array: fastattn never loads one
            detail = "it holds an array of Python objects (a pickle), which a fastattn file never does"
        raise ValueError(f"{what} is not a readable fastattn {kind} file: {detail}") from None
    meta = arrays.pop(_META, None)
    if meta is None or meta.shape != () or meta.dtype.kind != "U":
        raise ValueError(f"{what} is not a fastattn file: it has no {_META} header (arrays: {sorted(arrays)})")
    try:
        header = json.loads(str(meta))
    except ValueError as exc:
        raise ValueError(f"{what}: its {_META} header is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != f"fastattn.{kind}":
        found = header.get("format") if isinstance(header, dict) else header
        raise ValueError(f"{what} holds {found!r}, not 'fastattn.{kind}'")
    version = header.pop("version", None)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= VERSION:
        raise ValueError(f"{what} has format version {version!r}; this fastattn reads versions 1 to {VERSION}"
                         + (": upgrade fastattn" if isinstance(version, int) and version > VERSION else ""))
    header.pop("format")
    return header, arrays


def check_arrays(what: str, arrays: Mapping[str, np.ndarray], expected: Mapping[str, Tuple[tuple, np.dtype]]) -> None:
    """ValueError unless ``arrays`` has exactly the names of ``expected``, each of its shape and dtype."""
    missing, extra = expected.keys() - arrays.keys(), arrays.keys() - expected.keys()
    if missing or extra:
        raise ValueError(f"{what}: arrays do not match: missing {sorted(missing)}, unexpected {sorted(extra)}")
    for name, (shape, dtype) in expected.items():
        a = arrays[name]
        if a.shape != tuple(shape) or a.dtype != dtype:
            raise ValueError(f"{what}: {name} has shape {a.shape} and dtype {a.dtype}, "
                             f"expected shape {tuple(shape)} and dtype {np.dtype(dtype)}")


def fields(what: str, header: Mapping[str, Any], expected: Mapping[str, Any]) -> Dict[str, Any]:
    """header's entries, exactly the names of ``expected``, each of its type(s) there (bool is
    not an int here); ValueError for a missing, unexpected or mistyped entry."""
    extra = header.keys() - expected.keys()
    if extra:
        raise ValueError(f"{what}: its header has unexpected entries {sorted(extra)}")
    values = {}
    for name, types in expected.items():
        if name not in header:
            raise ValueError(f"{what}: its header has no {name!r}")
        value = header[name]
        allowed = types if isinstance(types, tuple) else (types,)
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ValueError(f"{what}: {name} (={value!r}) has the wrong type")
        values[name] = value
    return values
