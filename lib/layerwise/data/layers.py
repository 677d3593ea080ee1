"""Synthetic layered RGBA data: anti-aliased sprites, glass, shadows, reflections and blends.

The diffusion chapters (layer diffusion / latent transparency, multi-layer generation,
layer decomposition with shadows and reflections, alpha-blend decomposition, object
removal and moving, and the diffusion primer) train tiny models on the data made here.
A *scene* is a background plus a stack of RGBA layers, bottom to top, whose composite is the
scene's image; every layer knows what it is (``"sprite"``, ``"glass"``, ``"shadow"``,
``"reflection"``), which object it belongs to, its tight box and its mask.

Conventions, everywhere in this module:

- tensors are float32 (pure functions keep their input's floating dtype), channels first,
  values in [0, 1];
- RGBA layers use **straight** (non-premultiplied) alpha: ``rgba[..., :3, :, :]`` is the colour
  and ``rgba[..., 3, :, :]`` the coverage; :func:`premultiply` converts;
- pixel ``(i, j)`` has its centre at ``(y, x) = (i + 0.5, j + 0.5)``, so an ``(H, W)`` canvas
  spans ``[0, H] x [0, W]`` and its centre is ``(H / 2, W / 2)``; centres are given as
  ``(cy, cx)``, angles in radians (counter-clockwise as displayed);
- a shape of radius ``r`` fits inside the disc of radius ``r`` around its centre (the radius
  is the circumradius), whatever its angle;
- randomness comes only from a ``torch.Generator`` argument (or an int ``seed`` that makes
  one), so the same seed gives bit-identical tensors; the work is vectorised with torch over
  the batch, never a Python loop over pixels.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SHAPES", "BLEND_MODES", "BACKGROUNDS",
    "shape_alpha", "sprite", "glass", "background", "drop_shadow", "reflection",
    "blend", "alpha_over", "premultiply", "unpremultiply", "checkerboard", "compose",
    "Scene", "make_scene", "sprites", "scenes", "stack_scenes",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "ring", "star")
BLEND_MODES: tuple[str, ...] = ("over", "screen", "add", "multiply")
BACKGROUNDS: tuple[str, ...] = ("flat", "gradient", "stripes", "checker", "noise")
_KINDS: tuple[str, ...] = ("sprite", "glass", "shadow", "reflection")

# Polygons and stars as (number of tips n, inner radius / outer radius, angle of the first tip
# from "up"). With inner ratio cos(pi / n) the star is the regular n-gon; n = 2 is a rhombus.
_POLYGONS: dict[str, tuple[int, float, float]] = {
    "square": (4, math.cos(math.pi / 4), math.pi / 4),
    "triangle": (3, 0.5, 0.0),
    "diamond": (2, 0.6, 0.0),
    "star": (5, 0.45, 0.0),
}
_RING_INNER = 0.45          # inner radius of the ring as a fraction of its outer radius
# Where a glass shape's highlight sits: this fraction of the radius from the centre towards the
# upper left, a point inside the shape at any angle (for the ring, in the middle of its band).
_HIGHLIGHT = {"circle": 0.45, "square": 0.45, "triangle": 0.25, "diamond": 0.25, "star": 0.25,
              "ring": (1 + _RING_INNER) / 2}
_CHUNK = 2048               # sprites are rendered this many at a time (bounds the memory)


# ----------------------------------------------------------------------------- argument checks

def _hw(size: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    """``size`` (an int for a square canvas, or ``(H, W)``) as a pair of positive ints."""
    pair = (size, size) if not isinstance(size, (tuple, list, torch.Size)) else tuple(size)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair (H, W), got {size!r}")
    try:
        if any(isinstance(s, bool) for s in pair):
            raise TypeError
        h, w = (operator.index(s) for s in pair)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints (H, W), got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive, got {size!r}")
    return h, w


def _generator(generator: torch.Generator | int, name: str = "generator") -> torch.Generator:
    """A CPU ``torch.Generator``: ``generator`` itself, or a fresh one seeded with the int."""
    if isinstance(generator, torch.Generator):
        if generator.device.type != "cpu":
            raise ValueError(f"{name} must be a CPU torch.Generator, got one on {generator.device}")
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"{name} must be a torch.Generator or an int seed, got {type(generator).__name__}")


def _check_name(value: str, allowed: tuple[str, ...], name: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")
    return value


def _check_names(values: Sequence[str] | str, allowed: tuple[str, ...], name: str) -> tuple[str, ...]:
    """A non-empty sequence of names, each one of ``allowed``."""
    values = (values,) if isinstance(values, str) else tuple(values)
    if not values:
        raise ValueError(f"{name} must not be empty; expected names from {allowed}")
    for v in values:
        _check_name(v, allowed, name)
    return values


def _check_layer(x: Tensor, name: str, channels: int) -> Tensor:
    """``x`` must be a floating tensor shaped ``(..., channels, H, W)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 3 or x.shape[-3] != channels:
        raise ValueError(f"{name} must have shape (..., {channels}, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def _check_unit(value: float, name: str, *, low: float = 0.0, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not low <= float(value) <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return float(value)


def _check_positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not float(value) > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive number, got {value}")
    return float(value)


def _range(value: float | Sequence[float], name: str, low: float, high: float) -> tuple[float, float]:
    """``value`` or ``(lo, hi)`` as a range ``low < lo <= hi <= high``."""
    pair = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in pair):
        raise ValueError(f"{name} must be a number or a pair (lo, hi), got {value!r}")
    lo, hi = float(pair[0]), float(pair[1])
    if not low < lo <= hi <= high:
        raise ValueError(f"{name} must satisfy {low} < lo <= hi <= {high}, got {value!r}")
    return lo, hi


