"""Fuzz target: random shapes, strides, options and values through `attention` and
`attention_backward`, checked against the float64 oracle of tests/oracle.py.

One example is one call: 2-D to 5-D, batch 1-2, GQA, Lq and Lk of 1 to 130 (now and then
several key blocks, or a long decode whose keys the kernel splits), D and Dv of 1 to 70; each of
q, k, v, dout contiguous, transposed, reversed, padded, strided along features, Fortran-ordered,
broadcast or read-only; every causal mode, a bool or additive mask of a broadcast shape, kv/q
lengths (0 included), a window, ALiBi slopes, a softcap, a scale; normal, large (scores of ±1e4),
small and subnormal values; the ISA, the thread count, a preallocated `out`. The forward (out,
lse) and the gradients must match the oracle by the rules of tests/oracle.py and
test_backward.py, widened entry by entry by what FlashAttention-2's own rounding adds where the
naive baseline is exact (see rounding_allowance). test_cpp, test_numpy and test_half_dtypes take
finite inputs; test_non_finite_inputs adds NaN and ±inf to q, k and v and checks where they go.

Each property runs twice. The main run (test_cpp, test_numpy, test_half_dtypes,
test_non_finite_inputs) is derandomized and keeps no example database: every run, on every
machine, tries the same 2,000 examples, so a red main run is the change's fault, never the
draw's. The fresh run (the `*_fresh` tests, 450 examples, a few seconds) draws new examples
every time from a seed chosen per run — FASTATTN_FUZZ_SEED if set, else random — so that CI
explores beyond the fixed set. A failing fresh test shows the seed in its failure output
("replay: FASTATTN_FUZZ_SEED=<n> ..."); replay it with

    FASTATTN_FUZZ_SEED=<n> python -m pytest tests/test_fuzz.py -k fresh

FASTATTN_FUZZ=N makes the main run N times as long and random too, for a longer local or
nightly hunt. A falsifying example is printed as a Problem; `build(problem)` gives its arrays and
options.
"""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

import fastattn
from fastattn import _backend
from oracle import HALF_EPS, _eps, _scores, max_err, oracle, oracle_grads, rounding_allowance, tolerance

try:
    import ml_dtypes
except ImportError:  # optional: bfloat16 is then not drawn
    ml_dtypes = None

ISAS = tuple(_backend._core.supported_isas()) if _backend.cpp_available() else ()
needs_cpp = pytest.mark.skipif(not ISAS, reason="the C++ extension is not built")
HALF = ("float16",) + (("bfloat16",) if ml_dtypes is not None else ())

_SCALE = int(os.environ.get("FASTATTN_FUZZ", "0") or 0)


def fuzz(examples: int):
    return settings(max_examples=examples * max(1, _SCALE), deadline=None, derandomize=not _SCALE,
                    database=None, suppress_health_check=[HealthCheck.too_slow])


def _fresh_seed() -> int:
    text = os.environ.get("FASTATTN_FUZZ_SEED", "").strip()
    return int(text) if text else int.from_bytes(os.urandom(4), "little")


FRESH_SEED = _fresh_seed()  # once per process: every fresh test of a run draws from it


def fresh(examples: int):
    """The fresh run's settings: `examples` new examples, drawn from FRESH_SEED."""
    def decorate(test):
        test = settings(max_examples=examples, deadline=None, derandomize=False, database=None,
                        suppress_health_check=[HealthCheck.too_slow])(test)
        return seed(FRESH_SEED)(test)
    return decorate


def note_replay() -> None:
    """Puts the seed into a failing fresh example's report (pytest shows Hypothesis's notes)."""
    note(f"replay: FASTATTN_FUZZ_SEED={FRESH_SEED} python -m pytest tests/test_fuzz.py -k fresh")


def as_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


# ---- the drawn problem ---------------------------------------------------------------------------

