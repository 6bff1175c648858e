"""Bad calls raise TypeError or ValueError naming the argument, and never crash the process.

The table is tests/bad_calls.py (forward and backward). The dangerous entries (huge broadcast
shapes, 2**33-byte strides, the extension's own backstop) run in one child process, so that a
crash there fails these tests instead of killing the run. test_errors.py holds the finer
cases of each rule.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

import bad_calls
from fastattn import _backend

SAFE = [c for c in bad_calls.CALLS if not c.dangerous]
DANGEROUS = [c for c in bad_calls.CALLS if c.dangerous]


def test_the_table_is_long_enough():
    assert len(bad_calls.CALLS) >= 40


def check(call, outcome):
    assert outcome["type"] == call.error.__name__, f"{call.name}: {outcome}"
    assert re.search(call.match, outcome["message"]), f"{call.name}: {outcome['message']!r} lacks {call.match!r}"


@pytest.mark.parametrize("call", SAFE, ids=lambda c: c.name)
def test_bad_call_raises_naming_the_argument(call):
    check(call, bad_calls.outcome(call.name))


@pytest.fixture(scope="module")
def child_outcomes():
    """Run every dangerous call in one child process; its outcomes by name, and how it ended."""
    script = pathlib.Path(bad_calls.__file__)
    result = subprocess.run([sys.executable, str(script)] + [c.name for c in DANGEROUS], capture_output=True,
                            text=True, timeout=300, cwd=script.parent)
    outcomes = {}
    for line in result.stdout.splitlines():
        record = json.loads(line)
        outcomes[record.pop("name")] = record
    return outcomes, result


@pytest.mark.parametrize("call", DANGEROUS, ids=lambda c: c.name)
def test_dangerous_call_in_a_child_process(call, child_outcomes):
    if call.name.startswith("core-") and not _backend.cpp_available():
        pytest.skip("the C++ extension is not built")
    outcomes, result = child_outcomes
    assert call.name in outcomes, f"the child died before {call.name} (exit {result.returncode}):\n{result.stderr}"
    check(call, outcomes[call.name])


def test_the_child_process_exits_cleanly(child_outcomes):
    _, result = child_outcomes
    assert result.returncode == 0, result.stderr
