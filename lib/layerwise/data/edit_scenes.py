"""Editable scenes: a smooth background and a few sprites (with drop shadows) kept as *parameters*, so
that any edit of one object (removed, moved, resized, mirrored) can be rendered exactly.

An image editor is judged against what the edited scene really looks like. A photograph cannot
tell us what lies behind an object or how the scene looks with the object somewhere else; a scene
we draw ourselves can. A :class:`SceneSpec` holds a background image and, per object, its shape,
centre, radius, angle, colour and whether it casts a shadow (one light per scene). Object 0 is the
**target** of every edit and is drawn on top of the others; the other objects never overlap its
disc, so "the scene without the target" is well defined.

- :func:`scene_specs` draws specs (seeded); :func:`render_specs` draws them as a batch of images
  with each object's alpha and shadow;
- :func:`drop_object` (the true background behind an object), :func:`edit_object` (moved, resized,
  mirrored: rendered from the shape itself, not by warping pixels);
- :func:`scene_images`: a training set of rendered scenes for a scene prior.

Backgrounds default to the smooth kinds (:data:`SMOOTH_BACKGROUNDS`): what lies behind an object must
be predictable from its surroundings, or an inpainting score measures luck.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import Tensor

from layerwise.data._checks import (check_count, check_names, check_seed, check_unit, canvas_size, int_range,
                                     value_range)
from layerwise.data.rgba import compose
from layerwise.data.shapes import BACKGROUNDS, SHAPES, background, drop_shadow, sprite, vivid_colors

__all__ = ["SMOOTH_BACKGROUNDS", "SceneSpec", "scene_specs", "render_specs", "drop_object", "edit_object",
           "scene_images"]

#: Background kinds whose content under an object can be guessed from around it.
SMOOTH_BACKGROUNDS: tuple[str, ...] = ("flat", "gradient", "noise")
_TRIES = 24          # candidate positions drawn for each non-target object


@dataclass(frozen=True)
class SceneSpec:
    """One scene as parameters. Object 0 is the edit target, drawn last (on top).

    background: ``(3, H, W)``; shapes: N names of :data:`~layerwise.data.shapes.SHAPES`;
    centers ``(N, 2)`` as ``(cy, cx)`` pixels, radii ``(N,)`` pixels (circumradius), angles ``(N,)``
    radians (counter-clockwise as displayed), colors ``(N, 3)``, shadows ``(N,)`` bool, all float64
    except ``shadows``; light ``(dy, dx, blur, strength)``: every shadow of the scene is the object's
    silhouette moved by ``(dy, dx)`` pixels, blurred by ``blur`` and darkened by ``strength``.
    """

    background: Tensor
    shapes: tuple[str, ...]
    centers: Tensor
    radii: Tensor
    angles: Tensor
    colors: Tensor
    shadows: Tensor
    light: tuple[int, int, float, float]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.background.shape[-2:])

    def __len__(self) -> int:
        return len(self.shapes)

    def __repr__(self) -> str:
        h, w = self.size
        return f"SceneSpec({h}x{w}, objects: {', '.join(self.shapes)}; shadows: {self.shadows.tolist()})"


def _check_spec(spec: SceneSpec, name: str = "spec") -> SceneSpec:
    if not isinstance(spec, SceneSpec):
        raise TypeError(f"{name} must be a SceneSpec, got {type(spec).__name__}")
    return spec


def _check_index(spec: SceneSpec, index: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(spec):
        raise ValueError(f"index must be an int in [0, {len(spec)}), got {index!r}")
    return index


def scene_specs(n: int, size: int | tuple[int, int] = 32, *, seed: int, n_objects: int | tuple[int, int] = (1, 2),
                shadow_prob: float = 0.3, backgrounds: Sequence[str] = SMOOTH_BACKGROUNDS,
                shapes: Sequence[str] = SHAPES, radius: float | tuple[float, float] = (0.16, 0.28),
                gap: float = 2.0) -> list[SceneSpec]:
    """``n`` random scenes: a background of a kind drawn from ``backgrounds`` and 1–2 objects.

    Every object lies fully inside the canvas (centre at least one radius from each edge), has a
    shape from ``shapes``, a radius a fraction in ``radius`` of ``min(H, W)``, a vivid colour, a
    random angle, and with probability ``shadow_prob`` casts a drop shadow (one light per scene,
    down and to the side). The other objects keep at least ``gap`` pixels between their disc and
    the target's (an object that finds no such place in a few tries is left out). Seeded by ``seed``.
    """
    n = check_count(n)
    h, w = canvas_size(size)
    lo, hi = int_range(n_objects, "n_objects")
    if lo < 1:
        raise ValueError(f"n_objects must be at least 1 (the target), got {n_objects!r}")
    shadow_prob = check_unit(shadow_prob, "shadow_prob")
    backgrounds = check_names(backgrounds, BACKGROUNDS, "backgrounds")
    shapes = check_names(shapes, SHAPES, "shapes")
    r_lo, r_hi = value_range(radius, "radius", 0.0, 0.5)
    if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not 0 <= gap < math.inf:
        raise ValueError(f"gap must be a number >= 0, got {gap!r}")
    g = torch.Generator().manual_seed(check_seed(seed))
    side = min(h, w)
    out = []
    for _ in range(n):
        kind = backgrounds[int(torch.randint(len(backgrounds), (1,), generator=g))]
        bg = background((h, w), generator=g, kind=kind)
        count = lo + int(torch.randint(hi - lo + 1, (1,), generator=g))
        u = torch.rand(count, 8, generator=g, dtype=torch.float64)
        cand = torch.rand(count, _TRIES, 2, generator=g, dtype=torch.float64)
        light = torch.rand(4, generator=g, dtype=torch.float64)
        r = (r_lo + (r_hi - r_lo) * u[:, 0]) * side
        # candidate centres keep each disc inside the canvas
        cy = r[:, None] + (h - 2 * r[:, None]).clamp(min=0) * cand[..., 0]
        cx = r[:, None] + (w - 2 * r[:, None]).clamp(min=0) * cand[..., 1]
        keep, centers = [0], [torch.stack([cy[0, 0], cx[0, 0]])]
        for i in range(1, count):
            far = torch.hypot(cy[i] - centers[0][0], cx[i] - centers[0][1]) >= r[0] + r[i] + gap
            if bool(far.any()):
                j = int(far.nonzero()[0, 0])
                keep.append(i)
                centers.append(torch.stack([cy[i, j], cx[i, j]]))
        idx = torch.tensor(keep)
        names = tuple(shapes[min(int(x * len(shapes)), len(shapes) - 1)] for x in u[idx, 1].tolist())
        d_max = max(1, round(0.12 * side))
        dy = 1 + min(int(light[0] * d_max), d_max - 1)
        dx = round((2 * float(light[1]) - 1) * dy)
        out.append(SceneSpec(background=bg, shapes=names, centers=torch.stack(centers), radii=r[idx],
                             angles=2 * math.pi * u[idx, 2], colors=vivid_colors(u[idx, 3:6]),
                             shadows=u[idx, 6] < shadow_prob,
                             light=(dy, dx, (0.5 + float(light[2])) * side / 32, 0.35 + 0.3 * float(light[3]))))
    return out


def render_specs(specs: Sequence[SceneSpec]) -> dict[str, Tensor]:
    """Draw scenes of one size as a batch.

    Returns ``image (B, 3, H, W)``; ``alpha (B, N, H, W)``, each object's coverage (N the most
    objects of any scene; zeros for the padding); ``shadow (B, N, H, W)``, the alpha of each
    object's shadow layer (zeros without one); and ``background (B, 3, H, W)``. Layers are composited bottom to top: objects N−1 … 1, then the
    target (object 0), each right above its own shadow.
    """
    specs = list(specs)
    if not specs:
        raise ValueError("specs must be a non-empty list of SceneSpec")
    for i, s in enumerate(specs):
        _check_spec(s, f"specs[{i}]")
    hw = specs[0].size
    if any(s.size != hw for s in specs):
        raise ValueError(f"specs must all have the same size, got {sorted({s.size for s in specs})}")
    b, n = len(specs), max(len(s) for s in specs)
    flat = [(i, j) for i, s in enumerate(specs) for j in range(len(s))]
    alpha = torch.zeros(b, n, *hw)
    shadow = torch.zeros(b, n, *hw)
    colors = torch.zeros(b, n, 3)
    if flat:
        rgba = sprite([specs[i].shapes[j] for i, j in flat], hw,
                      color=torch.stack([specs[i].colors[j] for i, j in flat]),
                      center=torch.stack([specs[i].centers[j] for i, j in flat]),
                      radius=torch.stack([specs[i].radii[j] for i, j in flat]),
                      angle=torch.stack([specs[i].angles[j] for i, j in flat]))
        if rgba.dim() == 3:
            rgba = rgba[None]
        for k, (i, j) in enumerate(flat):
            alpha[i, j] = rgba[k, 3]
            colors[i, j] = rgba[k, :3, 0, 0]
            if bool(specs[i].shadows[j]):
                dy, dx, blur, strength = specs[i].light
                shadow[i, j] = drop_shadow(rgba[k, 3], offset=(dy, dx), blur=blur, strength=strength)
    # the layer stack, bottom to top: for object j = N-1 … 0, its shadow then the object itself
    layers = []
    for j in reversed(range(n)):
        layers.append(torch.cat([torch.zeros(b, 3, *hw), shadow[:, j, None]], 1))
        layers.append(torch.cat([colors[:, j, :, None, None].expand(b, 3, *hw), alpha[:, j, None]], 1))
    bgs = torch.stack([s.background for s in specs])
    image = compose(bgs, torch.stack(layers, 1)) if layers else bgs.clone()
    return {"image": image, "alpha": alpha, "shadow": shadow, "background": bgs}


def drop_object(spec: SceneSpec, index: int = 0) -> SceneSpec:
    """The same scene without object ``index`` (and its shadow): what lies behind it."""
    _check_spec(spec)
    index = _check_index(spec, index)
    if len(spec) == 1:
        return replace(spec, shapes=(), centers=spec.centers[:0], radii=spec.radii[:0], angles=spec.angles[:0],
                       colors=spec.colors[:0], shadows=spec.shadows[:0])
    keep = torch.tensor([i for i in range(len(spec)) if i != index])
    return replace(spec, shapes=tuple(spec.shapes[i] for i in keep.tolist()), centers=spec.centers[keep],
                   radii=spec.radii[keep], angles=spec.angles[keep], colors=spec.colors[keep],
                   shadows=spec.shadows[keep])


def edit_object(spec: SceneSpec, index: int = 0, *, shift: tuple[int, int] | tuple[float, float] = (0, 0),
                scale: float = 1.0, flip: bool = False) -> SceneSpec:
    """The scene with object ``index`` edited, as it would really look (its shadow follows it).

    shift ``(dy, dx)`` pixels moves its centre (down, right); ``scale`` > 0 multiplies its radius
    about its centre; ``flip`` mirrors it left–right about the vertical line through its centre
    (every shape here is symmetric about its own vertical axis, so the mirror image of the shape at
    angle θ is the shape at −θ). The object may end up partly outside the canvas.
    """
    _check_spec(spec)
    index = _check_index(spec, index)
    try:
        dy, dx = (float(v) for v in shift)
    except (TypeError, ValueError):
        raise ValueError(f"shift must be a pair of numbers (dy, dx), got {shift!r}") from None
    if not (math.isfinite(dy) and math.isfinite(dx)):
        raise ValueError(f"shift must be finite, got {shift!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    if not isinstance(flip, bool):
        raise TypeError(f"flip must be a bool, got {type(flip).__name__}")
    centers, radii, angles = spec.centers.clone(), spec.radii.clone(), spec.angles.clone()
    centers[index] += torch.tensor([dy, dx], dtype=centers.dtype)
    radii[index] *= scale
    if flip:
        angles[index] = -angles[index]
    return replace(spec, centers=centers, radii=radii, angles=angles)


def scene_images(n: int, size: int | tuple[int, int] = 32, *, seed: int, chunk: int = 512, **spec_kwargs) -> Tensor:
    """``n`` rendered scenes from :func:`scene_specs` (same keyword arguments): ``(n, 3, H, W)`` in [0, 1]."""
    n = check_count(n)
    chunk = check_count(chunk, "chunk")
    specs = scene_specs(n, size, seed=seed, **spec_kwargs)
    return torch.cat([render_specs(specs[i:i + chunk])["image"] for i in range(0, n, chunk)])