# Magnitudes of q, k, v: q, k of 100 make scores of ±1e4 (a naive exp overflows); "subnormal"
# inputs are below the dtype's smallest normal number, "small" ones have subnormal products.
SUBNORMAL = {"float32": 1e-41, "float64": 1e-312, "float16": 1e-7, "bfloat16": 1e-40}
SMALL = {"float32": 1e-21, "float64": 1e-160, "float16": 1e-3, "bfloat16": 1e-21}
MAGNITUDES = ("1", "100", "0.001", "small", "subnormal")
LAYOUTS = ("contiguous", "transposed", "reversed", "padded", "strided", "fortran", "broadcast", "readonly",
           "batch_swapped")
ODD_SIZES = (1, 2, 3, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 130)

lengths = st.one_of(st.integers(1, 20), st.integers(1, 130), st.sampled_from(ODD_SIZES))
dims = st.one_of(st.integers(1, 20), st.integers(1, 70), st.sampled_from(tuple(n for n in ODD_SIZES if n <= 70)))


class Problem(NamedTuple):
    batch: tuple  # batch shape: () for 2-D and 3-D calls
    two_d: bool
    hkv: int
    group: int
    lq: int
    lk: int
    d: int
    dv: int
    dtype: str
    layouts: tuple  # of q, k, v, dout
    magnitudes: tuple  # of q, k, v
    options: dict  # causal, scale, window, softcap: final; mask, lengths, slopes: recipes for `build`
    nonfinite: int  # how many NaN/±inf to inject into q, k, v
    backend: str
    isa: Optional[str]
    num_threads: Optional[int]
    preallocated_out: bool
    seed: int


@st.composite
def problems(draw, backends, dtypes=("float32", "float64"), nonfinite=False):
    ndim = draw(st.sampled_from((4, 2, 3, 5)))
    batch = {2: (), 3: (), 4: (draw(st.integers(1, 2)),), 5: (draw(st.integers(1, 2)), draw(st.integers(1, 2)))}[ndim]
    hkv, group = (1, 1) if ndim == 2 else (draw(st.integers(1, 2)), draw(st.integers(1, 3)))
    branch = draw(st.integers(0, 15))
    if branch == 0:  # a decode step on a long cache: few tasks, so the kernel splits the keys
        lq, lk = draw(st.integers(1, 4)), draw(st.integers(131, 1500))
    elif branch == 1:  # several key blocks (256 keys forward, 288 backward)
        lq, lk = draw(st.integers(1, 70)), draw(st.one_of(st.integers(250, 600), st.sampled_from((256, 257, 288, 289))))
    else:
        lq, lk = draw(lengths), draw(lengths)
    d, dv = draw(dims), draw(dims)
    dtype = draw(st.sampled_from(dtypes))
    if draw(st.integers(0, 2)) == 0:  # the common case, which takes fastattn's fast path when plain
        layouts = ("contiguous",) * 4
    else:
        layouts = tuple(draw(st.sampled_from(LAYOUTS)) for _ in range(4))
    if draw(st.integers(0, 2)) == 0:  # 16-bit results of scores of 1e4 overflow (lse > 65504): not those
        choices = MAGNITUDES if dtype in ("float32", "float64") else tuple(m for m in MAGNITUDES if m != "100")
        magnitudes = tuple(draw(st.sampled_from(choices)) for _ in range(3))
    else:
        magnitudes = ("1", "1", "1")

    hq = hkv * group
    scores_shape = (lq, lk) if ndim == 2 else batch + (hq, lq, lk)
    options = {"causal": draw(st.sampled_from((False, True, "upper_left", "lower_right")))}
    options["scale"] = draw(st.one_of(st.none(), st.floats(-3, 3, allow_nan=False), st.just(0.0)))
    plain = draw(st.integers(0, 7)) == 0  # no other option
    if not plain and draw(st.booleans()):
        kind = draw(st.sampled_from(("bool", "additive")))
        keep = [draw(st.booleans()) for _ in scores_shape]  # which axes the mask has (else size 1)
        shape = tuple(n if kept else 1 for n, kept in zip(scores_shape, keep))
        shape = shape[draw(st.integers(0, len(shape))):]  # leading axes may be left out
        if kind == "bool":
            recipe = (kind, shape, draw(st.sampled_from((0.0, 0.1, 0.5, 0.9, 1.0))))
        else:
            mask_dtype = draw(st.sampled_from(("float32", "float64", dtype)))
            recipe = (kind, shape, draw(st.sampled_from((0.0, 0.2, 0.9, 1.0))), draw(st.sampled_from((1.0, 30.0))),
                      mask_dtype)
        options["mask"] = recipe
    for name, n in (("kv_lengths", lk), ("q_lengths", lq)):
        if not plain and draw(st.integers(0, 2)) == 0:
            keep = [draw(st.booleans()) for _ in batch]
            shape = tuple(b if kept else 1 for b, kept in zip(batch, keep))
            options[name] = (shape[draw(st.integers(0, len(shape))):], n)
    if not plain and draw(st.integers(0, 2)) == 0:
        side = st.one_of(st.none(), st.integers(0, 8), st.integers(0, lk + 5))
        options["window"] = (draw(side), draw(side))
    if not plain and draw(st.integers(0, 2)) == 0:
        per_batch = bool(batch) and draw(st.booleans())
        options["alibi_slopes"] = ((batch if per_batch else ()) + (hq,), draw(st.sampled_from(("alibi", "uniform"))))
    if not plain and draw(st.integers(0, 2)) == 0:
        options["softcap"] = draw(st.one_of(st.floats(0.05, 60), st.sampled_from((1.0, 50.0))))

    backend = draw(st.sampled_from(backends))
    isa = draw(st.sampled_from(ISAS)) if backend == "cpp" else None
    return Problem(batch, ndim == 2, hkv, group, lq, lk, d, dv, dtype, layouts, magnitudes, options,
                   draw(st.integers(1, 4)) if nonfinite else 0, backend, isa,
                   draw(st.sampled_from((1, 2, 3, None))), draw(st.integers(0, 4)) == 0,
                   draw(st.integers(0, 2**32 - 1)))


