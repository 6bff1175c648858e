"""fastattn.jax.dot_product_attention against jax.nn.dot_product_attention(implementation="xla"):
outputs and gradients for every option, eagerly and under jax.jit and jax.vmap, in every dtype;
the rows that see no key (zeros here); errors raised when the call is traced. Skipped without JAX."""

from __future__ import annotations

import functools
import importlib
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import fastattn.jax as fj  # noqa: E402
from oracle import oracle, oracle_grads  # noqa: E402

ours = fj.dot_product_attention
theirs = functools.partial(jax.nn.dot_product_attention, implementation="xla")

# XLA compiles jax.nn's attention and its gradient in about half the time at optimisation level 0,
# which is most of this file's run time; the comparisons do not depend on it.
compiled = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

# (rtol, atol) of outputs and gradients, per dtype of the inputs. 16-bit inputs are compared with
# jax.nn in float32 on the same (rounded) values: the two round differently from there.
TOLERANCE = {jnp.float64: (1e-10, 1e-12), jnp.float32: (1e-5, 1e-5),
             jnp.float16: (1e-2, 5e-3), jnp.bfloat16: (5e-2, 3e-2)}


def normal(seed, shape, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def forward_backward(fn, q, k, v, cotangent_dtype=None, jit=True, **options):
    """fn's output and the gradients of sum(out * cotangent) with respect to q, k and v (compiled
    unless jit=False); the cotangent's values are those of cotangent_dtype (default q's)."""
    wide = jnp.promote_types(q.dtype, jnp.float32)
    cotangent = normal(99, q.shape[:-1] + v.shape[-1:], cotangent_dtype or q.dtype).astype(wide)

    def loss(q, k, v):
        out = fn(q, k, v, **options)
        return jnp.sum(out.astype(wide) * cotangent), out

    def run(q, k, v):
        grads, out = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
        return out, grads

    return (compiled(run) if jit else run)(q, k, v)


def assert_close(actual, expected, dtype=jnp.float32):
    rtol, atol = TOLERANCE[dtype]
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.shape == e.shape and a.dtype == dtype
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=rtol, atol=atol)


# name: (query shape, key/value shape, options as a function of (B, T, N, S)). Each option appears in
# a few cases, alone and combined. No row is fully masked in any of them: jax.nn gives such a row
# the mean of value, fastattn zeros (tested below).
CASES = {
    "causal-t-lt-s": ((1, 6, 2, 8), (1, 13, 2, 8), lambda b, t, n, s: dict(is_causal=True, scale=0.3)),
    "causal-t-gt-s": ((1, 13, 2, 5), (1, 6, 2, 5), lambda b, t, n, s: dict(is_causal=True)),
    "gqa-causal": ((2, 6, 6, 8), (2, 10, 2, 8), lambda b, t, n, s: dict(is_causal=True)),
    "mqa-bias-broadcast": ((2, 6, 4, 8), (2, 10, 1, 8), lambda b, t, n, s: dict(bias=normal(2, (1, n, 1, s)))),
    "mask": ((2, 7, 4, 5), (2, 13, 2, 5), lambda b, t, n, s: dict(mask=some_true(4, (b, n, t, s)))),
    "key-padding-mask-window": ((2, 7, 2, 5), (2, 13, 2, 5),
                                lambda b, t, n, s: dict(mask=some_true(5, (b, 1, 1, s)), local_window_size=3)),
    "bias-and-mask": ((2, 7, 2, 5), (2, 13, 2, 5),
                      lambda b, t, n, s: dict(bias=normal(6, (1, n, t, s)), mask=some_true(7, (b, 1, t, s)))),
    "window-asymmetric-lengths": ((2, 7, 2, 5), (2, 13, 2, 5),
                                  lambda b, t, n, s: dict(local_window_size=(1, 4),
                                                          query_seq_lengths=jnp.array([5, 7], jnp.int32),
                                                          key_value_seq_lengths=jnp.array([13, 6], jnp.int32))),
    "window-causal": ((2, 12, 2, 5), (2, 12, 2, 5), lambda b, t, n, s: dict(local_window_size=(3, 0),
                                                                            is_causal=True)),
    "everything": ((2, 9, 4, 6), (2, 9, 2, 6),
                   lambda b, t, n, s: dict(bias=normal(8, (b, n, t, s)), is_causal=True, scale=0.5,
                                           local_window_size=(4, 1),
                                           query_seq_lengths=jnp.array([8, 9], jnp.int32),
                                           key_value_seq_lengths=jnp.array([9, 6], jnp.int32))),
    "unbatched-bias-3d": ((7, 4, 5), (13, 2, 5), lambda b, t, n, s: dict(bias=normal(9, (n, t, s)))),
}


