"""The README and the pages of docs/ it links: their examples run as written, their facts are
checked against the code, and the README stays a front page (short, install and test first)."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
DOCS = README.parent / "docs"


def page(name: str) -> str:
    """docs/<name>.md's text (skips where the docs are not beside the tests)."""
    path = DOCS / f"{name}.md"
    if not path.exists():
        pytest.skip(f"{path} is not beside the tests (installed elsewhere)")
    return path.read_text()


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


def usage_namespace() -> dict:
    """The names docs/api.md's usage example defines (q, k, v, out, lse, ...)."""
    namespace: dict = {}
    for block in python_blocks(section(page("api"), "Usage")):
        exec(compile(block, "docs/api.md", "exec"), namespace)
    return namespace


def test_usage_and_option_examples_run():
    namespace = usage_namespace()
    assert namespace["out"].shape == (2, 8, 1024, 64) and namespace["lse"].shape == (2, 8, 1024)
    blocks = python_blocks(section(page("api"), "Masks, padding, windows, ALiBi, softcap, sinks"))
    assert len(blocks) >= 5
    for block in blocks:  # each continues from the usage example's q, k, v
        exec(compile(block, "docs/api.md", "exec"), namespace)
        assert namespace["out"].shape == (2, 8, 1024, 64)


def test_training_examples_run(tmp_path, monkeypatch):
    namespace = usage_namespace()
    blocks = python_blocks(section(page("training"), "Training: gradients, a multi-head attention layer, Adam"))
    assert len(blocks) == 4  # the signature, the gradient call, the layer + Adam loop, save and load
    for block in blocks[1:3]:
        exec(compile(block, "docs/training.md", "exec"), namespace)
    assert namespace["dq"].shape == (2, 8, 1024, 64) and namespace["dk"].shape == (2, 2, 1024, 64)
    assert namespace["y"].shape == (8, 20, 64)
    trained, trained_opt = namespace["layer"], namespace["opt"]
    monkeypatch.chdir(tmp_path)  # the save/load block writes model.npz and adam.npz
    exec(compile(blocks[3], "docs/training.md", "exec"), namespace)
    assert namespace["layer"] is not trained and namespace["opt"] is not trained_opt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adam.npz", "model.npz"]
    x = namespace["x"]
    assert (namespace["layer"].forward(x) == trained.forward(x)).all()
    assert namespace["opt"].steps == trained_opt.steps


def test_pytorch_example_runs():
    pytest.importorskip("torch")
    import fastattn.torch

    namespace: dict = {}
    for block in python_blocks(section(page("integrations"), "PyTorch: a drop-in SDPA and a patch")):
        exec(compile(block, "docs/integrations.md", "exec"), namespace)
    assert namespace["q"].grad.shape == (2, 8, 256, 64) and not fastattn.torch.is_patched()


def test_transformers_example_runs():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import fastattn.transformers

    fastattn.transformers.fallbacks.clear()
    namespace: dict = {}
    blocks = python_blocks(section(page("integrations"), 'Hugging Face transformers: `attn_implementation="fastattn"`'))
    assert len(blocks) == 1
    exec(compile(blocks[0], str(DOCS / "integrations.md"), "exec"), namespace)
    assert namespace["model"].config._attn_implementation == "fastattn"
    assert 12 < namespace["tokens"].shape[1] <= 20 and not fastattn.transformers.fallbacks


def test_thread_examples_run():
    import numpy as np

    import fastattn

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 4, 64, 16)).astype(np.float32) for _ in range(3))
    namespace: dict = {"fastattn": fastattn, "q": q, "k": k, "v": v, "batches": [(q, k, v)] * 8}
    previous = fastattn.set_num_threads(None)
    try:
        blocks = python_blocks(section(page("api"), "Threads: `set_num_threads`, threadpoolctl, thread pools"))
        assert len(blocks) == 2
        pytest.importorskip("threadpoolctl")
        for block in blocks:
            exec(compile(block, "docs/api.md", "exec"), namespace)
    finally:
        fastattn.set_num_threads(previous)
    assert len(namespace["outs"]) == 8


@pytest.mark.parametrize("module, title, check", [
    ("dask.distributed", "Dask: beyond one machine",
     lambda ns: ns["out"].shape == (4, 16, 4096, 64) and float(ns["total"]) == ns["total"]),
    ("jax", "JAX: `dot_product_attention`", lambda ns: ns["out"].shape == ns["dq"].shape == (2, 128, 8, 64)),
], ids=["dask", "jax"])
def test_integration_example_runs(module, title, check):
    pytest.importorskip(module)
    blocks = python_blocks(section(page("integrations"), title))
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "docs/integrations.md", "exec"), namespace)
    assert check(namespace)


def test_pictures_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)  # it saves heads.png
    blocks = python_blocks(section(page("api"), "Pictures of attention: `attention_weights`, `fastattn.viz`"))
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "docs/api.md", "exec"), namespace)
    assert namespace["weights"].shape == (2, 4, 6, 6) and (tmp_path / "heads.png").stat().st_size > 0


def test_help_and_the_api_page_agree_on_num_threads():
    """help(attention)'s num_threads and docs/api.md's table name the same sources and rules."""
    import fastattn

    row = re.search(r"^\| `num_threads` \|(.*)$", page("api"), re.M).group(1)
    doc = re.search(r"num_threads : (.*?)\n\n", fastattn.attention.__doc__, re.S).group(1)
    doc = " ".join(doc.split())
    for fact in ["set_num_threads()", "OpenMP default", "OMP_NUM_THREADS", "threadpoolctl", "[1, 1024]",
                 "this call only", "capped at the number of processors"]:
        assert fact in row, f"docs/api.md's num_threads row lacks {fact!r}"
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


