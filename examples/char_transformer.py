"""A tiny character-level transformer, trained in NumPy with fastattn, learns to reverse strings.

Each example is a random string over a small alphabet, a separator and the string reversed::

    cadbhe|ehbdac

The model is a decoder-only (GPT-style) transformer: it reads the sequence left to right and
predicts every next character, but the loss counts only the characters after the separator,
which are determined by the input (the input itself is random and cannot be predicted).
To emit the character at output position i it must attend back to input position n − 1 − i:
a content-independent, position-dependent lookup that a causal attention layer with learned
position embeddings can learn and that a model without attention cannot.

Everything is NumPy with hand-written backward passes:

    tokens → token embedding + position embedding
           → Block × layers, each (pre-LN)  x = x + MultiHeadAttention(LayerNorm(x))
                                            x = x + MLP(LayerNorm(x))      (Linear, GELU, Linear)
           → LayerNorm → Linear → logits → softmax cross-entropy on the output positions

The attention is ``fastattn.layers.MultiHeadAttention(causal=True)``: its forward runs
``fastattn.attention`` and its backward ``fastattn.attention_backward``. The optimizer is
``fastattn.optim.Adam``.

Held-out accuracy is measured by greedy decoding — the model is given ``string|`` and emits
its own output one character at a time — on strings never used for training. Chance is one
over the alphabet size. The script exits with status 1 unless that accuracy exceeds twice
chance, so CI notices a model that stops learning.

The trained model is saved (``--save``, default ``char_transformer.npz`` in the current
directory: its parameters and the options it was trained with, in one ``.npz`` archive);
``generate_with_cache.py`` and ``visualize_attention.py`` load it from there instead of training
again when it was trained with the options they are given.

    python examples/char_transformer.py            # the defaults: well under a minute on 2 cores
    python examples/char_transformer.py --help
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict

import numpy as np

from fastattn.layers import MultiHeadAttention
from fastattn.optim import Adam

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
SEPARATOR = "|"


# -- building blocks: each has forward(x), backward(dy) -> dx, parameters() and grads() ------

class Module:
    """``parameters()`` and ``grads()`` as flat dicts with dotted names (``blocks.0.ln1.gamma``).

    A subclass keeps its own arrays in ``self._params`` / ``self._grads`` (same keys) and lists
    its sub-modules in ``self.children``. The arrays are live: an optimizer updates
    ``parameters()`` in place, and ``backward`` overwrites the arrays of ``grads()`` in place,
    so both dicts stay valid across steps (the convention of ``MultiHeadAttention``).
    """

    _params: Dict[str, np.ndarray]
    _grads: Dict[str, np.ndarray]
    children: dict

    def parameters(self) -> Dict[str, np.ndarray]:
        return self._collect("parameters", self._params)

    def grads(self) -> Dict[str, np.ndarray]:
        return self._collect("grads", self._grads)

    def _collect(self, method: str, own: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        out = dict(own)
        for prefix, child in self.children.items():
            out.update({f"{prefix}.{name}": a for name, a in getattr(child, method)().items()})
        return out


class Linear(Module):
    """``y = x @ w + b`` over the last axis, ``w`` of shape (in, out) (the transpose of torch's)."""

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator, dtype=np.float32):
        # Normal(0, 1/sqrt(n_in)) keeps the output variance near the input's.
        self._params = {"w": (rng.standard_normal((n_in, n_out)) / math.sqrt(n_in)).astype(dtype),
                       "b": np.zeros(n_out, dtype)}
        self._grads = {k: np.zeros_like(v) for k, v in self._params.items()}
        self.children = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return x @ self._params["w"] + self._params["b"]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x2, dy2 = self._x.reshape(-1, self._x.shape[-1]), dy.reshape(-1, dy.shape[-1])
        self._grads["w"][...] = x2.T @ dy2  # every (batch, position) row adds its outer product
        self._grads["b"][...] = dy2.sum(axis=0)
        return dy @ self._params["w"].T


