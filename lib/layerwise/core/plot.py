"""Plotting helpers: curves over several seeds drawn as a mean line with a band."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def band(runs: np.ndarray | Sequence[Sequence[float]], smooth: int = 1
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, lower and upper edge (min and max over runs) of ``runs: (R, T)``.

    ``smooth > 1`` applies a trailing moving average of that width to each run first.
    """
    a = np.asarray(runs, dtype=float)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"runs must have shape (R, T) with T > 0, got {a.shape}")
    if not isinstance(smooth, int) or smooth < 1:
        raise ValueError(f"smooth must be a positive int, got {smooth!r}")
    if smooth > 1:
        c = np.cumsum(np.pad(a, ((0, 0), (1, 0))), axis=1)
        idx = np.arange(1, a.shape[1] + 1)
        lo_idx = np.maximum(idx - smooth, 0)
        a = (c[:, idx] - c[:, lo_idx]) / (idx - lo_idx)
    return a.mean(0), a.min(0), a.max(0)


def plot_curves(curves: Mapping[str, np.ndarray], *, ax=None, x: np.ndarray | None = None,
                smooth: int = 1, xlabel: str = "step", ylabel: str = "", title: str = "",
                logy: bool = False):
    """Plot several labelled ``(R, T)`` arrays (R seeds) as mean lines with min–max bands.

    Returns the matplotlib axes.
    """
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("curves is empty")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for label, runs in curves.items():
        mean, lo, hi = band(runs, smooth=smooth)
        xs = np.arange(1, len(mean) + 1) if x is None else np.asarray(x)[: len(mean)]
        n = np.asarray(runs).shape[0] if np.asarray(runs).ndim == 2 else 1
        (line,) = ax.plot(xs, mean, label=f"{label} (n={n})", lw=1.6)
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return ax
