"""docs/how-it-works.md cannot drift from the code: its Python runs, and every printed number is re-derived.

The document's convention, which this test enforces:

- Every fenced code block is ```python or ```text; any other info string (or none) is an error,
  so no block escapes checking.
- The ```python blocks run in document order in one namespace, so every formula's NumPy (and
  every assert the document makes) runs. Tracebacks name the document's own line numbers.
- A ```text block is printed output: one or more entries, each a line `name =` (a Python
  identifier) followed by the lines of
      np.array2string(np.asarray(value), precision=4, floatmode="fixed", suppress_small=True)
  where value is `name` in the namespace after the python blocks above the entry have run.
  The test formats that value the same way and compares the text exactly.

Independently of the document's code, the worked example's printed Q, K, V, S and S_scaled are
recomputed from its printed X, W_q, W_k and W_v, and its printed O, P, O_causal and P_causal
from fastattn.attention (every backend and ISA, float64 and float32) and
fastattn.attention_weights on those inputs, to half a unit of the printed 4th decimal. So a
mistake in the document's NumPy that its own blocks share cannot hide either.
"""

from __future__ import annotations

import pathlib
import re
from typing import Dict, List, NamedTuple

import numpy as np
import pytest

import fastattn

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "how-it-works.md"
FORMAT = dict(precision=4, floatmode="fixed", suppress_small=True)
HALF_UNIT = 0.5e-4  # half a unit of the printed 4th decimal
LABEL = re.compile(r"([A-Za-z_]\w*) =")
# Every intermediate of the worked example (section 1) must be printed.
WORKED_EXAMPLE = ("X", "W_q", "W_k", "W_v", "Q", "K", "V", "S", "S_scaled", "row_max", "E", "row_sum",
                  "P", "O", "P_causal", "O_causal")


class Block(NamedTuple):
    info: str
    body: str
    line: int  # 1-based line of the block's first body line in the document


class Printed(NamedTuple):
    name: str
    text: str
    line: int  # of the `name =` line


def fmt(value) -> str:
    return np.array2string(np.asarray(value), **FORMAT)


def code_blocks(text: str) -> List[Block]:
    blocks, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        if lines[i].startswith("```"):
            info, start = lines[i][3:].strip(), i + 1
            end = start
            while end < len(lines) and lines[end] != "```":
                end += 1
            assert end < len(lines), f"{DOC.name}:{i + 1}: unclosed code block"
            assert info in ("python", "text"), (
                f"{DOC.name}:{i + 1}: code block with info string {info!r}; only python (run) and "
                f"text (printed values, checked) are allowed")
            blocks.append(Block(info, "\n".join(lines[start:end]), start + 1))
            i = end
        i += 1
    return blocks


def printed_entries(block: Block) -> List[Printed]:
    entries: List[Printed] = []
    for offset, line in enumerate(block.body.split("\n")):
        label = LABEL.fullmatch(line)
        if label:
            entries.append(Printed(label.group(1), "", block.line + offset))
        else:
            assert entries, f"{DOC.name}:{block.line}: a text block must start with a line `name =`"
            last = entries[-1]
            entries[-1] = last._replace(text=f"{last.text}\n{line}" if last.text else line)
    return entries


def check(text: str):
    """Runs the document; returns (namespace, printed entries, mismatches as messages)."""
    namespace: dict = {"__name__": "how_it_works"}
    entries: List[Printed] = []
    mismatches: List[str] = []
    for block in code_blocks(text):
        if block.info == "python":
            # Padded so that a traceback gives the document's own line numbers.
            exec(compile("\n" * (block.line - 1) + block.body, str(DOC), "exec"), namespace)
            continue
        for entry in printed_entries(block):
            entries.append(entry)
            if entry.name not in namespace:
                mismatches.append(f"{DOC.name}:{entry.line}: prints {entry.name}, which no block above defines")
                continue
            actual = fmt(namespace[entry.name])
            if entry.text != actual:
                mismatches.append(f"{DOC.name}:{entry.line}: {entry.name} is printed as\n{entry.text}\n"
                                  f"but the code gives\n{actual}")
    return namespace, entries, mismatches


def parse_printed(text: str) -> np.ndarray:
    """The array a printed entry shows (1-D or 2-D, as array2string writes them)."""
    depth = len(text) - len(text.lstrip("["))
    rows = [[float(x) for x in re.findall(r"-?(?:inf|nan|\d+(?:\.\d*)?)", line)] for line in text.split("\n")]
    return np.array(rows[0] if depth == 1 else rows)


@pytest.fixture(scope="module")
def document() -> str:
    if not DOC.exists():
        pytest.skip("docs/how-it-works.md is not beside the tests (installed elsewhere)")
    return DOC.read_text()


@pytest.fixture(scope="module")
def printed(document) -> Dict[str, np.ndarray]:
    """The worked example as the document prints it, read from the text alone (first print wins)."""
    values: Dict[str, np.ndarray] = {}
    for block in code_blocks(document):
        if block.info == "text":
            for entry in printed_entries(block):
                values.setdefault(entry.name, parse_printed(entry.text))
    return values