def _int_range(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``value`` or ``(lo, hi)`` (inclusive) as ints ``0 <= lo <= hi``."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints (lo, hi), got {value!r}")
    if not 0 <= pair[0] <= pair[1]:
        raise ValueError(f"{name} must satisfy 0 <= lo <= hi, got {value!r}")
    return pair


class _Batch:
    """Collects per-item arguments that are either one value or a batch of B values."""

    def __init__(self) -> None:
        self.size: int | None = None

    def tensor(self, value, name: str, tail: tuple[int, ...]) -> Tensor:
        """``value`` as float64 shaped ``tail`` (one item) or ``(B, *tail)`` (a batch)."""
        try:
            t = torch.as_tensor(value, dtype=torch.float64).cpu()
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}") from None
        if t.ndim == len(tail) + 1 and tuple(t.shape[1:]) == tail:
            self._set(t.shape[0], name)
        elif tuple(t.shape) != tail:
            one, many = ("a number", "(B,)") if not tail else (f"shape {tail}", f"(B, {tail[0]})")
            raise ValueError(f"{name} must be {one} or have shape {many}, got shape {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} must be finite")
        return t

    def shapes(self, shape: str | Sequence[str]) -> list[str] | str:
        if isinstance(shape, str):
            return _check_name(shape, SHAPES, "shape")
        names = list(shape)
        for s in names:
            _check_name(s, SHAPES, "shape")
        self._set(len(names), "shape")
        return names

    def _set(self, b: int, name: str) -> None:
        if b == 0:
            raise ValueError(f"{name} has an empty batch")
        if self.size is not None and self.size != b:
            raise ValueError(f"{name} has batch size {b}, but another argument has {self.size}")
        self.size = b

    def expand(self, t: Tensor, tail: tuple[int, ...]) -> Tensor:
        b = self.size or 1
        return t.expand(b, *tail) if t.ndim == len(tail) else t


# ----------------------------------------------------------------------------- geometry

