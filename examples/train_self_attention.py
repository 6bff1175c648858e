"""Train the self-attention article's model with fastattn, and save it: its ``train.py``, in NumPy.

The article (TensorFlow/Keras) builds a ``SelfAttentionModel`` around one self-attention layer:
three ``Dense(d_model)`` projections give Q, K and V, its ``call`` returns both the output
``softmax(Q·Kᵀ/√d)·V`` and the attention weights, and the model is trained for 100 epochs with
Adam on an MSE loss against a random target, then saved. In outline::

    class SelfAttentionModel(tf.keras.Model):
        def call(self, x):
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
            weights = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) / tf.sqrt(d_model), axis=-1)
            return tf.matmul(weights, v), weights

    for epoch in range(100):                   # Adam, MSE
        with tf.GradientTape() as tape:
            output, _ = model(x)
            loss = mse(y, output)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), ...))
    model.save(...)

Here the model is ``fastattn.layers.MultiHeadAttention`` with one head, whose
``forward(x, need_weights=True)`` returns the output and the weights, and whose Q/K/V
projections are initialised as Keras' ``Dense`` is (Glorot uniform weights, zero biases).
fastattn's layer always ends with an output projection ``w_o``, which the article's model does
not have: it is set to the identity and not trained (the optimizer is given only the Q/K/V
parameters), so the model computes exactly the article's function. Autograd is replaced by the
layer's ``backward``: fastattn's gradient kernel, which recomputes the weights block by block
from the forward's log-sum-exp instead of storing them. The optimizer is ``fastattn.optim.Adam``
with Keras' default ``lr = 1e-3`` and ``epsilon = 1e-7`` (added to ``sqrt(v̂)`` as torch does;
Keras adds it to ``sqrt(v)`` before the bias correction, a difference of order ``eps``).

Run ``python examples/train_self_attention.py`` (``--help`` for the flags). It prints a line per
epoch and the final loss, saves the model and the optimizer's state (``--save``, default
``self_attention_model/``: ``model.npz`` and ``adam.npz``, the way Keras' ``model.save`` writes a
directory), and exits with status 1 if the final loss is not below half the first, so a broken
gradient shows up as a failure in CI. Reload with::

    model = MultiHeadAttention.load("self_attention_model/model.npz")
    optimizer = Adam.load("self_attention_model/adam.npz", trainable(model))
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from fastattn.layers import MultiHeadAttention
from fastattn.optim import Adam

TRAINED = ("w_q", "b_q", "w_k", "b_k", "w_v", "b_v")  # the article's three Dense layers


def self_attention_model(d_model: int, seed: int, *, dtype=np.float32, backend: str = "auto") -> MultiHeadAttention:
    """The article's model: one head, Q/K/V projections with biases, an identity output projection."""
    model = MultiHeadAttention(d_model, num_heads=1, dtype=dtype, rng=seed, backend=backend)
    model.w_o[...] = np.eye(d_model, dtype=dtype)  # b_o is zero: y = attention(...) itself
    return model


def trainable(model: MultiHeadAttention) -> dict:
    """The parameters the optimizer updates (not the fixed identity output projection)."""
    return {name: model.parameters()[name] for name in TRAINED}


def mse(pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Keras' ``"mse"`` (mean over every element) and its gradient with respect to ``pred``."""
    diff = pred - target
    return float(np.mean(diff * diff)), (2.0 / diff.size) * diff


def data(seed: int, d_model: int) -> tuple[np.ndarray, np.ndarray]:
    """The article's data: 10 random tokens and 10 random targets, uniform in [0, 1)."""
    rng = np.random.default_rng(seed)
    return rng.random((10, d_model), dtype=np.float32), rng.random((10, d_model), dtype=np.float32)


def train(epochs: int, seed: int, d_model: int, lr: float = 1e-3, backend: str = "auto", log=print):
    """Trains the model as the article does; returns (model, optimizer, x, per-epoch losses)."""
    x, y = data(seed, d_model)
    model = self_attention_model(d_model, seed, backend=backend)
    optimizer = Adam(trainable(model), lr=lr, eps=1e-7)
    losses = []
    for epoch in range(epochs):
        output, _weights = model.forward(x, need_weights=True)  # the article's (output, weights)
        loss, d_output = mse(output, y)
        model.backward(d_output)
        optimizer.step({name: model.grads()[name] for name in TRAINED})
        losses.append(loss)
        log(f"Epoch {epoch}, Loss: {loss}")
    return model, optimizer, x, losses


def save(model: MultiHeadAttention, optimizer: Adam, directory: str) -> None:
    """``model.save``: the model and the optimizer's state, one ``.npz`` file each, in ``directory``."""
    os.makedirs(directory, exist_ok=True)
    model.save(os.path.join(directory, "model.npz"))
    optimizer.save(os.path.join(directory, "adam.npz"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the self-attention article's Keras model with fastattn, "
                                                 "in NumPy, and save it.")
    parser.add_argument("--epochs", type=int, default=100, help="training epochs (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the initial weights (default: 0)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default: 1e-3, Keras')")
    parser.add_argument("--d-model", type=int, default=32, help="model width (default: 32)")
    parser.add_argument("--backend", default="auto", choices=("auto", "cpp", "numpy"),
                        help="fastattn backend (default: auto)")
    parser.add_argument("--save", default="self_attention_model", metavar="DIR",
                        help="directory for model.npz and adam.npz (default: self_attention_model)")
    args = parser.parse_args(argv)

    model, optimizer, x, losses = train(args.epochs, args.seed, args.d_model, args.lr, args.backend)
    if not losses:
        return 0
    output, weights = model.forward(x, need_weights=True)
    print(f"Final loss: {losses[-1]:.6f} (first: {losses[0]:.6f}); attention weights {weights.shape}, "
          f"rows sum to 1 within {np.abs(weights.sum(axis=-1) - 1).max():.1e}")
    save(model, optimizer, args.save)
    print(f"Saved {os.path.join(args.save, 'model.npz')} and {os.path.join(args.save, 'adam.npz')}")
    if not losses[-1] < 0.5 * losses[0]:
        print("FAIL: the final loss is not below half the first", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
