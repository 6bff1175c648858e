"""Pictures of what a transformer learned: attention heatmaps of the string-reversal model.

Takes the character-level model of ``char_transformer.py`` (the one it saved, ``--model``,
default ``char_transformer.npz``, when it was trained with the options given here; otherwise, or
with ``--retrain``, it trains one with those options, the same defaults, and saves it), runs it
on a held-out string with ``need_weights=True`` and saves, in ``--out-dir`` (default
``attention-maps``):

- ``attention-layer<i>.png``: every head of layer i (``fastattn.viz.plot_attention``);
- ``attention-reversal.png``: the head that learned the reversal, alone, with the characters as
  labels. To emit the output character after position t the model must look at input position
  2n − 1 − t: an anti-diagonal in the lower-left block (outputs attending to inputs), which is
  what the picture shows. The README shows a copy of it (``docs/attention-reversal.png``).

    python examples/visualize_attention.py     # needs matplotlib: pip install ".[viz]"

The head is chosen by how much weight the output positions give to their mirror position;
the script prints that share for every head, and exits with status 1 when no head puts more
than half its weight there (so a model that did not learn the pattern is noticed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # char_transformer.py, beside this file
import char_transformer as ct  # noqa: E402


def plotter():
    """fastattn.viz.plot_attention, imported when it is used (so that --help needs no matplotlib)."""
    try:
        from fastattn.viz import plot_attention
    except ImportError:
        sys.exit("visualize_attention.py draws with matplotlib, which is not installed: "
                 "pip install matplotlib (in a clone of fastattn: pip install \".[viz]\")")
    return plot_attention


def attention_maps(model: ct.Model, tokens: np.ndarray) -> list[np.ndarray]:
    """Each layer's weights (H, T, T) for one sequence: Model.forward, asking the attention for
    its weights (``MultiHeadAttention.forward(..., need_weights=True)``)."""
    x = model.parameters()["tok_emb"][tokens[None]] + model.parameters()["pos_emb"][: len(tokens)]
    maps = []
    for block in model.blocks:
        attended, weights = block.attn.forward(block.ln1.forward(x), need_weights=True)
        x = x + attended
        x = x + block.mlp.forward(block.ln2.forward(x))
        maps.append(weights[0])
    return maps


def mirror_share(weights: np.ndarray, n: int) -> np.ndarray:
    """Per head, the mean weight that query t (n <= t < 2n, the positions that emit the output)
    gives to key 2n − 1 − t, the input character it must copy."""
    rows = np.arange(n, 2 * n)
    return weights[:, rows, 2 * n - 1 - rows].mean(axis=-1)


def main(argv: list[str] | None = None) -> int:
    parser = ct.argument_parser(ct.describe(__doc__))  # char_transformer's options: --steps, --seed, ...
    ct.add_model_options(parser)
    parser.add_argument("--out-dir", default="attention-maps", help="where the PNG files go")
    parser.add_argument("--dpi", type=int, default=110, help="resolution of the PNG files")
    args = ct.parse_args(argv, parser)
    plot_attention = plotter()

    model, task = ct.trained_model(args)
    string = task.test[0]
    tokens = task.sequences(string[None])[0, :-1]  # what the model reads: s | reversed(s) minus the last
    labels = list(task.decode(tokens))
    n = task.length
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    best = (-1.0, 0, 0)
    for layer, weights in enumerate(attention_maps(model, tokens)):
        fig = plot_attention(weights, tokens_q=labels)
        fig.suptitle(f"layer {layer}: {task.decode(string)} reversed")
        fig.savefig(out_dir / f"attention-layer{layer}.png", dpi=args.dpi)
        share = mirror_share(weights, n)
        print(f"layer {layer}: weight on the mirrored input per head: {np.array2string(share, precision=2)}")
        head = int(share.argmax())
        best = max(best, (float(share[head]), layer, head))

    share, layer, head = best
    weights = attention_maps(model, tokens)[layer]
    fig = plot_attention(weights, tokens_q=labels, head=head)
    fig.axes[0].set_title(f"layer {layer}, head {head}")
    fig.suptitle(f"reversing {task.decode(string)}")
    fig.savefig(out_dir / "attention-reversal.png", dpi=args.dpi)
    print(f"attention-reversal.png: layer {layer}, head {head}, {share:.2f} of the output rows' weight "
          f"on the mirrored input; files in {out_dir}/")
    if share <= 0.5:
        print(f"FAIL: no head attends mostly to the mirrored input ({share:.2f})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