def some_true(seed, shape):
    """A random boolean mask that lets every query row see key 0."""
    mask = np.random.default_rng(seed).random(shape) < 0.6
    mask[..., 0] = True
    return jnp.asarray(mask)


def case(name, dtype=jnp.float32):
    q_shape, kv_shape, options = CASES[name]
    q, k, v = normal(10, q_shape, dtype), normal(11, kv_shape, dtype), normal(12, kv_shape, dtype)
    (b, t, n), s = ((1,) + q_shape[:2] if len(q_shape) == 3 else q_shape[:3]), kv_shape[-3]
    return q, k, v, options(b, t, n, s)


@pytest.mark.parametrize("name", CASES)
def test_against_jax_nn(name):
    q, k, v, options = case(name)
    assert_close(forward_backward(ours, q, k, v, **options), forward_backward(theirs, q, k, v, **options))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_16_bit(dtype):
    q, k, v, options = case("everything", dtype)
    wide = [x.astype(jnp.float32) for x in (q, k, v)]  # the same values, for jax.nn in float32
    expected = forward_backward(theirs, *wide, cotangent_dtype=dtype, **options)
    assert_close(forward_backward(ours, q, k, v, **options), jax.tree.map(lambda x: x.astype(dtype), expected),
                 dtype)


def test_float64_against_a_float64_oracle():
    # jax.nn computes its softmax in float32 even for float64 inputs: compare with tests/oracle.py
    with jax.enable_x64(True):
        q, k, v, options = case("everything", jnp.float64)
        actual = forward_backward(ours, q, k, v, **options)
        cotangent = normal(99, q.shape, jnp.float64)
    t_n = functools.partial(np.swapaxes, axis1=1, axis2=2)  # (B, T, N, H) <-> fastattn's (B, N, T, H)
    q, k, v, cotangent = (t_n(np.asarray(x)) for x in (q, k, v, cotangent))
    fastattn_options = dict(mask=np.asarray(options["bias"], np.float64), causal=True, scale=0.5, window=(4, 1),
                            q_lengths=options["query_seq_lengths"], kv_lengths=options["key_value_seq_lengths"])
    out = oracle(q, k, v, **fastattn_options)[0]
    grads = oracle_grads(q, k, v, cotangent, **fastattn_options)
    assert_close(actual, (t_n(out), [t_n(g) for g in grads]), jnp.float64)


def test_eager_is_jit_bit_for_bit():
    q, k, v, options = case("everything")
    arrays = options["bias"], options["query_seq_lengths"], options["key_value_seq_lengths"]

    def run(q, k, v, bias, q_lengths, kv_lengths):  # under jit, the bias and lengths are traced too
        return forward_backward(ours, q, k, v, jit=False, bias=bias, query_seq_lengths=q_lengths,
                                key_value_seq_lengths=kv_lengths, is_causal=True, scale=0.5, local_window_size=(4, 1))

    eager = run(q, k, v, *arrays)
    for a, e in zip(jax.tree.leaves(jax.jit(run)(q, k, v, *arrays)), jax.tree.leaves(eager)):
        np.testing.assert_array_equal(a, e)  # the same kernel calls (and test_against_jax_nn[everything])


def test_vmap():
    # vmapped over q, k and v; then with key and value shared (their gradient sums over the vmap)
    q, k, v = normal(1, (3, 2, 7, 4, 5)), normal(2, (3, 2, 13, 2, 5)), normal(3, (3, 2, 13, 2, 5))
    for in_axes, kv in (((0, 0, 0), (k, v)), ((0, None, None), (k[0], v[0]))):
        def run(fn):
            return forward_backward(jax.vmap(functools.partial(fn, is_causal=True), in_axes), q, *kv)
        assert_close(run(ours), run(theirs))


