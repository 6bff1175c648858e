"""Masks, lengths, windows, ALiBi, softcap and 16-bit inputs against the float64 oracle, on
every ISA and on NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastattn
from fastattn import _backend, _contract, _reference
from oracle import assert_matches_oracle
from test_backward import assert_grads_match_oracle

CAUSAL = [False, "upper_left", "lower_right"]
B, HQ, HKV, LQ, LK, D = 2, 4, 2, 70, 90, 16  # Lq != Lk, GQA, lengths not multiples of any block


def qkv(rng, lq=LQ, lk=LK, dtype=np.float32, hq=HQ, hkv=HKV, batch=(B,)):
    q = rng.standard_normal(batch + (hq, lq, D))
    k = rng.standard_normal(batch + (hkv, lk, D))
    v = rng.standard_normal(batch + (hkv, lk, D + 3))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def check(backend, q, k, v, **options):
    out, lse = fastattn.attention(q, k, v, return_lse=True, backend=backend, **options)
    assert_matches_oracle(q, k, v, out, lse, **options)
    return out, lse


# Mask shapes broadcasting on each axis of (B, Hq, Lq, Lk).
MASK_SHAPES = {
    "full": (B, HQ, LQ, LK),
    "key-padding": (B, 1, 1, LK),
    "per-head": (1, HQ, LQ, LK),
    "query-only": (B, 1, LQ, 1),
    "shared-2d": (LQ, LK),
    "keys-1d": (LK,),
    "head-and-key": (HQ, 1, LK),
}


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("shape", MASK_SHAPES.values(), ids=MASK_SHAPES.keys())
def test_boolean_mask(backend, rng, shape, causal):
    q, k, v = qkv(rng)
    mask = rng.random(shape) < 0.7
    check(backend, q, k, v, mask=mask, causal=causal)


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("shape", MASK_SHAPES.values(), ids=MASK_SHAPES.keys())
def test_additive_mask(backend, rng, shape, causal):
    q, k, v = qkv(rng)
    mask = rng.standard_normal(shape)  # float64: converted once to the compute dtype
    mask[rng.random(shape) < 0.2] = -np.inf
    check(backend, q, k, v, mask=mask, causal=causal)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_boolean_and_additive_masks_agree(backend, rng, dtype):
    q, k, v = qkv(rng, dtype=dtype)
    mask = rng.random((B, 1, LQ, LK)) < 0.5
    additive = np.where(mask, 0.0, -np.inf)
    a = fastattn.attention(q, k, v, mask=mask, return_lse=True, backend=backend)
    b = fastattn.attention(q, k, v, mask=additive, return_lse=True, backend=backend)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_fully_masked_rows_by_mask(backend, rng):
    q, k, v = qkv(rng)
    mask = rng.random((B, HQ, LQ, LK)) < 0.5
    mask[:, :, ::7] = False  # every 7th row sees nothing
    additive = np.where(mask, 0.0, -np.inf)
    for m in (mask, additive):
        out, lse = check(backend, q, k, v, mask=m)
        assert np.all(out[:, :, ::7] == 0) and np.all(np.isneginf(lse[:, :, ::7]))


def masks_reaching_the_kernels(monkeypatch, backend):
    """A list that gets ("forward" | "backward", mask) for each kernel call from now on: the mask
    exactly as the C++ binding (or the NumPy backend's forward/backward) receives it."""
    seen = []

    def recording(name, kernel, mask_of):
        def wrapper(*args):
            seen.append((name, mask_of(args)))
            return kernel(*args)
        return wrapper

    if backend == "numpy":  # forward(q, k, v, out, lse, options, lse_lo), backward(..., options, lse_lo)
        for name in ("forward", "backward"):
            monkeypatch.setattr(_reference, name, recording(name, getattr(_reference, name), lambda a: a[-2].mask))
    else:  # the binding's arguments are positional: the options tuple is the one _contract.Options
        def options_mask(args):
            (options,) = [a for a in args if isinstance(a, _contract.Options)]
            return options.mask
        for name in ("forward", "backward"):
            monkeypatch.setattr(_backend._core, name, recording(name, getattr(_backend._core, name), options_mask))
    return seen


def test_mask_views_are_not_copied_or_modified(backend, rng, monkeypatch):
    """docs/api.md: size-1 axes of a mask are read with stride 0, never expanded; a strided view is
    read in place. The (Lq, Lk) view below reaches the kernel, in both passes, as a view of the
    caller's memory with the caller's strides and stride 0 on the batch and head axes — no copy,
    no expansion to (B, Hq, Lq, Lk) — and is left unchanged."""
    q, k, v = qkv(rng)
    base = rng.random((LQ, 2 * LK)) < 0.6
    mask = base[::-1, ::2]  # reversed rows, every other key: a strided view
    before = base.copy()
    seen = masks_reaching_the_kernels(monkeypatch, backend)
    out, lse = check(backend, q, k, v, mask=mask)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    grads = fastattn.attention_backward(dout, q, k, v, out, lse, mask=mask, backend=backend)
    assert [name for name, _ in seen] == ["forward", "backward"]
    for name, got in seen:
        assert got.shape == (B, HQ, LQ, LK), name
        assert got.strides == (0, 0) + mask.strides, f"{name}: strides {got.strides}, not the view's"
        assert np.shares_memory(got, base), f"{name}: the mask was copied"
    np.testing.assert_array_equal(base, before)
    assert_grads_match_oracle(q, k, v, dout, grads, mask=mask)  # and read right


def test_mask_with_several_batch_dims(backend, rng):
    # Batch strides that cannot merge into one (a broadcast middle axis).
    q, k, v = qkv(rng, batch=(2, 3))
    mask = rng.random((2, 1, 1, 1, LK)) < 0.6
    check(backend, q, k, v, mask=mask, causal="lower_right")


@pytest.mark.parametrize("causal", CAUSAL)
def test_lengths(backend, rng, causal):
    q, k, v = qkv(rng, batch=(4,))
    kv_lengths = np.array([LK, 0, 33, 1])
    q_lengths = np.array([LQ, 5, 0, 64])
    for options in ({"kv_lengths": kv_lengths}, {"q_lengths": q_lengths},
                    {"kv_lengths": kv_lengths, "q_lengths": q_lengths}):
        out, lse = check(backend, q, k, v, causal=causal, **options)
        if "q_lengths" in options:  # padded query rows: zeros, lse -inf
            assert np.all(out[0, :, LQ:] == 0) and np.all(out[1, :, 5:] == 0) and np.all(out[2] == 0)
            assert np.all(np.isneginf(lse[2]))


def test_lengths_equal_the_sliced_problem(backend, rng):
    # A padded batch entry gives what the unpadded sequence gives on its own.
    q, k, v = qkv(rng, batch=(2,))
    out = fastattn.attention(q, k, v, q_lengths=[50, LQ], kv_lengths=[60, LK], causal="lower_right",
                             backend=backend)
    alone = fastattn.attention(q[0, :, :50], k[0, :, :60], v[0, :, :60], causal="lower_right", backend=backend)
    np.testing.assert_allclose(out[0, :, :50], alone, rtol=1e-5, atol=1e-6)


WINDOWS = [(0, 0), (3, 0), (0, 5), (16, 16), (None, 2), (7, None), (100, 100), (0, None)]


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_window(backend, rng, window, causal):
    q, k, v = qkv(rng)
    check(backend, q, k, v, window=window, causal=causal)


def test_window_spanning_many_blocks(backend, rng):
    q, k, v = qkv(rng, lq=300, lk=300, batch=(1,))
    check(backend, q, k, v, window=(70, 0), causal=True)
    check(backend, q, k, v, window=(10, 150))


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("per_batch", [False, True])
def test_alibi(backend, rng, per_batch, causal):
    q, k, v = qkv(rng)
    slopes = 2.0 ** -np.arange(1, HQ + 1)  # the ALiBi paper's geometric slopes
    if per_batch:
        slopes = np.stack([slopes, slopes[::-1] * 3])
    check(backend, q, k, v, alibi_slopes=slopes, causal=causal)


@pytest.mark.parametrize("softcap", [1.0, 5.0, 30.0])
def test_softcap(backend, rng, softcap):
    q, k, v = qkv(rng)
    q = q * np.float32(4)  # scores well past the cap, so tanh saturates on some
    check(backend, q, k, v, softcap=softcap)
    check(backend, q, k, v, softcap=softcap, causal=True, mask=rng.random((LQ, LK)) < 0.8)


@pytest.mark.parametrize("causal", CAUSAL)
def test_everything_at_once(backend, rng, causal):
    q, k, v = qkv(rng, batch=(3,))
    mask = rng.standard_normal((3, 1, LQ, LK))
    mask[rng.random(mask.shape) < 0.1] = -np.inf
    check(backend, q, k, v, causal=causal, mask=mask, kv_lengths=[LK, 40, 77], q_lengths=[LQ, 61, 30],
          window=(20, 3), alibi_slopes=[0.5, 0.25, 0.125, 0.0625], softcap=10.0, scale=0.3)


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
@pytest.mark.parametrize("causal", CAUSAL)
def test_half_precision(backend, rng, name, causal):
    dtype = np.float16 if name == "float16" else pytest.importorskip("ml_dtypes").bfloat16
    q, k, v = qkv(rng, dtype=dtype)
    out, lse = check(backend, q, k, v, causal=causal)
    assert out.dtype == dtype and lse.dtype == np.float32
    check(backend, q, k, v, causal=causal, mask=rng.random((B, 1, 1, LK)) < 0.7, window=(30, 30),
          alibi_slopes=[0.1, 0.2, 0.3, 0.4], softcap=20.0)
    # Every head dim, to exercise the vector and tail conversion paths.
    for d in (1, 7, 8, 17, 64, 65):
        q2, k2, v2 = (x[..., :1].repeat(d, axis=-1) * np.asarray(0.3, dtype) for x in (q, k, v))
        check(backend, q2, k2, v2, causal=causal)


def test_half_precision_out(backend, rng):
    q, k, v = qkv(rng, dtype=np.float16)
    out = np.empty((B, HQ, LQ, D + 3), np.float16)
    assert fastattn.attention(q, k, v, out=out, backend=backend) is out
    assert_matches_oracle(q, k, v, out)


def test_nan_in_a_masked_key_does_not_leak(backend, rng):
    q, k, v = qkv(rng, batch=(1,))
    k[0, :, 10] = np.nan
    v[0, :, 10] = np.nan
    mask = np.ones((LQ, LK), bool)
    mask[:, 10] = False
    for options in ({"mask": mask}, {"mask": np.where(mask, 0.0, -np.inf)}, {"kv_lengths": 10},
                    {"window": (None, 0), "causal": "upper_left"}):
        out = fastattn.attention(q, k, v, backend=backend, **options)
        rows = slice(0, 10) if "causal" in options else slice(None)  # causal rows >= 10 do see key 10
        assert not np.isnan(out[0, :, rows]).any(), options


# ---- hypothesis: random combinations of every feature ----------------------------------------

@st.composite
def featured_problems(draw):
    batch = draw(st.integers(1, 3))
    hkv = draw(st.integers(1, 2))
    hq = hkv * draw(st.integers(1, 2))
    lq, lk = draw(st.integers(1, 140)), draw(st.integers(1, 140))
    d, dv = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    options = {"causal": draw(st.sampled_from(CAUSAL + [True]))}
    if draw(st.booleans()):
        axes = draw(st.tuples(*[st.booleans()] * 4))  # which axes of (B, Hq, Lq, Lk) the mask has
        shape = tuple(n if keep else 1 for n, keep in zip((batch, hq, lq, lk), axes))
        options["mask"] = ("bool", shape) if draw(st.booleans()) else ("float", shape)
    if draw(st.booleans()):
        options["kv_lengths"] = draw(st.lists(st.integers(0, lk), min_size=batch, max_size=batch))
    if draw(st.booleans()):
        options["q_lengths"] = draw(st.lists(st.integers(0, lq), min_size=batch, max_size=batch))
    if draw(st.booleans()):
        side = st.one_of(st.none(), st.integers(0, 150))
        options["window"] = (draw(side), draw(side))
    if draw(st.booleans()):
        options["alibi_slopes"] = draw(st.lists(st.floats(0, 1), min_size=hq, max_size=hq))
    if draw(st.booleans()):
        options["softcap"] = draw(st.floats(0.5, 50))
    dtype = draw(st.sampled_from(["float32", "float64", "float16"]))
    return batch, hq, hkv, lq, lk, d, dv, dtype, options, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=featured_problems())
