"""fastattn.layers.MultiHeadAttention and fastattn.optim.Adam.

The layer's gradients are checked against central finite differences (float64) and, when torch
is installed, everything — outputs, attention weights, all gradients — against
torch.nn.MultiheadAttention; Adam against torch's formula written out and torch.optim.Adam.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastattn.layers import MultiHeadAttention
from fastattn.optim import Adam

B, L, S, E, H = 2, 3, 5, 8, 4  # batch, query length, context length, embed_dim, num_heads


def make_layer(backend, *, dtype=np.float64, embed_dim=E, num_heads=H, **kwargs) -> MultiHeadAttention:
    """A layer with random (not zero) biases, so that every term of the gradient is exercised."""
    layer = MultiHeadAttention(embed_dim, num_heads, dtype=dtype, rng=0, backend=backend, **kwargs)
    rng = np.random.default_rng(1)
    for name, p in layer.parameters().items():
        if name.startswith("b_"):
            p[...] = 0.5 * rng.standard_normal(p.shape)
    return layer


def make_mask(kind, rng, lq=L, lk=S):
    """None, a boolean (B, 1, Lq, Lk) mask with one query row that sees nothing, or an additive
    (B, H, Lq, Lk) mask with some -inf."""
    if kind is None:
        return None
    if kind == "bool":
        mask = rng.random((B, 1, lq, lk)) < 0.7
        mask[..., 0] = True
        mask[1, :, 1, :] = False  # a fully masked row: zeros out, zero gradients
        return mask
    mask = rng.standard_normal((B, H, lq, lk))
    mask[0, 1, :, -1] = -np.inf
    return mask


def numeric_grad(f, a: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() with respect to a, which is modified in place."""
    grad = np.empty_like(a)
    for index in np.ndindex(a.shape):
        old = a[index]
        a[index] = old + eps
        plus = f()
        a[index] = old - eps
        minus = f()
        a[index] = old
        grad[index] = (plus - minus) / (2 * eps)
    return grad


GRAD_CASES = [
    pytest.param(dict(), False, None, id="self"),
    pytest.param(dict(causal=True), False, None, id="self-causal"),
    pytest.param(dict(), True, None, id="cross"),
    pytest.param(dict(num_kv_heads=2, causal=True), False, "bool", id="gqa-causal-bool-mask"),
    pytest.param(dict(num_kv_heads=1), True, "float", id="cross-mqa-additive-mask"),
    pytest.param(dict(num_kv_heads=2, causal="lower_right", bias=False), True, "bool", id="cross-lower-right-nobias"),
]


@pytest.mark.parametrize("kwargs, cross, mask_kind", GRAD_CASES)
def test_gradients_match_finite_differences(backend, rng, kwargs, cross, mask_kind):
    layer = make_layer(backend, **kwargs)
    x = rng.standard_normal((B, L, E))
    context = rng.standard_normal((B, S, E)) if cross else None
    mask = make_mask(mask_kind, rng, L, S if cross else L)
    dy = rng.standard_normal((B, L, E))

    layer.forward(x, context=context, mask=mask)
    d_inputs = layer.backward(dy)
    analytic = {name: g.copy() for name, g in layer.grads().items()}
    analytic["x"], analytic["context"] = d_inputs if cross else (d_inputs, None)

    def loss():
        return float(np.sum(layer.forward(x, context=context, mask=mask) * dy))

    arrays = dict(layer.parameters(), x=x, context=context)
    for name, a in arrays.items():
        if a is None:
            continue
        np.testing.assert_allclose(analytic[name], numeric_grad(loss, a), rtol=1e-6, atol=1e-8, err_msg=name)


def test_unbatched_input_is_one_batch(backend, rng):
    layer = make_layer(backend, num_kv_heads=2, causal=True)
    x, context, dy = rng.standard_normal((L, E)), rng.standard_normal((S, E)), rng.standard_normal((L, E))
    mask = rng.random((H, L, S)) < 0.8
    y, weights = layer.forward(x, context=context, mask=mask, need_weights=True)
    dx, dcontext = layer.backward(dy)
    grads = {name: g.copy() for name, g in layer.grads().items()}

    y1, weights1 = layer.forward(x[None], context=context[None], mask=mask, need_weights=True)
    dx1, dcontext1 = layer.backward(dy[None])
    assert y.shape == dx.shape == (L, E) and dcontext.shape == (S, E) and weights.shape == (H, L, S)
    for ours, batched in [(y, y1[0]), (weights, weights1[0]), (dx, dx1[0]), (dcontext, dcontext1[0])]:
        np.testing.assert_allclose(ours, batched, rtol=1e-13, atol=1e-13)
    for name, g in layer.grads().items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-13, atol=1e-13, err_msg=name)


