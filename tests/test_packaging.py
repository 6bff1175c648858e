"""Packaging facts the wheel and sdist rely on: the MIT LICENSE is in the repository and the
project metadata ships it (PEP 639 ``license-files``). Skipped where the tests run without the
source tree beside them."""

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_license_file_is_shipped_by_the_metadata():
    import tomllib

    pyproject, license_file = ROOT / "pyproject.toml", ROOT / "LICENSE"
    if not pyproject.exists():
        pytest.skip("pyproject.toml is not beside the tests (installed elsewhere)")
    project = tomllib.loads(pyproject.read_text())["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert license_file.read_text().startswith("MIT License")
    classifiers = project["classifiers"]
    assert any(c.startswith("Development Status") for c in classifiers)
    assert not any(c.startswith("License ::") for c in classifiers)  # PEP 639: the expression alone