def _pixel_grid(hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates ``ys: (1, H, 1)`` and ``xs: (1, 1, W)``."""
    h, w = hw
    ys = (torch.arange(h, dtype=torch.float32) + 0.5).view(1, h, 1)
    xs = (torch.arange(w, dtype=torch.float32) + 0.5).view(1, 1, w)
    return ys, xs


def _polygon_sdf(u: Tensor, v: Tensor, rho: Tensor, r: Tensor, n: int, ratio: float, offset: float) -> Tensor:
    """Signed distance to an n-tipped star (tips at radius ``r``, inner vertices at ``ratio * r``).

    ``u, v, rho: (B, H, W)`` local coordinates (right, up) and radius; ``r: (B, 1, 1)``. The
    dihedral symmetry folds every point into one half-sector, where the boundary is the single
    segment from the inner vertex ``a`` to the tip ``b``; inside is the origin's side of it.
    """
    wedge = 2 * math.pi / n
    phi = torch.atan2(u, v)                                  # angle from "up", clockwise as displayed
    psi = torch.remainder(phi - offset, wedge).sub_(wedge / 2).abs_()   # 0: inner vertex, wedge/2: tip
    px, py = rho * torch.cos(psi), rho * torch.sin(psi)
    ax = ratio * r
    bax, bay = r * math.cos(wedge / 2) - ax, r * math.sin(wedge / 2)
    pax = px - ax
    h = ((pax * bax + py * bay) / (bax * bax + bay * bay)).clamp_(0.0, 1.0)
    d = torch.hypot(pax - h * bax, py - h * bay)
    inside = (bax * py - bay * pax) > 0
    return torch.where(inside, -d, d)


def _sdf(names: Sequence[str], hw: tuple[int, int], center: Tensor, radius: Tensor, angle: Tensor) -> Tensor:
    """Signed distance in pixels (negative inside) of B shapes: ``(B, H, W)`` float32.

    ``names``: B shape names; ``center: (B, 2)`` as ``(cy, cx)``; ``radius, angle: (B,)``.
    """
    b = len(names)
    cos, sin = torch.cos(angle).float().view(b, 1, 1), torch.sin(angle).float().view(b, 1, 1)
    ys, xs = _pixel_grid(hw)
    dy = ys - center[:, 0].float().view(b, 1, 1)             # (B, H, 1)
    dx = xs - center[:, 1].float().view(b, 1, 1)             # (B, 1, W)
    u = cos * dx - sin * dy                                   # undo the rotation; u right, v up
    v = -sin * dx - cos * dy
    rho = torch.hypot(u, v)
    r = radius.float().view(b, 1, 1)
    present = list(dict.fromkeys(names))
    if len(present) == 1:
        return _shape_sdf(present[0], u, v, rho, r)
    out = torch.empty_like(rho)
    for name in present:
        sel = torch.tensor([i for i, s in enumerate(names) if s == name])
        part = _shape_sdf(name, *(t.index_select(0, sel) for t in (u, v, rho, r)))
        out.index_copy_(0, sel, part)     # not ``out[sel] = part``: index_put is slow on a busy CPU
    return out


def _shape_sdf(name: str, u: Tensor, v: Tensor, rho: Tensor, r: Tensor) -> Tensor:
    """Signed distance to the shape ``name`` from local coordinates ``u, v, rho: (B, H, W)``, ``r: (B, 1, 1)``."""
    if name == "circle":
        return rho - r
    if name == "ring":
        mid, half = (1 + _RING_INNER) / 2 * r, (1 - _RING_INNER) / 2 * r
        return (rho - mid).abs_() - half
    return _polygon_sdf(u, v, rho, r, *_POLYGONS[name])


def _coverage(sdf: Tensor, softness: float) -> Tensor:
    """Anti-aliased coverage ``clamp(0.5 - sdf / softness, 0, 1)``."""
    return (0.5 - sdf / softness).clamp_(0.0, 1.0)


def _glass_rgba(sdf: Tensor, names: Sequence[str], hw: tuple[int, int], center: Tensor, radius: Tensor,
                color: Tensor, opacity: Tensor, softness: float) -> Tensor:
    """Glass look from the shapes' ``sdf: (B, H, W)``: ``(B, 4, H, W)``.

    The body has alpha ``opacity`` and a lightened tint of ``color``; a rim about a fifth of the
    radius wide is more opaque and lighter; a small soft specular spot up and to the left of
    the centre (the light comes from there, whatever the shape's angle), at least a pixel
    wide, is nearly white and nearly opaque.
    """
    b = sdf.shape[0]
    cov = _coverage(sdf, softness)
    r = radius.float().view(b, 1, 1)
    rim = (1 + sdf / (0.2 * r).clamp(min=1.0)).clamp_(0.0, 1.0)        # 1 at the edge, 0 deeper in
    op = opacity.float().view(b, 1, 1)
    body = op + ((1 - op) * 0.6) * rim
    ys, xs = _pixel_grid(hw)
    lift = torch.tensor([_HIGHLIGHT[n] for n in names]).view(b, 1, 1) * r * math.sqrt(0.5)
    hy = center[:, 0].float().view(b, 1, 1) - lift
    hx = center[:, 1].float().view(b, 1, 1) - lift
    spot_r = (0.2 * r).clamp(min=1.0)
    spot = (1.5 * (1 - torch.hypot(ys - hy, xs - hx) / spot_r)).clamp_(0.0, 1.0)
    alpha = cov * (body + (1 - body) * 0.9 * spot)
    col = color.float().view(b, 3, 1, 1)
    tint, rim_col = 0.75 * col + 0.25, 0.4 * col + 0.6
    rgb = tint + (rim_col - tint) * rim.unsqueeze(1)
    rgb = rgb + (1 - rgb) * spot.unsqueeze(1)
    return torch.cat([rgb, alpha.unsqueeze(1)], dim=1)


def _render(names: Sequence[str], hw: tuple[int, int], center: Tensor, radius: Tensor, angle: Tensor,
            color: Tensor, opacity: Tensor, is_glass: Tensor, softness: float) -> Tensor:
    """B sprites (``is_glass`` False) or glass sprites (True) as ``(B, 4, H, W)`` float32."""
    b, (h, w) = len(names), hw
    out = torch.empty(b, 4, h, w)
    for start in range(0, b, _CHUNK):
        s = slice(start, min(start + _CHUNK, b))
        sdf = _sdf(names[s], hw, center[s], radius[s], angle[s])
        for glassy in (False, True):
            local = (is_glass[s] == glassy).nonzero().squeeze(1)
            if len(local) == 0:
                continue
            idx = local + start
            part = sdf.index_select(0, local)
            if glassy:
                rgba = _glass_rgba(part, [names[i] for i in idx.tolist()], hw, center[idx], radius[idx],
                                   color[idx], opacity[idx], softness)
            else:
                a = _coverage(part, softness) * opacity[idx].float().view(-1, 1, 1)
                rgba = torch.cat([color[idx].float().view(-1, 3, 1, 1).expand(-1, 3, h, w), a.unsqueeze(1)], 1)
            out.index_copy_(0, idx, rgba)
    return out


def _shape_args(shape, size, center, radius, angle, softness):
    """Parse the shared arguments of :func:`shape_alpha`, :func:`sprite` and :func:`glass`."""
    hw = _hw(size)
    batch = _Batch()
    names = batch.shapes(shape)
    center = batch.tensor(center, "center", (2,))
    radius = batch.tensor(radius, "radius", ())
    angle = batch.tensor(angle, "angle", ())
    softness = _check_positive(softness, "softness")
    if (radius <= 0).any():
        raise ValueError(f"radius must be positive, got {radius.tolist()}")
    return hw, batch, names, center, radius, angle, softness


def _finish(batch: _Batch, names, center: Tensor, radius: Tensor, angle: Tensor):
    b = batch.size or 1
    names = [names] * b if isinstance(names, str) else names
    return names, batch.expand(center, (2,)), batch.expand(radius, ()), batch.expand(angle, ())


# ----------------------------------------------------------------------------- shapes and sprites

def shape_alpha(shape: str | Sequence[str], size: int | tuple[int, int], center, radius, *,
                angle=0.0, softness: float = 1.0) -> Tensor:
    """Anti-aliased coverage of a shape: ``(H, W)`` in [0, 1], or ``(B, H, W)`` for a batch.

    ``alpha = clamp(0.5 - sdf / softness, 0, 1)`` where ``sdf`` is the signed distance in
    pixels to the shape's outline (negative inside), so the edge is a linear ramp
    ``softness`` pixels wide and the covered area is close to the shape's true area.

    shape: one of :data:`SHAPES`, or a list of B names. size: ``H`` (square) or ``(H, W)``.
    center: ``(cy, cx)`` in pixels, or ``(B, 2)``. radius: circumradius in pixels, or ``(B,)``.
    angle: rotation in radians, counter-clockwise as displayed, or ``(B,)``. softness: ramp
    width in pixels (> 0). Any batched argument makes the result batched; the others are shared.
    """
    hw, batch, names, center, radius, angle, softness = _shape_args(shape, size, center, radius, angle, softness)
    batched = batch.size is not None
    names, center, radius, angle = _finish(batch, names, center, radius, angle)
    alpha = torch.empty(len(names), *hw)
    for start in range(0, len(names), _CHUNK):
        s = slice(start, start + _CHUNK)
        alpha[s] = _coverage(_sdf(names[s], hw, center[s], radius[s], angle[s]), softness)
    return alpha if batched else alpha[0]


def _color_opacity(batch: _Batch, color, opacity) -> tuple[Tensor, Tensor]:
    color = batch.tensor(color, "color", (3,))
    opacity = batch.tensor(opacity, "opacity", ())
    if ((color < 0) | (color > 1)).any():
        raise ValueError(f"color must be RGB values in [0, 1], got {color.tolist()}")
    if ((opacity < 0) | (opacity > 1)).any():
        raise ValueError(f"opacity must be in [0, 1], got {opacity.tolist()}")
    return color, opacity


def _sprite_or_glass(shape, size, color, center, radius, opacity, angle, softness, is_glass: bool) -> Tensor:
    hw, batch, names, center, radius, angle, softness = _shape_args(shape, size, center, radius, angle, softness)
    color, opacity = _color_opacity(batch, color, opacity)
    batched = batch.size is not None
    names, center, radius, angle = _finish(batch, names, center, radius, angle)
    color, opacity = batch.expand(color, (3,)), batch.expand(opacity, ())
    flags = torch.full((len(names),), is_glass)
    out = _render(names, hw, center, radius, angle, color, opacity, flags, softness)
    return out if batched else out[0]


def sprite(shape: str | Sequence[str], size: int | tuple[int, int], *, color, center, radius,
           opacity=1.0, angle=0.0, softness: float = 1.0) -> Tensor:
    """A flat-coloured RGBA sprite: ``(4, H, W)``, or ``(B, 4, H, W)`` for a batch.

    ``rgb`` is ``color`` (``(3,)`` or ``(B, 3)``, in [0, 1]) everywhere (straight alpha), and
    ``alpha = opacity * shape_alpha(...)``. The other arguments are those of :func:`shape_alpha`.
    """
    return _sprite_or_glass(shape, size, color, center, radius, opacity, angle, softness, False)


def glass(shape: str | Sequence[str], size: int | tuple[int, int], *, color, center, radius,
          opacity=0.4, angle=0.0, softness: float = 1.0) -> Tensor:
    """A semi-transparent glass-like sprite: ``(4, H, W)``, or ``(B, 4, H, W)`` for a batch.

    Interior alpha is ``opacity`` (use 0.2–0.6), the rim (about a fifth of the radius wide) is
    more opaque and lighter, and a small bright specular highlight sits at the upper left; the
    colour is ``color`` lightened. Arguments as in :func:`sprite`.
    """
    return _sprite_or_glass(shape, size, color, center, radius, opacity, angle, softness, True)


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """HSV in [0, 1] (each ``(B,)``) to RGB ``(B, 3)``."""
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=h.dtype) + 6 * h.unsqueeze(-1)) % 6
    ramp = torch.minimum(k, 4 - k).clamp(0.0, 1.0)
    return (v.unsqueeze(-1) * (1 - s.unsqueeze(-1) * ramp)).clamp(0.0, 1.0)


def _vivid(u: Tensor) -> Tensor:
    """Saturated, bright colours ``(B, 3)`` from uniforms ``u: (B, 3)``."""
    return _hsv_to_rgb(u[:, 0], 0.6 + 0.4 * u[:, 1], 0.75 + 0.25 * u[:, 2])


# ----------------------------------------------------------------------------- backgrounds

def background(size: int | tuple[int, int], *, generator: torch.Generator | int, kind: str | None = None) -> Tensor:
    """A random textured background ``(3, H, W)`` in [0, 1] with muted colours.

    kind: ``"flat"`` (one colour), ``"gradient"`` (linear, random direction), ``"stripes"``
    (soft stripes, random angle and period), ``"checker"`` (random cell size and phase),
    ``"noise"`` (smooth: low-resolution noise upsampled bilinearly), or None for a random one.
    generator: a CPU ``torch.Generator`` or an int seed.
    """
    g = _generator(generator)
    h, w = _hw(size)
    if kind is None:
        kind = BACKGROUNDS[int(torch.randint(len(BACKGROUNDS), (1,), generator=g))]
    _check_name(kind, BACKGROUNDS, "kind")
    u = torch.rand(2, 3, generator=g, dtype=torch.float64)
    c = _hsv_to_rgb(u[:, 0], 0.1 + 0.45 * u[:, 1], 0.35 + 0.6 * u[:, 2]).float().view(2, 3, 1, 1)
    ys, xs = (t.view(t.shape[1], t.shape[2]) for t in _pixel_grid((h, w)))
    if kind == "flat":
        return c[0].expand(3, h, w).clone()
    if kind == "noise":
        lh, lw = (int(v) for v in torch.randint(3, 7, (2,), generator=g))
        low = torch.rand(1, 1, lh, lw, generator=g)
        jitter = 0.15 * (torch.rand(1, 3, lh, lw, generator=g) - 0.5)
        low = (c[0] + (c[1] - c[0]) * low + jitter).clamp(0.0, 1.0)
        return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0].clamp(0.0, 1.0)
    if kind == "checker":
        cell = int(torch.randint(2, max(3, min(h, w) // 4) + 1, (1,), generator=g))
        oy, ox = (int(v) for v in torch.randint(cell, (2,), generator=g))
        iy = (torch.arange(h) + oy) // cell
        ix = (torch.arange(w) + ox) // cell
        t = ((iy.view(h, 1) + ix.view(1, w)) % 2).float()
    else:
        theta = float(torch.rand(1, generator=g)) * 2 * math.pi
        proj = (xs - w / 2) * math.cos(theta) + (ys - h / 2) * math.sin(theta)
        if kind == "gradient":
            t = (proj - proj.min()) / (proj.max() - proj.min()).clamp(min=1e-6)
        else:  # stripes
            period = 4.0 + float(torch.rand(1, generator=g)) * max(1.0, min(h, w) / 2 - 4.0)
            phase = float(torch.rand(1, generator=g)) * 2 * math.pi
            t = (0.5 + 1.5 * torch.sin(2 * math.pi * proj / period + phase)).clamp(0.0, 1.0)
    return (c[0] + (c[1] - c[0]) * t).clamp(0.0, 1.0)


def checkerboard(size: int | tuple[int, int], square: int = 4, light: float = 0.8, dark: float = 0.6) -> Tensor:
    """The usual grey checkerboard that shows transparency: ``(3, H, W)``.

    Squares are ``square`` pixels wide; the top-left one is ``light``.
    """
    h, w = _hw(size)
    if isinstance(square, bool) or not isinstance(square, int) or square <= 0:
        raise ValueError(f"square must be a positive int, got {square!r}")
    light, dark = _check_unit(light, "light"), _check_unit(dark, "dark")
    iy = torch.arange(h).view(h, 1) // square
    ix = torch.arange(w).view(1, w) // square
    board = torch.where((iy + ix) % 2 == 0, light, dark).float()
    return board.expand(3, h, w).clone()


# ----------------------------------------------------------------------------- effects

def _offset(offset: Sequence[int]) -> tuple[int, int]:
    try:
        dy, dx = offset
        if isinstance(dy, bool) or isinstance(dx, bool):
            raise TypeError
        if dy != int(dy) or dx != int(dx):
            raise ValueError
        return int(dy), int(dx)
    except (TypeError, ValueError):
        raise ValueError(f"offset must be a pair of integers (dy, dx), got {offset!r}") from None


def _shift(x: Tensor, dy: int, dx: int) -> Tensor:
    """``x: (..., H, W)`` moved down by ``dy`` and right by ``dx`` pixels, zero fill."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def _blur_matrix(n: int, kernel: Tensor) -> Tensor:
    """``(n, n)`` matrix ``M`` with ``M[i, j] = kernel[j - i + R]`` for ``|j - i| <= R``, else 0.

    ``M @ x`` convolves the columns of ``x: (n, m)`` with the odd-length ``kernel`` (length
    ``2R + 1``), with zero padding at both ends.
    """
    radius = (len(kernel) - 1) // 2
    offset = torch.arange(n, device=kernel.device).view(1, n) - torch.arange(n, device=kernel.device).view(n, 1)
    taps = kernel[(offset + radius).clamp(0, 2 * radius)]
    return torch.where(offset.abs() <= radius, taps, torch.zeros_like(taps))


def _gaussian_blur(x: Tensor, std: float) -> Tensor:
    """Separable Gaussian blur of ``x: (..., H, W)``: std ``std``, radius ``ceil(3 std)``, zero padding.

    Written as two small matrix products (rows, then columns) rather than ``conv2d``: the same
    sums, and it stays fast when other processes keep the CPU cores busy.
    """
    radius = math.ceil(3 * std)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t * t) / (2 * std * std))
    k = k / k.sum()
    h, w = x.shape[-2:]
    return _blur_matrix(h, k) @ x @ _blur_matrix(w, k).T


