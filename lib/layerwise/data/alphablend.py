"""AlphaBlend-mini: procedural composites whose two layers are known, for layer decomposition.

A miniature of the AlphaBlend benchmark of DiffDecompose (Wang et al. 2025): six subtasks, each a
kind of semi-transparent foreground layer blended onto a textured background with its own blend
operator (:func:`layerwise.data.rgba.blend`, ``out = (1 - a) bg + a B(fg, bg)``):

============  ===========  =====================================================================
subtask       blend mode   foreground
============  ===========  =====================================================================
flare         ``add``      a warm radial glow (partly off the canvas) and a faint lens "ghost"
occlusion     ``screen``   a global fog: low-frequency alpha over the whole canvas, rain streaks
watermark     ``over``     a centred glyph (ring, star, ...), white or dark, alpha 0.3-0.5
glassware     ``over``     a :func:`~layerwise.data.shapes.glass` sprite: tinted body, rim, highlight
cells         ``add``      three to six soft discs of one fluorescent colour, alpha about 0.3
xray          ``multiply`` a bluish silhouette with a denser object inside (alpha 0.35-0.95)
============  ===========  =====================================================================

Each foreground family has a narrow colour prior (warm flares, light fog, white or dark
watermarks, bluish X-ray tints, ...): under ``add`` and ``screen`` only the product of colour and
alpha shows in the composite, so it is the prior that makes the straight layer recoverable at
all; score the *premultiplied* foreground (the layer over black) to be fair to every mode.

Everything is seeded (:func:`alphablend` with ``seed``; :func:`alphablend_test_set` with a fixed
seed no training set uses) and vectorised over the batch, except the backgrounds, which come one
at a time from :func:`~layerwise.data.shapes.background`. Tensors are float32 in [0, 1];
foregrounds are straight-alpha ``(N, 4, H, W)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from layerwise.data._checks import as_generator, canvas_size, check_count, check_name, check_names, check_seed
from layerwise.data.rgba import blend
from layerwise.data.shapes import background, glass, shape_alpha, vivid_colors

__all__ = ["SUBTASKS", "SUBTASK_MODES", "TEST_SEED", "AlphaBlendSet", "foregrounds", "alphablend",
           "alphablend_test_set"]

#: The six subtasks, in the order of the paper's subtasks I-VI; a sample's ``task`` is an index here.
SUBTASKS: tuple[str, ...] = ("flare", "occlusion", "watermark", "glassware", "cells", "xray")
#: The blend operator of each subtask (a name of :data:`layerwise.data.rgba.BLEND_MODES`).
SUBTASK_MODES: dict[str, str] = {"flare": "add", "occlusion": "screen", "watermark": "over", "glassware": "over",
                                 "cells": "add", "xray": "multiply"}
#: The seed of the test set (:func:`alphablend_test_set`); training sets use other seeds.
TEST_SEED = 900_001


@dataclass
class AlphaBlendSet:
    """N composites with their true layers: ``composite = blend(foreground, background, mode)``.

    composite ``(N, 3, H, W)``, foreground ``(N, 4, H, W)`` straight alpha, background
    ``(N, 3, H, W)``, task ``(N,)`` long (an index of :data:`SUBTASKS`).
    """

    composite: Tensor
    foreground: Tensor
    background: Tensor
    task: Tensor

    def __len__(self) -> int:
        return int(self.task.shape[0])

    def __getitem__(self, idx) -> "AlphaBlendSet":
        """The subset ``idx`` (an int, a slice, an index or a boolean tensor), still batched."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        return AlphaBlendSet(self.composite[idx], self.foreground[idx], self.background[idx], self.task[idx])

    @property
    def modes(self) -> list[str]:
        """The blend mode of each sample."""
        return [SUBTASK_MODES[SUBTASKS[int(k)]] for k in self.task]

    def of_task(self, task: str | int) -> "AlphaBlendSet":
        """The samples of one subtask (its name or index)."""
        if isinstance(task, str):
            k = SUBTASKS.index(check_name(task, SUBTASKS, "task"))
        elif isinstance(task, int) and not isinstance(task, bool) and 0 <= task < len(SUBTASKS):
            k = task
        else:
            raise ValueError(f"task must be a subtask name of {SUBTASKS} or an index below {len(SUBTASKS)}, got {task!r}")
        return self[self.task == k]


# ----------------------------------------------------------------------------- helpers

