"""Attention sinks (sinks=): a per-head logit in each row's softmax denominator, with no value.

Every backend (each ISA, and NumPy) against the float64 oracle, which appends the sink to the
scores as one more column (tests/oracle.py); gradients against the oracle and, for the sinks
themselves, against finite differences; attention_weights; the edge rows (no key: zeros and
lse = sink; padding past q_lengths: lse -inf); and the errors.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastattn
from oracle import assert_matches_oracle, max_err, oracle, oracle_grads
from test_backward import assert_grads_match_oracle
from test_parity import make

SINKS = np.array([0.5, -1.0, 3.0, -np.inf])  # the last head has no sink

CASES = {
    "plain": dict(),
    "causal": dict(causal=True),
    "lower_right_lengths": dict(causal="lower_right", kv_lengths=[100, 3], q_lengths=[50, 70]),
    "window_alibi_softcap": dict(window=(20, 5), alibi_slopes=[0.05, 0.1, 0.2, 0.4], softcap=4.0),
    "mask": dict(mask="bool"),
}


def options_for(case, rng, lq=70, lk=130):
    options = dict(CASES[case])
    if options.get("mask") == "bool":
        options["mask"] = rng.random((2, 1, lq, lk)) > 0.2
    return options


@pytest.mark.parametrize("sinks_shape", ["per_head", "per_batch_and_head"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, "bfloat16"])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_oracle(backend, rng, case, dtype, sinks_shape):
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    # Lq ≠ Lk, Dv ≠ D, GQA (4 query heads on 2 K/V heads), several key blocks (split-KV too).
    q, k, v = make(rng, (2, 4, 70, 16), (2, 2, 130, 16), dv=24, dtype=dtype)
    sinks = SINKS if sinks_shape == "per_head" else rng.standard_normal((2, 4)) * 3
    options = options_for(case, rng)
    out, lse = fastattn.attention(q, k, v, sinks=sinks, return_lse=True, backend=backend, **options)
    assert_matches_oracle(q, k, v, out, lse, sinks=sinks, **options)


@pytest.mark.parametrize("lq", [1, 3])  # decoding (direct mode, split-KV) and a few rows
def test_decode_matches_oracle(backend, rng, lq):
    q, k, v = make(rng, (3, 8, lq, 64), (3, 2, 1100, 64))
    sinks = rng.standard_normal(8) * 2
    kv_lengths = [1100, 700, 0]  # the last sequence has no key: out 0, lse = sink
    out, lse = fastattn.attention(q, k, v, sinks=sinks, kv_lengths=kv_lengths, causal="lower_right",
                                  return_lse=True, backend=backend)
    assert_matches_oracle(q, k, v, out, lse, sinks=sinks, kv_lengths=kv_lengths, causal="lower_right")
    assert np.all(out[2] == 0) and np.array_equal(lse[2], np.broadcast_to(sinks[:, None], (8, lq)).astype(np.float32))


def test_edge_rows(backend, rng):
    """A row that sees no key returns zeros with lse = its sink; a padded row (past q_lengths)
    returns zeros with lse -inf; a sink far above every score takes all the weight."""
    q, k, v = make(rng, (2, 4, 6, 8), (2, 4, 5, 8))
    mask = np.ones((6, 5), bool)
    mask[1] = False  # row 1 sees nothing
    sinks = np.array([0.0, 2.0, 1e4, -np.inf])
    out, lse = fastattn.attention(q, k, v, mask=mask, sinks=sinks, q_lengths=[6, 4], return_lse=True,
                                  backend=backend)
    assert np.all(out[:, :, 1] == 0)
    np.testing.assert_array_equal(lse[:, :3, 1], np.broadcast_to(sinks[:3], (2, 3)).astype(np.float32))
    assert np.all(lse[:, 3, 1] == -np.inf)  # no sink on that head: the usual empty row
    assert np.all(out[1, :, 4:] == 0) and np.all(lse[1, :, 4:] == -np.inf)  # padding
    assert np.all(np.abs(out[:, 2]) < 1e-30)  # the sink of 1e4 takes everything
    np.testing.assert_allclose(lse[:, 2, [0, 2, 3]], 1e4, rtol=1e-7)
    assert_matches_oracle(q, k, v, out, lse, mask=mask, sinks=sinks, q_lengths=[6, 4])


def test_minus_inf_sinks_change_nothing(backend, rng):
    q, k, v = make(rng, (2, 4, 33, 16), (2, 2, 40, 16))
    plain = fastattn.attention(q, k, v, causal=True, return_lse=True, backend=backend)
    sunk = fastattn.attention(q, k, v, causal=True, sinks=np.full(4, -np.inf), return_lse=True, backend=backend)
    np.testing.assert_array_equal(plain[0], sunk[0])
    np.testing.assert_array_equal(plain[1], sunk[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_backward_matches_oracle(backend, rng, case, dtype):
    q, k, v = make(rng, (2, 4, 70, 16), (2, 2, 130, 16), dv=24, dtype=dtype)
    dout = rng.standard_normal((2, 4, 70, 24)).astype(dtype)
    options = options_for(case, rng)
    sinks = np.array([0.5, -1.0, 3.0, 1.5])
    out, lse = fastattn.attention(q, k, v, sinks=sinks, return_lse=True, backend=backend, **options)
    dq, dk, dv, d_sinks = fastattn.attention_backward(dout, q, k, v, out, lse, sinks=sinks, backend=backend,
                                                      **options)
    assert_grads_match_oracle(q, k, v, dout, (dq, dk, dv), sinks=sinks, **options)
    want = oracle_grads(q, k, v, dout, sinks=sinks, **options)[3].sum(axis=0)  # summed over the batch
    naive = oracle_grads(q, k, v, dout, dtype=np.float32, sinks=sinks, **options)[3].sum(axis=0)
    assert d_sinks.shape == (4,) and d_sinks.dtype == (np.float64 if dtype == np.float64 else np.float32)
    eps_ratio = np.finfo(np.float64).eps / np.finfo(np.float32).eps if dtype == np.float64 else 1.0
    tol = 2 * max_err(naive, want) * eps_ratio + 1e-5 * eps_ratio * (1 + np.abs(want).max())
    assert max_err(d_sinks, want) <= tol


@pytest.mark.parametrize("shape", [(4,), (2, 4), (2, 1), (1, 4), ()])
def test_sink_gradient_by_finite_differences(backend, rng, shape):
    """d loss / d sinks, loss = sum(dout ∘ out), against central differences in float64; the
    gradient has the shape the sinks were given in (summed over broadcast axes)."""
    q, k, v = make(rng, (2, 4, 9, 8), (2, 2, 11, 8), dtype=np.float64)
    dout = rng.standard_normal((2, 4, 9, 8))
    sinks = rng.standard_normal(shape)
    options = dict(causal="lower_right", kv_lengths=[11, 6], q_lengths=[9, 5])
    out, lse = fastattn.attention(q, k, v, sinks=sinks, return_lse=True, backend=backend, **options)
    d_sinks = fastattn.attention_backward(dout, q, k, v, out, lse, sinks=sinks, backend=backend, **options)[3]
    assert d_sinks.shape == np.shape(sinks)

    def loss(s):
        return float(np.sum(dout * fastattn.attention(q, k, v, sinks=s, backend=backend, **options)))

    h = 1e-6
    numeric = np.zeros(np.shape(sinks))
    for index in np.ndindex(*np.shape(sinks)):
        up, down = np.array(sinks, dtype=np.float64), np.array(sinks, dtype=np.float64)
        up[index] += h
        down[index] -= h
        numeric[index] = (loss(up) - loss(down)) / (2 * h)
    np.testing.assert_allclose(d_sinks, numeric, rtol=1e-6, atol=1e-8)


def test_backward_results_do_not_depend_on_threads(rng):
    q, k, v = make(rng, (1, 4, 200, 32), (1, 2, 300, 32))
    dout = rng.standard_normal((1, 4, 200, 32)).astype(np.float32)
    sinks = rng.standard_normal(4)
    out, lse = fastattn.attention(q, k, v, sinks=sinks, causal=True, return_lse=True, num_threads=1)
    one = fastattn.attention_backward(dout, q, k, v, out, lse, sinks=sinks, causal=True, num_threads=1)
    two = fastattn.attention_backward(dout, q, k, v, out, lse, sinks=sinks, causal=True, num_threads=2)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_attention_weights_with_sinks(rng):
    q, k, v = make(rng, (2, 4, 7, 8), (2, 2, 9, 8), dtype=np.float64)
    sinks = np.array([0.0, 1.0, -2.0, 5.0])
    weights = fastattn.attention_weights(q, k, causal=True, sinks=sinks)
    out, lse = oracle(q, k, v, causal=True, sinks=sinks)
    # The weights' rows sum to 1 - P_sink, P_sink = exp(sink - lse).
    np.testing.assert_allclose(weights.sum(-1), 1 - np.exp(sinks[:, None] - lse), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(weights @ np.repeat(v, 2, axis=1), out, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("sinks, exc, message", [
    (np.array([0.0, np.nan, 1.0, 2.0]), ValueError, "sinks[1] (=nan) must be finite or -inf"),
    (np.array([0.0, np.inf, 1.0, 2.0]), ValueError, "sinks[1] (=inf) must be finite or -inf"),
    (np.zeros(3), ValueError, "sinks.shape (=(3,)) must be (Hq,) = (4,) or broadcast to (..., Hq) = (2, 4)"),
    (np.array(["a"] * 4), TypeError, "sinks.dtype (=<U1) must be a real type"),
])
def test_bad_sinks(rng, sinks, exc, message):
    q, k, v = make(rng, (2, 4, 3, 8), (2, 2, 5, 8))
    for call in (lambda: fastattn.attention(q, k, v, sinks=sinks),
                 lambda: fastattn.attention_backward(q, q, k, v, q, q[..., 0], sinks=sinks)):
        with pytest.raises(exc) as info:
            call()
        assert message in str(info.value)
