"""fastattn.attention_weights (the softmax matrix, for pictures) and fastattn.viz.plot_attention
(headless: figures are made without pyplot, saved through Agg). The plotting tests skip without
matplotlib."""

from __future__ import annotations

import io

import numpy as np
import pytest

import fastattn
from fastattn import layers

OPTIONS = {
    "plain": {},
    "causal": dict(causal=True),
    "lower-right-window-alibi-softcap": dict(causal="lower_right", window=(3, 1), alibi_slopes=[0.5, 0.25, 0.1, 0.0],
                                             softcap=2.0, scale=0.7),
    "bool-mask": dict(mask=np.random.default_rng(1).random((9, 13)) < 0.5),
    "float-mask-lengths": dict(mask=np.random.default_rng(2).standard_normal((2, 1, 9, 13)),
                               kv_lengths=[13, 5], q_lengths=[9, 6]),
}


@pytest.mark.parametrize("name", OPTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_weights_times_v_is_attention(backend, rng, name, dtype):
    q = rng.standard_normal((2, 4, 9, 8)).astype(dtype)
    k = rng.standard_normal((2, 2, 13, 8)).astype(dtype)  # GQA: 2 query heads per K/V head
    v = rng.standard_normal((2, 2, 13, 5)).astype(dtype)
    weights = fastattn.attention_weights(q, k, **OPTIONS[name])
    assert weights.shape == (2, 4, 9, 13) and weights.dtype == dtype
    sums = weights.sum(-1)
    assert np.all((np.abs(sums - 1) < 1e-5) | (sums == 0))  # a row sums to 1, or sees nothing
    out = fastattn.attention(q, k, v, backend=backend, **OPTIONS[name])
    np.testing.assert_allclose(weights @ np.repeat(v, 2, axis=1), out, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-6 if dtype == np.float32 else 1e-13)


def test_attention_weights_rows_that_see_nothing_are_zero():
    q = k = np.ones((3, 4), np.float32)
    weights = fastattn.attention_weights(q, k, mask=np.array([[1, 0, 0], [0, 0, 0], [1, 1, 1]], bool))
    np.testing.assert_allclose(weights, [[1, 0, 0], [0, 0, 0], [1 / 3] * 3], rtol=1e-7)
    assert fastattn.attention_weights(q[:0], k).shape == (0, 3)


def test_attention_weights_half_inputs_and_layer_weights(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    q = rng.standard_normal((2, 6, 4)).astype(ml_dtypes.bfloat16)
    assert fastattn.attention_weights(q, q).dtype == np.float32
    layer = layers.MultiHeadAttention(8, 2, causal=True, rng=np.random.default_rng(0))
    x = rng.standard_normal((2, 7, 8)).astype(np.float32)
    _, weights = layer.forward(x, need_weights=True)
    assert weights.shape == (2, 2, 7, 7) and np.allclose(np.triu(weights, 1), 0)


@pytest.mark.parametrize("call, error, match", [
    (lambda q: fastattn.attention_weights(q, q[..., :3]), ValueError, r"k.shape\[-1\] \(=3\) must equal"),
    (lambda q: fastattn.attention_weights(q, q.astype(np.float64)), TypeError, "k.dtype"),
    (lambda q: fastattn.attention_weights(q, q, causal="diagonal"), ValueError, "causal"),
])
def test_attention_weights_errors_are_attentions(call, error, match):
    with pytest.raises(error, match=match):
        call(np.zeros((2, 5, 4), np.float32))


# -- plot_attention ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def viz():
    pytest.importorskip("matplotlib")
    import fastattn.viz

    return fastattn.viz


@pytest.fixture
def weights(rng):
    q, k = rng.standard_normal((2, 4, 6, 8)), rng.standard_normal((2, 4, 6, 8))
    return fastattn.attention_weights(q, k, causal=True)[0]  # (4 heads, 6, 6)


def heatmaps(fig):
    return [a for a in fig.axes if a.get_visible() and a.get_label() != "<colorbar>" and a.images]


def test_grid_of_heads(viz, weights):
    tokens = list("abcdef")
    fig = viz.plot_attention(weights, tokens_q=tokens)
    panels = heatmaps(fig)
    assert len(panels) == 4 and tuple(fig.get_size_inches()) == (4 * 3.2, 3.2)
    for h, ax in enumerate(panels):
        assert ax.get_title() == f"head {h}" and ax.get_xlabel() == "key" and ax.get_ylabel() == "query"
        assert [t.get_text() for t in ax.get_xticklabels()] == tokens  # keys take the queries' labels
        assert [t.get_text() for t in ax.get_yticklabels()] == tokens
        np.testing.assert_array_equal(ax.images[0].get_array(), weights[h])
    assert any(a.get_label() == "<colorbar>" for a in fig.axes)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=50)
    assert png.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_six_heads_wrap_into_rows(viz, rng):
    fig = viz.plot_attention(rng.random((1, 6, 5, 7)))  # a batch of one
    assert len(heatmaps(fig)) == 6 and tuple(fig.get_size_inches()) == (4 * 3.2, 2 * 3.2)
    ax = heatmaps(fig)[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(i) for i in range(7)]  # positions


def test_one_head_with_labels_and_own_axes(viz, weights):
    fig = viz.plot_attention(weights, head=-1, tokens_q=list("uvwxyz"), tokens_k=list("UVWXYZ"))
    (ax,) = heatmaps(fig)
    assert ax.get_title() == "head 3" and [t.get_text() for t in ax.get_xticklabels()] == list("UVWXYZ")
    from matplotlib.figure import Figure

    own = Figure(figsize=(5, 4))
    target = own.add_subplot()
    assert viz.plot_attention(weights[1], ax=target) is own
    assert target.get_title() == "attention weights" and tuple(own.get_size_inches()) == (5, 4)
    big = viz.plot_attention(np.eye(25), tokens_q=[str(i) for i in range(25)])  # 25 labels need room
    assert tuple(big.get_size_inches()) == (6.0, 6.0)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(weights=np.zeros((2, 3, 4, 4))), ValueError, "batch of 2"),
    (dict(weights=np.zeros(4)), ValueError, "ndim"),
    (dict(weights=np.zeros((3, 4, 4)), head=3), ValueError, r"head \(=3\) must be in \[-3, 3\)"),
    (dict(weights=np.zeros((3, 4, 4)), head=1.0), TypeError, "head must be an int"),
    (dict(weights=np.zeros((4, 4)), head=2), ValueError, "2-D weights"),
    (dict(weights=np.zeros((3, 4, 5)), tokens_k=list("ab")), ValueError, r"len\(tokens_k\) \(=2\) must equal the weights' Lk \(=5\)"),
    (dict(weights=np.zeros((3, 4, 4)), ax="set below"), ValueError, "ax draws one heatmap"),
    (dict(weights=np.array([["a"]])), TypeError, "weights.dtype"),
])
def test_plot_errors(viz, kwargs, error, match):
    if kwargs.get("ax") == "set below":
        from matplotlib.figure import Figure

        kwargs["ax"] = Figure().add_subplot()
    with pytest.raises(error, match=match):
        viz.plot_attention(kwargs.pop("weights"), **kwargs)