class LayerNorm(Module):
    """``y = γ·(x − μ)/σ + β`` over the last axis, ``σ = sqrt(var + eps)``.

    Backward: write ``x̂ = (x − μ)/σ`` and ``g = dy·γ`` (the gradient reaching x̂). Since μ and σ
    depend on every feature of the row, ``dx`` is not just ``g/σ``: differentiating through the
    mean and the variance removes from ``g`` its mean and its projection on x̂::

        dx = (g − mean(g) − x̂·mean(g·x̂)) / σ        (means over the normalised axis)

    Shifting a row of x by a constant, or scaling it about its mean, leaves x̂ unchanged, so dx
    has no component along those two directions (1 and x̂): that is what the subtractions remove.
    """

    def __init__(self, dim: int, dtype=np.float32, eps: float = 1e-5):
        self.eps = eps
        self._params = {"gamma": np.ones(dim, dtype), "beta": np.zeros(dim, dtype)}
        self._grads = {k: np.zeros_like(v) for k, v in self._params.items()}
        self.children = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        mu = x.mean(axis=-1, keepdims=True)
        var = x.var(axis=-1, keepdims=True)
        self._inv_sigma = 1.0 / np.sqrt(var + self.eps)
        self._xhat = (x - mu) * self._inv_sigma
        return self._xhat * self._params["gamma"] + self._params["beta"]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        xhat = self._xhat
        self._grads["gamma"][...] = (dy * xhat).reshape(-1, xhat.shape[-1]).sum(axis=0)
        self._grads["beta"][...] = dy.reshape(-1, dy.shape[-1]).sum(axis=0)
        g = dy * self._params["gamma"]
        return (g - g.mean(axis=-1, keepdims=True)
                - xhat * (g * xhat).mean(axis=-1, keepdims=True)) * self._inv_sigma


