"""Packaging facts, read from the installed distribution (what the wheel shipped): the MIT
license as a PEP 639 expression, the LICENSE file inside the dist-info, and the metadata a
package index shows; and (slow) that a second build of the same tree reuses the first one's objects."""

import importlib.metadata
import pathlib
import re
import subprocess
import sys

import pytest


def test_installed_metadata_ships_the_license():
    dist = importlib.metadata.distribution("fastattn")
    assert dist.metadata["License-Expression"] == "MIT"
    assert dist.metadata.get_all("License-File") == ["LICENSE"]
    license_text = dist.read_text("licenses/LICENSE")
    assert license_text is not None and license_text.startswith("MIT License")
    classifiers = dist.metadata.get_all("Classifier")
    assert any(c.startswith("Development Status") for c in classifiers)
    assert not any(c.startswith("License ::") for c in classifiers)  # PEP 639: the expression alone


def test_the_index_page_is_the_long_description():
    """A package index shows docs/index-page.md (the README's relative links and pictures would
    break there): its text is the installed distribution's long description."""
    dist = importlib.metadata.distribution("fastattn")
    body = dist.metadata.get_payload() or dist.metadata["Description"]
    assert dist.metadata["Description-Content-Type"].startswith("text/markdown")
    assert body.lstrip().startswith("# fastattn\n\nExact scaled dot-product attention")
    assert "## Quick start" in body and "pip install fastattn" in body
    assert "](docs/" not in body and "](examples/" not in body



def test_project_urls_and_the_index_page_links():
    """[project.urls]: homepage, documentation, source and issues, all in the one repository; the
    index page (the long description) links every one of them, so that someone who installed
    from an index finds the manual."""
    dist = importlib.metadata.distribution("fastattn")
    urls = dict(entry.split(", ", 1) for entry in dist.metadata.get_all("Project-URL") or [])
    assert sorted(urls) == ["Documentation", "Homepage", "Issues", "Source"], urls
    repository = urls["Source"]
    assert repository.startswith("https://github.com/") and urls["Homepage"] == repository
    assert urls["Documentation"].startswith(repository + "#") and urls["Issues"] == repository + "/issues"
    body = dist.metadata.get_payload() or dist.metadata["Description"]
    for label, url in urls.items():
        assert f"({url})" in body or f"<{url}>" in body, f"the index page does not link {label}: {url}"


ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_second_build_of_the_same_tree_compiles_nothing(tmp_path):
    """pip builds each install in a new isolated environment (scikit-build-core and pybind11 under
    a new /tmp path), and scikit-build-core then clears the top-level CMakeCache.txt and
    CMakeFiles/. The targets live in src/cpp/CMakeLists.txt (their objects outside that folder)
    and pybind11's headers are copied to a fixed path, so a second build in pyproject's build-dir
    reuses every object: two wheels in a row, the second with nothing to compile."""
    if not (ROOT / "CMakeLists.txt").exists():
        pytest.skip("not a source checkout (the tests run against an installed wheel)")
    logs = []
    for n in range(2):  # the first brings build/{wheel_tag} up to date with the tree
        run = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-v",
                              "-w", str(tmp_path / f"wheel{n}")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        assert run.returncode == 0, run.stdout[-6000:]
        logs.append(run.stdout)
    pybind11_paths = set(re.findall(r"Found pybind11: (\S+)", "\n".join(logs)))
    assert len(pybind11_paths) == 2, f"not two isolated environments: {pybind11_paths}"  # what it tests
    assert "ninja: no work to do" in logs[1], "\n".join(
        line for line in logs[1].splitlines() if "Building" in line or "Linking" in line)