def drop_shadow(alpha: Tensor, offset: Sequence[int] = (2, 2), blur: float = 1.0, strength: float = 0.6) -> Tensor:
    """The shadow that the silhouette ``alpha: (..., H, W)`` drops: same shape and dtype.

    The silhouette is shifted by ``offset = (dy, dx)`` whole pixels (down and right for
    positive values) with zero fill (no wrap-around), blurred by a separable Gaussian of
    standard deviation ``blur`` pixels (kernel radius ``ceil(3 * blur)``, normalised to sum 1,
    zero padding; ``blur = 0`` means no blur), and multiplied by ``strength`` in [0, 1].
    Deterministic; the result is in [0, 1].
    """
    if not isinstance(alpha, Tensor):
        raise TypeError(f"alpha must be a torch.Tensor, got {type(alpha).__name__}")
    if alpha.ndim < 2:
        raise ValueError(f"alpha must have shape (..., H, W), got {tuple(alpha.shape)}")
    if not alpha.is_floating_point():
        raise TypeError(f"alpha must be a floating-point tensor, got dtype {alpha.dtype}")
    dy, dx = _offset(offset)
    blur = _check_unit(blur, "blur", high=math.inf)
    strength = _check_unit(strength, "strength")
    out = _shift(alpha, dy, dx)
    if blur > 0:
        out = _gaussian_blur(out, blur)
    return (out * strength).clamp_(0.0, 1.0)