def _hsv(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """HSV in [0, 1] (each ``(n,)``) to RGB ``(n, 3)``."""
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=h.dtype) + 6 * h.remainder(1.0).unsqueeze(-1)) % 6
    ramp = torch.minimum(k, 4 - k).clamp(0.0, 1.0)
    return (v.unsqueeze(-1) * (1 - s.unsqueeze(-1) * ramp)).clamp(0.0, 1.0)


def _grid(hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    h, w = hw
    ys = (torch.arange(h, dtype=torch.float32) + 0.5).view(1, h, 1)
    xs = (torch.arange(w, dtype=torch.float32) + 0.5).view(1, 1, w)
    return ys, xs


def _u(g: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(*shape, generator=g)


def _layer(rgb: Tensor, alpha: Tensor) -> Tensor:
    """rgb ``(n, 3)`` or ``(n, 3, H, W)`` and alpha ``(n, H, W)`` → straight RGBA ``(n, 4, H, W)``."""
    n, h, w = alpha.shape
    if rgb.dim() == 2:
        rgb = rgb.view(n, 3, 1, 1).expand(n, 3, h, w)
    return torch.cat([rgb.float(), alpha.clamp(0.0, 1.0).unsqueeze(1).float()], dim=1)


# ----------------------------------------------------------------------------- the six foregrounds

def _flare(n: int, hw: tuple[int, int], g: torch.Generator) -> Tensor:
    h, w = hw
    s = min(h, w)
    ys, xs = _grid(hw)
    u = _u(g, n, 9)
    cy, cx = (-0.1 + 1.2 * u[:, 0]) * h, (-0.1 + 1.2 * u[:, 1]) * w           # may sit just off the canvas
    r = (0.25 + 0.25 * u[:, 2]) * s
    peak = 0.55 + 0.35 * u[:, 3]
    d2 = (ys - cy.view(n, 1, 1)) ** 2 + (xs - cx.view(n, 1, 1)) ** 2
    glow = peak.view(n, 1, 1) * torch.exp(-d2 / (r.view(n, 1, 1) ** 2 / 2))
    # the ghost: a small soft disc mirrored through the image centre
    gy, gx = h - cy + (u[:, 4] - 0.5) * 4, w - cx + (u[:, 5] - 0.5) * 4
    gr = (0.08 + 0.06 * u[:, 6]) * s
    gd = torch.sqrt((ys - gy.view(n, 1, 1)) ** 2 + (xs - gx.view(n, 1, 1)) ** 2)
    ghost = (0.2 + 0.15 * u[:, 7]).view(n, 1, 1) * (1.5 - gd / gr.view(n, 1, 1)).clamp(0.0, 1.0)
    alpha = 1 - (1 - glow) * (1 - ghost)
    color = _hsv(0.04 + 0.1 * u[:, 8], 0.25 + 0.4 * _u(g, n), 0.9 + 0.1 * _u(g, n))
    return _layer(color, alpha)


def _occlusion(n: int, hw: tuple[int, int], g: torch.Generator) -> Tensor:
    h, w = hw
    ys, xs = _grid(hw)
    lo = 0.15 + 0.2 * _u(g, n, 1, 1, 1)
    span = 0.2 + 0.3 * _u(g, n, 1, 1, 1)
    low = lo + span * _u(g, n, 1, 4, 4)
    fog = F.interpolate(low, size=hw, mode="bicubic", align_corners=False)[:, 0].clamp(0.0, 1.0)
    # rain streaks: k thin segments, one common slant per image
    k = 10
    u = _u(g, n, k, 5)
    theta = (0.35 * (_u(g, n, 1) - 0.5)).expand(n, k)
    length = (0.25 + 0.35 * u[..., 2]) * h
    y0, x0 = u[..., 0] * h, u[..., 1] * w
    dy, dx = torch.cos(theta), torch.sin(theta)
    py = ys.view(1, 1, h, 1) - y0.view(n, k, 1, 1)
    px = xs.view(1, 1, 1, w) - x0.view(n, k, 1, 1)
    along = (py * dy.view(n, k, 1, 1) + px * dx.view(n, k, 1, 1)).clamp(min=0.0)
    along = torch.minimum(along, length.view(n, k, 1, 1))
    dist = torch.hypot(py - along * dy.view(n, k, 1, 1), px - along * dx.view(n, k, 1, 1))
    present = (u[..., 3] < 0.7).float().view(n, k, 1, 1)
    streak = present * (0.25 + 0.25 * u[..., 4]).view(n, k, 1, 1) * (1 - dist / 0.9).clamp(0.0, 1.0)
    alpha = 1 - (1 - fog) * torch.prod(1 - streak, dim=1)
    v = 0.8 + 0.15 * _u(g, n)
    color = torch.stack([v - 0.06 * _u(g, n), v - 0.03 * _u(g, n), v], dim=1).clamp(0.0, 1.0)
    return _layer(color, alpha)


_GLYPHS = ("ring", "star", "triangle", "diamond", "square", "circle")


def _watermark(n: int, hw: tuple[int, int], g: torch.Generator) -> Tensor:
    h, w = hw
    s = min(h, w)
    u = _u(g, n, 7)
    names = [_GLYPHS[i] for i in (u[:, 0] * len(_GLYPHS)).long().clamp(max=len(_GLYPHS) - 1).tolist()]
    center = torch.stack([h / 2 + (u[:, 1] - 0.5) * 0.25 * h, w / 2 + (u[:, 2] - 0.5) * 0.25 * w], 1)
    radius = (0.25 + 0.15 * u[:, 3]) * s
    shape = shape_alpha(names, hw, center.double(), radius.double(), angle=(u[:, 4] * 2 * math.pi).double(),
                        softness=1.0)
    opacity = 0.3 + 0.2 * u[:, 5]
    light = u[:, 6] < 0.7
    v = torch.where(light, 0.88 + 0.12 * _u(g, n), 0.12 * _u(g, n))
    color = v.view(n, 1).expand(n, 3)
    return _layer(color, shape * opacity.view(n, 1, 1))


def _glassware(n: int, hw: tuple[int, int], g: torch.Generator) -> Tensor:
    from layerwise.data.shapes import SHAPES

    h, w = hw
    s = min(h, w)
    u = _u(g, n, 8)
    names = [SHAPES[i] for i in (u[:, 0] * len(SHAPES)).long().clamp(max=len(SHAPES) - 1).tolist()]
    radius = (0.22 + 0.16 * u[:, 1]) * s
    center = torch.stack([radius + (h - 2 * radius) * u[:, 2], radius + (w - 2 * radius) * u[:, 3]], 1)
    return glass(names, hw, color=vivid_colors(u[:, 5:8].double()), center=center.double(),
                 radius=radius.double(), opacity=(0.2 + 0.3 * u[:, 4]).double(),
                 angle=(2 * math.pi * _u(g, n)).double())


def _cells(n: int, hw: tuple[int, int], g: torch.Generator) -> Tensor:
    h, w = hw
    s = min(h, w)
    ys, xs = _grid(hw)
    k = 6
    u = _u(g, n, k, 5)
    count = 3 + (_u(g, n) * 4).long().clamp(max=3)                             # 3..6 cells
    present = (torch.arange(k).view(1, k) < count.view(n, 1)).float()
    r = (0.07 + 0.07 * u[..., 0]) * s
    cy, cx = r + (h - 2 * r) * u[..., 1], r + (w - 2 * r) * u[..., 2]
    d = torch.hypot(ys.view(1, 1, h, 1) - cy.view(n, k, 1, 1), xs.view(1, 1, 1, w) - cx.view(n, k, 1, 1))
    disc = (1 - (d - r.view(n, k, 1, 1) * 0.6) / (r.view(n, k, 1, 1) * 0.6)).clamp(0.0, 1.0)   # soft edge
    a = present.view(n, k, 1, 1) * (0.25 + 0.15 * u[..., 3]).view(n, k, 1, 1) * disc
    alpha = 1 - torch.prod(1 - a, dim=1)
    hue = torch.where(_u(g, n) < 0.5, 0.33, 0.85) + 0.06 * (_u(g, n) - 0.5)
    color = _hsv(hue, 0.55 + 0.35 * _u(g, n), 0.8 + 0.2 * _u(g, n))
    return _layer(color, alpha)


_BAGS = ("square", "circle", "diamond", "ring")
_ITEMS = ("star", "triangle", "square", "diamond")


def _xray(n: int, hw: tuple[int, int], g: torch.Generator) -> Tensor:
    h, w = hw
    s = min(h, w)
    u = _u(g, n, 10)
    bags = [_BAGS[i] for i in (u[:, 0] * len(_BAGS)).long().clamp(max=len(_BAGS) - 1).tolist()]
    items = [_ITEMS[i] for i in (u[:, 1] * len(_ITEMS)).long().clamp(max=len(_ITEMS) - 1).tolist()]
    r_bag = (0.28 + 0.14 * u[:, 2]) * s
    c_bag = torch.stack([r_bag + (h - 2 * r_bag) * u[:, 3], r_bag + (w - 2 * r_bag) * u[:, 4]], 1)
    r_item = (0.3 + 0.2 * u[:, 5]) * r_bag
    off = (r_bag - r_item) * 0.6
    c_item = c_bag + torch.stack([(u[:, 6] - 0.5) * 2 * off, (u[:, 7] - 0.5) * 2 * off], 1)
    bag = shape_alpha(bags, hw, c_bag.double(), r_bag.double(), angle=(u[:, 8] * 2 * math.pi).double(), softness=1.5)
    item = shape_alpha(items, hw, c_item.double(), r_item.double(), angle=(u[:, 9] * 2 * math.pi).double(),
                       softness=1.0)
    alpha = torch.maximum(bag * (0.35 + 0.25 * _u(g, n)).view(n, 1, 1), item * (0.75 + 0.2 * _u(g, n)).view(n, 1, 1))
    tint = torch.tensor([0.25, 0.4, 0.65]) + 0.05 * (_u(g, n, 3) - 0.5)
    return _layer(tint, alpha)


_MAKERS = {"flare": _flare, "occlusion": _occlusion, "watermark": _watermark, "glassware": _glassware,
           "cells": _cells, "xray": _xray}


def foregrounds(task: str, n: int, size: int | tuple[int, int] = 32, *,
                generator: torch.Generator | int) -> Tensor:
    """``n`` random foreground layers of subtask ``task`` (one of :data:`SUBTASKS`): ``(n, 4, H, W)``.

    Straight alpha in [0, 1]; see the module docstring for what each subtask draws.
    generator: a CPU ``torch.Generator`` or an int seed.
    """
    if not isinstance(task, str):
        raise TypeError(f"task must be one subtask name of {SUBTASKS}, got {type(task).__name__}")
    check_name(task, SUBTASKS, "task")
    n = check_count(n)
    hw = canvas_size(size)
    g = as_generator(generator)
    return _MAKERS[task](n, hw, g).contiguous()


def alphablend(n_per_task: int, size: int | tuple[int, int] = 32, *, seed: int,
               tasks: Sequence[str] | str = SUBTASKS) -> AlphaBlendSet:
    """An AlphaBlend-mini set: ``n_per_task`` composites of each of ``tasks``, interleaved
    (sample ``i`` is of ``tasks[i % len(tasks)]``).

    Each sample draws a foreground of its subtask (:func:`foregrounds`) and a random textured
    :func:`~layerwise.data.shapes.background`, and composites them with the subtask's blend mode
    (:data:`SUBTASK_MODES`). The same ``seed`` gives bit-identical sets.
    """
    n_per_task = check_count(n_per_task, "n_per_task")
    hw = canvas_size(size)
    seed = check_seed(seed)
    tasks = check_names(tasks, SUBTASKS, "tasks")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must not repeat a subtask, got {tasks}")
    g = torch.Generator().manual_seed(seed)
    k = len(tasks)
    n = n_per_task * k
    fg = torch.empty(n, 4, *hw)
    bg = torch.stack([background(hw, generator=g) for _ in range(n)])
    task = torch.tensor([SUBTASKS.index(t) for t in tasks], dtype=torch.long).repeat(n_per_task)
    comp = torch.empty(n, 3, *hw)
    for j, name in enumerate(tasks):
        sl = slice(j, n, k)
        fg[sl] = foregrounds(name, n_per_task, hw, generator=g)
        comp[sl] = blend(fg[sl], bg[sl], SUBTASK_MODES[name])
    return AlphaBlendSet(comp, fg, bg, task)


def alphablend_test_set(n_per_task: int, size: int | tuple[int, int] = 32,
                        tasks: Sequence[str] | str = SUBTASKS) -> AlphaBlendSet:
    """The AlphaBlend-mini test set: :func:`alphablend` with :data:`TEST_SEED`. A smaller
    ``n_per_task`` gives a different draw, not a prefix: compare runs on the same ``n_per_task``."""
    return alphablend(n_per_task, size, seed=TEST_SEED, tasks=tasks)
