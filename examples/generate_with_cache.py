"""Generate with a KV cache: the string-reversal transformer of char_transformer.py, decoded token
by token three ways, with the tokens per second of each.

    (a) recompute   every step runs the whole model over the whole prefix (what char_transformer.py
                    does): step t costs O(t) attention rows and O(t) projections
    (b) float32     a ``fastattn.KVCache`` per layer keeps the keys and values of every earlier
                    token; each step computes the new token only and attends to the cache
    (c) int8        the same with ``KVCache(dtype="int8")``: one byte per value plus a float32
                    scale per token and head, a quarter of the float32 cache's memory

The greedy outputs of (a) and (b) must agree (the same model, computed differently); (c) is
printed beside (b). The model is the one char_transformer.py saved (``--model``, default
``char_transformer.npz``) when it was trained with the options given here (char_transformer.py's
options, the same defaults); otherwise, or with ``--retrain``, it is trained first and saved
there. The script exits with status 1 if (b) disagrees with (a) or the int8 cache's accuracy is
not above twice chance.

    python examples/generate_with_cache.py            # loads (or trains and saves), then decodes
    python examples/generate_with_cache.py --help
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # char_transformer.py beside this file
import char_transformer as ct  # noqa: E402

from fastattn import KVCache  # noqa: E402


def project(layer, x: np.ndarray, which: str) -> np.ndarray:
    """x·w + b of one of the layer's projections (q, k, v or o)."""
    y = x @ getattr(layer, "w_" + which)
    return y + getattr(layer, "b_" + which) if layer.bias else y


def split_heads(y: np.ndarray, heads: int) -> np.ndarray:
    b, t, _ = y.shape
    return np.ascontiguousarray(y.reshape(b, t, heads, -1).transpose(0, 2, 1, 3))  # (B, heads, T, Dh)


class CachedDecoder:
    """The model of char_transformer.py run incrementally: one KVCache per layer holds the keys
    and values of every token seen so far, so each step projects and attends from the new
    tokens only (a prefill of several tokens is one step too)."""

    def __init__(self, model: ct.Model, batch: int, dtype: str):
        self.model = model
        self.seq_ids = list(range(batch))
        # Sequences of ~20 tokens: blocks of 16 waste little (the default, 128, suits long ones).
        self.caches = [KVCache(b.attn.num_kv_heads, b.attn.head_dim, dtype=dtype, block_size=16)
                       for b in model.blocks]
        self.position = 0

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """tokens (B, T) at the next T positions → the logits of the last one, (B, vocab)."""
        params = self.model.parameters()
        t = tokens.shape[1]
        x = params["tok_emb"][tokens] + params["pos_emb"][self.position:self.position + t]
        for block, cache in zip(self.model.blocks, self.caches):
            attn, h = block.attn, block.ln1.forward(x)
            q = split_heads(project(attn, h, "q"), attn.num_heads)
            k = split_heads(project(attn, h, "k"), attn.num_kv_heads)
            v = split_heads(project(attn, h, "v"), attn.num_kv_heads)
            cache.append(self.seq_ids, k, v)
            # The new queries are the last t positions of each cached sequence: "lower_right".
            out = cache.attention(q, self.seq_ids, causal="lower_right")
            merged = out.transpose(0, 2, 1, 3).reshape(x.shape)
            x = x + project(attn, merged, "o")
            x = x + block.mlp.forward(block.ln2.forward(x))
        self.position += t
        return self.model.head.forward(self.model.ln_f.forward(x))[:, -1]

    def memory_bytes(self) -> int:
        return sum(cache.memory_bytes for cache in self.caches)


def greedy_cached(model: ct.Model, task: ct.ReversalTask, strings: np.ndarray, dtype: str):
    """The greedy output for ``string|`` with a cache of `dtype`: a prefill of the prompt, then
    one token per step. Also returns the caches' bytes at the end."""
    decoder = CachedDecoder(model, len(strings), dtype)
    prompt = np.concatenate([strings, np.full((len(strings), 1), task.separator)], axis=1)
    logits = decoder.step(prompt)
    outputs = []
    for i in range(task.length):
        token = logits[:, : task.alphabet].argmax(axis=-1)  # the separator is never a valid output
        outputs.append(token)
        if i + 1 < task.length:
            logits = decoder.step(token[:, None])
    return np.stack(outputs, axis=1), decoder.memory_bytes()


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = ct.argument_parser(ct.describe(__doc__))
    ct.add_model_options(parser)
    args = ct.parse_args(argv, parser)
    model, task = ct.trained_model(args)
    strings = task.test
    tokens = strings.size  # one generated token per input character
    recomputed, t_a = timed(ct.greedy_reverse, model, task, strings)
    (cached, bytes_f32), t_b = timed(greedy_cached, model, task, strings, "float32")
    (cached8, bytes_i8), t_c = timed(greedy_cached, model, task, strings, "int8")

    want = strings[:, ::-1]
    print(f"{len(strings)} held-out strings, {tokens} generated tokens each way; chance per character "
          f"{1 / task.alphabet:.3f}")
    print(f"{'method':<22} {'tokens/s':>10} {'accuracy':>9} {'cache bytes':>12}")
    for name, out, seconds, nbytes in (("(a) recompute", recomputed, t_a, None),
                                       ("(b) float32 KVCache", cached, t_b, bytes_f32),
                                       ("(c) int8 KVCache", cached8, t_c, bytes_i8)):
        shown = "-" if nbytes is None else f"{nbytes:,}"
        print(f"{name:<22} {tokens / seconds:>10.0f} {float((out == want).mean()):>9.3f} {shown:>12}")
    if not args.quiet:
        print("greedy outputs, float32 cache | int8 cache:")
        for s, b, c in zip(strings[:5], cached[:5], cached8[:5]):
            print(f"  {task.decode(s)}{ct.SEPARATOR} -> {task.decode(b)} | {task.decode(c)}")
    agree = float((cached == cached8).mean())
    print(f"int8 and float32 caches agree on {agree:.3f} of the tokens")

    status = 0
    if not np.array_equal(cached, recomputed):
        print("FAIL: the float32 cache's greedy outputs differ from recomputing the prefix", file=sys.stderr)
        status = 1
    threshold = 2.0 / task.alphabet
    if not float((cached8 == want).mean()) > threshold:
        print(f"FAIL: the int8 cache's accuracy is not above twice chance ({threshold:.3f})", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