def reflection(rgba: Tensor, *, floor: int, fade: float = 0.5, strength: float = 0.5) -> Tensor:
    """The reflection of ``rgba: (..., 4, H, W)`` in a mirror floor at ``y = floor``: same shape.

    Row ``floor + k`` shows row ``floor - 1 - k`` (the mirror image about the line between rows
    ``floor - 1`` and ``floor``); its alpha is multiplied by ``strength`` and by
    ``max(0, 1 - k / (fade * H))``, fading linearly to 0 over ``fade * H`` rows. Rows above
    ``floor``, and rows whose mirror source is off the canvas, are zero in all four channels.
    """
    _check_layer(rgba, "rgba", 4)
    try:
        if isinstance(floor, bool):
            raise TypeError
        floor = operator.index(floor)
    except TypeError:
        raise ValueError(f"floor must be an int (a row index), got {floor!r}") from None
    fade = _check_positive(fade, "fade")
    strength = _check_unit(strength, "strength")
    h = rgba.shape[-2]
    y = torch.arange(h, device=rgba.device)
    src = 2 * floor - 1 - y
    valid = (y >= floor) & (src >= 0) & (src < h)
    out = rgba.index_select(-2, src.clamp(0, h - 1))
    weight = (1 - (y - floor).to(rgba.dtype) / (fade * h)).clamp(0.0, 1.0) * strength
    keep = valid.to(rgba.dtype).view(h, 1)
    out = out * keep
    out[..., 3, :, :] = out[..., 3, :, :] * weight.view(h, 1)
    return out