# ---- building the arrays --------------------------------------------------------------------------

def laid_out(x: np.ndarray, layout: str, rng) -> np.ndarray:
    """x (or, for "broadcast", x with one axis repeated) in the given memory layout. Unused
    memory around a view is NaN, so a read out of bounds shows."""
    if layout == "transposed":  # (..., L, H, D) storage, or (D, L) for a 2-D call
        axes = (-3, -2) if x.ndim > 2 else (-2, -1)
        return np.ascontiguousarray(np.swapaxes(x, *axes)).swapaxes(*axes)
    if layout == "reversed":  # negative strides, along the last axis too now and then
        axes = tuple(a for a in range(x.ndim) if rng.random() < 0.5) or (x.ndim - 2,)
        return np.flip(np.ascontiguousarray(np.flip(x, axes)), axes)
    if layout == "padded":  # a window into a larger array
        base = np.full(tuple(n + 3 for n in x.shape), np.nan, x.dtype)
        view = base[tuple(slice(1, n + 1) for n in x.shape)]
        view[...] = x
        return view
    if layout == "strided":  # every other (or third) feature of a larger array
        step = int(rng.integers(2, 4))
        base = np.full(x.shape[:-1] + (x.shape[-1] * step,), np.nan, x.dtype)
        base[..., ::step] = x
        return base[..., ::step]
    if layout == "fortran":
        return np.asfortranarray(x)
    if layout == "broadcast":  # a stride-0 axis (read-only)
        axis = int(rng.integers(0, x.ndim - 1))
        return np.broadcast_to(x.take([0], axis=axis), x.shape)
    if layout == "readonly":
        x = x.copy()
        x.flags.writeable = False
        return x
    if layout == "batch_swapped" and x.ndim == 5:  # batch axes that cannot merge into one stride
        return np.ascontiguousarray(np.swapaxes(x, 0, 1)).swapaxes(0, 1)
    return x


def values(rng, shape, dtype: np.dtype, magnitude: str) -> np.ndarray:
    scale = {"small": SMALL[dtype.name], "subnormal": SUBNORMAL[dtype.name]}.get(magnitude) or float(magnitude)
    return (rng.standard_normal(shape) * scale).astype(dtype)


def inject_nonfinite(rng, arrays, count: int) -> None:
    for _ in range(count):
        x = arrays[int(rng.integers(0, 3))]
        at = tuple(int(rng.integers(0, n)) for n in x.shape)
        x[at] = rng.choice([np.nan, np.nan, np.inf, -np.inf])