def test_random_feature_combinations(backend, problem):
    batch, hq, hkv, lq, lk, d, dv, dtype, options, seed = problem
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, hq, lq, d)).astype(dtype)
    k = rng.standard_normal((batch, hkv, lk, d)).astype(dtype)
    v = rng.standard_normal((batch, hkv, lk, dv)).astype(dtype)
    if "mask" in options:
        kind, shape = options["mask"]
        options["mask"] = rng.random(shape) < 0.7 if kind == "bool" else rng.standard_normal(shape)
    check(backend, q, k, v, **options)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_nan_propagates_to_exactly_the_rows_that_see_it(backend, rng, dtype):
    # Whatever lane or block the NaN lands in, every row that sees it is NaN, every other row
    # is untouched (vector max drops or keeps NaN by lane position; the kernel must not care).
    q, k, v = qkv(rng, lq=130, lk=130, dtype=dtype, batch=(1,))
    clean = fastattn.attention(q, k, v, causal=True, backend=backend)
    for key in (0, 5, 63, 64, 100, 129):
        bad = k.copy()
        bad[0, 0, key, 3] = np.nan
        out, lse = fastattn.attention(q, bad, v, causal=True, return_lse=True, backend=backend)
        sees = np.arange(130) >= key  # causal: rows i >= key see key
        for head in range(HQ // HKV):  # the query heads that share K/V head 0
            assert np.isnan(np.asarray(out[0, head], np.float64))[sees].all(), key
            assert np.isnan(np.asarray(lse[0, head], np.float64))[sees].all(), key
            np.testing.assert_array_equal(out[0, head, ~sees], clean[0, head, ~sees])
        np.testing.assert_array_equal(out[0, HQ // HKV:], clean[0, HQ // HKV:])  # other K/V heads
    bad = q.copy()
    bad[0, 1, 77, 0] = np.nan
    out = fastattn.attention(bad, k, v, causal=True, backend=backend)
    assert np.isnan(np.asarray(out[0, 1, 77], np.float64)).all()
    out[0, 1, 77] = clean[0, 1, 77]
    np.testing.assert_array_equal(out, clean)


@pytest.mark.parametrize("lq", [1, 3, 16])
@pytest.mark.parametrize("causal", CAUSAL)
def test_decode_shapes_fold_query_heads(backend, rng, lq, causal):
    # Few query rows per head: the kernel folds the query heads that share a K/V head into one
    # task. Per-head masks, slopes and per-sequence lengths must still reach the right rows.
    q = rng.standard_normal((3, 8, lq, 16)).astype(np.float32)
    k = rng.standard_normal((3, 2, 150, 16)).astype(np.float32)
    v = rng.standard_normal((3, 2, 150, 12)).astype(np.float32)
    mask = rng.random((3, 8, lq, 150)) < 0.8
    slopes = rng.random((3, 8))
    for options in ({}, {"mask": mask}, {"mask": mask[:, :, :1]}, {"alibi_slopes": slopes},
                    {"kv_lengths": [150, 70, 1], "q_lengths": [lq, max(lq - 1, 0), 1]},
                    {"window": (20, 5), "mask": np.where(mask[:1, :, :, :], 0.0, -np.inf)}):
        check(backend, q, k, v, causal=causal, **options)
