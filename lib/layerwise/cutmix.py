"""CutMix (Yun, Han, Oh, Chun, Choe and Yoo, ICCV 2019, arXiv:1905.04899).

Cut a box out of each training image and paste in the same box from a partner image of the
batch; the label becomes the mixture of the two labels in proportion to the pixels each image
contributes (paper §3.1, eq. 1 and Algorithm 1):

1. draw ``λ ~ Beta(β, β)`` (β = 1: uniform) and a partner ``perm`` (a shuffle of the batch);
2. a box of height ``H·√(1 − λ)`` and width ``W·√(1 − λ)`` (so its area is a ``1 − λ``
   fraction of the image) centred at a uniformly random pixel, clipped to the image
   (:func:`rand_bbox`);
3. paste ``x[perm]``'s box into ``x`` (:func:`cutmix`);
4. set ``λ`` to the exact fraction of pixels left unpasted: clipping can make the box smaller;
5. train on ``λ·CE(y) + (1 − λ)·CE(y[perm])`` (:func:`layerwise.core.augment.mixed_cross_entropy`).

The paper applies it to a batch with probability ``cutmix_prob`` (0.5 on CIFAR, 1.0 on
ImageNet), one box for the whole batch: :class:`CutMix`. :func:`cutmix_per_sample` draws one
box and one λ per image instead (timm's "elem" mode, not in the paper), batched with masks.

The functions are deterministic given ``lam``, ``perm`` and the box centre; :class:`CutMix` and
:func:`sample_cutmix` draw them.
"""

from __future__ import annotations

import numpy as np
import torch

from layerwise.core.augment import (BatchAugment, MixedTarget, box_mask, check_images, check_labels,
                                     check_permutation)

__all__ = ["rand_bboxes", "rand_bbox", "unpasted_fraction", "cutmix", "cutmix_per_sample", "sample_cutmix",
           "CutMix"]


def _check_size(H: int, W: int) -> None:
    for name, v in (("H", H), ("W", W)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} (image {'height' if name == 'H' else 'width'}) must be an int >= 1, got {v!r}")


def _check_lam(lam) -> None:
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating, np.integer, torch.Tensor)):
        raise TypeError(f"lam must be a float or a tensor of floats in [0, 1], got {type(lam).__name__}")
    t = torch.as_tensor(lam)
    if t.dtype == torch.bool or not (t.is_floating_point() or t.dtype in (torch.int64, torch.int32)):
        raise TypeError(f"lam must be a float or a tensor of floats in [0, 1], got {lam!r}")
    if t.numel() and not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError(f"lam must be in [0, 1], got {lam}")


def _check_centers(H: int, W: int, centers: torch.Tensor) -> None:
    if centers.dtype not in (torch.int64, torch.int32) or centers.shape[-1:] != (2,):
        raise ValueError(f"center must hold integer (row, col) pixel coordinates, got {centers.tolist()}")
    rows, cols = centers[..., 0], centers[..., 1]
    if bool(((rows < 0) | (rows >= H) | (cols < 0) | (cols >= W)).any()):
        raise ValueError(f"center (row, col) must be a pixel of the {H}×{W} image: 0 <= row < {H}, 0 <= col < {W}; "
                         f"got {centers.tolist()}")


