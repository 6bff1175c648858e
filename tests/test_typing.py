"""Typing: `mypy --strict` accepts a user's script and rejects misuse; `stubtest` finds
src/fastattn/_core.pyi true to the compiled extension. Skipped without mypy (in the test extra)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")
from fastattn import _backend  # noqa: E402

HERE = Path(__file__).parent / "typing"


def run_mypy(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # Run from a directory outside the source tree so that mypy checks the installed package
    # (with its py.typed) and not src/.
    return subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_mypy_strict_accepts_a_user_script(tmp_path):
    result = run_mypy("--strict", str(HERE / "user_script.py"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_rejects_misuse(tmp_path):
    script = HERE / "misuse.py"
    result = run_mypy("--strict", str(script), cwd=tmp_path)
    flagged = {int(m.group(1)) for m in re.finditer(r"misuse\.py:(\d+): error", result.stdout)}
    expected = {n for n, line in enumerate(script.read_text().splitlines(), 1) if "# E" in line}
    assert flagged == expected, result.stdout


@pytest.mark.skipif(not _backend.cpp_available(), reason="the C++ extension is not built")
def test_stubtest_on_the_extension(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mypy.stubtest", "fastattn._core"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
