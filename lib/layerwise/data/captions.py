"""Synthetic captioned scenes: coloured shapes at grid positions, with template captions.

A scene is a ``size × size`` image cut into a ``grid × grid`` board of cells (3 × 3 by
default); one or two objects (a coloured shape from :data:`CAPTION_SHAPES` in a colour from
:data:`COLORS`) sit in distinct cells, jittered a little inside them, over a dark noisy
background. Each scene comes with

- its caption, e.g. ``"a red circle at top-left and a blue square at centre"`` (objects in
  reading order of their cells; every word is one token of :data:`VOCAB`);
- its attributes ``(n, MAX_OBJECTS, 3)`` long tensor of (colour, shape, cell) indices, ``-1``
  for a missing second object;
- the objects' coverage masks ``(n, MAX_OBJECTS, H, W)`` (zeros for a missing object), for
  pointing games.

Rendering reuses :func:`layerwise.data.shapes.sprite` and :func:`~layerwise.data.rgba.alpha_over`;
everything is vectorised over the batch and seeded (the same seed gives identical scenes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from layerwise.data.rgba import alpha_over
from layerwise.data.shapes import sprite

__all__ = ["COLORS", "COLOR_RGB", "CAPTION_SHAPES", "POSITIONS", "MAX_OBJECTS", "VOCAB", "SPECIALS",
           "CaptionedScenes", "captioned_scenes", "caption_of", "random_captions", "parse_caption",
           "attribute_accuracy"]

COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")
COLOR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.15, 0.12), "green": (0.15, 0.8, 0.2), "blue": (0.2, 0.35, 0.95), "yellow": (0.95, 0.85, 0.15)}
CAPTION_SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Cell names of the 3 × 3 board in reading order (row-major): one word each.
POSITIONS: tuple[str, ...] = ("top-left", "top", "top-right", "left", "centre", "right",
                              "bottom-left", "bottom", "bottom-right")
MAX_OBJECTS = 2
SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>")
#: Every word a caption can use, after the special tokens: token id = index in this tuple.
VOCAB: tuple[str, ...] = SPECIALS + ("a", "at", "and") + COLORS + CAPTION_SHAPES + POSITIONS
_GRID = 3


@dataclass
class CaptionedScenes:
    """A batch of captioned scenes.

    images: ``(n, 3, H, W)`` in [0, 1]; captions: n strings; attributes: ``(n, 2, 3)`` long
    (colour, shape, cell) per object, ``-1`` where a scene has one object; masks:
    ``(n, 2, H, W)`` each object's coverage in [0, 1].
    """

    images: Tensor
    captions: list[str]
    attributes: Tensor
    masks: Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, idx) -> "CaptionedScenes":
        idx = torch.as_tensor(idx) if not isinstance(idx, slice) else idx
        caps = self.captions[idx] if isinstance(idx, slice) else [self.captions[int(i)] for i in idx.reshape(-1)]
        return CaptionedScenes(self.images[idx], caps, self.attributes[idx], self.masks[idx])

    @property
    def num_objects(self) -> Tensor:
        """``(n,)`` how many objects each scene holds."""
        return (self.attributes[:, :, 0] >= 0).sum(1)


def caption_of(attributes: Tensor) -> str:
    """The caption of one scene from its ``(2, 3)`` (colour, shape, cell) rows (``-1`` rows skipped)."""
    parts = [f"a {COLORS[c]} {CAPTION_SHAPES[s]} at {POSITIONS[p]}" for c, s, p in attributes.tolist() if c >= 0]
    return " and ".join(parts)


def _check_n(n: int, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be an int >= 1, got {n!r}")
    return n


def _draw_attributes(n: int, g: torch.Generator, two_prob: float) -> Tensor:
    """``(n, 2, 3)`` attributes: distinct cells in reading order, distinct (colour, shape) pairs."""
    cells = torch.rand(n, _GRID * _GRID, generator=g).argsort(1)[:, :MAX_OBJECTS].sort(1).values
    colors = torch.randint(0, len(COLORS), (n, MAX_OBJECTS), generator=g)
    shapes = torch.randint(0, len(CAPTION_SHAPES), (n, MAX_OBJECTS), generator=g)
    same = (colors[:, 0] == colors[:, 1]) & (shapes[:, 0] == shapes[:, 1])
    colors[:, 1] = torch.where(same, (colors[:, 1] + 1) % len(COLORS), colors[:, 1])   # two different objects
    attrs = torch.stack([colors, shapes, cells], dim=-1)
    two = torch.rand(n, generator=g) < two_prob
    attrs[~two, 1] = -1
    return attrs


def random_captions(n: int, *, seed: int = 0, two_prob: float = 0.5) -> list[str]:
    """``n`` captions from the same distribution as :func:`captioned_scenes` (no images drawn):
    the language model's training corpus."""
    _check_n(n)
    return [caption_of(a) for a in _draw_attributes(n, torch.Generator().manual_seed(seed), two_prob)]