def project(layer, x, which, heads):
    """(B, L, E) → the (B, heads, L, Dh) projection `which` ("q", "k" or "v"), written out."""
    y = x @ getattr(layer, "w_" + which) + (getattr(layer, "b_" + which) if layer.bias else 0)
    return y.reshape(x.shape[0], x.shape[1], heads, layer.head_dim).transpose(0, 2, 1, 3)


def naive_weights(layer, x, context, mask):
    """softmax(q·kᵀ/sqrt(Dh) + masking) per head, with K/V heads repeated for GQA; zero rows
    where a query sees no key."""
    q = project(layer, x, "q", H)
    k = np.repeat(project(layer, x if context is None else context, "k", layer.num_kv_heads),
                  H // layer.num_kv_heads, axis=1)
    s = q @ k.swapaxes(-1, -2) / np.sqrt(layer.head_dim)
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == bool else s + mask
    if layer.causal:
        lq, lk = s.shape[-2:]
        s = np.where(np.tri(lq, lk, lk - lq if layer.causal == "lower_right" else 0, dtype=bool), s, -np.inf)
    top = s.max(axis=-1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(top), top, 0))
    total = e.sum(axis=-1, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


@pytest.mark.parametrize("kwargs, cross, mask_kind", GRAD_CASES)
def test_weights_are_the_softmax_and_reproduce_y(backend, rng, kwargs, cross, mask_kind):
    layer = make_layer(backend, **kwargs)
    x = rng.standard_normal((B, L, E))
    context = rng.standard_normal((B, S, E)) if cross else None
    mask = make_mask(mask_kind, rng, L, S if cross else L)
    y, weights = layer.forward(x, context=context, mask=mask, need_weights=True)
    np.testing.assert_array_equal(layer.forward(x, context=context, mask=mask), y)

    assert weights.shape == (B, H, L, S if cross else L) and weights.dtype == np.float64
    sums = weights.sum(axis=-1)
    seen = naive_weights(layer, x, context, mask).any(axis=-1)
    np.testing.assert_allclose(sums[seen], 1, rtol=1e-13)
    np.testing.assert_array_equal(weights[~seen], 0)  # a row that sees no key: zero weights
    np.testing.assert_allclose(weights, naive_weights(layer, x, context, mask), rtol=1e-12, atol=1e-15)

    v = project(layer, x if context is None else context, "v", layer.num_kv_heads)
    out = (weights @ np.repeat(v, H // layer.num_kv_heads, axis=1)).transpose(0, 2, 1, 3).reshape(B, L, E)
    np.testing.assert_allclose(out @ layer.w_o + (layer.b_o if layer.bias else 0), y, rtol=1e-12, atol=1e-12)


def test_float32_layer_matches_float64(backend, rng):
    layer32 = make_layer(backend, dtype=np.float32, num_kv_heads=2, causal=True)
    layer64 = make_layer(backend, dtype=np.float64, num_kv_heads=2, causal=True)
    for name, p in layer32.parameters().items():
        p[...] = layer64.parameters()[name]
    x, dy = rng.standard_normal((B, L, E)), rng.standard_normal((B, L, E))
    y32, w32 = layer32.forward(x.astype(np.float32), need_weights=True)
    dx32 = layer32.backward(dy.astype(np.float32))
    y64, w64 = layer64.forward(x, need_weights=True)
    dx64 = layer64.backward(dy)
    for ours, exact in [(y32, y64), (w32, w64), (dx32, dx64)] + [
            (layer32.grads()[n], layer64.grads()[n]) for n in layer64.grads()]:
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, exact, rtol=1e-4, atol=1e-5)


def test_parameters_and_grads_are_live_and_overwritten(rng):
    layer = make_layer("numpy")
    params, grads = layer.parameters(), layer.grads()
    assert params.keys() == grads.keys() == {"w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o"}
    assert params["w_q"] is layer.w_q and all(not g.any() for g in grads.values())
    assert make_layer("numpy", bias=False).parameters().keys() == {"w_q", "w_k", "w_v", "w_o"}
    gqa = MultiHeadAttention(12, 6, num_kv_heads=2, rng=0, backend="numpy")
    assert gqa.w_k.shape == gqa.w_v.shape == (12, 4) and gqa.b_k.shape == (4,) and gqa.w_q.dtype == np.float32

    x, dy = rng.standard_normal((B, L, E)), rng.standard_normal((B, L, E))
    layer.forward(x)
    dx = layer.backward(dy)
    first = {name: g.copy() for name, g in grads.items()}
    np.testing.assert_array_equal(layer.backward(dy), dx)  # a second backward overwrites, no doubling
    for name, g in layer.grads().items():
        assert g is grads[name]  # the same arrays every time
        np.testing.assert_array_equal(g, first[name])
    layer.zero_grad()
    assert all(not g.any() for g in grads.values())


def test_same_seed_same_weights():
    a, b = (MultiHeadAttention(E, H, rng=seed, backend="numpy") for seed in (7, 7))
    c = MultiHeadAttention(E, H, rng=np.random.default_rng(8), backend="numpy")
    np.testing.assert_array_equal(a.w_q, b.w_q)
    assert not np.array_equal(a.w_q, c.w_q)
    assert np.abs(a.w_q).max() <= np.sqrt(6 / (2 * E)) and not a.b_q.any()


def test_adam_trains_the_layer(backend, rng):
    layer = make_layer(backend, dtype=np.float32, causal=True)
    x = rng.standard_normal((B, L, E)).astype(np.float32)
    target = rng.standard_normal((B, L, E)).astype(np.float32)
    opt = Adam(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        diff = layer.forward(x) - target
        losses.append(float(np.mean(diff ** 2)))
        layer.backward(2 * diff / diff.size)
        opt.step(layer.grads())
    assert losses[-1] < 0.5 * losses[0]


# -- Adam ------------------------------------------------------------------------------------

def adam_reference(p, grads, lr, betas, eps, weight_decay):
    """torch.optim.Adam's documented algorithm, step by step, in float64."""
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g + weight_decay * p
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


ADAM_SETTINGS = [dict(lr=1e-3), dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)]


@pytest.mark.parametrize("settings", ADAM_SETTINGS)
def test_adam_matches_reference(rng, settings):
    full = dict(dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0), **settings)
    params = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    start = {name: p.copy() for name, p in params.items()}
    grads = [{name: rng.standard_normal(p.shape) for name, p in params.items()} for _ in range(6)]
    opt = Adam(params, **settings)
    for g in grads:
        opt.step(g)
    for name, p in params.items():
        expected = adam_reference(start[name], [g[name] for g in grads], **full)
        np.testing.assert_allclose(p, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("settings", ADAM_SETTINGS)
def test_adam_matches_torch(rng, settings):
    torch = pytest.importorskip("torch")
    params = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    tensors = {name: torch.tensor(p, requires_grad=True) for name, p in params.items()}
    ours, theirs = Adam(params, **settings), torch.optim.Adam(list(tensors.values()), **settings)
    for _ in range(6):
        grads = {name: rng.standard_normal(p.shape) for name, p in params.items()}
        ours.step(grads)
        for name, t in tensors.items():
            t.grad = torch.from_numpy(grads[name].copy())
        theirs.step()
    for name, p in params.items():
        np.testing.assert_allclose(p, tensors[name].detach().numpy(), rtol=1e-13, atol=1e-15)


def test_adam_skips_none_and_resets(rng):
    params = {"a": np.ones(3), "b": np.ones(2)}
    opt = Adam(params, lr=0.1)
    opt.step({"a": np.ones(3), "b": None})
    np.testing.assert_array_equal(params["b"], 1)
    np.testing.assert_allclose(params["a"], 0.9)  # a first step moves by lr·sign(g)
    assert opt.steps == {"a": 1, "b": 0}
    opt.zero_state()
    opt.step({"a": np.ones(3), "b": -np.ones(2)})
    np.testing.assert_allclose(params["a"], 0.8)
    np.testing.assert_allclose(params["b"], 1.1)


# -- against torch.nn.MultiheadAttention -------------------------------------------------------

TORCH_CASES = [
    pytest.param(False, False, False, True, id="self"),
    pytest.param(True, False, False, True, id="self-causal"),
    pytest.param(False, True, False, True, id="self-key-padding"),
    pytest.param(True, True, False, False, id="self-causal-key-padding-nobias"),
    pytest.param(False, False, True, True, id="cross"),
    pytest.param(True, True, True, True, id="cross-causal-key-padding"),
]


@pytest.mark.parametrize("causal, padding, cross, bias", TORCH_CASES)
def test_matches_torch_multihead_attention(backend, rng, causal, padding, cross, bias):
    torch = pytest.importorskip("torch")
    layer = make_layer(backend, causal=causal, bias=bias)
    lk = S if cross else L
    x, dy = rng.standard_normal((B, L, E)), rng.standard_normal((B, L, E))
    context = rng.standard_normal((B, S, E)) if cross else None
    keep = np.ones((B, lk), dtype=bool)
    if padding:
        keep[1, 2:] = False  # sequence 1 has 2 real keys (key 0 stays visible to every query)
    mask = keep[:, None, None, :] if padding else None

    y, weights = layer.forward(x, context=context, mask=mask, need_weights=True)
    d_inputs = layer.backward(dy)
    dx, dcontext = d_inputs if cross else (d_inputs, None)

    mha = torch.nn.MultiheadAttention(E, H, bias=bias, batch_first=True, dtype=torch.float64)
    with torch.no_grad():  # torch's weights are (out, in): ours transposed
        mha.in_proj_weight.copy_(torch.from_numpy(np.concatenate([layer.w_q.T, layer.w_k.T, layer.w_v.T])))
        mha.out_proj.weight.copy_(torch.from_numpy(layer.w_o.T.copy()))
        if bias:
            mha.in_proj_bias.copy_(torch.from_numpy(np.concatenate([layer.b_q, layer.b_k, layer.b_v])))
            mha.out_proj.bias.copy_(torch.from_numpy(layer.b_o))
    xt = torch.tensor(x, requires_grad=True)
    ct = torch.tensor(context, requires_grad=True) if cross else xt
    forbidden = torch.triu(torch.ones(L, lk, dtype=torch.bool), 1) if causal else None  # True = may NOT attend
    y_t, weights_t = mha(xt, ct, ct, attn_mask=forbidden, is_causal=causal,
                         key_padding_mask=torch.from_numpy(~keep) if padding else None,
                         need_weights=True, average_attn_weights=False)
    (y_t * torch.from_numpy(dy)).sum().backward()

    close = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y, y_t.detach().numpy(), **close)
    np.testing.assert_allclose(weights, weights_t.detach().numpy(), **close)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **close)
    if cross:
        np.testing.assert_allclose(dcontext, ct.grad.numpy(), **close)
    grads = layer.grads()
    for i, name in enumerate("qkv"):
        np.testing.assert_allclose(grads["w_" + name], mha.in_proj_weight.grad[i * E:(i + 1) * E].numpy().T,
                                   err_msg=name, **close)
        if bias:
            np.testing.assert_allclose(grads["b_" + name], mha.in_proj_bias.grad[i * E:(i + 1) * E].numpy(),
                                       err_msg=name, **close)
    np.testing.assert_allclose(grads["w_o"], mha.out_proj.weight.grad.numpy().T, **close)
    if bias:
        np.testing.assert_allclose(grads["b_o"], mha.out_proj.bias.grad.numpy(), **close)


