"""Optimizers that update NumPy parameter arrays in place, e.g. ``MultiHeadAttention.parameters()``."""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from . import _checkpoint
from ._contract import is_real


class Adam:
    """Adam (Kingma & Ba, 2015) with ``torch.optim.Adam``'s semantics.

    For each parameter ``p`` with gradient ``g``, at its step ``t`` (1, 2, ...)::

        g = g + weight_decay·p                       (L2 penalty, torch's form; not AdamW)
        m = β1·m + (1 − β1)·g
        v = β2·v + (1 − β2)·g²
        p = p − lr / (1 − β1ᵗ) · m / (sqrt(v) / sqrt(1 − β2ᵗ) + eps)

    computed in the parameter's dtype, in the order torch computes it.

    Parameters
    ----------
    params : dict of name → numpy.ndarray
        The arrays to optimise: floating, writeable; ``step`` updates them in place (keep
        passing the same arrays, e.g. ``layer.parameters()``).
    lr : float
        Learning rate, >= 0. May be changed between steps (``opt.lr = ...``) for a schedule.
    betas : (float, float)
        Decay rates of the first and second moment estimates, each in [0, 1).
    eps : float
        Added to the denominator for stability, >= 0.
    weight_decay : float
        L2 penalty coefficient, >= 0.
    """

    def __init__(self, params: Mapping[str, np.ndarray], lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a dict of name -> numpy.ndarray, got {type(params).__name__}")
        for name, p in params.items():
            if not isinstance(p, np.ndarray):
                raise TypeError(f"params[{name!r}] must be a numpy.ndarray, got {type(p).__name__}")
            if p.dtype.kind != "f":
                raise TypeError(f"params[{name!r}].dtype (={p.dtype}) must be floating")
            if not p.flags.writeable:
                raise ValueError(f"params[{name!r}] must be writeable: step() updates it in place")
        self.params: Dict[str, np.ndarray] = dict(params)
        self.lr = _non_negative(lr, "lr")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for i, beta in enumerate(betas):
            if not is_real(beta):
                raise TypeError(f"betas[{i}] must be a real number, got {type(beta).__name__}")
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"betas[{i}] (={beta}) must be in [0, 1)")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = _non_negative(eps, "eps")
        self.weight_decay = _non_negative(weight_decay, "weight_decay")
        self.zero_state()

    def zero_state(self) -> None:
        """Forget the moment estimates and step counts: the next step is a first step again."""
        # Per parameter, as torch keeps them: a parameter skipped by a step (gradient None)
        # does not advance its own bias correction.
        self.steps: Dict[str, int] = {name: 0 for name in self.params}
        self.exp_avg = {name: np.zeros_like(p) for name, p in self.params.items()}
        self.exp_avg_sq = {name: np.zeros_like(p) for name, p in self.params.items()}

    def save(self, path) -> None:
        """Write the optimizer's state to ``path`` (as ``MultiHeadAttention.save`` writes: an
        ``.npz`` archive, replaced only once whole): the hyperparameters (``lr`` as it is now),
        each parameter's step count and moment estimates ``exp_avg.<i>``/``exp_avg_sq.<i>`` (i:
        the position of its name in the header's ``params`` list). The parameters themselves
        are not saved: save the model too. ``Adam.load`` resumes from it."""
        names = list(self.params)
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"save() needs str parameter names, got {name!r}")
        config = dict(lr=self.lr, betas=list(self.betas), eps=self.eps, weight_decay=self.weight_decay,
                      params=names, steps=[self.steps[name] for name in names])
        arrays = {}
        for i, name in enumerate(names):
            arrays[f"exp_avg.{i}"] = self.exp_avg[name]
            arrays[f"exp_avg_sq.{i}"] = self.exp_avg_sq[name]
        _checkpoint.write(path, "Adam", config, arrays)

    @classmethod
    def load(cls, path, params: Mapping[str, np.ndarray]) -> "Adam":
        """An optimizer for ``params`` (e.g. ``MultiHeadAttention.load(...).parameters()``) with
        the state and hyperparameters a file ``save`` wrote: with the parameters restored too,
        training resumes bitwise as if it had never stopped.

        Raises ValueError when the file is not such a file (another format, corrupt or
        truncated, a newer format version) or does not fit ``params``: other names, or a
        moment estimate of another shape or dtype than its parameter. ``params`` is checked as
        the constructor checks it; FileNotFoundError for a missing file."""
        opt = cls(params)  # the caller's argument first: its errors as the constructor gives them
        what = _checkpoint.describe(path)
        header, arrays = _checkpoint.read(path, "Adam")
        expected = dict(lr=(int, float), betas=list, eps=(int, float), weight_decay=(int, float), params=list,
                        steps=list)
        config = _checkpoint.fields(what, header, expected)
        names, steps = config.pop("params"), config.pop("steps")
        if len(steps) != len(names) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                               for n in steps):
            raise ValueError(f"{what}: steps (={steps!r}) must be one count >= 0 per parameter ({len(names)})")
        try:
            saved = cls({}, **config)  # the file's hyperparameters, by the constructor's rules
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what}: its hyperparameters are invalid: {exc}") from None
        opt.lr, opt.betas, opt.eps, opt.weight_decay = saved.lr, saved.betas, saved.eps, saved.weight_decay
        if not all(isinstance(n, str) for n in names):
            raise ValueError(f"{what}: params (={names!r}) must be a list of names")
        if len(set(names)) != len(names) or set(names) != set(opt.params):
            raise ValueError(f"{what} is the state of parameters {sorted(map(str, names))}, "
                             f"not of params {sorted(map(str, opt.params))}")
        _checkpoint.check_arrays(what, arrays, {
            f"{kind}.{i}": (opt.params[name].shape, opt.params[name].dtype)
            for i, name in enumerate(names) for kind in ("exp_avg", "exp_avg_sq")})
        for i, name in enumerate(names):
            opt.steps[name] = steps[i]
            np.copyto(opt.exp_avg[name], arrays[f"exp_avg.{i}"])
            np.copyto(opt.exp_avg_sq[name], arrays[f"exp_avg_sq.{i}"])
        return opt

    def step(self, grads: Mapping[str, Optional[np.ndarray]]) -> None:
        """One update of every parameter, in place.

        Parameters
        ----------
        grads : dict of name → array or None
            The gradient of each parameter, with exactly the keys of ``params`` and each
            parameter's shape. A None gradient skips that parameter, as a ``None`` ``.grad``
            does in torch.
        """
        if not isinstance(grads, Mapping):
            raise TypeError(f"grads must be a dict of name -> numpy.ndarray, got {type(grads).__name__}")
        missing, extra = self.params.keys() - grads.keys(), grads.keys() - self.params.keys()
        if missing or extra:
            raise ValueError(f"grads must have the keys of params: missing {sorted(missing)}, "
                             f"unexpected {sorted(extra)}")
        checked = {}
        for name, g in grads.items():  # all checked before any parameter changes
            if g is None:
                continue
            p = self.params[name]
            g = np.asarray(g)
            if g.shape != p.shape:
                raise ValueError(f"grads[{name!r}].shape (={g.shape}) must equal params[{name!r}].shape (={p.shape})")
            if g.dtype.kind not in "fiu":
                raise TypeError(f"grads[{name!r}].dtype (={g.dtype}) must be real")
            checked[name] = g.astype(p.dtype, copy=False)

        beta1, beta2 = self.betas
        for name, g in checked.items():
            p, m, v = self.params[name], self.exp_avg[name], self.exp_avg_sq[name]
            self.steps[name] += 1
            t = self.steps[name]
            if self.weight_decay:
                g = g + self.weight_decay * p
            m += (1 - beta1) * (g - m)  # = β1·m + (1 − β1)·g, as torch's lerp_ rounds it
            v *= beta2
            v += (1 - beta2) * (g * g)
            step_size = self.lr / (1 - beta1 ** t)
            denom = np.sqrt(v) / math.sqrt(1 - beta2 ** t)
            denom += self.eps
            p -= step_size * (m / denom)


def _non_negative(x, name: str) -> float:
    if not is_real(x):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    x = float(x)
    if not (math.isfinite(x) and x >= 0):
        raise ValueError(f"{name} (={x}) must be a finite number >= 0")
    return x