def captioned_scenes(n: int, size: int = 24, *, seed: int = 0, two_prob: float = 0.5,
                     radius: tuple[float, float] = (0.34, 0.46), jitter: float = 0.12) -> CaptionedScenes:
    """``n`` seeded scenes of one or two coloured shapes on a 3 × 3 board, with captions.

    size: image side in pixels (a multiple of 3 keeps cells aligned with pixels). two_prob:
    share of scenes with two objects. radius: circumradius range as a fraction of the cell
    side. jitter: how far (fraction of the cell side) a shape's centre may move from its
    cell's centre. Colours vary a little around :data:`COLOR_RGB`; the background is a dark
    grey of random brightness with faint pixel noise.
    """
    _check_n(n)
    if isinstance(size, bool) or not isinstance(size, int) or size < 9:
        raise ValueError(f"size must be an int >= 9, got {size!r}")
    if not 0.0 <= float(two_prob) <= 1.0:
        raise ValueError(f"two_prob must be in [0, 1], got {two_prob}")
    g = torch.Generator().manual_seed(seed)
    attrs = _draw_attributes(n, g, two_prob)
    cell = size / _GRID
    base = torch.tensor([COLOR_RGB[c] for c in COLORS])
    bg = 0.08 + 0.17 * torch.rand(n, 1, 1, 1, generator=g)
    images = (bg + 0.03 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    masks = torch.zeros(n, MAX_OBJECTS, size, size)
    for k in range(MAX_OBJECTS):          # two passes over the batch, vectorised inside each
        present = attrs[:, k, 0] >= 0
        idx = present.nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        a = attrs[idx, k]
        m = idx.numel()
        row, col = (a[:, 2] // _GRID).float(), (a[:, 2] % _GRID).float()
        center = torch.stack([row, col], 1) * cell + cell / 2 + (torch.rand(m, 2, generator=g) * 2 - 1) * jitter * cell
        r = (radius[0] + (radius[1] - radius[0]) * torch.rand(m, generator=g)) * cell
        color = (base[a[:, 0]] + 0.08 * (torch.rand(m, 3, generator=g) * 2 - 1)).clamp(0, 1)
        angle = (torch.rand(m, generator=g) * 2 - 1) * 0.25
        rgba = sprite([CAPTION_SHAPES[s] for s in a[:, 1].tolist()], size, color=color, center=center,
                      radius=r, angle=angle)
        images[idx] = alpha_over(rgba, images[idx])
        masks[idx, k] = rgba[:, 3]
    return CaptionedScenes(images, [caption_of(a) for a in attrs], attrs, masks)


def parse_caption(text: str) -> list[tuple[int, int, int]]:
    """The (colour, shape, cell) triples a caption states, ``-1`` for a word it lacks or garbles.

    Reads ``"a <colour> <shape> at <position>"`` phrases separated by ``"and"``; extra or
    unknown words are ignored, so a generated caption is scored attribute by attribute.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    out = []
    for phrase in text.split(" and "):
        words = phrase.split()
        c = next((COLORS.index(w) for w in words if w in COLORS), -1)
        s = next((CAPTION_SHAPES.index(w) for w in words if w in CAPTION_SHAPES), -1)
        p = next((POSITIONS.index(w) for w in words if w in POSITIONS), -1)
        if (c, s, p) != (-1, -1, -1):
            out.append((c, s, p))
    return out


def attribute_accuracy(texts: list[str], attributes: Tensor) -> dict[str, float]:
    """How often generated captions state each true attribute: ``{"colour", "shape", "position"}``.

    The k-th phrase of ``texts[i]`` (see :func:`parse_caption`) is compared with the k-th true
    object of ``attributes[i]`` (``(n, 2, 3)``); a missing phrase counts as wrong. Each value is
    the share of true objects whose attribute the caption got right; ``"objects"`` is the share
    of scenes whose caption names the right number of objects.
    """
    if len(texts) != attributes.shape[0]:
        raise ValueError(f"texts ({len(texts)}) and attributes ({attributes.shape[0]}) must have the same length")
    right, total, count_ok = [0, 0, 0], 0, 0
    for text, attrs in zip(texts, attributes.tolist()):
        truth = [a for a in attrs if a[0] >= 0]
        said = parse_caption(text)
        count_ok += len(said) == len(truth)
        for k, t in enumerate(truth):
            total += 1
            if k < len(said):
                right = [r + int(said[k][j] == t[j]) for j, r in enumerate(right)]
    acc = [r / max(total, 1) for r in right]
    return {"colour": acc[0], "shape": acc[1], "position": acc[2], "objects": count_ok / max(len(texts), 1)}
