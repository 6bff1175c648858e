#!/usr/bin/env bash
# Memory-safety run for CI: build the extension with AddressSanitizer + UndefinedBehaviorSanitizer
# (a Debug build with the CMake option FASTATTN_SANITIZE) in a fresh virtual environment and run
# the default test suite (the README's `python -m pytest`) under it. Fails on a test failure and
# on any sanitizer report, including one from a subprocess that a test starts.
#
# Usage: tools/sanitize/run.sh [VENV]      (default VENV: .venv-asan in the repository root)
# Needs g++ with its libasan and libubsan (Debian: part of g++), and nm (binutils).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
venv=${1:-$root/.venv-asan}

echo "== sanitize: install (Debug, -fsanitize=address,undefined) into $venv"
start=$SECONDS
rm -rf "$venv"
python3 -m venv "$venv"
. "$venv/bin/activate"
pip install ".[test]" -C cmake.build-type=Debug -C cmake.define.FASTATTN_SANITIZE=ON -C build-dir=build/asan
echo "== sanitize: build took $((SECONDS - start)) s"

libasan=$(g++ -print-file-name=libasan.so)
libubsan=$(g++ -print-file-name=libubsan.so)
libstdcxx=$(g++ -print-file-name=libstdc++.so)
for lib in "$libasan" "$libubsan" "$libstdcxx"; do
    if [ ! -e "$lib" ]; then
        echo "sanitize: g++ has no $(basename "$lib") ($lib)" >&2
        exit 2
    fi
done

# Every report goes to a file, one per process (<logs>/asan.<pid>, <logs>/ubsan.<pid>): then a
# report from a subprocess whose exit status or stderr a test does not look at, or one that
# pytest's output capture would swallow when the process aborts, still fails this script.
logs=$(mktemp -d "${TMPDIR:-/tmp}/fastattn-sanitize.XXXXXX")
# GCC's UBSan runtime is a library of its own beside ASan's, and its reports ignore
# UBSAN_OPTIONS' log_path (they go to stderr, where pytest's capture loses them when the
# process aborts): it sets its path through the exported __sanitizer_set_report_path, which
# ASan's copy, loaded first, interposes. This hook, run by a .pth file at the start of every
# Python process of this venv, calls libubsan's own copy (dlsym on libubsan itself) instead.
site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cat > "$site/_fastattn_sanitize.py" <<PY
"""Sends this process's UBSan reports to \$FASTATTN_SANITIZE_LOGS/ubsan.<pid> (tools/sanitize/run.sh)."""
import ctypes, os

LOG = None
if os.environ.get("FASTATTN_SANITIZE_LOGS"):
    LOG = os.path.join(os.environ["FASTATTN_SANITIZE_LOGS"], "ubsan")
    ctypes.CDLL("$(readlink -f "$libubsan")").__sanitizer_set_report_path(LOG.encode())
PY
echo "import _fastattn_sanitize" > "$site/_fastattn_sanitize.pth"
export FASTATTN_SANITIZE_LOGS=$logs

# Python itself is not instrumented, so the ASan runtime must be the first library loaded.
# libstdc++ is preloaded too: ASan intercepts __cxa_throw and looks up the real one when it
# starts, before Python has loaded any C++; without it the first C++ exception thrown (e.g.
# set_isa("bogus") -> ValueError) dies with CHECK failed "real___cxa_throw != 0".
export LD_PRELOAD="$libasan $libstdcxx"
# detect_leaks=0: CPython's own allocations at exit would be reported as leaks (the plain
# build's RSS test covers leaks). halt_on_error + abort_on_error: the first report ends the process with
# SIGABRT (the build has -fno-sanitize-recover=all, so UBSan cannot continue either).
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:check_initialization_order=1:strict_init_order=1:detect_stack_use_after_return=1:log_path=$logs/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1"
# Python's own allocator serves small objects from its arenas, out of ASan's sight.
export PYTHONMALLOC=malloc

report() {  # prints every report file; fails if there is one
    local found=0 f
    for f in "$logs"/*; do
        [ -s "$f" ] || continue
        found=1
        echo "---- sanitizer report: $f" >&2
        cat "$f" >&2
    done
    return $found
}

# The module the tests import must be the sanitized one, and must import: a build that fails
# to load falls back to NumPy and would pass the suite without running any C++.
python - <<'PY'
import os, subprocess
import _fastattn_sanitize
from fastattn import _backend
assert _backend.cpp_available(), f"sanitized _core did not import: {_backend.IMPORT_ERROR}"
assert _fastattn_sanitize.LOG, "UBSan's report path is not set"
so = _backend._core.__file__
symbols = subprocess.run(["nm", "-D", "--undefined-only", so], capture_output=True, text=True, check=True).stdout
have = [s for s in ("__asan_init", "__ubsan_handle_") if s in symbols]
assert have == ["__asan_init", "__ubsan_handle_"], f"{so} is not built with ASan and UBSan (has {have})"
with open("/proc/self/maps") as maps:
    runtimes = sorted({os.path.basename(line.split()[-1]) for line in maps if "/libasan" in line or "/libubsan" in line})
print(f"sanitize: fastattn._core is the sanitized build ({os.path.basename(so)} needs __asan_init and "
      f"__ubsan_handle_*; loaded {', '.join(runtimes)}; ISAs {', '.join(_backend._core.supported_isas())})")
PY
report || { echo "sanitize: FAILED: sanitizer report while importing fastattn" >&2; exit 1; }

echo "== sanitize: test (README command under ASan+UBSan)"
start=$SECONDS
status=0
# All of the default run but the RSS tests (the two leak tests and tests/test_memory.py's peak
# RSS): ASan holds freed memory in its quarantine (256 MB) and its RSS grows by some MiB over
# 20,000 calls (32 KiB with quarantine_size_mb=0); those tests run in the plain build.
python -m pytest -p no:cacheprovider -q --durations=10 \
    --deselect tests/test_reliability.py::test_twenty_thousand_calls_do_not_grow_rss \
    --deselect tests/test_kv_cache_attention.py::test_decode_cycles_do_not_leak \
    --ignore tests/test_memory.py || status=$?
echo "== sanitize: tests took $((SECONDS - start)) s"
if ! report; then
    echo "sanitize: FAILED: sanitizer report(s) above (pytest exit status $status)" >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "sanitize: FAILED: pytest exit status $status" >&2
    exit "$status"
fi
rm -rf "$logs"
echo "sanitize: no AddressSanitizer or UndefinedBehaviorSanitizer report"