def test_vmap_of_grad_and_nested_vmap():
    q, k, v = normal(1, (3, 2, 2, 7, 4, 5)), normal(2, (2, 13, 2, 5)), normal(3, (2, 13, 2, 5))

    def per_example_grads(fn):
        grad = jax.grad(lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v))), argnums=(0, 1, 2))
        return compiled(jax.vmap(jax.vmap(grad, (0, None, None)), (0, None, None)))(q, k, v)

    assert_close(per_example_grads(ours), per_example_grads(theirs))


def test_vmap_over_masks_and_lengths():
    q, k, v = normal(1, (2, 7, 2, 5)), normal(2, (2, 13, 2, 5)), normal(3, (2, 13, 2, 5))
    masks = some_true(4, (3, 2, 1, 7, 13))  # only the masks, or only the lengths, are mapped
    lengths = jnp.array([[13, 1], [5, 9], [2, 2]], jnp.int32)

    @functools.partial(compiled, static_argnums=0)
    def run(fn):
        return (jax.vmap(lambda m: fn(q, k, v, mask=m))(masks),
                jax.vmap(lambda n: fn(q, k, v, key_value_seq_lengths=n, is_causal=True))(lengths))

    actual = run(ours)
    assert actual[0].shape == actual[1].shape == (3, 2, 7, 2, 5)
    assert_close(actual, run(theirs))


def test_rows_that_see_no_key_are_zeros():
    q, k, v = normal(1, (2, 5, 2, 4)), normal(2, (2, 6, 2, 4)), normal(3, (2, 6, 2, 4))
    mask = np.ones((2, 2, 5, 6), bool)
    mask[0, 1, 3] = False  # batch 0, head 1, query 3 sees no key
    options = dict(mask=jnp.asarray(mask), key_value_seq_lengths=jnp.array([6, 0]))  # batch 1 sees none
    empty = np.zeros((2, 5, 2), bool)  # (B, T, N)
    empty[0, 3, 1] = empty[1] = True

    out, (dq, _, _) = forward_backward(ours, q, k, v, jit=False, **options)
    assert not np.asarray(out)[empty].any() and not np.asarray(dq)[empty].any()

    # With a zero cotangent on those rows, jax.nn's gradients are fastattn's too.
    cotangent = jnp.where(jnp.asarray(empty)[..., None], 0.0, normal(4, out.shape))

    def out_and_grads(fn):
        def loss(q, k, v):
            out = fn(q, k, v, **options)
            return jnp.sum(out * cotangent), out
        return compiled(jax.grad(loss, (0, 1, 2), has_aux=True))(q, k, v)[::-1]

    out, grads = out_and_grads(ours)
    reference, reference_grads = out_and_grads(theirs)
    assert_close(grads, reference_grads)
    np.testing.assert_allclose(np.asarray(out)[~empty], np.asarray(reference)[~empty], rtol=1e-5, atol=1e-6)
    # jax.nn gives a row that sees no key the mean of value over all keys (the documented difference)
    np.testing.assert_allclose(reference[0, 3, 1], v[0, :, 1].mean(0), rtol=1e-5, atol=1e-6)


def test_out_of_range_lengths_act_as_the_nearest_end():
    q, k, v = normal(1, (2, 5, 2, 4)), normal(2, (2, 6, 2, 4)), normal(3, (2, 6, 2, 4))
    clipped = ours(q, k, v, query_seq_lengths=jnp.array([5, 0]), key_value_seq_lengths=jnp.array([6, 3]))
    far = ours(q, k, v, query_seq_lengths=jnp.array([99, -4]), key_value_seq_lengths=np.array([7, 3], np.int64))
    np.testing.assert_array_equal(far, clipped)
    np.testing.assert_array_equal(ours(q, k, v, key_value_seq_lengths=3),  # a scalar broadcasts
                                  ours(q, k, v, key_value_seq_lengths=jnp.array([3, 3])))


def test_bias_gradient_is_refused_unless_stopped():
    q, k, v, options = case("mqa-bias-broadcast")
    bias = options["bias"]

    def loss(q, bias):
        return jnp.sum(ours(q, k, v, bias=bias))

    with pytest.raises(NotImplementedError, match="stop_gradient"):
        jax.grad(loss, argnums=1)(q, bias)
    with pytest.raises(NotImplementedError, match="no gradient with respect to bias"):
        jax.jit(jax.grad(loss, argnums=(0, 1)))(q, bias)
    dq_stopped = jax.grad(lambda q, bias: loss(q, jax.lax.stop_gradient(bias)), argnums=(0, 1))(q, bias)
    assert not np.asarray(dq_stopped[1]).any()  # a constant: zero, as asked for
    np.testing.assert_array_equal(dq_stopped[0], jax.grad(loss)(q, bias))  # bias not differentiated
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda q: ours(q, k, v), (q,), (q,))