def test_every_block_runs_and_every_printed_value_is_rederived(document):
    _, entries, mismatches = check(document)
    assert not mismatches, "\n\n".join(mismatches)
    names = [e.name for e in entries]
    missing = [name for name in WORKED_EXAMPLE if name not in names]
    assert not missing, f"the worked example does not print {missing}"
    assert len(entries) >= 25


def test_a_wrong_printed_digit_fails(document):
    """The check is not vacuous: one digit of the printed P changed is reported."""
    label = document.index("\nP =\n") + len("\nP =\n")
    digit = re.compile(r"\d").search(document, label).start()
    wrong = document[:digit] + str((int(document[digit]) + 1) % 10) + document[digit + 1:]
    _, _, mismatches = check(wrong)
    assert len(mismatches) == 1 and ": P is printed as" in mismatches[0]


def test_worked_example_inputs_are_small_integers(printed):
    X, W_q, W_k, W_v = (printed[name] for name in ("X", "W_q", "W_k", "W_v"))
    assert X.shape[0] == 3 and X.shape[1] in (3, 4)
    for W in (W_q, W_k, W_v):
        assert W.shape == (X.shape[1], 2)
    for M in (X, W_q, W_k, W_v):
        assert np.array_equal(M, np.round(M)) and np.abs(M).max() <= 9


def assert_printed(printed: Dict[str, np.ndarray], name: str, value, extra: float = 0.0) -> None:
    """value rounds to what the document prints for name (half a unit of the 4th decimal)."""
    shown = printed[name]
    value = np.asarray(value, dtype=np.float64)
    assert value.shape == shown.shape, f"{name}: shape {value.shape}, printed {shown.shape}"
    err = np.abs(value - shown).max()
    assert err <= HALF_UNIT + extra, f"{name} is printed as\n{fmt(shown)}\nbut is\n{value}"


def test_worked_example_products(printed):
    X, W_q, W_k, W_v = (printed[name] for name in ("X", "W_q", "W_k", "W_v"))
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    for name, value in (("Q", Q), ("K", K), ("V", V), ("S", Q @ K.T), ("S_scaled", Q @ K.T / np.sqrt(2))):
        assert_printed(printed, name, value)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_worked_example_matches_fastattn(printed, backend, dtype):
    X, W_q, W_k, W_v = (printed[name] for name in ("X", "W_q", "W_k", "W_v"))
    Q, K, V = ((X @ W).astype(dtype) for W in (W_q, W_k, W_v))
    extra = 0.0 if dtype == np.float64 else 1e-6  # float32 rounding near a printed boundary
    assert_printed(printed, "O", fastattn.attention(Q, K, V, backend=backend), extra)
    assert_printed(printed, "O_causal", fastattn.attention(Q, K, V, causal=True, backend=backend), extra)
    assert_printed(printed, "P", fastattn.attention_weights(Q, K), extra)
    assert_printed(printed, "P_causal", fastattn.attention_weights(Q, K, causal=True), extra)


# -- links between the README and the pages of docs/ ---------------------------------------------

ROOT = DOC.parents[1]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_links(path: pathlib.Path) -> List[str]:
    """The relative links of a Markdown file (outside code blocks) whose file or heading is missing."""
    def prose(p: pathlib.Path) -> str:
        return re.sub(r"```.*?```", "", p.read_text(), flags=re.S)

    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(path)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        name, _, anchor = target.partition("#")
        dest = (path.parent / name).resolve() if name else path
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (dest.suffix != ".md"
                         or anchor not in {github_anchor(h) for h in re.findall(r"^#+ (.*)$", prose(dest), re.M)}):
            broken.append(f"{target}: no such heading")
    return broken


def markdown_files() -> List[pathlib.Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "tools").glob("*/README.md"))]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    if not path.exists():
        pytest.skip(f"{path} is not beside the tests (installed elsewhere)")
    assert not broken_links(path), broken_links(path)


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "b.md").write_text("# B\n\n## Some heading: `code`, here\n")
    (tmp_path / "a.md").write_text("[ok](b.md) [ok](b.md#some-heading-code-here) [x](c.md) [y](b.md#nothing)\n"
                                   "[z](#a) [w](https://example.com/x)\n```\n[in code](none.md)\n```\n# A\n")
    assert broken_links(tmp_path / "a.md") == ["c.md: no such file", "b.md#nothing: no such heading"]


def test_the_readme_links_every_page_of_docs():
    """Every page of docs/ (but the index page, which the package index shows) is reachable from
    the README."""
    readme = (ROOT / "README.md").read_text()
    pages = [p.name for p in (ROOT / "docs").glob("*.md") if p.name != "index-page.md"]
    assert [name for name in pages if f"](docs/{name}" not in readme] == []