def rand_bboxes(H: int, W: int, lam: float | torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """The CutMix boxes (paper §3.1), vectorised: ``(..., 4)`` integer ``(y1, y2, x1, x2)``.

    lam: a float or a tensor ``(...)`` of values in [0, 1]; centers: integer ``(..., 2)``
    ``(row, col)`` pixels. The box has ``cut_h = ⌊H·√(1 − λ)⌋`` rows and ``cut_w = ⌊W·√(1 − λ)⌋``
    columns, starts at ``row − cut_h // 2`` and ``col − cut_w // 2``, and is clipped to the image:
    rows ``y1:y2``, columns ``x1:x2``. (The official code ends the box at ``row + cut_h // 2``,
    one pixel short when ``cut_h`` is odd; here an unclipped box has exactly ``cut_h`` rows.)
    """
    _check_size(H, W)
    _check_lam(lam)
    centers = torch.as_tensor(centers)
    _check_centers(H, W, centers)
    ratio = torch.sqrt(1.0 - torch.as_tensor(lam, dtype=torch.float64, device=centers.device))
    cut_h = torch.floor(H * ratio).long()                  # r_h = H √(1 − λ)
    cut_w = torch.floor(W * ratio).long()                  # r_w = W √(1 − λ)
    top = centers[..., 0].long() - cut_h // 2
    left = centers[..., 1].long() - cut_w // 2
    return torch.stack([top.clamp(0, H), (top + cut_h).clamp(0, H),
                        left.clamp(0, W), (left + cut_w).clamp(0, W)], -1)


def rand_bbox(H: int, W: int, lam: float, center: tuple[int, int]) -> tuple[int, int, int, int]:
    """The CutMix box for an ``H × W`` image (paper §3.1): ``(y1, y2, x1, x2)`` as Python ints,
    so that the box is ``x[..., y1:y2, x1:x2]``.

    lam in [0, 1]; center: ``(row, col)``, a pixel of the image (the paper draws it uniformly).
    The box has ``⌊H·√(1 − λ)⌋`` rows and ``⌊W·√(1 − λ)⌋`` columns, starting
    ``cut_h // 2`` rows above and ``cut_w // 2`` columns left of the centre, clipped to the image.
    See :func:`rand_bboxes` for the batched version.
    """
    if (not isinstance(center, (tuple, list, torch.Tensor)) or len(center) != 2
            or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) or
                       isinstance(c, torch.Tensor) and c.numel() == 1 and not c.is_floating_point() for c in center)):
        raise ValueError(f"center must be a (row, col) pair of ints, got {center!r}")
    if isinstance(lam, torch.Tensor) and lam.numel() != 1:
        raise ValueError(f"lam must be a single number, got a tensor of shape {tuple(lam.shape)}")
    y1, y2, x1, x2 = rand_bboxes(H, W, lam, torch.as_tensor([int(c) for c in center])).tolist()
    return y1, y2, x1, x2


def unpasted_fraction(H: int, W: int, boxes: torch.Tensor) -> torch.Tensor:
    """The corrected λ (Algorithm 1): the fraction of the ``H × W`` image outside each box,
    ``1 − (y2 − y1)(x2 − x1) / (H W)``. boxes: ``(..., 4)`` ``(y1, y2, x1, x2)``; returns ``(...)`` float64."""
    _check_size(H, W)
    boxes = torch.as_tensor(boxes)
    area = (boxes[..., 1] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 2])
    return 1.0 - area.double() / (H * W)


def _check_batch(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor) -> None:
    check_images(x)
    check_labels(y, x.shape[0])
    check_permutation(perm, x.shape[0])