# -- bad arguments ---------------------------------------------------------------------------

@pytest.mark.parametrize("args, kwargs, error, message", [
    ((30, 4), {}, ValueError, r"embed_dim \(=30\) must be divisible by num_heads \(=4\)"),
    ((8.0, 4), {}, TypeError, "embed_dim must be an int, got float"),
    ((0, 4), {}, ValueError, r"embed_dim \(=0\) must be >= 1"),
    ((8, True), {}, TypeError, "num_heads must be an int, got bool"),
    ((8, -2), {}, ValueError, r"num_heads \(=-2\) must be >= 1"),
    ((12, 4), dict(num_kv_heads=3), ValueError, r"num_heads \(=4\) must be a multiple of num_kv_heads \(=3\)"),
    ((8, 4), dict(num_kv_heads=0), ValueError, r"num_kv_heads \(=0\) must be >= 1"),
    ((8, 4), dict(num_kv_heads="2"), TypeError, "num_kv_heads must be an int, got str"),
    ((8, 4), dict(bias=1), TypeError, "bias must be a bool, got int"),
    ((8, 4), dict(causal="diagonal"), ValueError, r"causal \(='diagonal'\) must be"),
    ((8, 4), dict(causal=1), TypeError, "causal must be a bool or a str"),
    ((8, 4), dict(dtype=np.float16), TypeError, r"dtype \(=float16\) must be float32 or float64"),
    ((8, 4), dict(dtype="no such type"), TypeError, "dtype must be float32 or float64"),
    ((8, 4), dict(rng="seed"), TypeError, "rng must be a numpy.random.Generator, an int seed or None, got str"),
    ((8, 4), dict(rng=-1), ValueError, r"rng \(=-1\) must be >= 0"),
    ((8, 4), dict(backend="gpu"), ValueError, r"backend \(='gpu'\) must be one of"),
    ((8, 4), dict(backend=None), TypeError, "backend must be a str"),
    ((8, 4), dict(num_threads=0), ValueError, r"num_threads \(=0\) must be between 1 and"),
    ((8, 4), dict(num_threads=1.5), TypeError, "num_threads must be an int or None, got float"),
])
def test_bad_constructor_arguments(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        MultiHeadAttention(*args, **dict(dict(backend="numpy"), **kwargs))


def test_bad_forward_and_backward_arguments():
    layer = MultiHeadAttention(E, H, dtype=np.float64, rng=0, backend="numpy")
    x = np.zeros((B, L, E))
    with pytest.raises(RuntimeError, match=r"backward\(\) needs the activations of a forward\(\) call"):
        layer.backward(x)
    cases = [
        (dict(x=x.astype(np.float32)), TypeError, r"x.dtype \(=float32\) must equal the layer's dtype \(=float64\)"),
        (dict(x=np.zeros((1, B, L, E))), ValueError, r"x.ndim \(=4\) must be 3, \(B, L, E\), or 2"),
        (dict(x=np.zeros((B, L, 7))), ValueError, r"x.shape\[-1\] \(=7\) must equal embed_dim \(=8\)"),
        (dict(x=[[1.0, 2.0], [3.0]]), TypeError, "x must be an array of float64"),
        (dict(x=x, context=np.zeros((S, E))), ValueError, r"context.ndim \(=2\) must equal x.ndim \(=3\)"),
        (dict(x=x, context=np.zeros((B + 1, S, E))), ValueError, r"context.shape\[0\] \(=3\) must equal x.shape\[0\]"),
        (dict(x=x, context=np.zeros((B, S, 4))), ValueError, r"context.shape\[-1\] \(=4\) must equal embed_dim"),
        (dict(x=x, mask=np.ones((B, H, L, L + 1), bool)), ValueError, r"mask.shape \(=\(2, 4, 3, 4\)\) must broadcast"),
        (dict(x=x, mask=np.ones((L, L), int)), TypeError, r"mask.dtype \(=int64\) must be bool"),
        (dict(x=x, need_weights="yes"), TypeError, "need_weights must be a bool, got str"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            layer.forward(kwargs.pop("x"), **kwargs)
    layer.forward(x)
    with pytest.raises(ValueError, match=r"dy.shape \(=\(3, 8\)\) must be the shape of forward's output, \(2, 3, 8\)"):
        layer.backward(np.zeros((L, E)))
    with pytest.raises(TypeError, match=r"dy.dtype \(=float32\) must equal the layer's dtype"):
        layer.backward(x.astype(np.float32))


def test_bad_adam_arguments():
    p = {"w": np.zeros(3)}
    read_only = np.zeros(3)
    read_only.flags.writeable = False
    cases = [
        (([np.zeros(3)],), TypeError, "params must be a dict of name -> numpy.ndarray, got list"),
        (({"w": [0.0]},), TypeError, r"params\['w'\] must be a numpy.ndarray, got list"),
        (({"w": np.zeros(3, int)},), TypeError, r"params\['w'\].dtype \(=int64\) must be floating"),
        (({"w": read_only},), ValueError, r"params\['w'\] must be writeable"),
        ((p, -1e-3), ValueError, r"lr \(=-0.001\) must be a finite number >= 0"),
        ((p, "fast"), TypeError, "lr must be a real number, got str"),
        ((p, 1e-3, (0.9,)), TypeError, r"betas must be a pair \(beta1, beta2\)"),
        ((p, 1e-3, (1.0, 0.9)), ValueError, r"betas\[0\] \(=1.0\) must be in \[0, 1\)"),
        ((p, 1e-3, (0.9, None)), TypeError, r"betas\[1\] must be a real number, got NoneType"),
        ((p, 1e-3, (0.9, 0.999), -1.0), ValueError, r"eps \(=-1.0\) must be a finite number >= 0"),
        ((p, 1e-3, (0.9, 0.999), 1e-8, float("nan")), ValueError, r"weight_decay \(=nan\) must be a finite"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            Adam(*args)
    opt = Adam(p)
    with pytest.raises(ValueError, match=r"grads must have the keys of params: missing \['w'\], unexpected \['v'\]"):
        opt.step({"v": np.zeros(3)})
    with pytest.raises(ValueError, match=r"grads\['w'\].shape \(=\(4,\)\) must equal params\['w'\].shape \(=\(3,\)\)"):
        opt.step({"w": np.zeros(4)})
    with pytest.raises(TypeError, match="grads must be a dict"):
        opt.step([np.zeros(3)])