# ----------------------------------------------------------------------------- blending

def _check_pair(fg: Tensor, bg: Tensor) -> None:
    if fg.shape[-2:] != bg.shape[-2:]:
        raise ValueError(f"fg and bg must have the same (H, W), got {tuple(fg.shape[-2:])} and "
                         f"{tuple(bg.shape[-2:])}")


def blend(fg: Tensor, bg: Tensor, mode: str = "over") -> Tensor:
    """Blend a straight-alpha layer ``fg: (..., 4, H, W)`` onto ``bg: (..., 3, H, W)``.

    W3C separable blending with alpha: ``out = (1 - a) * bg + a * B(fg_rgb, bg)`` with ``B`` =
    ``fg`` (over), ``1 - (1 - fg)(1 - bg)`` (screen), ``min(fg + bg, 1)`` (add), ``fg * bg``
    (multiply). Leading dimensions broadcast. Returns ``(..., 3, H, W)`` in [0, 1].
    """
    _check_layer(fg, "fg", 4)
    _check_layer(bg, "bg", 3)
    _check_name(mode, BLEND_MODES, "mode")
    _check_pair(fg, bg)
    rgb, a = fg[..., :3, :, :], fg[..., 3:4, :, :]
    if mode == "over":
        mixed = rgb
    elif mode == "screen":
        mixed = 1 - (1 - rgb) * (1 - bg)
    elif mode == "add":
        mixed = (rgb + bg).clamp(max=1.0)
    else:
        mixed = rgb * bg
    return ((1 - a) * bg + a * mixed).clamp_(0.0, 1.0)


