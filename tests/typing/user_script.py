"""A user's script, type-checked by tests/test_typing.py with `mypy --strict`."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

import fastattn


def attend(x: npt.NDArray[np.float32], heads: int) -> npt.NDArray[np.float32]:
    batch, length, width = x.shape
    q = x.reshape(batch, length, heads, width // heads).transpose(0, 2, 1, 3)
    out = fastattn.attention(q, q, q, causal=True, window=(64, None), num_threads=None)
    out_lse, lse = fastattn.attention(q, q, q, return_lse=True, mask=np.ones((length, length), bool))
    dq, dk, dv = fastattn.attention_backward(np.ones_like(out_lse), q, q, q, out_lse, lse)
    weights: npt.NDArray[np.floating] = fastattn.attention_weights(q, q, causal=True)
    assert dq.shape == dk.shape == dv.shape == q.shape and lse.ndim == 3 and weights.ndim == 4
    return out.transpose(0, 2, 1, 3).reshape(batch, length, width).astype(np.float32)


def main() -> None:
    previous: int | None = fastattn.set_num_threads(1)
    threads: int = fastattn.get_num_threads()
    fastattn.set_num_threads(previous)
    isa: str | None = fastattn.get_isa()
    config = fastattn.show_config()
    layer = fastattn.layers.MultiHeadAttention(16, 4, rng=np.random.default_rng(0))
    x = np.zeros((2, 8, 16), np.float32)
    y = attend(x, 4)
    print(threads, isa, config["backend"], y.shape, layer)


if __name__ == "__main__":
    main()