def build(p: Problem):
    """(q, k, v, dout, options) of a problem."""
    rng = np.random.default_rng(p.seed)
    dtype = as_dtype(p.dtype)
    hq = p.hkv * p.group

    def shape(heads, length, dim):
        return p.batch + (() if p.two_d else (heads,)) + (length, dim)

    q = values(rng, shape(hq, p.lq, p.d), dtype, p.magnitudes[0])
    k = values(rng, shape(p.hkv, p.lk, p.d), dtype, p.magnitudes[1])
    v = values(rng, shape(p.hkv, p.lk, p.dv), dtype, p.magnitudes[2])
    dout = rng.standard_normal(shape(hq, p.lq, p.dv)).astype(dtype)
    inject_nonfinite(rng, (q, k, v), p.nonfinite)
    q, k, v, dout = (laid_out(x, layout, rng) for x, layout in zip((q, k, v, dout), p.layouts))

    options = {key: p.options[key] for key in ("causal", "scale", "window", "softcap") if key in p.options}
    if "mask" in p.options:
        kind, mshape, level, *rest = p.options["mask"]
        if kind == "bool":
            mask = np.asarray(rng.random(mshape) < level)
        else:  # values in the scores' range, a fraction -inf
            magnitude, mask_dtype = rest
            mask = np.asarray(rng.standard_normal(mshape) * magnitude)
            mask[rng.random(mshape) < level] = -np.inf
            mask = mask.astype(as_dtype(mask_dtype))
        options["mask"] = np.asfortranarray(mask) if rng.random() < 0.3 else mask
    for name in ("kv_lengths", "q_lengths"):
        if name in p.options:
            lshape, n = p.options[name]
            choice = rng.integers(0, 4, size=lshape)  # 0, the full length, or between (often)
            lengths = np.where(choice == 0, 0, np.where(choice == 1, n, rng.integers(0, n + 1, size=lshape)))
            options[name] = lengths if lshape or rng.random() < 0.5 else int(lengths)
    if "alibi_slopes" in p.options:
        sshape, kind = p.options["alibi_slopes"]
        if kind == "alibi":
            slopes = np.broadcast_to(2.0 ** -np.arange(1, hq + 1), sshape) * rng.uniform(0.5, 2)
        else:
            slopes = rng.uniform(-0.5, 1.0, size=sshape)
        options["alibi_slopes"] = slopes
    return q, k, v, dout, options


@contextlib.contextmanager
def isa_selected(isa: Optional[str]):
    if isa is None:
        yield
        return
    previous = fastattn.set_isa(isa)
    try:
        yield
    finally:
        fastattn.set_isa(previous)


def run(p: Problem, q, k, v, dout, options):
    """(out, lse, grads, the dtype of the lse the backward got) from fastattn."""
    kwargs = dict(options, backend=p.backend, num_threads=p.num_threads)
    before = [np.array(x, copy=True) for x in (q, k, v, dout)]
    with isa_selected(p.isa):
        out_arg = None
        if p.preallocated_out:
            out_arg = np.full(np.shape(q)[:-1] + (np.shape(v)[-1],), np.nan, np.asarray(q).dtype)
        out, lse = fastattn.attention(q, k, v, return_lse=True, out=out_arg, **kwargs)
        assert out_arg is None or out is out_arg
        grads = fastattn.attention_backward(dout, q, k, v, out, lse, **kwargs)  # lse: float32/64
    for x, saved in zip((q, k, v, dout), before):
        np.testing.assert_array_equal(x, saved, err_msg="an input was modified")
    return out, lse, grads, lse.dtype


# ---- the comparison with the oracle -------------------------------------------------------------

def grad_tolerance(naive_err: float, dtype: np.dtype, magnitude: float) -> float:
    """test_backward.py's rule for a gradient: 2·err(naive float32) + atol·(1 + its magnitude)."""
    if dtype.name == "float64":
        return 2 * naive_err * np.finfo(np.float64).eps / np.finfo(np.float32).eps + 1e-13 * (1 + magnitude)
    if dtype.name in HALF_EPS:  # the inputs' rounding is shared; dout is 16-bit
        return 2 * naive_err + 4 * HALF_EPS[dtype.name] * (1 + magnitude)
    return 2 * naive_err + 1e-6 * (1 + magnitude)


