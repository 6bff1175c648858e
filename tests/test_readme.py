"""The README's usage example runs as written, so the README cannot drift from the code."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_usage_example_runs():
    if not README.exists():
        pytest.skip("README.md is not beside the tests (installed elsewhere)")
    match = re.search(r"## Usage\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert match, "README has no '## Usage' python block"
    namespace: dict = {}
    exec(compile(match.group(1), str(README), "exec"), namespace)
    assert namespace["out"].shape == (2, 8, 1024, 64) and namespace["lse"].shape == (2, 8, 1024)