def alpha_over(fg: Tensor, bg: Tensor) -> Tensor:
    """Porter–Duff "over": ``fg: (..., 4, H, W)`` over ``bg``.

    With ``bg: (..., 3, H, W)`` this is ``blend(fg, bg, "over")``. With ``bg: (..., 4, H, W)``
    both are straight-alpha layers and the result is one too: ``a = af + ab (1 - af)`` and
    ``rgb = (af rgb_f + (1 - af) ab rgb_b) / a``, with ``rgb = 0`` where ``a = 0``.
    """
    _check_layer(fg, "fg", 4)
    if not isinstance(bg, Tensor) or bg.ndim < 3 or bg.shape[-3] not in (3, 4):
        shape = tuple(bg.shape) if isinstance(bg, Tensor) else type(bg).__name__
        raise ValueError(f"bg must have shape (..., 3, H, W) or (..., 4, H, W), got {shape}")
    if bg.shape[-3] == 3:
        return blend(fg, bg, "over")
    _check_layer(bg, "bg", 4)
    _check_pair(fg, bg)
    af, ab = fg[..., 3:4, :, :], bg[..., 3:4, :, :]
    wb = (1 - af) * ab
    a = af + wb
    premul = af * fg[..., :3, :, :] + wb * bg[..., :3, :, :]
    rgb = torch.where(a > 0, premul / torch.where(a > 0, a, torch.ones_like(a)), torch.zeros_like(premul))
    return torch.cat([rgb.clamp(0.0, 1.0), a.clamp(0.0, 1.0)], dim=-3)


def premultiply(rgba: Tensor) -> Tensor:
    """``(..., 4, H, W)`` straight alpha to premultiplied: ``rgb * alpha``, alpha unchanged."""
    _check_layer(rgba, "rgba", 4)
    a = rgba[..., 3:4, :, :]
    return torch.cat([rgba[..., :3, :, :] * a, a], dim=-3)


def unpremultiply(rgba: Tensor, eps: float = 1e-6) -> Tensor:
    """``(..., 4, H, W)`` premultiplied to straight alpha: ``rgb / alpha`` where alpha > eps, else 0.

    The colour is clipped to [0, 1].
    """
    _check_layer(rgba, "rgba", 4)
    eps = _check_unit(eps, "eps")
    a = rgba[..., 3:4, :, :]
    ok = a > eps
    rgb = torch.where(ok, rgba[..., :3, :, :] / torch.where(ok, a, torch.ones_like(a)), torch.zeros_like(a))
    return torch.cat([rgb.clamp(0.0, 1.0), a], dim=-3)


def compose(background: Tensor, layers: Sequence[Tensor] | Tensor, modes: Sequence[str] | str | None = None) -> Tensor:
    """Blend ``layers`` onto ``background``, bottom to top: the composite image.

    background: ``(3, H, W)`` with layers a list of ``(4, H, W)`` or a tensor ``(N, 4, H, W)``;
    or batched, ``(B, 3, H, W)`` with layers ``(B, N, 4, H, W)``. modes: one name of
    :data:`BLEND_MODES` per layer (or one name for all; None means all "over").
    Returns ``(3, H, W)`` or ``(B, 3, H, W)``.
    """
    _check_layer(background, "background", 3)
    if background.ndim not in (3, 4):
        raise ValueError(f"background must have shape (3, H, W) or (B, 3, H, W), got {tuple(background.shape)}")
    batched = background.ndim == 4
    if isinstance(layers, Tensor):
        want = "(B, N, 4, H, W)" if batched else "(N, 4, H, W)"
        if layers.ndim != background.ndim + 1 or layers.shape[-3] != 4 or \
                (batched and layers.shape[0] != background.shape[0]):
            raise ValueError(f"layers must have shape {want} for a background of shape "
                             f"{tuple(background.shape)}, got {tuple(layers.shape)}")
        _check_layer(layers, "layers", 4)
        items = list(layers.unbind(1 if batched else 0))
    else:
        if batched:
            raise ValueError("with a batched background (B, 3, H, W), layers must be a tensor (B, N, 4, H, W)")
        items = list(layers)
        for i, x in enumerate(items):
            _check_layer(x, f"layers[{i}]", 4)
            if x.ndim != 3:
                raise ValueError(f"layers[{i}] must have shape (4, H, W), got {tuple(x.shape)}")
    n = len(items)
    if modes is None or isinstance(modes, str):
        modes = [modes or "over"] * n
    modes = list(modes)
    if len(modes) != n:
        raise ValueError(f"modes must name one blend mode per layer ({n}), got {len(modes)}")
    out = background
    for x, mode in zip(items, modes):
        out = blend(x, out, mode)
    return out.clone() if n == 0 else out


