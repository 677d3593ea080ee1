"""Plotting helpers: the book's figure style, curves over several seeds drawn as a mean line with a
band, image grids, and the one widget every chapter uses.

:func:`use_book_style` (called by :func:`layerwise.core.setup`) sizes figures for the book's text
column and renders them at twice the pixels; :func:`figure_size` gives the ``figsize`` of a figure
of ``n`` panels laid out at most ``cols`` a row. :func:`image_grid` draws RGBA images over
:func:`layerwise.data.rgba.checkerboard` (the data package is the library's ground floor: core may
use it, never the other way round).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch

#: The book's text column, in inches at :data:`BOOK_DPI`: 7.5 in × 90 dpi = 675 CSS pixels, the width
#: of a code cell in the book's theme at a 1280-pixel window. A figure of this width is shown at its
#: own size, so its labels are as large on the page as their font size says.
COLUMN_WIDTH = 7.5
BOOK_DPI = 90
#: At most this many panels side by side in the column; more go onto further rows.
MAX_COLS = 3
#: matplotlib settings of the book's figures (:func:`use_book_style`).
BOOK_STYLE = {
    "figure.figsize": (COLUMN_WIDTH, 0.6 * COLUMN_WIDTH),
    "figure.dpi": BOOK_DPI,
    "savefig.dpi": 2 * BOOK_DPI,
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 11,
}


def use_book_style(retina: bool = True) -> None:
    """Apply the book's figure style (:data:`BOOK_STYLE`) to matplotlib.

    Figures default to the width of the text column, with fonts sized to be read at that width.
    In a Jupyter kernel with the inline backend, figures are also rendered at twice their pixels
    (``retina``): the page shows them at the column's width, sharp on high-density screens.
    :func:`layerwise.core.setup` calls this, so every chapter gets it.
    """
    import matplotlib as mpl

    mpl.rcParams.update(BOOK_STYLE)
    if not retina:
        return
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:            # no IPython: plain scripts keep matplotlib's own formats
        return
    if get_ipython() is not None and "inline" in mpl.get_backend():
        set_matplotlib_formats("retina")


def figure_size(panels: int = 1, *, cols: int | None = None, aspect: float = 0.7,
                width: float = COLUMN_WIDTH) -> tuple[float, float]:
    """The ``figsize`` of a figure of ``panels`` equal panels for the book's column.

    Panels are laid out ``cols`` a row (default: all of them, up to :data:`MAX_COLS`; at most
    :data:`MAX_COLS`), each ``aspect`` times as high as it is wide; the figure is ``width`` inches
    wide (the column) and as high as its rows need. ``plt.subplots(rows, cols,
    figsize=figure_size(panels, cols=cols))``.
    """
    if isinstance(panels, bool) or not isinstance(panels, int) or panels < 1:
        raise ValueError(f"panels must be a positive int, got {panels!r}")
    if cols is None:
        cols = min(panels, MAX_COLS)
    if isinstance(cols, bool) or not isinstance(cols, int) or not 1 <= cols <= MAX_COLS:
        raise ValueError(f"cols must be an int from 1 to {MAX_COLS} (panels side by side), got {cols!r}")
    if isinstance(aspect, bool) or not isinstance(aspect, (int, float)) or not aspect > 0:
        raise ValueError(f"aspect must be a number > 0 (panel height / width), got {aspect!r}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 2 * COLUMN_WIDTH:
        raise ValueError(f"width must be a number of inches in (0, {2 * COLUMN_WIDTH}], got {width!r}")
    cols = min(cols, panels)
    rows = math.ceil(panels / cols)
    return float(width), float(rows * aspect * width / cols)


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


def _as_images(images) -> torch.Tensor:
    """``images`` (a tensor ``(N, C, H, W)`` or ``(C, H, W)``, or a list of ``(C, H, W)``) as a
    float tensor ``(N, C, H, W)`` on the CPU, C in {1, 3, 4}."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images is empty")
        items = [torch.as_tensor(x).detach().cpu().float() for x in images]
        for i, x in enumerate(items):
            if x.ndim != 3 or x.shape[0] not in (1, 3, 4):
                raise ValueError(f"images[{i}] must have shape (C, H, W) with C in 1, 3, 4, got {tuple(x.shape)}")
        if len({x.shape[1:] for x in items}) > 1:
            raise ValueError(f"images must all have the same (H, W), got {sorted({tuple(x.shape[1:]) for x in items})}")
        c = max(x.shape[0] for x in items)
        items = [x if x.shape[0] == c else _channels(x, c) for x in items]
        return torch.stack(items)
    x = torch.as_tensor(images).detach().cpu().float()
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4) or x.shape[0] == 0:
        raise ValueError(f"images must have shape (N, C, H, W) with C in 1, 3, 4 and N > 0, got {tuple(x.shape)}")
    return x


def _channels(x, c: int):
    """``x: (C0, H, W)`` with 1 or 3 channels widened to ``c`` channels (grey to RGB, opaque alpha)."""
    rgb = x.expand(3, *x.shape[1:]) if x.shape[0] == 1 else x[:3]
    return rgb if c == 3 else torch.cat([rgb, torch.ones_like(x[:1])])


