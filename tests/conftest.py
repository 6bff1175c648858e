"""Shared fixtures: every test that takes `backend` runs on each ISA this CPU supports and on NumPy."""

from __future__ import annotations

import os

import numpy as np
import pytest

import fastattn
from fastattn import _backend


def _backend_params():
    isas = _backend._core.supported_isas() if _backend.cpp_available() else []
    return [pytest.param(("cpp", isa), id=f"cpp-{isa}") for isa in isas] + [
        pytest.param(("numpy", None), id="numpy")
    ]


@pytest.fixture(params=_backend_params())
def backend(request):
    """The `backend=` argument to pass; for "cpp" the ISA of this parameter is selected."""
    name, isa = request.param
    if isa is None:
        yield name
        return
    previous = fastattn.set_isa(isa)
    try:
        yield name
    finally:
        fastattn.set_isa(previous)


@pytest.fixture(params=_backend._core.supported_isas() if _backend.cpp_available() else [])
def isa(request):
    """For C++-only tests: each ISA this CPU supports, selected for the test."""
    previous = fastattn.set_isa(request.param)
    try:
        yield request.param
    finally:
        fastattn.set_isa(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)


@pytest.fixture
def eight_processors():
    """For thread-count tests: lets a call run up to 8 threads on any machine (the kernel caps
    at the processor count, so a 2-core machine would run 3 or 8 requested threads as 2), and
    yields team(): the thread team the calling thread's last kernel call really ran, or None
    in a build without OpenMP (every call on one thread)."""
    core = _backend._core
    core._set_processor_limit_for_testing(8)
    try:
        yield (lambda: core._last_team_size()) if core.have_openmp() else (lambda: None)
    finally:
        core._set_processor_limit_for_testing(0)


def pytest_report_header(config):
    if not _backend.cpp_available():
        return f"fastattn: NumPy backend only ({_backend.IMPORT_ERROR})"
    core = _backend._core
    return (f"fastattn: compiled ISAs {core.compiled_isas()}, this CPU runs {core.supported_isas()}, "
            f"OpenMP {'on' if core.have_openmp() else 'off'}, {core.default_num_threads()} threads")


# --- FASTATTN_RECORD_SKIPPED=FILE: the node ids of what skipped, one per line ------------------
# .ci/run sets it on the default run, installs every extra, then runs `pytest @FILE`: exactly the
# tests that skipped for want of torch, JAX, Dask or matplotlib (and any other skip) run again,
# collected by pytest rather than listed by hand.
_skipped: list = []


def pytest_collectreport(report):
    if report.skipped:  # a module skipped at import (pytest.importorskip)
        _skipped.append(report.nodeid)


def pytest_runtest_logreport(report):
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("FASTATTN_RECORD_SKIPPED")
    if path:
        with open(path, "w") as f:
            f.writelines(f"{nodeid}\n" for nodeid in dict.fromkeys(_skipped))
