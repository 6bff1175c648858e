"""The numpy example of the self-attention article this project starts from, reproduced."""

from __future__ import annotations

import numpy as np

import fastattn


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_article_example(backend):
    np.random.seed(42)
    n, d = 5, 4
    X = np.random.rand(n, d)
    WQ = np.random.rand(d, d)
    WK = np.random.rand(d, d)
    WV = np.random.rand(d, d)
    Q, K, V = X @ WQ, X @ WK, X @ WV
    Y = softmax(Q @ K.T / np.sqrt(d)) @ V

    out = fastattn.attention(Q, K, V, backend=backend)
    assert out.shape == (n, d)
    np.testing.assert_allclose(out, Y, rtol=0, atol=1e-6)
    out32 = fastattn.attention(*(x.astype(np.float32) for x in (Q, K, V)), backend=backend)
    np.testing.assert_allclose(out32, Y, rtol=0, atol=1e-5)