def cutmix(x: torch.Tensor, y: torch.Tensor, lam: float, perm: torch.Tensor, center: tuple[int, int]
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """CutMix of a batch with one box (paper eq. 1, Algorithm 1).

    x: ``(B, C, H, W)``; y: ``(B,)`` labels; lam in [0, 1]; perm: ``(B,)`` a permutation (image
    i receives the box from image ``perm[i]``); center: ``(row, col)`` of the box.
    Returns ``(x_mix, y_a, y_b, lam_adjusted)``: ``x_mix`` is ``x`` with the box
    ``rand_bbox(H, W, lam, center)`` taken from ``x[perm]`` (a new tensor, ``x`` is unchanged),
    ``y_a = y``, ``y_b = y[perm]``, and ``lam_adjusted`` (a float) is the fraction of pixels
    that still come from ``x``.
    """
    _check_batch(x, y, perm)
    H, W = x.shape[-2:]
    y1, y2, x1, x2 = rand_bbox(H, W, lam, center)
    x_mix = x.clone()
    x_mix[:, :, y1:y2, x1:x2] = x[perm.to(x.device), :, y1:y2, x1:x2]
    lam_adjusted = 1.0 - (y2 - y1) * (x2 - x1) / (H * W)
    return x_mix, y, y[perm.to(y.device)], lam_adjusted


def cutmix_per_sample(x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor,
                      centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CutMix with one box and one λ per image, without a Python loop (timm's "elem" mode).

    x: ``(B, C, H, W)``; y: ``(B,)``; lam: ``(B,)``; perm: ``(B,)``; centers: ``(B, 2)``
    ``(row, col)``. Image i gets box :func:`rand_bboxes` ``(H, W, lam[i], centers[i])`` from
    image ``perm[i]``. Returns ``(x_mix, y_a, y_b, lam_adjusted: (B,) in x's dtype)``.
    """
    _check_batch(x, y, perm)
    b, _, H, W = x.shape
    lam, centers = torch.as_tensor(lam), torch.as_tensor(centers)
    if lam.shape != (b,) or centers.shape != (b, 2):
        raise ValueError(f"lam must be ({b},) and centers ({b}, 2); got {tuple(lam.shape)} and {tuple(centers.shape)}")
    boxes = rand_bboxes(H, W, lam, centers)
    mask = box_mask(H, W, boxes.to(x.device))
    x_mix = torch.where(mask, x[perm.to(x.device)], x)
    return x_mix, y, y[perm.to(y.device)], unpasted_fraction(H, W, boxes).to(x.device, x.dtype)


def sample_cutmix(batch: int, H: int, W: int, beta: float = 1.0, *, per_sample: bool = False,
                  rng: np.random.Generator | None = None) -> tuple[float | torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw CutMix's randomness: ``λ ~ Beta(β, β)``, a partner permutation and a uniform centre.

    Returns ``(lam, perm, center)``: a float, ``(batch,)`` and ``(2,)`` (one box for the batch,
    as in the paper), or with ``per_sample=True`` ``(batch,)``, ``(batch,)`` and ``(batch, 2)``.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    _check_size(H, W)
    rng = rng if rng is not None else np.random.default_rng()
    n = batch if per_sample else 1
    lam = rng.beta(beta, beta, size=n)
    centers = np.stack([rng.integers(0, H, n), rng.integers(0, W, n)], 1)
    perm = torch.from_numpy(rng.permutation(batch))
    if per_sample:
        return torch.from_numpy(lam), perm, torch.from_numpy(centers)
    return float(lam[0]), perm, torch.from_numpy(centers[0])


class CutMix(BatchAugment):
    """CutMix as a batch augmenter for ``core.train(..., augment=CutMix(...))``: with probability
    ``prob`` (the paper's ``cutmix_prob``) a batch is cut-mixed with ``λ ~ Beta(beta, beta)``;
    returns ``(x_mix, MixedTarget(y_a, y_b, λ_adjusted))``, else ``(x, y)``. ``per_sample=True``
    draws a box per image (:func:`cutmix_per_sample`)."""

    def __init__(self, beta: float = 1.0, prob: float = 0.5, per_sample: bool = False, seed: int = 0):
        super().__init__(prob, seed)
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta, self.per_sample = float(beta), bool(per_sample)

    def apply(self, x, y):
        b, _, h, w = x.shape
        lam, perm, center = sample_cutmix(b, h, w, self.beta, per_sample=self.per_sample, rng=self.rng)
        if self.per_sample:
            x_mix, y_a, y_b, lam = cutmix_per_sample(x, y, lam, perm.to(x.device), center)
        else:
            x_mix, y_a, y_b, lam = cutmix(x, y, lam, perm.to(x.device), tuple(center.tolist()))
        return x_mix, MixedTarget(y_a, y_b, lam)

    def __repr__(self) -> str:
        return f"CutMix(beta={self.beta}, prob={self.prob}, per_sample={self.per_sample})"
