"""The README's examples run as written, so the README cannot drift from the code."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def python_blocks(text: str):
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.fixture(scope="module")
def readme() -> str:
    if not README.exists():
        pytest.skip("README.md is not beside the tests (installed elsewhere)")
    return README.read_text()


def test_usage_and_option_examples_run(readme):
    namespace: dict = {}
    for block in python_blocks(section(readme, "Usage")):
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["out"].shape == (2, 8, 1024, 64) and namespace["lse"].shape == (2, 8, 1024)
    blocks = python_blocks(section(readme, "Masks, padding, windows, ALiBi, softcap, sinks"))
    assert len(blocks) >= 5
    for block in blocks:  # each continues from the usage example's q, k, v
        exec(compile(block, str(README), "exec"), namespace)
        assert namespace["out"].shape == (2, 8, 1024, 64)


def test_training_examples_run(readme, tmp_path, monkeypatch):
    namespace: dict = {}
    for block in python_blocks(section(readme, "Usage")):
        exec(compile(block, str(README), "exec"), namespace)
    blocks = python_blocks(section(readme, "Training: gradients, a multi-head attention layer, Adam"))
    assert len(blocks) == 4  # the signature, the gradient call, the layer + Adam loop, save and load
    for block in blocks[1:3]:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["dq"].shape == (2, 8, 1024, 64) and namespace["dk"].shape == (2, 2, 1024, 64)
    assert namespace["y"].shape == (8, 20, 64)
    trained, trained_opt = namespace["layer"], namespace["opt"]
    monkeypatch.chdir(tmp_path)  # the save/load block writes model.npz and adam.npz
    exec(compile(blocks[3], str(README), "exec"), namespace)
    assert namespace["layer"] is not trained and namespace["opt"] is not trained_opt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adam.npz", "model.npz"]
    x = namespace["x"]
    assert (namespace["layer"].forward(x) == trained.forward(x)).all()
    assert namespace["opt"].steps == trained_opt.steps


def test_pytorch_example_runs(readme):
    pytest.importorskip("torch")
    import fastattn.torch

    namespace: dict = {}
    for block in python_blocks(section(readme, "PyTorch: a drop-in SDPA and a patch")):
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["q"].grad.shape == (2, 8, 256, 64) and not fastattn.torch.is_patched()


def test_transformers_example_runs(readme):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import fastattn.transformers

    fastattn.transformers.fallbacks.clear()
    namespace: dict = {}
    blocks = python_blocks(section(readme, 'Hugging Face transformers: `attn_implementation="fastattn"`'))
    assert len(blocks) == 1
    exec(compile(blocks[0], str(README), "exec"), namespace)
    assert namespace["model"].config._attn_implementation == "fastattn"
    assert 12 < namespace["tokens"].shape[1] <= 20 and not fastattn.transformers.fallbacks


def test_thread_examples_run(readme):
    import numpy as np

    import fastattn

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 4, 64, 16)).astype(np.float32) for _ in range(3))
    namespace: dict = {"fastattn": fastattn, "q": q, "k": k, "v": v, "batches": [(q, k, v)] * 8}
    previous = fastattn.set_num_threads(None)
    try:
        blocks = python_blocks(section(readme, "Threads: `set_num_threads`, threadpoolctl, thread pools"))
        assert len(blocks) == 2
        pytest.importorskip("threadpoolctl")
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    finally:
        fastattn.set_num_threads(previous)
    assert len(namespace["outs"]) == 8


@pytest.mark.parametrize("module, title, check", [
    ("dask.distributed", "Dask: beyond one machine",
     lambda ns: ns["out"].shape == (4, 16, 4096, 64) and float(ns["total"]) == ns["total"]),
    ("jax", "JAX: `dot_product_attention`", lambda ns: ns["out"].shape == ns["dq"].shape == (2, 128, 8, 64)),
], ids=["dask", "jax"])
def test_integration_example_runs(readme, module, title, check):
    pytest.importorskip(module)
    blocks = python_blocks(section(readme, title))
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    assert check(namespace)


def test_pictures_example_runs(readme, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)  # it saves heads.png
    blocks = python_blocks(section(readme, "Pictures of attention: `attention_weights`, `fastattn.viz`"))
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    assert namespace["weights"].shape == (2, 4, 6, 6) and (tmp_path / "heads.png").stat().st_size > 0
    assert (README.parent / "docs" / "attention-reversal.png").exists()  # the picture the section shows


def test_help_and_readme_agree_on_num_threads(readme):
    """help(attention)'s num_threads and the README's API table name the same sources and rules."""
    import fastattn

    row = re.search(r"^\| `num_threads` \|(.*)$", readme, re.M).group(1)
    doc = re.search(r"num_threads : (.*?)\n\n", fastattn.attention.__doc__, re.S).group(1)
    doc = " ".join(doc.split())
    for fact in ["set_num_threads()", "OpenMP default", "OMP_NUM_THREADS", "threadpoolctl", "[1, 1024]",
                 "this call only", "capped at the number of processors"]:
        assert fact in row, f"README's num_threads row lacks {fact!r}"
        assert fact in doc, f"help(attention)'s num_threads lacks {fact!r}"


INDEX_PAGE = README.parent / "docs" / "index-page.md"


def test_quick_start_runs_and_the_index_page_has_the_same(readme, capsys):
    """The quick start at the top of the README runs; the package index's long description
    (docs/index-page.md, pyproject's readme) has the same code and no link that would break
    on an index page (relative links, pictures)."""
    quick = python_blocks(section(readme, "Quick start"))
    assert len(quick) == 1
    namespace: dict = {}
    exec(compile(quick[0], str(README), "exec"), namespace)
    assert namespace["out"].shape == (8, 1024, 64)
    assert "selected_isa" in capsys.readouterr().out
    page = INDEX_PAGE.read_text()
    assert python_blocks(page) == quick
    assert not re.findall(r"\]\((?!https?://)[^)]*\)", page), "relative links break on an index page"