def gelu(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GELU, tanh approximation (GPT-2's), and its derivative at x (kept for the backward)::

        gelu(x) = x·Φ̃(x),  Φ̃(x) = (1 + tanh(u))/2,  u = sqrt(2/π)·(x + 0.044715·x³)
        gelu'(x) = Φ̃(x) + x·(1 − tanh²(u))/2 · sqrt(2/π)·(1 + 3·0.044715·x²)
    """
    c = math.sqrt(2.0 / math.pi)
    t = np.tanh(c * (x + 0.044715 * (x * x * x)))
    phi = 0.5 * (1.0 + t)
    dphi = 0.5 * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x * x)
    return x * phi, phi + x * dphi


class MLP(Module):
    """``Linear(d, 4d) → GELU → Linear(4d, d)``, applied to each position on its own."""

    def __init__(self, dim: int, rng: np.random.Generator, dtype=np.float32, hidden: int | None = None):
        hidden = 4 * dim if hidden is None else hidden
        self.fc1 = Linear(dim, hidden, rng, dtype)
        self.fc2 = Linear(hidden, dim, rng, dtype)
        self._params, self._grads = {}, {}
        self.children = {"fc1": self.fc1, "fc2": self.fc2}

    def forward(self, x: np.ndarray) -> np.ndarray:
        h, self._dgelu = gelu(self.fc1.forward(x))
        return self.fc2.forward(h)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return self.fc1.backward(self.fc2.backward(dy) * self._dgelu)


class Block(Module):
    """A pre-LN transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``.

    A residual connection passes its gradient through unchanged, so the backward adds the
    gradient of each branch to the one arriving from above.
    """

    def __init__(self, dim: int, num_heads: int, rng: np.random.Generator, dtype=np.float32,
                 backend: str = "auto", num_threads: int | None = None):
        self.ln1 = LayerNorm(dim, dtype)
        self.attn = MultiHeadAttention(dim, num_heads, causal=True, dtype=dtype, rng=rng, backend=backend,
                                       num_threads=num_threads)
        self.ln2 = LayerNorm(dim, dtype)
        self.mlp = MLP(dim, rng, dtype)
        self._params, self._grads = {}, {}
        self.children = {"ln1": self.ln1, "attn": self.attn, "ln2": self.ln2, "mlp": self.mlp}

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = x + self.attn.forward(self.ln1.forward(x))
        return x + self.mlp.forward(self.ln2.forward(x))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        dy = dy + self.ln2.backward(self.mlp.backward(dy))
        return dy + self.ln1.backward(self.attn.backward(dy))


class Model(Module):
    """Token + position embeddings → ``layers`` Blocks → LayerNorm → Linear to vocabulary logits."""

    def __init__(self, vocab: int, max_len: int, dim: int, num_heads: int, layers: int,
                 rng: np.random.Generator, dtype=np.float32, backend: str = "auto",
                 num_threads: int | None = None):
        # Token and position embeddings are summed, so both start small and on the same scale:
        # neither drowns the other before training has shaped them.
        self._params = {"tok_emb": (0.1 * rng.standard_normal((vocab, dim))).astype(dtype),
                       "pos_emb": (0.1 * rng.standard_normal((max_len, dim))).astype(dtype)}
        self._grads = {k: np.zeros_like(v) for k, v in self._params.items()}
        self.blocks = [Block(dim, num_heads, rng, dtype, backend, num_threads) for _ in range(layers)]
        self.ln_f = LayerNorm(dim, dtype)
        self.head = Linear(dim, vocab, rng, dtype)
        self.children = {**{f"blocks.{i}": b for i, b in enumerate(self.blocks)},
                         "ln_f": self.ln_f, "head": self.head}

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        """``tokens`` (B, T) ints → logits (B, T, vocab); position t sees tokens 0..t only."""
        self._tokens = tokens
        x = self._params["tok_emb"][tokens] + self._params["pos_emb"][: tokens.shape[1]]
        for block in self.blocks:
            x = block.forward(x)
        return self.head.forward(self.ln_f.forward(x))

    def backward(self, dlogits: np.ndarray) -> None:
        """Fill ``grads()`` from ``dlogits`` = ∂loss/∂logits."""
        dx = self.ln_f.backward(self.head.backward(dlogits))
        for block in reversed(self.blocks):
            dx = block.backward(dx)
        # An embedding lookup is a gather, so its backward is a scatter-add: a token that
        # occurs several times in the batch receives the sum of their gradients.
        dim = dx.shape[-1]
        self._grads["tok_emb"].fill(0)
        np.add.at(self._grads["tok_emb"], self._tokens.reshape(-1), dx.reshape(-1, dim))
        self._grads["pos_emb"].fill(0)
        self._grads["pos_emb"][: dx.shape[1]] = dx.sum(axis=0)


def cross_entropy(logits: np.ndarray, targets: np.ndarray, weight: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy over the positions where ``weight`` is 1, and ∂loss/∂logits.

    ``logits`` (B, T, V), ``targets`` (B, T) ints, ``weight`` (B, T) of 0/1. The gradient of
    ``−log softmax(z)[y]`` is ``softmax(z) − onehot(y)``, scaled by the weight over the count.
    """
    z = logits - logits.max(axis=-1, keepdims=True)  # the shift leaves softmax unchanged, avoids overflow
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
    count = weight.sum()
    loss = float(-(picked * weight).sum() / count)
    onehot = np.eye(logits.shape[-1], dtype=logits.dtype)[targets]
    dlogits = (np.exp(log_p) - onehot) * (weight / count)[..., None].astype(logits.dtype)
    return loss, dlogits


# -- the task -----------------------------------------------------------------------------------

class ReversalTask:
    """Strings of ``length`` characters over the first ``alphabet`` letters, then ``|``, then the
    string reversed. Token ids: letters 0..alphabet−1, the separator ``alphabet``.

    The held-out strings are drawn first and never appear in a training batch.
    """

    def __init__(self, alphabet: int, length: int, rng: np.random.Generator, held_out: int):
        self.alphabet, self.length = alphabet, length
        self.separator = alphabet
        self.vocab = alphabet + 1
        self.rng = rng
        self.test = self._strings(held_out)
        self._held_out = {row.tobytes() for row in self.test}

    def _strings(self, n: int) -> np.ndarray:
        return self.rng.integers(0, self.alphabet, size=(n, self.length))

    def sequences(self, strings: np.ndarray) -> np.ndarray:
        """(n, length) → (n, 2·length + 1): ``string | reversed``."""
        sep = np.full((len(strings), 1), self.separator)
        return np.concatenate([strings, sep, strings[:, ::-1]], axis=1)

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(inputs, targets, weight)``, each (n, 2·length): next-token prediction, loss on the
        ``length`` positions whose target is an output character."""
        strings = self._strings(n)
        while True:  # redraw the (rare) strings that are held out
            seen = np.array([row.tobytes() in self._held_out for row in strings])
            if not seen.any():
                break
            strings[seen] = self._strings(int(seen.sum()))
        seq = self.sequences(strings)
        weight = np.zeros(seq.shape[1] - 1)
        weight[self.length:] = 1  # targets seq[length + 1:], the reversed string
        return seq[:, :-1], seq[:, 1:], np.broadcast_to(weight, (n, len(weight)))

    def decode(self, ids) -> str:
        return "".join(SEPARATOR if i == self.separator else ALPHABET[i] for i in ids)


def greedy_reverse(model: Model, task: ReversalTask, strings: np.ndarray) -> np.ndarray:
    """The model's output for ``string|``, one character at a time, each fed back as input."""
    seq = np.concatenate([strings, np.full((len(strings), 1), task.separator)], axis=1)
    for _ in range(task.length):
        logits = model.forward(seq)[:, -1, : task.alphabet]  # the separator is never a valid output
        seq = np.concatenate([seq, logits.argmax(axis=-1)[:, None]], axis=1)
    return seq[:, task.length + 1:]


# -- a progress bar with no dependency ------------------------------------------------------------

class Progress:
    """``step  75/300 [#####---------------] loss 1.234 acc 45.6%   2.1s`` on one stderr line,
    redrawn with ``\\r`` at most ten times a second (every two seconds when stderr is a file or
    a pipe, e.g. a CI log, where each redraw is kept)."""

    def __init__(self, total: int, enabled: bool = True, width: int = 20):
        self.total, self.enabled, self.width = total, enabled, width
        self.interval = 0.1 if sys.stderr.isatty() else 2.0
        self.start = self._last = time.perf_counter()

    def update(self, step: int, loss: float, acc: float) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self._last < self.interval and step < self.total):
            return
        self._last = now
        done = self.width * step // max(self.total, 1)
        bar = "#" * done + "-" * (self.width - done)
        sys.stderr.write(f"\rstep {step:>{len(str(self.total))}}/{self.total} [{bar}] "
                         f"loss {loss:.3f} acc {100 * acc:5.1f}% {now - self.start:5.1f}s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# -- training -----------------------------------------------------------------------------------

def train(args: argparse.Namespace) -> float:
    """Train as ``args`` say (and save, unless --no-save); print the held-out results and return
    the per-character accuracy."""
    model, task = fit(args)
    if not args.no_save:
        save(model, args, args.save)
        print(f"saved the trained model to {args.save}")
    predicted = greedy_reverse(model, task, task.test)
    correct = predicted == task.test[:, ::-1]
    char_acc, string_acc = float(correct.mean()), float(correct.all(axis=1).mean())
    if not args.quiet:
        for s, p in zip(task.test[:3], predicted[:3]):
            print(f"  {task.decode(s)}{SEPARATOR} -> {task.decode(p)}")
    print(f"held-out strings: {len(task.test)}, chance per character: {1 / task.alphabet:.3f}")
    print(f"held-out accuracy: {char_acc:.3f} per character, {string_acc:.3f} whole strings")
    return char_acc


def build(args: argparse.Namespace) -> tuple[Model, ReversalTask]:
    """The untrained model and its task (with the held-out strings), as ``args`` say: both are
    drawn from the seed, the held-out strings first."""
    rng = np.random.default_rng(args.seed)
    task = ReversalTask(args.alphabet, args.seq_len, rng, held_out=args.held_out)
    model = Model(task.vocab, 2 * args.seq_len, args.d_model, args.heads, args.layers, rng,
                  backend=args.backend, num_threads=args.threads or None)
    return model, task


def fit(args: argparse.Namespace) -> tuple[Model, ReversalTask]:
    """The model trained as ``args`` say, and its task (with the held-out strings)."""
    model, task = build(args)
    optimizer = Adam(model.parameters(), lr=args.lr)
    grads = model.grads()  # live arrays: every backward overwrites them

    progress = Progress(args.steps, enabled=not args.quiet)
    loss_avg = acc_avg = None
    for step in range(1, args.steps + 1):
        inputs, targets, weight = task.batch(args.batch_size)
        logits = model.forward(inputs)
        loss, dlogits = cross_entropy(logits, targets, weight.astype(logits.dtype))
        model.backward(dlogits)
        optimizer.step(grads)

        acc = float(((logits.argmax(-1) == targets) * weight).sum() / weight.sum())
        # Exponential moving averages: a single batch's numbers are noisy.
        loss_avg = loss if loss_avg is None else 0.9 * loss_avg + 0.1 * loss
        acc_avg = acc if acc_avg is None else 0.9 * acc_avg + 0.1 * acc
        progress.update(step, loss_avg, acc_avg)
    progress.close()
    return model, task


# -- saving and loading -------------------------------------------------------------------------

# The options that decide a trained model's weights (backend and threads only decide how they
# are computed): a saved model is reused only for the same values.
TRAINING_OPTIONS = ("steps", "batch_size", "seq_len", "alphabet", "d_model", "heads", "layers", "lr", "held_out",
                    "seed")
DEFAULT_MODEL_PATH = "char_transformer.npz"
_OPTIONS_ENTRY = "__char_transformer_options__"


def save(model: Model, args: argparse.Namespace, path) -> None:
    """The model's parameters and the options it was trained with, as one .npz archive (through a
    temporary file, so an interrupted save leaves no half-written model)."""
    options = {name: getattr(args, name) for name in TRAINING_OPTIONS}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name without it
        np.savez(f, **{_OPTIONS_ENTRY: np.array(json.dumps(options))}, **model.parameters())
    os.replace(tmp, path)


def saved_options(path) -> dict:
    """The training options stored with a saved model."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return json.loads(str(f[_OPTIONS_ENTRY]))
    except (ValueError, KeyError, OSError) as exc:
        raise ValueError(f"{path} is not a model saved by char_transformer.py: {exc}") from None


def load(path, args: argparse.Namespace) -> tuple[Model, ReversalTask]:
    """The model saved at ``path`` and its task, built with the options it was trained with (the
    computing options, backend and threads, from ``args``)."""
    trained = argparse.Namespace(**{**vars(args), **saved_options(path)})
    model, task = build(trained)
    with np.load(path, allow_pickle=False) as f:
        arrays = {name: f[name] for name in f.files if name != _OPTIONS_ENTRY}
    params = model.parameters()
    if arrays.keys() != params.keys() or any(arrays[n].shape != p.shape for n, p in params.items()):
        raise ValueError(f"{path}: its arrays do not fit the model its options describe")
    for name, p in params.items():
        p[...] = arrays[name]
    return model, task


def trained_model(args: argparse.Namespace) -> tuple[Model, ReversalTask]:
    """The model ``args`` describe: loaded from ``args.model`` when that holds one trained with the
    same options (and not ``--retrain``), else trained and saved there."""
    path = Path(args.model)
    if path.exists() and not args.retrain:
        options = saved_options(path)
        differ = [f"--{name.replace('_', '-')} {options.get(name)} (asked: {getattr(args, name)})"
                  for name in TRAINING_OPTIONS if options.get(name) != getattr(args, name)]
        if not differ:
            print(f"loaded the trained model from {path} (--retrain trains it again)")
            return load(path, args)
        print(f"{path} holds a model trained with other options ({', '.join(differ)}): training a new one")
    model, task = fit(args)
    save(model, args, path)
    print(f"saved the trained model to {path}")
    return model, task


# -- the command line ---------------------------------------------------------------------------

def describe(doc: str) -> str:
    """A script's description for --help: the first paragraph of its docstring."""
    return " ".join(doc.split("\n\n")[0].split())


def argument_parser(description: str = describe(__doc__)) -> argparse.ArgumentParser:
    """The training options, under the calling script's own description."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="training steps (batches)")
    p.add_argument("--batch-size", type=int, default=64, help="strings per batch")
    p.add_argument("--seq-len", type=int, default=10, help="length of the string to reverse")
    p.add_argument("--alphabet", type=int, default=8, help="letters in the alphabet (chance = 1/alphabet)")
    p.add_argument("--d-model", type=int, default=64, help="model width")
    p.add_argument("--heads", type=int, default=4, help="attention heads per layer")
    p.add_argument("--layers", type=int, default=2, help="transformer blocks")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    p.add_argument("--held-out", type=int, default=500, help="held-out strings for the final accuracy")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the initial weights")
    p.add_argument("--backend", default="auto", choices=("auto", "cpp", "numpy"), help="fastattn backend")
    # fastattn's default thread count: a call this small (64 strings × 4 heads × 20 positions)
    # runs on one thread by itself, so it does not wake a second thread that would compete with
    # OpenBLAS's, still spinning after NumPy's matrix products (before fastattn capped small
    # calls, 2 threads made this training twice as slow as 1).
    p.add_argument("--threads", type=int, default=0,
                   help="fastattn's num_threads; 0 (default) for its default")
    p.add_argument("--quiet", action="store_true", help="no progress bar or sample outputs")
    return p


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--model and --retrain, for the scripts that use a trained model (trained_model)."""
    p.add_argument("--model", default=DEFAULT_MODEL_PATH, metavar="FILE",
                   help="a model saved by char_transformer.py, reused when it was trained with the options given "
                        "here; else a model is trained and saved there")
    p.add_argument("--retrain", action="store_true", help="train (and save) the model even if FILE holds one")


def parse_args(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    p = parser or argument_parser()
    args = p.parse_args(argv)
    if not 2 <= args.alphabet <= len(ALPHABET):
        p.error(f"--alphabet must be in [2, {len(ALPHABET)}]")
    if args.seq_len < 1 or args.steps < 0 or args.batch_size < 1 or args.held_out < 1 or args.threads < 0:
        p.error("--seq-len, --batch-size and --held-out must be >= 1, --steps and --threads >= 0")
    if args.alphabet ** args.seq_len < 4 * args.held_out:
        # Training batches must be drawn from the strings that are not held out.
        p.error(f"{args.alphabet}^{args.seq_len} strings are too few to hold out {args.held_out} of them; "
                "raise --seq-len or --alphabet, or lower --held-out")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser()
    parser.add_argument("--save", default=DEFAULT_MODEL_PATH, metavar="FILE",
                        help="where the trained model goes (generate_with_cache.py and visualize_attention.py "
                             "load it from there)")
    parser.add_argument("--no-save", action="store_true", help="do not save the trained model")
    args = parse_args(argv, parser)
    acc = train(args)
    threshold = 2.0 / args.alphabet
    if not acc > threshold:
        print(f"FAIL: held-out accuracy {acc:.3f} is not above twice chance ({threshold:.3f})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
