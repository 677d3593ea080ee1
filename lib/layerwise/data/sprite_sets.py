"""Ready-made training sets of sprites for the diffusion models (built on :mod:`layers`)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["labelled_sprites", "rgba_sprites"]


def rgba_sprites(n: int, size: int = 32, *, seed: int = 0, shapes: tuple[str, ...] | None = None,
                 glass_prob: float = 0.3, **sprite_kwargs) -> tuple[Tensor, Tensor]:
    """(rgba (n, 4, H, W) straight alpha, labels (n,) = index of the shape in ``shapes``), shuffled.

    ``sprite_kwargs`` (``radius``, ``centered``) go to :func:`~layerwise.data.layers.sprites`."""
    from layerwise.data.layers import SHAPES, sprites

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
    from layerwise.data.layers import blend

    rgba, labels = rgba_sprites(n, size, seed=seed, shapes=shapes, glass_prob=glass_prob, **sprite_kwargs)
    bg = torch.full((n, 3, rgba.shape[-2], rgba.shape[-1]), float(background))
    return blend(rgba, bg, "over"), labels
