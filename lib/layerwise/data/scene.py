"""Scenes: a textured background and a stack of RGBA layers (objects, glass, their shadows and
reflections), bottom to top, with every layer's kind, owner, tight box and mask; and batches
of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor

from layerwise.data._checks import (check_name, check_names, check_seed, check_unit, check_count, as_generator, canvas_size,
                                     int_range, value_range)
from layerwise.data.rgba import BLEND_MODES, compose
from layerwise.data.shapes import BACKGROUNDS, SHAPES, render_sprites, vivid_colors, background, drop_shadow, reflection

__all__ = ["Scene", "make_scene", "scenes", "stack_scenes"]

_KINDS: tuple[str, ...] = ("sprite", "glass", "shadow", "reflection")


@dataclass
class Scene:
    """A background and its RGBA layers (bottom to top), with per-layer annotations.

    ``image == compose(background, layers, modes)`` exactly. Shadow and reflection layers are
    their own layers, placed just below the object that casts them; ``owner[i]`` is the index of
    the object layer that layer ``i`` belongs to (``i`` itself for an object).
    """

    image: Tensor        # (3, H, W)
    background: Tensor   # (3, H, W)
    layers: Tensor       # (N, 4, H, W), straight alpha
    boxes: Tensor        # (N, 4) long: (x0, y0, x1, y1) of alpha > 0.01, x1/y1 exclusive; 0s if empty
    masks: Tensor        # (N, H, W) bool: alpha > 0.5
    modes: list[str]     # blend mode per layer
    kinds: list[str]     # "sprite" | "glass" | "shadow" | "reflection" per layer
    owner: Tensor        # (N,) long

    def __repr__(self) -> str:
        h, w = self.image.shape[-2:]
        return f"Scene({h}x{w}, {len(self.kinds)} layers: {', '.join(self.kinds)})"


def _boxes(alpha: Tensor, threshold: float = 0.01) -> Tensor:
    """Tight boxes ``(N, 4)`` long ``(x0, y0, x1, y1)`` (exclusive ends) of ``alpha: (N, H, W) > threshold``."""
    n, h, w = alpha.shape
    on = alpha > threshold
    rows, cols = on.any(2), on.any(1)                          # (N, H), (N, W)
    y0 = rows.int().argmax(1)
    y1 = h - rows.flip(1).int().argmax(1)
    x0 = cols.int().argmax(1)
    x1 = w - cols.flip(1).int().argmax(1)
    boxes = torch.stack([x0, y0, x1, y1], 1).long()
    return torch.where(rows.any(1, keepdim=True), boxes, torch.zeros_like(boxes))


def make_scene(size: int | tuple[int, int] = 32, n_objects: int | tuple[int, int] = (1, 3), *,
               generator: torch.Generator | int, shadow_prob: float = 0.0, reflection_prob: float = 0.0,
               glass_prob: float = 0.0, modes: Sequence[str] = ("over",), background_kind: str | None = None,
               shapes: Sequence[str] = SHAPES, radius: float | tuple[float, float] = (0.15, 0.3)) -> Scene:
    """A random scene: a :func:`background` and 1–3 objects, optionally with shadows and reflections.

    n_objects: an int or an inclusive range ``(lo, hi)``. Each object is a :func:`sprite`
    (opacity 1), or with probability ``glass_prob`` a :func:`glass` (opacity 0.25–0.55), of a
    random shape from ``shapes``, radius a fraction in ``radius`` of ``min(H, W)``, a vivid
    colour, a random angle, centred so that it lies fully or mostly inside the canvas, blended
    with a mode drawn from ``modes``. With probability ``shadow_prob`` an object casts a
    :func:`drop_shadow` (black, mode "over"; one light direction per scene, down and to
    the side); with probability ``reflection_prob`` it is mirrored in a :func:`reflection`
    whose floor is its bottom edge. Effect layers that come out empty are left out.
    generator: a CPU ``torch.Generator`` or an int seed.
    """
    g = as_generator(generator)
    h, w = canvas_size(size)
    lo, hi = int_range(n_objects, "n_objects")
    shadow_prob = check_unit(shadow_prob, "shadow_prob")
    reflection_prob = check_unit(reflection_prob, "reflection_prob")
    glass_prob = check_unit(glass_prob, "glass_prob")
    modes = check_names(modes, BLEND_MODES, "modes")
    shapes = check_names(shapes, SHAPES, "shapes")
    r_lo, r_hi = value_range(radius, "radius", 0.0, 1.0)
    if background_kind is not None:
        check_name(background_kind, BACKGROUNDS, "background_kind")

    bg = background((h, w), generator=g, kind=background_kind)
    n = lo + int(torch.randint(hi - lo + 1, (1,), generator=g))
    u = torch.rand(n, 15, generator=g, dtype=torch.float64)   # every per-object draw, one row each
    light = torch.rand(4, generator=g, dtype=torch.float64)   # the scene's shadow direction and look

    side = min(h, w)
    names = [shapes[min(int(x * len(shapes)), len(shapes) - 1)] for x in u[:, 0].tolist()]
    r = (r_lo + (r_hi - r_lo) * u[:, 1]) * side
    margin = 0.75 * r
    cy = torch.where(h > 2 * margin, margin + (h - 2 * margin) * u[:, 2], torch.full_like(r, h / 2))
    cx = torch.where(w > 2 * margin, margin + (w - 2 * margin) * u[:, 3], torch.full_like(r, w / 2))
    angle = 2 * math.pi * u[:, 4]
    color = vivid_colors(u[:, 5:8])
    is_glass = u[:, 8] < glass_prob
    opacity = torch.where(is_glass, 0.25 + 0.3 * u[:, 9], torch.ones_like(r))
    objects = render_sprites(names, (h, w), torch.stack([cy, cx], 1), r, angle, color, opacity, is_glass, 1.0)

    d_max = max(1, round(0.15 * side))
    dy = 1 + min(int(light[0] * d_max), d_max - 1)
    dx = round((2 * float(light[1]) - 1) * dy)
    blur = (0.5 + float(light[2])) * side / 32
    dark = 0.4 + 0.3 * float(light[3])

    layers: list[Tensor] = []
    layer_modes: list[str] = []
    kinds: list[str] = []
    owner: list[int] = []
    black = torch.zeros(3, h, w)
    for i in range(n):
        obj, row = objects[i], u[i].tolist()
        effects: list[tuple[Tensor, str]] = []
        if row[12] < reflection_prob:
            floor = int(_boxes(obj[3:4])[0, 3])
            fade = 0.2 + 0.3 * row[13]
            effects.append((reflection(obj, floor=floor, fade=fade, strength=0.3 + 0.3 * row[14]), "reflection"))
        if row[11] < shadow_prob:
            shadow = drop_shadow(obj[3], offset=(dy, dx), blur=blur, strength=dark)
            effects.append((torch.cat([black, shadow.unsqueeze(0)]), "shadow"))
        first = len(layers)
        effects = [(x, k) for x, k in effects if bool((x[3] > 0.01).any())]
        me = first + len(effects)
        for x, k in effects:
            layers.append(x)
            layer_modes.append("over")
            kinds.append(k)
            owner.append(me)
        layers.append(obj)
        layer_modes.append(modes[min(int(row[10] * len(modes)), len(modes) - 1)])
        kinds.append("glass" if bool(is_glass[i]) else "sprite")
        owner.append(me)

    stack = torch.stack(layers) if layers else torch.zeros(0, 4, h, w)
    image = compose(bg, stack, layer_modes)
    alpha = stack[:, 3]
    return Scene(image=image, background=bg, layers=stack, boxes=_boxes(alpha), masks=alpha > 0.5,
                 modes=layer_modes, kinds=kinds, owner=torch.tensor(owner, dtype=torch.long))


def scenes(n: int, size: int | tuple[int, int] = 32, *, seed: int = 0,
           progress: Callable[[Iterable[int]], Iterable[int]] | None = None, **make_scene_kwargs) -> list[Scene]:
    """``n`` scenes from :func:`make_scene`, all drawn from one generator seeded with ``seed``.

    About a millisecond a scene at 32x32 on one core. ``progress`` (optional) wraps the loop over
    ``range(n)``, e.g. :func:`layerwise.core.env.progress_bar` for a progress bar (the data
    package imports nothing from the rest of the library, so the caller brings it).
    """
    n = check_count(n)
    if "generator" in make_scene_kwargs:
        raise TypeError("scenes() takes seed=..., not generator=...")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be None or a callable that wraps an iterable, got {type(progress).__name__}")
    g = torch.Generator().manual_seed(check_seed(seed))
    steps = range(n) if progress is None else progress(range(n))
    return [make_scene(size, generator=g, **make_scene_kwargs) for _ in steps]


def stack_scenes(scenes: Sequence[Scene], max_layers: int | None = None) -> dict[str, Tensor]:
    """Batch scenes of one size, padding their layers with empty ones to a common ``N``.

    N is the largest layer count, or ``max_layers`` (an error if a scene has more). Returns
    ``image, background: (B, 3, H, W)``, ``layers: (B, N, 4, H, W)`` (padding: zero RGBA),
    ``boxes: (B, N, 4)``, ``masks: (B, N, H, W)``, ``owner: (B, N)`` (padding: -1) and
    ``valid: (B, N)`` bool (True for real layers). Compositing ``layers`` over ``background``
    with each scene's modes (any mode for the padding) gives ``image``.
    """
    scenes = list(scenes)
    if not scenes or not all(isinstance(s, Scene) for s in scenes):
        raise ValueError("scenes must be a non-empty list of Scene")
    hw = scenes[0].image.shape[-2:]
    if any(s.image.shape[-2:] != hw for s in scenes):
        sizes = sorted({tuple(s.image.shape[-2:]) for s in scenes})
        raise ValueError(f"scenes must all have the same size, got {sizes}")
    most = max(len(s.kinds) for s in scenes)
    if max_layers is None:
        n = most
    else:
        if isinstance(max_layers, bool) or not isinstance(max_layers, int) or max_layers < most:
            raise ValueError(f"max_layers must be an int >= the largest layer count ({most}), got {max_layers!r}")
        n = max_layers
    b, (h, w) = len(scenes), tuple(hw)
    layers = torch.zeros(b, n, 4, h, w)
    boxes = torch.zeros(b, n, 4, dtype=torch.long)
    masks = torch.zeros(b, n, h, w, dtype=torch.bool)
    owner = torch.full((b, n), -1, dtype=torch.long)
    valid = torch.zeros(b, n, dtype=torch.bool)
    for i, s in enumerate(scenes):
        k = len(s.kinds)
        layers[i, :k], boxes[i, :k], masks[i, :k], owner[i, :k] = s.layers, s.boxes, s.masks, s.owner
        valid[i, :k] = True
    return {"image": torch.stack([s.image for s in scenes]),
            "background": torch.stack([s.background for s in scenes]),
            "layers": layers, "boxes": boxes, "masks": masks, "owner": owner, "valid": valid}