# ----------------------------------------------------------------------------- scenes

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
    g = _generator(generator)
    h, w = _hw(size)
    lo, hi = _int_range(n_objects, "n_objects")
    shadow_prob = _check_unit(shadow_prob, "shadow_prob")
    reflection_prob = _check_unit(reflection_prob, "reflection_prob")
    glass_prob = _check_unit(glass_prob, "glass_prob")
    modes = _check_names(modes, BLEND_MODES, "modes")
    shapes = _check_names(shapes, SHAPES, "shapes")
    r_lo, r_hi = _range(radius, "radius", 0.0, 1.0)
    if background_kind is not None:
        _check_name(background_kind, BACKGROUNDS, "background_kind")

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
    color = _vivid(u[:, 5:8])
    is_glass = u[:, 8] < glass_prob
    opacity = torch.where(is_glass, 0.25 + 0.3 * u[:, 9], torch.ones_like(r))
    objects = _render(names, (h, w), torch.stack([cy, cx], 1), r, angle, color, opacity, is_glass, 1.0)

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


def _count(n: int, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be an int >= 1, got {n!r}")
    return n


def sprites(n: int, size: int | tuple[int, int] = 16, *, seed: int = 0, shapes: Sequence[str] = SHAPES,
            glass_prob: float = 0.0, radius: float | tuple[float, float] = (0.2, 0.4),
            centered: bool = False) -> Tensor:
    """``n`` random single sprites on a transparent background: ``(n, 4, H, W)`` float32.

    Each has a random shape from ``shapes``, radius a fraction in ``radius`` of ``min(H, W)``,
    a vivid colour, a random angle, and lies fully inside the canvas (centred when
    ``centered``); with probability ``glass_prob`` it is a :func:`glass` sprite. Rendered in
    batches with torch, not per sprite.
    """
    n = _count(n)
    h, w = _hw(size)
    shapes = _check_names(shapes, SHAPES, "shapes")
    glass_prob = _check_unit(glass_prob, "glass_prob")
    r_lo, r_hi = _range(radius, "radius", 0.0, 0.5)
    g = torch.Generator().manual_seed(_check_seed(seed))
    u = torch.rand(n, 10, generator=g, dtype=torch.float64)
    idx = (u[:, 0] * len(shapes)).long().clamp(max=len(shapes) - 1).tolist()
    names = [shapes[i] for i in idx]
    r = (r_lo + (r_hi - r_lo) * u[:, 1]) * min(h, w)
    if centered:
        center = torch.tensor([h / 2, w / 2], dtype=torch.float64).expand(n, 2)
    else:
        center = torch.stack([r + (h - 2 * r) * u[:, 2], r + (w - 2 * r) * u[:, 3]], 1)
    is_glass = u[:, 8] < glass_prob
    opacity = torch.where(is_glass, 0.25 + 0.3 * u[:, 9], torch.ones_like(r))
    return _render(names, (h, w), center, r, 2 * math.pi * u[:, 4], _vivid(u[:, 5:8]), opacity, is_glass, 1.0)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return seed


def scenes(n: int, size: int | tuple[int, int] = 32, *, seed: int = 0, **make_scene_kwargs) -> list[Scene]:
    """``n`` scenes from :func:`make_scene`, all drawn from one generator seeded with ``seed``.

    About a millisecond a scene at 32x32 on one core; from 5,000 scenes up a progress bar
    shows (see :func:`layerwise.core.env.progress_bar`).
    """
    from layerwise.core.env import progress_bar   # here, not at the top: core may import data

    n = _count(n)
    if "generator" in make_scene_kwargs:
        raise TypeError("scenes() takes seed=..., not generator=...")
    g = torch.Generator().manual_seed(_check_seed(seed))
    return [make_scene(size, generator=g, **make_scene_kwargs)
            for _ in progress_bar(range(n), desc="scenes", enabled=False if n < 5000 else None)]


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
