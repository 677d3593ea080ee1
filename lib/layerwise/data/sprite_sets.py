"""Ready-made sets of sprites the zoo's models learn (built on :mod:`~layerwise.data.shapes`)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["labelled_sprites", "rgba_sprites", "primer_sprites", "sprite_layers", "PRIMER_SPRITES"]


def rgba_sprites(n: int, size: int = 32, *, seed: int = 0, shapes: tuple[str, ...] | None = None,
                 glass_prob: float = 0.3, **sprite_kwargs) -> tuple[Tensor, Tensor]:
    """(rgba (n, 4, H, W) straight alpha, labels (n,) = index of the shape in ``shapes``), shuffled.

    ``sprite_kwargs`` (``radius``, ``centered``) go to :func:`~layerwise.data.shapes.sprites`."""
    from layerwise.data.shapes import SHAPES, sprites

    shapes = tuple(shapes or SHAPES)
    if n < len(shapes):
        raise ValueError(f"n must be ≥ the number of shapes ({len(shapes)}), got {n}")
    counts = [n // len(shapes) + (i < n % len(shapes)) for i in range(len(shapes))]
    parts = [sprites(c, size, seed=seed * 1000 + i, shapes=(s,), glass_prob=glass_prob, **sprite_kwargs)
             for i, (s, c) in enumerate(zip(shapes, counts))]
    labels = torch.cat([torch.full((c,), i, dtype=torch.long) for i, c in enumerate(counts)])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return torch.cat(parts)[perm], labels[perm]


def labelled_sprites(n: int, size: int = 16, *, seed: int = 0, background: float = 0.5,
                     shapes: tuple[str, ...] | None = None, glass_prob: float = 0.0,
                     **sprite_kwargs) -> tuple[Tensor, Tensor]:
    """(images (n, 3, H, W) in [0, 1]: one sprite over a flat grey ``background``, labels (n,))."""
    from layerwise.data.rgba import blend

    rgba, labels = rgba_sprites(n, size, seed=seed, shapes=shapes, glass_prob=glass_prob, **sprite_kwargs)
    bg = torch.full((n, 3, rgba.shape[-2], rgba.shape[-1]), float(background))
    return blend(rgba, bg, "over"), labels


#: What the diffusion primer's sprites are (``sprite_dit16`` learns them): 16×16, centred,
#: radius 0.3–0.45 of the side, one per image over flat grey.
PRIMER_SPRITES = dict(size=16, sprites=dict(centered=True, radius=[0.3, 0.45]))


def primer_sprites(n: int, seed: int, *, size: int = PRIMER_SPRITES["size"],
                   **sprite_kwargs) -> tuple[Tensor, Tensor]:
    """(images (n, 3, size, size) in [0, 1], shape labels (n,)): centred sprites over grey, the
    distribution of the diffusion primer (``sprite_dit16``); ``sprite_kwargs`` override
    :data:`PRIMER_SPRITES` (e.g. ``radius`` for the shape classifier's wider range)."""
    return labelled_sprites(n, size, seed=seed, **{**PRIMER_SPRITES["sprites"], **sprite_kwargs})


def sprite_layers(n: int, seed: int, size: int = 32, glass_share: float = 0.5) -> tuple[Tensor, Tensor]:
    """(rgba (n, 4, size, size) straight alpha, shape labels (n,)): chapter 11's layers.

    A share ``glass_share`` are glass sprites; the others are flat sprites, half of them faded
    to an opacity in [0.3, 0.9]. Every sprite's colour is darkened by a factor in [0.35, 1]. So
    a dark opaque sprite and a faint bright one can have the same premultiplied image: alpha is
    ambiguous in the RGB the frozen VAE sees, as it is for real layers (dark vs transparent).
    Seeded: the same ``seed`` gives the same layers.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    n_glass = round(n * glass_share)
    parts = []
    for count, prob, offset in ((n - n_glass, 0.0, 0), (n_glass, 1.0, 500)):   # flat sprites, glass sprites
        if count:
            rgba, labels = rgba_sprites(max(count, 6), size, seed=seed + offset, glass_prob=prob)
            parts.append((rgba[:count], labels[:count]))
    rgba, labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 3, generator=g)
    fade = torch.where(u[:, 0] < 0.5, 0.3 + 0.6 * u[:, 1], torch.ones(n))
    fade[n - n_glass:] = 1.0                                        # glass keeps its own opacity
    rgba[:, 3] *= fade.view(n, 1, 1)
    rgba[:, :3] *= (0.35 + 0.65 * u[:, 2]).view(n, 1, 1, 1)
    perm = torch.randperm(n, generator=g)
    return rgba[perm], labels[perm]
