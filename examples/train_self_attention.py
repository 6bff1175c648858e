"""Train one self-attention layer with fastattn: the self-attention article's ``train.py``, in NumPy.

The article's PyTorch model projects its input with three ``nn.Linear(d_model, d_model)``
layers (query, key, value), computes ``softmax(Q·Kᵀ/√d)·V`` and is fitted with Adam and an
MSE loss to a random target::

    x = torch.rand(10, 32); y = torch.rand(10, 32)
    for epoch in range(100):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        print(f"Epoch {epoch}, Loss: {loss.item()}")

Here the same model is a small NumPy class. Autograd is replaced by a hand-written backward:
the three projections are plain matrix products, and the attention itself is
``fastattn.attention`` (forward, with the log-sum-exp kept) and ``fastattn.attention_backward``
(which recomputes the attention weights from that log-sum-exp instead of storing the 10×10
matrix). No output projection is added, so the model is exactly the article's.

Run ``python examples/train_self_attention.py`` (``--help`` for the flags). It prints the
article's per-epoch line and the final loss, and exits with status 1 if the final loss is not
below half the first, so a broken gradient shows up as a failure in CI.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import fastattn
from fastattn.optim import Adam


class SelfAttention:
    """``softmax(Q·Kᵀ/√d)·V`` with ``Q, K, V = x·W_q + b_q, x·W_k + b_k, x·W_v + b_v``.

    Parameters use the convention ``y = x @ w + b`` (``w`` is ``(in, out)``, the transpose of
    PyTorch's ``Linear.weight``) and PyTorch's default initialisation, ``U(-1/√d, 1/√d)`` for
    weights and biases alike. ``x`` is ``(L, d_model)``, which fastattn reads as one head.
    """

    def __init__(self, d_model: int, rng: np.random.Generator, *, dtype=np.float32, backend: str = "auto"):
        bound = 1.0 / np.sqrt(d_model)
        self.backend = backend
        self._params: dict[str, np.ndarray] = {}
        for name in ("q", "k", "v"):
            self._params[f"w_{name}"] = rng.uniform(-bound, bound, (d_model, d_model)).astype(dtype)
            self._params[f"b_{name}"] = rng.uniform(-bound, bound, d_model).astype(dtype)
        # Adam keeps references to these arrays, so backward writes into them in place.
        self._grads = {key: np.zeros_like(p) for key, p in self._params.items()}
        self._cache: tuple | None = None

    def parameters(self) -> dict[str, np.ndarray]:
        """The parameter arrays by name (live: the optimizer updates them in place)."""
        return self._params

    def grads(self) -> dict[str, np.ndarray]:
        """The gradients of the last ``backward``, by the same names (overwritten in place)."""
        return self._grads

    def forward(self, x: np.ndarray) -> np.ndarray:
        p = self._params
        q = x @ p["w_q"] + p["b_q"]
        k = x @ p["w_k"] + p["b_k"]
        v = x @ p["w_v"] + p["b_v"]
        # The lse (log Σ_j exp(score_ij) per row) is all the backward needs to rebuild the
        # attention weights, so no L×L matrix is kept between the passes.
        out, lse = fastattn.attention(q, k, v, return_lse=True, backend=self.backend)
        self._cache = (x, q, k, v, out, lse)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Fill ``grads()`` from ``dout = ∂loss/∂out`` and return ``∂loss/∂x``."""
        x, q, k, v, out, lse = self._cache
        dq, dk, dv = fastattn.attention_backward(dout, q, k, v, out, lse, backend=self.backend)
        dx = np.zeros_like(x)
        for name, d in (("q", dq), ("k", dk), ("v", dv)):
            # y = x·W + b  ⇒  ∂W = xᵀ·∂y, ∂b = Σ_rows ∂y, ∂x = ∂y·Wᵀ (summed over q, k and v).
            self._grads[f"w_{name}"][...] = x.T @ d
            self._grads[f"b_{name}"][...] = d.sum(axis=0)
            dx += d @ self._params[f"w_{name}"].T
        return dx


def mse(pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """``nn.MSELoss()`` (mean over every element) and its gradient with respect to ``pred``."""
    diff = pred - target
    return float(np.mean(diff * diff)), (2.0 / diff.size) * diff


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train one self-attention layer with fastattn: the "
                                                 "self-attention article's train.py, in NumPy.")
    parser.add_argument("--epochs", type=int, default=100, help="training epochs (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the initial weights (default: 0)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default: 1e-3, the article's)")
    parser.add_argument("--d-model", type=int, default=32, help="model width (default: 32)")
    parser.add_argument("--backend", default="auto", choices=("auto", "cpp", "numpy"),
                        help="fastattn backend (default: auto)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    # The article's data: 10 random tokens and 10 random targets, uniform in [0, 1).
    x = rng.random((10, args.d_model), dtype=np.float32)
    y = rng.random((10, args.d_model), dtype=np.float32)

    model = SelfAttention(args.d_model, rng, backend=args.backend)
    optimizer = Adam(model.parameters(), lr=args.lr)

    losses = []
    for epoch in range(args.epochs):
        loss, dout = mse(model.forward(x), y)
        model.backward(dout)
        optimizer.step(model.grads())
        losses.append(loss)
        print(f"Epoch {epoch}, Loss: {loss}")

    if not losses:
        return 0
    print(f"Final loss: {losses[-1]:.6f} (first: {losses[0]:.6f})")
    if not losses[-1] < 0.5 * losses[0]:
        print("FAIL: the final loss is not below half the first", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
