#!/usr/bin/env bash
# Cross-compile fastattn's C++ kernels for AArch64 and run the NEON check under qemu.
# Not part of CI. Usage: tools/neon_check/run.sh [quick|full]   (quick: ~6 min under qemu on 2 cores)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/../../src/cpp
out=${OUT:-/tmp/fastattn-neon-check}
if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
    echo "needs Debian's cross compiler and qemu:" >&2
    echo "  apt-get install -y --no-install-recommends g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static" >&2
    exit 2
fi
mkdir -p "$out"
cxx=(aarch64-linux-gnu-g++ -O2 -std=c++17 -static -Wall -Wextra -fopenmp -I"$src")
# One object per ISA, as CMakeLists.txt builds them.
"${cxx[@]}" -DFASTATTN_ISA=scalar -c "$src/fastattn/kernels/attention_scalar.cpp" -o "$out/attention_scalar.o"
"${cxx[@]}" -DFASTATTN_ISA=neon -c "$src/fastattn/kernels/attention_neon.cpp" -o "$out/attention_neon.o"
"${cxx[@]}" -DFASTATTN_HAVE_NEON -c "$src/fastattn/dispatch.cpp" -o "$out/dispatch.o"
"${cxx[@]}" -c "$src/fastattn/threads.cpp" -o "$out/threads.o"
"${cxx[@]}" -c "$here/main.cpp" -o "$out/main.o"
"${cxx[@]}" "$out"/main.o "$out"/dispatch.o "$out"/threads.o "$out"/attention_scalar.o "$out"/attention_neon.o -o "$out/neon_check" 2>/dev/null
mode=${1:-quick}
[ "$mode" = quick ] || mode=full
exec qemu-aarch64-static "$out/neon_check" "$mode"
