"""Pictures of attention: ``plot_attention`` draws attention weights as heatmaps.

The weights come from ``fastattn.attention_weights(q, k, ...)`` or from
``fastattn.layers.MultiHeadAttention.forward(x, need_weights=True)``. Needs matplotlib
(``pip install matplotlib``, or the ``viz`` extra). Figures are made without pyplot, so nothing here depends on
a display or changes matplotlib's global state: save them with ``fig.savefig(...)``, or pass an
``ax`` of your own figure.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from ._contract import check_int

try:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
except ImportError as exc:  # pragma: no cover - only without matplotlib
    raise ImportError("fastattn.viz needs matplotlib: pip install matplotlib") from exc

__all__ = ["plot_attention"]

PANEL_INCHES = 3.2  # the side of one head's heatmap, colour bar included
MAX_COLUMNS = 4


def plot_attention(weights: Any, *, tokens_q: Optional[Sequence[str]] = None,
                   tokens_k: Optional[Sequence[str]] = None, head: Optional[int] = None,
                   ax: Optional[Axes] = None) -> Figure:
    """Heatmaps of attention weights: query rows down, key columns across; returns the Figure.

    Parameters
    ----------
    weights : array (Lq, Lk) for one head, (H, Lq, Lk) for H heads, or (1, H, Lq, Lk) (a batch
        of one; index a larger batch yourself, ``weights[b]``). Values are probabilities: each
        row sums to 1 (or is zero for a query that sees no key).
    tokens_q, tokens_k : labels of the query rows and the key columns (strings, of lengths Lq
        and Lk). With only ``tokens_q`` given and Lq == Lk (self-attention), the keys get the
        same labels. Without labels, the axes show positions.
    head : draw only this head (an int in [-H, H)). By default every head is drawn, in a grid
        of up to 4 columns, titled "head 0", "head 1", ...
    ax : draw one heatmap (a 2-D ``weights`` or a chosen ``head``) into this Axes of your own
        figure; its Figure is returned.

    The colour scale runs from 0 to the largest weight shown, one scale for all heads, with a
    colour bar. The figure is ``side × columns`` by ``side × rows`` inches, with ``side`` 3.2
    inches, or ``0.2·max(Lq, Lk) + 1`` inches when that is larger and there are token labels.
    """
    w = np.asarray(weights)
    if w.ndim == 4:
        if w.shape[0] != 1:
            raise ValueError(f"weights.shape (={w.shape}) has a batch of {w.shape[0]}: pass one element, weights[b]")
        w = w[0]
    if w.ndim == 2:
        w = w[None]
        if head not in (None, 0, -1):
            raise ValueError(f"head (={head}) must be None or 0 for 2-D weights (one head)")
        heads = [0]
    elif w.ndim == 3:
        heads = list(range(w.shape[0]))
        if head is not None:
            head = check_int(head, "head", "an int or None")
            if not -len(heads) <= head < len(heads):
                raise ValueError(f"head (={head}) must be in [{-len(heads)}, {len(heads)}): weights has {len(heads)} heads")
            heads = [heads[head]]
    else:
        raise ValueError(f"weights.ndim (={w.ndim}) must be 2 (Lq, Lk), 3 (H, Lq, Lk) or 4 (1, H, Lq, Lk)")
    if not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)):
        raise TypeError(f"weights.dtype (={w.dtype}) must be a real number type")
    lq, lk = w.shape[1:]
    if tokens_k is None and tokens_q is not None and lq == lk:
        tokens_k = tokens_q
    for name, labels, axis, n in (("tokens_q", tokens_q, "Lq", lq), ("tokens_k", tokens_k, "Lk", lk)):
        if labels is not None and len(labels) != n:
            raise ValueError(f"len({name}) (={len(labels)}) must equal the weights' {axis} (={n})")
    if ax is not None and len(heads) != 1:
        raise ValueError(f"ax draws one heatmap, but weights has {len(heads)} heads: pass head=")

    if ax is None:
        columns = min(len(heads), MAX_COLUMNS)
        rows = math.ceil(len(heads) / columns)
        side = panel_inches(lq, lk, tokens_q is not None or tokens_k is not None)
        fig = Figure(figsize=(side * columns, side * rows), layout="constrained")
        axes = fig.subplots(rows, columns, squeeze=False).ravel()
        for extra in axes[len(heads):]:
            extra.set_visible(False)
    else:
        fig, axes = ax.figure, [ax]
    shown = w[heads].astype(np.float64)
    top = float(np.nanmax(shown)) if shown.size and np.isfinite(shown).any() else 1.0
    for a, h in zip(axes, heads):
        image = a.imshow(w[h], vmin=0.0, vmax=top if top > 0 else 1.0, cmap="viridis", aspect="auto",
                         interpolation="nearest")
        a.set_title(f"head {h}" if w.shape[0] > 1 else "attention weights")
        a.set_xlabel("key")
        a.set_ylabel("query")
        _label(a.set_xticks, a.set_xticklabels, tokens_k, lk, rotate=True)
        _label(a.set_yticks, a.set_yticklabels, tokens_q, lq, rotate=False)
    fig.colorbar(image, ax=list(axes[:len(heads)]), shrink=0.8, label="weight")
    return fig


def panel_inches(lq: int, lk: int, labelled: bool) -> float:
    """The side of one head's panel: 3.2 inches, more when there are over ~16 token labels to
    keep legible (0.2 inch each)."""
    return max(PANEL_INCHES, 0.2 * max(lq, lk) + 1.0) if labelled else PANEL_INCHES


def _label(set_ticks, set_labels, labels: Optional[Sequence[str]], n: int, rotate: bool) -> None:
    """Token labels on every position, or position numbers (at most ~10 of them)."""
    if labels is None:
        step = max(1, math.ceil(n / 10))
        set_ticks(np.arange(0, n, step))
        return
    set_ticks(np.arange(n))
    set_labels([str(t) for t in labels], rotation=90 if rotate else 0, fontsize="small")
