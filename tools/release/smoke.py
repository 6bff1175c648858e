"""Release smoke test: an installed fastattn (a wheel or an sdist build) works as shipped.

Run by tools/release/check_dist.sh with the virtual environment's Python, from a directory
outside the source tree, with `python -I` (so neither the script's directory nor the current
directory is on sys.path) and a PATH without a C/C++ compiler. Checks:

- `fastattn` is imported from the given environment's site-packages, not from a source tree;
- show_config(): the C++ backend, OpenMP on, at least one ISA this CPU runs;
- on every ISA in `_core.supported_isas()` (selected with `fastattn.set_isa`): attention and
  attention_backward agree with `backend="numpy"`, float32 and float64, causal and not,
  multi-head and GQA; a call with two threads equals the single-threaded one bit for bit;
- the OpenMP runtime the process actually mapped (/proc/self/maps): with `--libgomp vendored`
  exactly one libgomp, the copy auditwheel put in the wheel's `fastattn.libs/`; with
  `--libgomp any` at least one (an sdist build links the system's);
- and an OpenMP team really starts (the process gains threads) when more than one is allowed,
  with the same result as one thread.

Usage: python -I smoke.py --prefix VENV [--libgomp vendored|any]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

import fastattn
from fastattn import _backend

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout this script came from
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-12}  # max |cpp - numpy| / (1 + max |numpy|)


def fail(message: str) -> None:
    print(f"smoke: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def check(condition: bool, message: str) -> None:
    if not condition:
        fail(message)


def within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def mapped_libgomp() -> list[str]:
    with open("/proc/self/maps") as maps:
        paths = {line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6}
    return sorted(p for p in paths if "libgomp" in os.path.basename(p))


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    got64, want64 = np.asarray(got, np.float64), np.asarray(want, np.float64)
    check(not np.isnan(got64).any(), "NaN in the C++ result")
    return float(np.max(np.abs(got64 - want64), initial=0.0) / (1.0 + np.max(np.abs(want64), initial=0.0)))


def parity(isa: str, rng: np.random.Generator) -> int:
    cases = 0
    for dtype in (np.float32, np.float64):
        for hq, hkv in ((4, 4), (8, 2)):  # multi-head, and GQA (4 query heads per K/V head)
            for causal in (False, True, "lower_right"):
                q = rng.standard_normal((2, hq, 37, 24)).astype(dtype)
                k = rng.standard_normal((2, hkv, 53, 24)).astype(dtype)
                v = rng.standard_normal((2, hkv, 53, 20)).astype(dtype)
                dout = rng.standard_normal((2, hq, 37, 20)).astype(dtype)
                what = f"isa={isa} dtype={np.dtype(dtype).name} heads={hq}/{hkv} causal={causal}"
                out, lse = fastattn.attention(q, k, v, causal=causal, return_lse=True, backend="cpp")
                ref_out, ref_lse = fastattn.attention(q, k, v, causal=causal, return_lse=True, backend="numpy")
                check(out.dtype == dtype and out.shape == ref_out.shape, f"{what}: out {out.dtype} {out.shape}")
                for name, got, want in (("out", out, ref_out), ("lse", lse, ref_lse)):
                    err = rel_err(got, want)
                    check(err <= TOLERANCE[dtype], f"{what}: {name} differs from NumPy by {err:.3g}")
                grads = fastattn.attention_backward(dout, q, k, v, out, lse, causal=causal, backend="cpp")
                ref_grads = fastattn.attention_backward(dout, q, k, v, ref_out, ref_lse, causal=causal,
                                                        backend="numpy")
                for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads):
                    err = rel_err(got, want)
                    # Gradients sum over more terms than the forward: 10x the forward's bound.
                    check(err <= 10 * TOLERANCE[dtype], f"{what}: {name} differs from NumPy by {err:.3g}")
                one = fastattn.attention(q, k, v, causal=causal, backend="cpp", num_threads=1)
                two = fastattn.attention(q, k, v, causal=causal, backend="cpp", num_threads=2)
                check(np.array_equal(one, two) and np.array_equal(one, out), f"{what}: result depends on threads")
                cases += 1
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prefix", required=True, type=Path, help="the environment fastattn must come from")
    parser.add_argument("--libgomp", choices=("vendored", "any"), default="any")
    args = parser.parse_args()

    package = Path(fastattn.__file__).resolve().parent
    print(f"smoke: fastattn {fastattn.__version__} from {package}")
    check(within(package, args.prefix), f"fastattn imported from {package}, not from {args.prefix}")
    check(not within(package, SOURCE_ROOT), f"fastattn imported from the source tree {SOURCE_ROOT}")
    check(within(Path(sys.prefix), args.prefix), f"running in {sys.prefix}, not in {args.prefix}")
    check(not any(within(Path(p or "."), SOURCE_ROOT) for p in sys.path), f"the source tree is on sys.path: {sys.path}")

    config = fastattn.show_config()
    check(config["backend"] == "cpp", f"backend {config['backend']!r}: {config.get('import_error')}")
    check(config["openmp"] is True, "built without OpenMP")
    core = _backend._core
    isas = list(core.supported_isas())
    check(bool(isas) and isas == config["supported_isas"], f"supported ISAs {isas} vs {config['supported_isas']}")

    before = threads()
    rng = np.random.default_rng(20261206)
    previous = fastattn.get_isa()
    for isa in isas:
        fastattn.set_isa(isa)
        check(fastattn.get_isa() == isa, f"set_isa({isa!r}) left {fastattn.get_isa()!r} selected")
        print(f"smoke: {isa}: {parity(isa, rng)} cases agree with NumPy")
    fastattn.set_isa(previous)
    # Big enough to be split across threads (the kernel runs tiny calls on one thread).
    q, k, v = (rng.standard_normal((1, 8, 512, 64)).astype(np.float32) for _ in range(3))
    check(np.array_equal(fastattn.attention(q, k, v, causal=True, num_threads=1),
                         fastattn.attention(q, k, v, causal=True, num_threads=2)), "a 2-thread call differs")
    after = threads()

    gomp = mapped_libgomp()
    print(f"smoke: libgomp mapped: {', '.join(gomp) or '-'}")
    check(len(gomp) == 1, f"expected one libgomp in the process, found {gomp}")
    if args.libgomp == "vendored":
        libs = package.parent / "fastattn.libs"
        check(within(Path(gomp[0]), libs), f"libgomp {gomp[0]} is not the wheel's copy in {libs}")
    if os.cpu_count() and os.cpu_count() > 1 and config["num_threads"] > 1:
        check(after > before, f"no OpenMP team started ({before} -> {after} threads)")
    print(f"smoke: OK ({len(isas)} ISA(s), threads {before} -> {after})")


if __name__ == "__main__":
    main()