# -- the README as a front page, and machine-dependent facts -------------------------------------

def test_the_readme_is_a_front_page(readme):
    """At most 400 lines, with the install and test commands in a bash block within its first 60."""
    lines = readme.splitlines()
    assert len(lines) <= 400, f"README.md has {len(lines)} lines; move details into docs/"
    top = "\n".join(lines[:60])
    bash = re.findall(r"```bash\n(.*?)```", top, re.S)
    assert bash, "no bash block in the README's first 60 lines"
    commands = [line.split("#")[0].strip() for block in bash for line in block.splitlines()]
    assert 'pip install ".[test]"' in commands and "python -m pytest" in commands, commands


CPU_NAMES = re.compile(r"AMD EPYC|Intel Xeon|Xeon|Ryzen|Core i\d|Apple M\d|Graviton|Neoverse")
DURATION = re.compile(r"\b\d+(?:[.,]\d+)?(?:–\d+(?:\.\d+)?)? ?(?:s|min|minutes?|seconds?)\b|\babout an? (?:minute|hour)\b")
# The pages issue 26 made out of the README (how-it-works.md and architecture.md have no timings).
PAGES = ["api", "training", "kv-cache", "integrations", "reliability", "performance", "ci-and-release"]


def paragraphs(text: str):
    """The prose paragraphs of a Markdown text: no code blocks, no tables."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    for block in re.split(r"\n\s*\n", text):
        prose = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("|"))
        if prose.strip():
            yield prose


@pytest.mark.parametrize("name", ["README"] + PAGES)
def test_every_duration_names_its_machine(readme, name):
    """A time in seconds or minutes depends on the machine: the paragraph that gives one names
    the CPU it was measured on (CI's machine varies, so "CI's machine" does not)."""
    text = readme if name == "README" else page(name)
    unnamed = [p for p in paragraphs(text) if DURATION.search(p) and not CPU_NAMES.search(p)]
    assert not unnamed, f"{name}: durations without a machine:\n\n" + "\n\n".join(unnamed)


def test_the_duration_check_can_fail():
    assert not list(paragraphs("```\n76 s\n```\n| 1 | 2 s |"))
    flagged = [p for p in paragraphs("It takes about a minute.\n\n76 s on an AMD EPYC.") if not CPU_NAMES.search(p)]
    assert flagged == ["It takes about a minute."] and DURATION.search(flagged[0])


def test_the_show_config_sample_is_what_show_config_shows():
    """docs/api.md's sample (which names the machine that printed it) has show_config()'s keys in
    its order, this version and, on x86-64, this build's compiled ISAs, laid out as its repr."""
    import platform

    import fastattn

    config = fastattn.show_config()
    text = section(page("api"), "Configuration: `show_config()`")
    sample = re.search(r"```text\n(.*?)\n```", text, re.S).group(1)
    shown = dict(re.match(r"(\S+) +(.*)$", line).groups() for line in sample.splitlines())
    if config["backend"] != "cpp":
        pytest.skip("the sample shows the C++ backend's keys")
    assert list(shown) == list(config)
    assert shown["version"] == fastattn.__version__ and shown["backend"] == "cpp"
    if platform.machine() in ("x86_64", "AMD64"):
        assert shown["compiled_isas"] == ", ".join(config["compiled_isas"])
    assert shown["selected_isa"] in shown["supported_isas"].split(", ")
    parsed = {key: value.split(", ") if key.endswith("isas") else value == "on" if key == "openmp"
              else int(value) if value.isdigit() else value for key, value in shown.items()}
    parsed["engines"] = dict(pair.rsplit(" ", 1) for pair in shown["engines"].split(", "))
    assert repr(type(config)(parsed)) == sample


def test_the_headline_numbers_are_the_performance_pages():
    """Each row of the README's performance table is a row of docs/performance.md's tables: the
    same case, fastattn and torch times and ratio (the README's training row, of its training table)."""
    readme = README.read_text()
    performance = page("performance")
    forward, training = performance.split("**Training**", 1)
    rows = re.findall(r"^\| (.+?) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", section(readme, "Performance"), re.M)
    assert len(rows) >= 3
    for label, ours, torch, ratio in rows:
        table = training if label.startswith("training") else forward
        case = label.split(": ", 1)[1] if label.startswith("training") else label
        match = re.search(rf"^\| {re.escape(case)} \|(.*)\|$", table, re.M)
        assert match, f"docs/performance.md has no row {case!r}"
        cells = [c.strip() for c in match.group(1).split("|")]
        assert cells[0] == ours and torch in cells[1:-1] and cells[-1] == ratio, (label, cells)


def test_the_alibi_example_of_the_api_page():
    """docs/api.md: one query, four keys, slope 1, equal scores: fastattn's weights (query 0
    nearest key 0) and FlashAttention's (bottom-right: the reverse)."""
    import numpy as np

    import fastattn

    text = " ".join(page("api").split())
    ours, theirs = re.search(r"fastattn's weights are `\[([\d. ]+)\]`.*?FlashAttention's the reverse, "
                             r"`\[([\d. ]+)\]`", text).groups()
    q, k = np.zeros((1, 4)), np.ones((4, 4))
    weights = fastattn.attention_weights(q, k, alibi_slopes=[1.0])[0]
    assert ours.split() == [f"{w:.3f}" for w in weights]
    assert theirs.split() == [f"{w:.3f}" for w in weights[::-1]]