def leading(x, two_d: bool) -> np.ndarray:
    """x as float64 with the oracle's shapes: a leading axis of 1 for a 2-D call."""
    x = np.asarray(x, np.float64)
    return x[None] if two_d else x


def assert_close(name, got, want, naive, tol, allowance, where=None):
    """max over the entries `where` of |got − want| − allowance <= tol (equal ±inf counts as 0).
    `allowance()` gives the per-entry allowance; it is costly, so it is computed only when the
    error is beyond tol without it."""
    def pick(x):
        return x if where is None else np.broadcast_to(x, where.shape)[where]

    got, want, naive = pick(got), pick(want), pick(naive)
    same_inf = np.isinf(want) & (got == want)
    with np.errstate(invalid="ignore"):
        diff = np.where(same_inf, 0.0, np.abs(got - want))
    limit = tol(max_err(naive, want))
    if not float(np.max(diff, initial=0.0)) <= limit:
        err = float(np.max(diff - pick(allowance()), initial=0.0))
        assert err <= limit, f"{name}: max error {err:.3g} beyond the rounding allowance > tolerance {limit:.3g}"


def assert_matches(q, k, v, dout, out, lse, grads, lse_dtype, where=None, **options):
    """fastattn's out, lse and (dq, dk, dv) against the float64 oracle: the rules of
    tests/oracle.py (forward) and test_backward.py (gradients), each entry widened by its
    rounding_allowance. `where` (a Reach) restricts the check to some entries."""
    dtype = np.asarray(q).dtype
    two_d = np.ndim(q) == 2
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert lse.dtype == (np.float64 if dtype == np.float64 else np.float32)  # the compute dtype
    assert out.shape == np.shape(q)[:-1] + np.shape(v)[-1:] and lse.shape == np.shape(q)[:-1]
    assert [g.shape for g in grads] == [np.shape(x) for x in (q, k, v)]
    want, want_lse = (leading(x, two_d) for x in oracle(q, k, v, **options))
    naive, naive_lse = oracle(q, k, v, dtype=np.float32, **options)
    if dtype.name in HALF_EPS:  # the naive result rounded to the output dtype, as oracle.py does
        naive, naive_lse = naive.astype(dtype), naive_lse.astype(dtype)
    naive, naive_lse = leading(naive, two_d), leading(naive_lse, two_d)
    allowances = {}

    def allow(name):
        def get():
            if not allowances:
                allowances.update(rounding_allowance(q, k, v, dout, lse_dtype, **options))
            return allowances[name]
        return get

    got, got_lse = leading(out, two_d), leading(lse, two_d)
    out_where, lse_where = (None, None) if where is None else (where.out_clean, where.lse_clean)
    if where is None:
        assert not np.isnan(got).any(), "NaN in the output of finite inputs"
        assert not np.isnan(got_lse).any(), "NaN in the lse of finite inputs"
    clean_lse = got_lse if lse_where is None else got_lse[lse_where]
    np.testing.assert_array_equal(np.isneginf(clean_lse), np.isneginf(want_lse if lse_where is None
                                                                       else want_lse[lse_where]))
    v_magnitude = float(np.max(np.abs(np.asarray(v, np.float64)), initial=0.0))
    assert_close("out", got, want, naive, lambda e: tolerance(e, dtype, v_magnitude), allow("out"), out_where)
    lse_magnitude = float(np.max(np.abs(np.where(np.isinf(want_lse), 0, want_lse)), initial=0.0))
    assert_close("lse", got_lse, want_lse, naive_lse, lambda e: tolerance(e, dtype, lse_magnitude), allow("lse"),
                 lse_where)

    want_grads = oracle_grads(q, k, v, dout, **options)
    naive_grads = oracle_grads(q, k, v, dout, dtype=np.float32, **options)
    wheres = (None,) * 3 if where is None else (where.dq_clean[..., None], where.dk_clean[..., None],
                                                where.dv_clean[..., None])
    for name, g, ref, base, at in zip(("dq", "dk", "dv"), grads, want_grads, naive_grads, wheres):
        g, ref, base = (leading(x, two_d) for x in (g, ref, base))
        if dtype.name in HALF_EPS:
            base = base.astype(dtype).astype(np.float64)
        checked = g if at is None else g[np.broadcast_to(at, g.shape)]
        assert np.isfinite(checked).all(), f"{name}: non-finite where no non-finite input reaches"
        magnitude = float(np.max(np.abs(ref if at is None else ref[np.broadcast_to(at, ref.shape)]), initial=0.0))
        assert_close(name, g, ref, base, lambda e: grad_tolerance(e, dtype, magnitude), allow(name),
                     None if at is None else np.broadcast_to(at, g.shape))


