"""Multi-layer sprite scenes and their layouts (boxes without labels), for ART's chapter.

- :func:`layered_scenes`: scenes of 2–6 sprite layers over a simple background (a background
  kind drawn per scene from a chosen subset of :data:`~layerwise.data.shapes.BACKGROUNDS`),
  each layer with its tight box: the training and test data of a layered generator.
- :func:`sprite_layout`: the tight boxes of ``k`` random sprites on one canvas (many small ones
  for ``k`` up to 50 and more): the layouts of the attention-cost experiment.

Both are built on :func:`~layerwise.data.scene.make_scene`, so a box is exactly the
``(x0, y0, x1, y1)`` (exclusive ends) of where the layer's alpha is above 0.01.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from layerwise.data._checks import as_generator, canvas_size, check_count, check_names, check_seed, check_unit, \
    int_range, value_range
from layerwise.data.scene import Scene, make_scene
from layerwise.data.shapes import BACKGROUNDS, SHAPES

__all__ = ["layered_scenes", "sprite_layout"]


def layered_scenes(n: int, size: int | tuple[int, int] = 32, *, seed: int, n_layers: int | tuple[int, int] = (2, 6),
                   backgrounds: Sequence[str] = ("flat", "gradient"), radius: float | tuple[float, float] = (0.12, 0.25),
                   glass_prob: float = 0.2, shapes: Sequence[str] = SHAPES) -> list[Scene]:
    """``n`` scenes with ``n_layers`` (an int or an inclusive range) sprite layers each, blended "over"
    a background whose kind is drawn uniformly from ``backgrounds`` for every scene.

    Sprites have a radius a fraction in ``radius`` of the canvas side and are glass (opacity
    0.25–0.55, see :func:`~layerwise.data.shapes.glass`) with probability ``glass_prob``. All draws
    come from one generator seeded with ``seed``: the same arguments give identical scenes.
    Stack them with :func:`~layerwise.data.scene.stack_scenes`.
    """
    n = check_count(n)
    canvas_size(size)
    lo, hi = int_range(n_layers, "n_layers")
    if lo < 1:
        raise ValueError(f"n_layers must be at least 1, got {n_layers!r}")
    kinds = check_names(backgrounds, BACKGROUNDS, "backgrounds")
    value_range(radius, "radius", 0.0, 1.0)
    check_unit(glass_prob, "glass_prob")
    check_names(shapes, SHAPES, "shapes")
    g = torch.Generator().manual_seed(check_seed(seed))
    out = []
    for _ in range(n):
        kind = kinds[int(torch.randint(len(kinds), (1,), generator=g))]
        out.append(make_scene(size, (lo, hi), generator=g, background_kind=kind, radius=radius,
                              glass_prob=glass_prob, shapes=shapes))
    return out


def sprite_layout(k: int, size: int | tuple[int, int] = 32, *, generator: torch.Generator | int,
                  radius: float | tuple[float, float] = (0.06, 0.15)) -> Tensor:
    """The tight boxes ``(k, 4)`` long ``(x0, y0, x1, y1)`` (exclusive ends) of ``k`` random sprites.

    The sprites of one :func:`~layerwise.data.scene.make_scene` call (radius a fraction in
    ``radius`` of the side): a layout as a designer's file with many small elements has one. Every
    box is non-empty and lies inside the canvas. ``generator``: a CPU ``torch.Generator`` or an int.
    """
    k = check_count(k, "k")
    g = as_generator(generator)
    value_range(radius, "radius", 0.0, 1.0)
    scene = make_scene(size, k, generator=g, radius=radius)
    return scene.boxes.clone()
