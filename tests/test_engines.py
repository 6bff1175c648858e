"""The tile layer of every engine (kernels/engines/), apart from the passes: each engine's
score products and weighted sums, through its own packing, against a float64 reference on
random tiles, with tails (sizes that are not multiples of any tile), odd depths, row strides
and the term ranges the passes give. _core._engine_products runs the engine an ISA uses for a
dtype and precision (api.hpp, ProductArgs)."""

from __future__ import annotations

import numpy as np
import pytest

from fastattn import _backend, _contract

pytestmark = pytest.mark.skipif(not _backend.cpp_available(), reason="C++ extension not built")
core = _backend._core
ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
PRECISIONS = list(_contract.PRECISIONS)
F32_EPS = float(np.finfo(np.float32).eps)


def engines():
    """(isa, dtype, precision) for every engine a supported ISA runs: each distinct engine once."""
    seen, params = set(), []
    names = {_contract.F32: np.float32, _contract.F64: np.float64, _contract.F16: np.float16, _contract.BF16: BF16}
    for isa in core.supported_isas():
        previous = core.selected_isa()
        core.select_isa(isa)
        table = core.engines()
        core.select_isa(previous)
        for dtype, precision, name in table:
            key = (name, dtype)
            if key in seen:
                continue
            seen.add(key)
            precision_name = next(p for p, code in _contract.PRECISIONS.items() if code == precision)
            params.append(pytest.param((isa, np.dtype(names[dtype]), precision_name, name),
                                       id=f"{isa}-{name}-{np.dtype(names[dtype]).name}"))
    return params


def bf16_parts(x: np.ndarray, parts: int) -> np.ndarray:
    """x (float32) as the sum of `parts` bf16 parts, each the rounding of what the others left."""
    total, rest = np.zeros(x.shape), x.astype(np.float32)
    for _ in range(parts):
        part = rest.astype(BF16)
        total += part.astype(np.float64)
        rest = rest - part.astype(np.float32)
    return total


def engine_weights(name: str, weights: np.ndarray) -> np.ndarray:
    """The weights as the engine multiplies them (docs/precision.md): rounded to bf16 once
    (*_rounded), split into bf16 parts (AMX: two for bf16 and f16, three for f32x3), or float32."""
    if name.endswith("_rounded"):
        return bf16_parts(weights, 1)
    if "amx" in name:
        return bf16_parts(weights, 3 if "f32x3" in name else 2)
    return weights.astype(np.float64)


def engine_eps(name: str, dtype) -> float:
    """A product's relative error bound per term: the engine splits float32 operands into bf16
    parts (f32x3: three, ~2^-24 with the dropped products; f32x2: two, ~16 bits); else the
    compute dtype's rounding (products of bf16 or of f16's exact parts are exact)."""
    if "f32x3" in name:
        return 2.0 ** -21
    if "f32x2" in name:
        return 2.0 ** -14
    return eps(dtype)


def eps(dtype) -> float:
    return float(np.finfo(np.float64 if dtype == np.float64 else np.float32).eps)


def strided(rng, rows, cols, dtype, pad=5):
    """rows × cols of dtype with a row stride of cols + pad (a view into a wider array)."""
    wide = rng.uniform(-2, 2, (rows, cols + pad)).astype(dtype)
    return wide[:, :cols]


@pytest.mark.parametrize("engine", engines())
@pytest.mark.parametrize("rows, depth, keys", [(1, 1, 1), (6, 64, 64), (5, 33, 70), (13, 7, 129), (16, 128, 200)])
def test_score_products_match_float64(engine, rows, depth, keys, rng=np.random.default_rng(5)):
    isa, dtype, precision, name = engine
    a, b = strided(rng, rows, depth, dtype), strided(rng, keys, depth, dtype)
    out = np.full((rows, keys), np.nan, np.float32)
    core._engine_products(isa, a, b, out, _contract.PRECISIONS[precision], False, False, False, 0, 0, 0.7, None)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = 0.7 * (a64 @ b64.T)
    # Each score is a sum of depth products, rounded once per term at most (and the scale).
    # (out is float32: plus its rounding)
    bound = (depth + 2) * engine_eps(name, dtype) * (0.7 * np.abs(a64) @ np.abs(b64).T) + F32_EPS * np.abs(want) + 1e-30
    assert np.all(np.abs(out - want) <= bound), np.max(np.abs(out - want) / bound)


@pytest.mark.parametrize("engine", engines())
@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "transposed"])
@pytest.mark.parametrize("rows, terms, cols, lo, hi", [
    (1, 1, 1, 0, 1), (6, 64, 64, 0, 64), (5, 70, 33, 3, 67), (13, 129, 80, 0, 129), (7, 256, 16, 1, 255),
    (16, 40, 128, 17, 18), (3, 9, 20, 4, 4),
])
def test_weighted_sums_match_float64(engine, transposed, rows, terms, cols, lo, hi):
    isa, dtype, precision, name = engine
    rng = np.random.default_rng(rows * 1000 + terms)
    weights = rng.uniform(0, 1, (rows, terms)).astype(np.float32)
    weights[:, ::7] = 0  # zeros, as masked keys give
    values = strided(rng, terms, cols, dtype)
    c0 = rng.uniform(-1, 1, (rows, cols)).astype(np.float32)
    alpha = rng.uniform(0, 1, rows).astype(np.float32)
    a = np.ascontiguousarray(weights.T) if transposed else weights
    out = c0.copy()
    core._engine_products(isa, a, values, out, _contract.PRECISIONS[precision], True, transposed, False, lo, hi, 1.0,
                          alpha)
    w64 = engine_weights(name, weights)
    v64 = values.astype(np.float64)
    want = c0 * alpha[:, None].astype(np.float64) + w64[:, lo:hi] @ v64[lo:hi]
    bound = (hi - lo + 3) * engine_eps(name, dtype) * (np.abs(c0) + np.abs(w64[:, lo:hi]) @ np.abs(v64[lo:hi])) + \
        F32_EPS * np.abs(want) + 1e-30
    assert np.all(np.abs(out - want) <= bound), np.max(np.abs(out - want) / bound)


@pytest.mark.parametrize("engine", engines())
def test_zero_weights_keep_non_finite_values_out(engine):
    # A block with a NaN or inf value takes the zero-skipping path: a weight of exactly 0 must
    # not meet the value (0·NaN), on every engine's layout.
    isa, dtype, precision, _ = engine
    rows, terms, cols = 1, 11, 40
    values = np.ones((terms, cols), dtype)
    values[3] = np.nan
    values[8, 5] = np.inf
    weights = np.full((rows, terms), 0.5, np.float32)
    weights[0, [3, 8]] = 0
    out = np.zeros((rows, cols), np.float32)
    core._engine_products(isa, weights, values, out, _contract.PRECISIONS[precision], True, False, True, 0, terms, 1.0,
                          np.ones(rows, np.float32))
    np.testing.assert_allclose(out, np.full((rows, cols), 0.5 * (terms - 2)), rtol=1e-6)


def test_every_dtype_and_precision_has_an_engine_on_every_isa():
    for isa in core.supported_isas():
        previous = core.selected_isa()
        core.select_isa(isa)
        table = core.engines()
        core.select_isa(previous)
        assert {(d, p) for d, p, _ in table} == {(d, p) for d in range(4) for p in range(3)}
        assert all(name for _, _, name in table)