# ---- the tests --------------------------------------------------------------------------------------

def check_finite_problem(p: Problem):
    q, k, v, dout, options = build(p)
    out, lse, grads, lse_dtype = run(p, q, k, v, dout, options)
    assert_matches(q, k, v, dout, out, lse, grads, lse_dtype, **options)


@needs_cpp
@fuzz(1100)
@given(problem=problems(backends=("cpp",)))
def test_cpp(problem):
    check_finite_problem(problem)


@fuzz(250)
@given(problem=problems(backends=("numpy",)))
def test_numpy(problem):
    check_finite_problem(problem)


@fuzz(200)
@given(problem=problems(backends=("cpp",) * 3 + ("numpy",) if ISAS else ("numpy",), dtypes=HALF))
def test_half_dtypes(problem):
    check_finite_problem(problem)


# The fresh run: the same properties on new examples each run (see the module docstring).

@needs_cpp
@fresh(250)
@given(problem=problems(backends=("cpp",)))
def test_cpp_fresh(problem):
    """test_cpp's property on this run's fresh examples."""
    note_replay()
    check_finite_problem(problem)


@fresh(50)
@given(problem=problems(backends=("numpy",)))
def test_numpy_fresh(problem):
    """test_numpy's property on this run's fresh examples."""
    note_replay()
    check_finite_problem(problem)


@fresh(50)
@given(problem=problems(backends=("cpp",) * 3 + ("numpy",) if ISAS else ("numpy",), dtypes=HALF))
def test_half_dtypes_fresh(problem):
    """test_half_dtypes' property on this run's fresh examples."""
    note_replay()
    check_finite_problem(problem)


# ---- non-finite inputs ------------------------------------------------------------------------

class Reach(NamedTuple):
    """Where the non-finite inputs of a call may go, from which keys each query row sees.

    The oracle's own NaN pattern cannot be used as it is: its `p @ v` multiplies the exact zero
    weight of a key a row cannot see by that key's v, so a NaN (or inf) there reaches every row.
    fastattn promises the opposite (docs/architecture.md: NaN never leaks into unrelated rows). So the
    pattern is derived here from the visibility the oracle computes, and the oracle is asked only
    for the entries no non-finite input reaches (with the non-finite inputs zeroed: those
    entries do not depend on them). Arrays have the oracle's shapes (2-D: a leading axis of 1).

    A key a row sees but whose weight underflows (below 2^-100 of the row's largest in float32,
    2^-1000 in float64) is left undecided for v: the kernel drops exact-zero weights under a mask
    and the NumPy backend always, so 0·NaN may or may not be NaN there (_reference._weighted_sum).
    """

    out_nan: np.ndarray  # (..., Hq, Lq, Dv): must be NaN
    out_nonfinite: np.ndarray  # must be NaN or ±inf
    out_clean: np.ndarray  # reached by no non-finite input: must match the oracle
    lse_nan: np.ndarray  # (..., Hq, Lq)
    lse_clean: np.ndarray
    dq_clean: np.ndarray  # (..., Hq, Lq)
    dk_clean: np.ndarray  # (..., Hkv, Lk)
    dv_clean: np.ndarray  # (..., Hkv, Lk)


