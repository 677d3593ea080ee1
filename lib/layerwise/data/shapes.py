"""Seeded synthetic sprites: anti-aliased shapes, glass, textured backgrounds, shadows, reflections.

Every function here draws straight-alpha RGBA layers ``(..., 4, H, W)`` in [0, 1] (see
:mod:`layerwise.data` for the conventions); compositing them is :mod:`layerwise.data.rgba`'s
job and assembling whole scenes :mod:`layerwise.data.scene`'.
"""

from __future__ import annotations

import math
import operator
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from layerwise.data._checks import (check_layer, check_name, check_names, check_positive, check_seed, check_unit,
                                     check_count, as_generator, canvas_size, value_range)

__all__ = ["SHAPES", "BACKGROUNDS", "shape_alpha", "sprite", "glass", "sprites", "background", "drop_shadow",
           "reflection", "shift"]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "ring", "star")
BACKGROUNDS: tuple[str, ...] = ("flat", "gradient", "stripes", "checker", "noise")

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
            return check_name(shape, SHAPES, "shape")
        names = list(shape)
        for s in names:
            check_name(s, SHAPES, "shape")
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


def render_sprites(names: Sequence[str], hw: tuple[int, int], center: Tensor, radius: Tensor, angle: Tensor,
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
    hw = canvas_size(size)
    batch = _Batch()
    names = batch.shapes(shape)
    center = batch.tensor(center, "center", (2,))
    radius = batch.tensor(radius, "radius", ())
    angle = batch.tensor(angle, "angle", ())
    softness = check_positive(softness, "softness")
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
    out = render_sprites(names, hw, center, radius, angle, color, opacity, flags, softness)
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


def vivid_colors(u: Tensor) -> Tensor:
    """Saturated, bright colours ``(B, 3)`` from uniforms ``u: (B, 3)``."""
    return _hsv_to_rgb(u[:, 0], 0.6 + 0.4 * u[:, 1], 0.75 + 0.25 * u[:, 2])


def sprites(n: int, size: int | tuple[int, int] = 16, *, seed: int = 0, shapes: Sequence[str] = SHAPES,
            glass_prob: float = 0.0, radius: float | tuple[float, float] = (0.2, 0.4),
            centered: bool = False) -> Tensor:
    """``n`` random single sprites on a transparent background: ``(n, 4, H, W)`` float32.

    Each has a random shape from ``shapes``, radius a fraction in ``radius`` of ``min(H, W)``,
    a vivid colour, a random angle, and lies fully inside the canvas (centred when
    ``centered``); with probability ``glass_prob`` it is a :func:`glass` sprite. Rendered in
    batches with torch, not per sprite.
    """
    n = check_count(n)
    h, w = canvas_size(size)
    shapes = check_names(shapes, SHAPES, "shapes")
    glass_prob = check_unit(glass_prob, "glass_prob")
    r_lo, r_hi = value_range(radius, "radius", 0.0, 0.5)
    g = torch.Generator().manual_seed(check_seed(seed))
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
    return render_sprites(names, (h, w), center, r, 2 * math.pi * u[:, 4], vivid_colors(u[:, 5:8]), opacity, is_glass, 1.0)


# ----------------------------------------------------------------------------- backgrounds

def background(size: int | tuple[int, int], *, generator: torch.Generator | int, kind: str | None = None) -> Tensor:
    """A random textured background ``(3, H, W)`` in [0, 1] with muted colours.

    kind: ``"flat"`` (one colour), ``"gradient"`` (linear, random direction), ``"stripes"``
    (soft stripes, random angle and period), ``"checker"`` (random cell size and phase),
    ``"noise"`` (smooth: low-resolution noise upsampled bilinearly), or None for a random one.
    generator: a CPU ``torch.Generator`` or an int seed.
    """
    g = as_generator(generator)
    h, w = canvas_size(size)
    if kind is None:
        kind = BACKGROUNDS[int(torch.randint(len(BACKGROUNDS), (1,), generator=g))]
    check_name(kind, BACKGROUNDS, "kind")
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


def shift(x: Tensor, dy: int, dx: int) -> Tensor:
    """``x: (..., H, W)`` moved down by ``dy`` and right by ``dx`` pixels (negative: up, left), zero fill."""
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a tensor (..., H, W), got {type(x).__name__}"
                         f"{' of shape ' + str(tuple(x.shape)) if isinstance(x, Tensor) else ''}")
    for name, v in (("dy", dy), ("dx", dx)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must be an int number of pixels, got {v!r}")
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
    blur = check_unit(blur, "blur", high=math.inf)
    strength = check_unit(strength, "strength")
    out = shift(alpha, dy, dx)
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
    check_layer(rgba, "rgba", 4)
    try:
        if isinstance(floor, bool):
            raise TypeError
        floor = operator.index(floor)
    except TypeError:
        raise ValueError(f"floor must be an int (a row index), got {floor!r}") from None
    fade = check_positive(fade, "fade")
    strength = check_unit(strength, "strength")
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