def image_grid(images, *, nrow: int = 8, titles: Sequence[str] | None = None, ax=None, checker: bool = True):
    """Draw a batch of images as one grid, ``nrow`` images per row; returns the matplotlib axes.

    images: ``(N, C, H, W)`` (or a list of ``(C, H, W)``), C = 3 (RGB), 4 (straight-alpha RGBA)
    or 1 (grey). Values are clipped to [0, 1]. RGBA images are drawn over a checkerboard so
    that transparency shows (over white with ``checker=False``). Nearest-neighbour pixels, no
    ticks; ``titles`` (one per image) go above the images.
    """
    import matplotlib.pyplot as plt
    from layerwise.data.rgba import checkerboard

    x = _as_images(images).clamp(0.0, 1.0)
    n, c, h, w = x.shape
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow must be a positive int, got {nrow!r}")
    if titles is not None:
        titles = [str(t) for t in titles]
        if len(titles) != n:
            raise ValueError(f"titles must have one entry per image ({n}), got {len(titles)}")
    if c == 1:
        x = x.expand(n, 3, h, w)
    elif c == 4:
        under = checkerboard((h, w), square=max(1, min(h, w) // 8)) if checker else torch.ones(3, h, w)
        a = x[:, 3:4]
        x = x[:, :3] * a + under * (1 - a)
    cols, rows = min(nrow, n), math.ceil(n / min(nrow, n))
    pad = max(1, min(h, w) // 16)
    top = max(pad, math.ceil(0.25 * h)) if titles else pad
    grid = torch.ones(3, rows * (h + top) + pad, cols * (w + pad) + pad)
    for i in range(n):
        y0, x0 = (i // cols) * (h + top) + top, (i % cols) * (w + pad) + pad
        grid[:, y0:y0 + h, x0:x0 + w] = x[i]
    if ax is None:
        cell = min(1.3, 12.0 / cols)
        _, ax = plt.subplots(figsize=(cols * cell, rows * cell * (h + top) / h))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest", vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if titles:
        for i, t in enumerate(titles):
            y0, x0 = (i // cols) * (h + top) + top, (i % cols) * (w + pad) + pad
            ax.text(x0 + w / 2 - 0.5, y0 - 0.5 - 0.1 * pad, t, ha="center", va="bottom", fontsize=8)
    return ax


def live_figure(draw, *, cache: int = 64, prerender=(), dpi: int = 90, **controls):
    """An interactive figure that survives unattended execution: ``controls`` above an image.

    ``draw(**values)`` makes a matplotlib figure (``plt.subplots`` inside it is fine; returning
    the figure is fine too) from the controls' current values; the figure is rendered to PNG at
    ``dpi`` into an ``ipywidgets.Image`` and closed, and redrawn whenever a control changes
    (sliders on release). The last ``cache`` renderings are kept, keyed by the controls' values,
    so moving back to a setting is instant; ``prerender`` (an iterable of ``{name: value}``
    dicts, missing names taking the controls' initial values) renders settings up front, e.g.
    every stop of a slider whose ``draw`` is slow. Chapters use this rather than
    ``ipywidgets.interact`` or a hand-made ``Image`` + ``observe``: the output widget of
    ``interact`` can leave papermill waiting for ever on an idle kernel (seen with nbclient on
    loaded machines). Returns the ``VBox`` to display; its ``.renders`` counts the figures drawn.
    """
    import io
    from collections import OrderedDict

    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    if not callable(draw):
        raise TypeError(f"draw must be callable, got {type(draw).__name__}")
    if not controls or not all(isinstance(w, widgets.ValueWidget) for w in controls.values()):
        raise ValueError("controls must be one or more ipywidgets value widgets, passed by the name draw() takes")
    if isinstance(cache, bool) or not isinstance(cache, int) or cache < 0:
        raise ValueError(f"cache must be an int >= 0 (renderings kept), got {cache!r}")
    if isinstance(dpi, bool) or not isinstance(dpi, int) or dpi < 10:
        raise ValueError(f"dpi must be an int >= 10, got {dpi!r}")
    store: OrderedDict = OrderedDict()
    count = [0]

    def render(values: dict) -> bytes:
        key = tuple(sorted((k, repr(v)) for k, v in values.items()))
        if key in store:
            store.move_to_end(key)
            return store[key]
        with plt.ioff():
            before = set(plt.get_fignums())
            draw(**values)
            new = [n for n in plt.get_fignums() if n not in before]
            if not new:
                raise ValueError("draw must make a new matplotlib figure (e.g. with plt.subplots) each call")
            buf = io.BytesIO()
            plt.figure(new[-1]).savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
            for n in new:
                plt.close(n)
        count[0] += 1
        if cache:
            store[key] = buf.getvalue()
            while len(store) > cache:
                store.popitem(last=False)
        return buf.getvalue()

    current = lambda: {name: w.value for name, w in controls.items()}  # noqa: E731
    for extra in prerender:
        unknown = set(extra) - set(controls)
        if unknown:
            raise ValueError(f"prerender names {sorted(unknown)}, which are not controls ({sorted(controls)})")
        render({**current(), **extra})
    image = widgets.Image(value=render(current()), format="png")
    for w in controls.values():
        if hasattr(w, "continuous_update"):
            w.continuous_update = False
        w.observe(lambda _change: setattr(image, "value", render(current())), names="value")
    box = widgets.VBox([*controls.values(), image])
    box.renders = count
    return box
