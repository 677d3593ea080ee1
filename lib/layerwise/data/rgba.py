"""RGBA compositing, one home for each operation: straight ↔ premultiplied alpha, blend modes,
Porter–Duff "over", stacking layers onto a background, and the checkerboard that shows
transparency.

Layers are straight-alpha ``(..., 4, H, W)``, backgrounds and images ``(..., 3, H, W)``, in [0, 1].
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from layerwise.data._checks import check_layer, check_name, check_unit, canvas_size

__all__ = ["BLEND_MODES", "blend", "alpha_over", "premultiply", "unpremultiply", "premultiplied_rgb", "compose",
           "checkerboard"]

BLEND_MODES: tuple[str, ...] = ("over", "screen", "add", "multiply")


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
    check_layer(fg, "fg", 4)
    check_layer(bg, "bg", 3)
    check_name(mode, BLEND_MODES, "mode")
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
    check_layer(fg, "fg", 4)
    if not isinstance(bg, Tensor) or bg.ndim < 3 or bg.shape[-3] not in (3, 4):
        shape = tuple(bg.shape) if isinstance(bg, Tensor) else type(bg).__name__
        raise ValueError(f"bg must have shape (..., 3, H, W) or (..., 4, H, W), got {shape}")
    if bg.shape[-3] == 3:
        return blend(fg, bg, "over")
    check_layer(bg, "bg", 4)
    _check_pair(fg, bg)
    af, ab = fg[..., 3:4, :, :], bg[..., 3:4, :, :]
    wb = (1 - af) * ab
    a = af + wb
    premul = af * fg[..., :3, :, :] + wb * bg[..., :3, :, :]
    rgb = torch.where(a > 0, premul / torch.where(a > 0, a, torch.ones_like(a)), torch.zeros_like(premul))
    return torch.cat([rgb.clamp(0.0, 1.0), a.clamp(0.0, 1.0)], dim=-3)


def premultiply(rgba: Tensor) -> Tensor:
    """``(..., 4, H, W)`` straight alpha to premultiplied: ``rgb * alpha``, alpha unchanged."""
    check_layer(rgba, "rgba", 4)
    a = rgba[..., 3:4, :, :]
    return torch.cat([rgba[..., :3, :, :] * a, a], dim=-3)


def unpremultiply(rgba: Tensor, eps: float = 1e-6) -> Tensor:
    """``(..., 4, H, W)`` premultiplied to straight alpha: ``rgb / alpha`` where alpha > eps, else 0.

    The colour is clipped to [0, 1].
    """
    check_layer(rgba, "rgba", 4)
    eps = check_unit(eps, "eps")
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
    check_layer(background, "background", 3)
    if background.ndim not in (3, 4):
        raise ValueError(f"background must have shape (3, H, W) or (B, 3, H, W), got {tuple(background.shape)}")
    batched = background.ndim == 4
    if isinstance(layers, Tensor):
        want = "(B, N, 4, H, W)" if batched else "(N, 4, H, W)"
        if layers.ndim != background.ndim + 1 or layers.shape[-3] != 4 or \
                (batched and layers.shape[0] != background.shape[0]):
            raise ValueError(f"layers must have shape {want} for a background of shape "
                             f"{tuple(background.shape)}, got {tuple(layers.shape)}")
        check_layer(layers, "layers", 4)
        items = list(layers.unbind(1 if batched else 0))
    else:
        if batched:
            raise ValueError("with a batched background (B, 3, H, W), layers must be a tensor (B, N, 4, H, W)")
        items = list(layers)
        for i, x in enumerate(items):
            check_layer(x, f"layers[{i}]", 4)
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


def premultiplied_rgb(rgba: Tensor) -> Tensor:
    """``(..., 4, H, W)`` straight alpha → ``(..., 3, H, W)``: the layer's colour times its alpha,
    i.e. the layer composited over black."""
    return premultiply(rgba)[..., :3, :, :]


def checkerboard(size: int | tuple[int, int], square: int = 4, light: float = 0.8, dark: float = 0.6) -> Tensor:
    """The usual grey checkerboard that shows transparency: ``(3, H, W)``.

    Squares are ``square`` pixels wide; the top-left one is ``light``.
    """
    h, w = canvas_size(size)
    if isinstance(square, bool) or not isinstance(square, int) or square <= 0:
        raise ValueError(f"square must be a positive int, got {square!r}")
    light, dark = check_unit(light, "light"), check_unit(dark, "dark")
    iy = torch.arange(h).view(h, 1) // square
    ix = torch.arange(w).view(1, w) // square
    board = torch.where((iy + ix) % 2 == 0, light, dark).float()
    return board.expand(3, h, w).clone()