def reach(q, k, v, options) -> Reach:
    dtype = np.asarray(q).dtype
    q, k, v = (leading(x, np.ndim(q) == 2) for x in (q, k, v))
    scores = _scores(*(np.where(np.isfinite(x), x, 0) for x in (q, k, v)), **options)[0]  # of finite inputs
    hkv, group = k.shape[-3], q.shape[-3] // k.shape[-3]
    k, v = np.repeat(k, group, axis=-3), np.repeat(v, group, axis=-3)
    visible = np.isfinite(scores)  # every rule: mask, causal, window, lengths
    row_max = np.max(np.where(visible, scores, -np.inf), axis=-1, keepdims=True, initial=-np.inf)
    floor = (1000 if dtype == np.float64 else 100) * np.log(2)
    weighty = visible & (scores - np.where(np.isinf(row_max), 0, row_max) > -floor)

    def any_seen(bad, seen=visible):  # bad (..., Hq, Lk, C) -> (..., Hq, Lq, C): does a seen key have it?
        return seen.astype(np.float64) @ bad.astype(np.float64) > 0

    sees_a_key = visible.any(axis=-1)
    row_touched = sees_a_key & (~np.isfinite(q).all(-1) | any_seen(~np.isfinite(k).all(-1, keepdims=True))[..., 0])
    row_nan = sees_a_key & (np.isnan(q).any(-1) | any_seen(np.isnan(k).any(-1, keepdims=True))[..., 0])
    column_touched = any_seen(~np.isfinite(v))
    column_nan = any_seen(np.isnan(v), weighty)
    out_nan = row_nan[..., None] | column_nan & ~row_touched[..., None]
    out_nonfinite = out_nan | any_seen(~np.isfinite(v), weighty) & ~row_touched[..., None]
    out_clean = ~row_touched[..., None] & ~column_touched

    def keys_seen_only_by(rows):  # (..., Hq, Lq) -> (..., Hkv, Lk): every row that sees the key is in rows
        reached = np.swapaxes(visible, -1, -2).astype(np.float64) @ (~rows)[..., None].astype(np.float64) > 0
        return ~reached[..., 0].reshape(reached.shape[:-3] + (hkv, group, -1)).any(axis=-2)

    row_clean = ~row_touched & ~column_touched.any(axis=-1)
    return Reach(out_nan, out_nonfinite, out_clean, row_nan, ~row_touched,
                 row_clean, keys_seen_only_by(row_clean), keys_seen_only_by(~row_touched))


@fuzz(450)
@given(problem=problems(backends=("cpp",) * 3 + ("numpy",) if ISAS else ("numpy",), nonfinite=True))
def test_non_finite_inputs(problem):
    """NaN is NaN exactly where a NaN input reaches (its query row; the rows that see its key;
    for v, only its column), an inf in v makes what it reaches non-finite, and every entry no
    non-finite input reaches — fully masked rows included — matches the oracle, gradients too."""
    check_non_finite_problem(problem)


@fresh(100)
@given(problem=problems(backends=("cpp",) * 3 + ("numpy",) if ISAS else ("numpy",), nonfinite=True))
def test_non_finite_inputs_fresh(problem):
    """test_non_finite_inputs' property on this run's fresh examples."""
    note_replay()
    check_non_finite_problem(problem)


def check_non_finite_problem(problem: Problem):
    q, k, v, dout, options = build(problem)
    out, lse, grads, lse_dtype = run(problem, q, k, v, dout, options)
    r = reach(q, k, v, options)
    two_d = np.ndim(q) == 2
    got, got_lse = leading(out, two_d), leading(lse, two_d)
    decided = r.out_nan | r.out_clean
    np.testing.assert_array_equal(np.isnan(got)[decided], r.out_nan[decided],
                                  err_msg="out: NaN must be exactly where a NaN input reaches")
    assert not np.isfinite(got[r.out_nonfinite]).any(), "out: finite where a non-finite input reaches"
    decided = r.lse_nan | r.lse_clean
    np.testing.assert_array_equal(np.isnan(got_lse)[decided], r.lse_nan[decided],
                                  err_msg="lse: NaN must be exactly where a NaN input reaches")
    zeroed = [np.where(np.isfinite(np.asarray(x, np.float64)), x, 0).astype(np.asarray(x).dtype) for x in (q, k, v)]
    assert_matches(*zeroed, dout, out, lse, grads, lse_dtype, where=r, **options)
