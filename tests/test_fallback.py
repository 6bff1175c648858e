"""Without the C++ extension: the "auto" backend falls back to NumPy with one RuntimeWarning that
says what is wrong and how to fix it, backend="cpp" and set_isa raise RuntimeError saying the same.

Each case runs in a subprocess importing a copy of the installed package whose compiled _core is
missing (a source tree imported without installing) or broken (a file that is not a library).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastattn

SCRIPT = textwrap.dedent("""
    import json, warnings
    import numpy as np
    import fastattn
    from fastattn import _reference
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, 5, 4)) for _ in range(3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = fastattn.attention(q, k, v, causal=True)
        second = fastattn.attention(q, k, v, causal=True)
    errors = {}
    for name, call in [("cpp", lambda: fastattn.attention(q, k, v, backend="cpp")),
                       ("set_isa", lambda: fastattn.set_isa("scalar"))]:
        try:
            call()
        except RuntimeError as exc:
            errors[name] = str(exc)
    config = fastattn.show_config()
    print(json.dumps(dict(
        file=fastattn.__file__,
        warnings=[(w.category.__name__, str(w.message), w.filename) for w in caught],
        same=bool((first == second).all()),
        numpy=bool((first == fastattn.attention(q, k, v, causal=True, backend="numpy")).all()),
        errors=errors, backend=config["backend"], import_error=config["import_error"])))
""")


def run_with_copy(tmp_path: Path, core: str) -> dict:
    """Runs SCRIPT against a copy of the installed package; core: "missing" or "broken"."""
    package = Path(fastattn.__file__).parent
    copy = tmp_path / "fastattn"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("_core.*.so", "_core.*.pyd", "__pycache__"))
    assert not [p for p in copy.glob("_core.*") if p.suffix != ".pyi"]
    if core == "broken":
        (copy / Path(next(package.glob("_core.*.so"))).name).write_bytes(b"not a shared library " * 20)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["file"] == str(copy / "__init__.py")
    return out


needs_built_core = pytest.mark.skipif(not list(Path(fastattn.__file__).parent.glob("_core.*.so")),
                                      reason="the installed fastattn has no compiled extension to remove")


@needs_built_core
def test_a_missing_extension_is_named_and_the_fallback_warns_once(tmp_path):
    out = run_with_copy(tmp_path, "missing")
    reason = (f"fastattn's C++ extension is not built: there is no compiled _core module in "
              f"{tmp_path / 'fastattn'}. Install fastattn with pip, which compiles it")
    assert len(out["warnings"]) == 1, out["warnings"]  # once per process, not per call
    category, message, filename = out["warnings"][0]
    assert category == "RuntimeWarning" and message.startswith(reason)
    assert message.endswith("Using the NumPy backend: the same results, slower, with an Lq×Lk matrix per chunk of rows")
    assert "circular import" not in message and "partially initialized" not in message
    assert filename == "<string>"  # it points at the caller's line, not at fastattn
    assert out["same"] and out["numpy"] and out["backend"] == "numpy"
    assert out["errors"]["cpp"].startswith(f"backend='cpp' needs the C++ extension: {reason}")
    assert out["errors"]["set_isa"].startswith(f"set_isa needs the C++ extension: {reason}")
    assert out["import_error"].startswith(reason)


@needs_built_core
def test_a_broken_extension_says_why_it_failed_to_load(tmp_path):
    out = run_with_copy(tmp_path, "broken")
    (category, message, _), = out["warnings"]
    assert message.startswith(f"fastattn's C++ extension {tmp_path / 'fastattn'}/_core.")
    assert "failed to load: " in message and "invalid ELF header" in message  # the loader's own reason
    assert out["errors"]["cpp"].startswith("backend='cpp' needs the C++ extension: fastattn's C++ extension ")


# --- missing optional dependencies: the hint names the package to install -----------------------
# (Not "pip install 'fastattn[...]'": fastattn is installed from a clone, and that command would
# fetch whatever a package index calls fastattn.)

def test_viz_without_matplotlib_names_it(monkeypatch):
    import importlib
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if matplotlib were not installed
    monkeypatch.delitem(sys.modules, "fastattn.viz", raising=False)
    with pytest.raises(ImportError, match=r"^fastattn.viz needs matplotlib: pip install matplotlib$"):
        importlib.import_module("fastattn.viz")


def test_bfloat16_cache_without_ml_dtypes_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.raises(TypeError, match=r"^bfloat16 storage needs ml_dtypes: pip install ml_dtypes$"):
        fastattn.KVCache(num_kv_heads=1, head_dim=8, dtype="bfloat16")
