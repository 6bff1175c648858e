"""Packaging facts, read from the installed distribution (what the wheel shipped): the MIT
license as a PEP 639 expression, the LICENSE file inside the dist-info, and the metadata a
package index shows."""

import importlib.metadata


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