@pytest.mark.parametrize("call, error, match", [
    (lambda q, k, v: ours(q[0, 0], k[0, 0], v[0, 0]), ValueError, r"all be 4-D, .* got ndim \(2, 2, 2\)"),
    (lambda q, k, v: ours(q, k[0], v[0]), ValueError, r"got ndim \(4, 3, 3\)"),
    (lambda q, k, v: ours(q[:, :, :3], k, v), ValueError, r"multiple of k.shape\[-3\] .* axes swapped"),
    (lambda q, k, v: ours(q[..., :4], k, v), ValueError, r"k.shape\[-1\] \(=5\) must equal q.shape\[-1\] \(=4\)"),
    (lambda q, k, v: ours(q, k[:, :5], v), ValueError, r"v.shape\[-2\] \(=13\) must equal k.shape\[-2\] \(=5\)"),
    (lambda q, k, v: ours(q.astype(jnp.int32), k, v), TypeError, r"q.dtype \(=int32\) must be float32"),
    (lambda q, k, v: ours(q, k.astype(jnp.float16), v), TypeError, r"k.dtype \(=float16\) must equal q.dtype"),
    (lambda q, k, v: ours(q, k, v, mask=jnp.ones((7, 13))), TypeError, "must be bool"),
    (lambda q, k, v: ours(q, k, v, bias=jnp.ones((3, 1, 7, 13))), ValueError, r"mask.shape .* must broadcast"),
    (lambda q, k, v: ours(q, k, v, key_value_seq_lengths=jnp.ones(3, jnp.int32)), ValueError, "kv_lengths.shape"),
    (lambda q, k, v: ours(q, k, v, query_seq_lengths=jnp.ones(2)), TypeError, "q_lengths.dtype"),
    (lambda q, k, v: ours(q, k, v, local_window_size=-1), ValueError, r"window\[0\] \(left\) \(=-1\) must be >= 0"),
    (lambda q, k, v: ours(q, k, v, is_causal="diagonal"), ValueError, "causal"),
    (lambda q, k, v: jax.jit(ours)(q, k, v[:, :2]), ValueError, r"v.shape\[-2\] \(=2\)"),  # at trace time
])
def test_errors(call, error, match):
    q, k, v = normal(1, (2, 7, 4, 5)), normal(2, (2, 13, 2, 5)), normal(3, (2, 13, 2, 5))
    with pytest.raises(error, match=match):
        call(q, k, v)


def test_extensions():
    q, k, v = normal(1, (2, 7, 4, 5)), normal(2, (2, 13, 2, 5)), normal(3, (2, 13, 2, 3))
    # value may have its own head size
    out, (dq, dk, dv) = forward_backward(ours, q, k, v, is_causal=True)
    assert out.shape == (2, 7, 4, 3) and dv.shape == v.shape
    wide = jnp.concatenate([v, normal(4, (2, 13, 2, 2))], axis=-1)  # 2 more columns change nothing
    expected = compiled(functools.partial(theirs, is_causal=True))(q, k, wide)[..., :3]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # a NumPy int window; None for an unbounded side; lower-right causal alignment (j <= i + S - T)
    same = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7)
    same(ours(q, k, v, local_window_size=np.int64(2)), ours(q, k, v, local_window_size=2))
    same(ours(q, k, v, local_window_size=(None, 0)), ours(q, k, v, is_causal=True))
    same(ours(q, k, v, is_causal="lower_right"), ours(q, k, v, mask=np.tril(np.ones((7, 13), bool), k=13 - 7)))


def test_import_needs_no_jax_in_fastattn_and_explains_a_missing_jax(monkeypatch):
    code = "import sys, fastattn; assert 'jax' not in sys.modules, 'import fastattn imported jax'"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert fj.jax is jax  # `import jax` inside fastattn/jax.py is the real JAX
    monkeypatch.setitem(sys.modules, "jax", None)  # as if JAX were not installed
    monkeypatch.delitem(sys.modules, "fastattn.jax")
    with pytest.raises(ImportError, match=r"fastattn.jax needs JAX: pip install jax"):
        importlib.import_module("fastattn.jax")
