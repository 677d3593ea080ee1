"""Mixing and occlusion augmentations shared by chapters, and the loss for two-label targets.

- :func:`mixup` (Zhang et al., 2018): blend each image with a partner,
  ``x̃ = λ x + (1 − λ) x[perm]``; the target is the pair of labels weighted ``λ`` and ``1 − λ``.
- :func:`cutout` (DeVries & Taylor, 2017): zero a square of fixed side around a random pixel
  of each image (the square is clipped at the border); the label is unchanged.
- :func:`occlude`: the test-time corruption of the CutMix chapter, a square that lies fully
  inside each image.
- :class:`MixedTarget` and :func:`mixed_cross_entropy`: ``λ·CE(y_a) + (1 − λ)·CE(y_b)``, with
  one ``λ`` for the batch or one per example; plain integer labels give plain cross-entropy.
- :class:`Mixup` and :class:`Cutout`: callables ``(x, y) -> (x, target)`` that draw their
  randomness from a seeded generator, for ``core.train(..., augment=...)``.

The functions are deterministic given their arguments (``lam``, ``perm``, centres are passed
in); only the augmenter classes draw random numbers.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from layerwise.core.checks import float_tensor

__all__ = ["MixedTarget", "mixed_cross_entropy", "mixup", "box_mask", "square_boxes", "cutout", "occlude",
           "occlusion_sensitivity", "BatchAugment", "Mixup", "Cutout"]


class MixedTarget(NamedTuple):
    """Two labels per example and the weight of the first: the target of Mixup and CutMix.

    y_a, y_b: ``(B,)`` class indices; lam: a float (one weight for the batch) or a ``(B,)``
    tensor (one per example).
    """

    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float | torch.Tensor


def check_images(x: torch.Tensor, name: str = "x") -> None:
    float_tensor(x, name, 4, "of images (B, C, H, W)")


def _check_lam(lam: float) -> float:
    if isinstance(lam, torch.Tensor) and lam.numel() == 1:
        lam = lam.item()
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating)):
        raise TypeError(f"lam must be a float in [0, 1], got {type(lam).__name__}")
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    return float(lam)


def check_permutation(perm: torch.Tensor, batch: int) -> None:
    if not isinstance(perm, torch.Tensor) or perm.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"perm must be an integer tensor (a permutation of range({batch})), "
                        f"got {getattr(perm, 'dtype', type(perm).__name__)}")
    if perm.shape != (batch,) or not torch.equal(perm.sort().values.cpu(), torch.arange(batch, dtype=perm.dtype)):
        raise ValueError(f"perm must be a permutation of range({batch}) with shape ({batch},), "
                         f"got shape {tuple(perm.shape)}")


def check_labels(y: torch.Tensor, batch: int) -> None:
    if not isinstance(y, torch.Tensor) or y.dim() < 1 or y.shape[0] != batch:
        raise ValueError(f"y must be a tensor with {batch} rows (one label per image), "
                         f"got {getattr(y, 'shape', type(y).__name__)}")


# ----------------------------------------------------------------------------- the loss

def mixed_cross_entropy(logits: torch.Tensor, target: torch.Tensor | MixedTarget) -> torch.Tensor:
    """Cross-entropy against a two-label target: ``λ·CE(logits, y_a) + (1 − λ)·CE(logits, y_b)``.

    logits: ``(B, C)``; target: ``(B,)`` class indices (plain cross-entropy) or a
    :class:`MixedTarget`. With a per-example ``lam: (B,)`` the batch mean is taken of
    ``lam_i·CE_i(y_a) + (1 − lam_i)·CE_i(y_b)``. Returns a scalar.

    Because cross-entropy is linear in the target distribution, this equals the cross-entropy
    with the soft label ``λ·onehot(y_a) + (1 − λ)·onehot(y_b)`` (CutMix eq. 1 and Alg. 1).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"logits must be (B, C), got {getattr(logits, 'shape', type(logits).__name__)}")
    if isinstance(target, torch.Tensor):
        return F.cross_entropy(logits, target)
    if not isinstance(target, MixedTarget):
        raise TypeError(f"target must be a tensor of labels or a MixedTarget, got {type(target).__name__}")
    y_a, y_b, lam = target
    if isinstance(lam, torch.Tensor) and lam.dim() == 1:
        if lam.shape != (logits.shape[0],):
            raise ValueError(f"a per-example lam must have shape ({logits.shape[0]},), got {tuple(lam.shape)}")
        ce_a = F.cross_entropy(logits, y_a, reduction="none")
        ce_b = F.cross_entropy(logits, y_b, reduction="none")
        lam = lam.to(ce_a.dtype)
        return (lam * ce_a + (1.0 - lam) * ce_b).mean()
    lam = _check_lam(lam)
    return lam * F.cross_entropy(logits, y_a) + (1.0 - lam) * F.cross_entropy(logits, y_b)


# ----------------------------------------------------------------------------- Mixup

def mixup(x: torch.Tensor, y: torch.Tensor, lam: float, perm: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al., 2018, eq. 1): ``x̃ = λ·x + (1 − λ)·x[perm]``.

    x: ``(B, ...)`` floating point; y: ``(B,)`` labels; lam in [0, 1]; perm: ``(B,)`` a
    permutation (example i is mixed with example ``perm[i]``). Returns
    ``(x_mix, y_a, y_b, lam)`` with ``y_a = y`` and ``y_b = y[perm]``: train on
    ``mixed_cross_entropy(model(x_mix), MixedTarget(y_a, y_b, lam))``.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError(f"x must be a floating-point tensor (B, ...), got {getattr(x, 'dtype', type(x).__name__)}")
    lam = _check_lam(lam)
    check_permutation(perm, x.shape[0])
    check_labels(y, x.shape[0])
    perm = perm.to(x.device)
    return lam * x + (1.0 - lam) * x[perm], y, y[perm.to(y.device)], lam


# ----------------------------------------------------------------------------- boxes, Cutout, occlusion

def box_mask(H: int, W: int, boxes: torch.Tensor) -> torch.Tensor:
    """Boolean masks of axis-aligned boxes: ``(B, 1, H, W)``, True inside box i of image i.

    boxes: ``(B, 4)`` integer ``(y1, y2, x1, x2)`` (rows ``y1:y2``, columns ``x1:x2``, already
    clipped to the image). Built by broadcasting, without a loop over the batch.
    """
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be a (B, 4) tensor of (y1, y2, x1, x2), got {getattr(boxes, 'shape', boxes)}")
    rows = torch.arange(H, device=boxes.device).view(1, H, 1)
    cols = torch.arange(W, device=boxes.device).view(1, 1, W)
    y1, y2, x1, x2 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    inside = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
    return inside.unsqueeze(1)


def square_boxes(H: int, W: int, size: int, centers: torch.Tensor) -> torch.Tensor:
    """Squares of side ``size`` around ``centers: (B, 2)`` integer ``(row, col)``, clipped to the
    ``H × W`` image, as ``(B, 4)`` boxes ``(y1, y2, x1, x2)`` with ``y1 = row − size // 2`` before clipping."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be an int >= 0, got {size!r}")
    if not isinstance(centers, torch.Tensor) or centers.dim() != 2 or centers.shape[1] != 2:
        raise ValueError(f"centers must be a (B, 2) tensor of (row, col), got {getattr(centers, 'shape', centers)}")
    top, left = centers[:, 0] - size // 2, centers[:, 1] - size // 2
    return torch.stack([top.clamp(0, H), (top + size).clamp(0, H), left.clamp(0, W), (left + size).clamp(0, W)], 1)


def cutout(x: torch.Tensor, size: int, centers: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """Cutout (DeVries & Taylor, 2017): set a ``size × size`` square of image i around
    ``centers[i]`` to ``value``. The centre may lie anywhere in the image, so the square may be
    clipped (the original's choice). x: ``(B, C, H, W)``; centers: ``(B, 2)`` integer
    ``(row, col)``. Returns a new tensor; ``x`` is unchanged."""
    check_images(x)
    if centers.shape[:1] != x.shape[:1]:
        raise ValueError(f"centers must have one (row, col) per image: expected ({x.shape[0]}, 2), "
                         f"got {tuple(centers.shape)}")
    mask = box_mask(x.shape[2], x.shape[3], square_boxes(x.shape[2], x.shape[3], size, centers.to(x.device)))
    return x.masked_fill(mask, value)


def occlude(x: torch.Tensor, size: int, generator: torch.Generator | None = None,
            value: float = 0.0) -> torch.Tensor:
    """Random occlusion for evaluation: in each image a ``size × size`` square that lies fully
    inside the image (top-left corner uniform) is set to ``value``. x: ``(B, C, H, W)``."""
    check_images(x)
    b, _, h, w = x.shape
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= min(h, w):
        raise ValueError(f"size must be an int in [0, {min(h, w)}], got {size!r}")
    top = torch.randint(0, h - size + 1, (b,), generator=generator)
    left = torch.randint(0, w - size + 1, (b,), generator=generator)
    centers = torch.stack([top + size // 2, left + size // 2], 1)
    return cutout(x, size, centers, value)


@torch.no_grad()
def occlusion_sensitivity(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, size: int = 2,
                          stride: int = 1, value: float = 0.0, batch_size: int = 4096) -> torch.Tensor:
    """Where the model looks (Zeiler & Fergus, 2014): the drop in the probability of class ``y``
    when a ``size × size`` square centred at a pixel is set to ``value``.

    x: ``(B, C, H, W)``; y: ``(B,)``. Squares are centred at every ``stride``-th row and column.
    Returns ``(B, ⌈H/stride⌉, ⌈W/stride⌉)``: ``p(y | x) − p(y | x occluded there)``. The occluded
    copies go through the model in chunks of about ``batch_size`` images.
    """
    check_images(x)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    was_training = model.training
    model.eval()
    b, _, h, w = x.shape
    rows, cols = torch.arange(0, h, stride), torch.arange(0, w, stride)
    positions = torch.cartesian_prod(rows, cols).to(x.device)             # (P, 2), row-major
    base = model(x).softmax(-1).gather(1, y.view(-1, 1)).squeeze(1)      # (B,)
    drops = []
    chunk = max(1, batch_size // b)
    for k in range(0, len(positions), chunk):
        pos = positions[k:k + chunk]                                      # (p, 2)
        n = len(pos)
        occluded = cutout(x.repeat(n, 1, 1, 1), size, pos.repeat_interleave(b, 0), value)   # (p·B, C, H, W)
        p = model(occluded).softmax(-1).gather(1, y.repeat(n).view(-1, 1)).view(n, b)
        drops.append(base.unsqueeze(0) - p)
    model.train(was_training)
    return torch.cat(drops).T.reshape(b, len(rows), len(cols))


# ----------------------------------------------------------------------------- augmenters for the training loop

class BatchAugment:
    """Base of the batch augmenters: ``aug(x, y) -> (x_aug, target)``, applied with probability
    ``prob`` per batch (else ``(x, y)`` unchanged). Randomness comes from a NumPy generator
    seeded with ``seed``, so a run is reproducible."""

    def __init__(self, prob: float = 1.0, seed: int = 0):
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be a float in [0, 1], got {prob!r}")
        self.prob = float(prob)
        self.rng = np.random.default_rng(seed)

    def perm(self, batch: int, device: torch.device) -> torch.Tensor:
        """A random permutation of the batch: each example's partner."""
        return torch.from_numpy(self.rng.permutation(batch)).to(device)

    def apply(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | MixedTarget]:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | MixedTarget]:
        if self.prob < 1.0 and self.rng.random() >= self.prob:
            return x, y
        return self.apply(x, y)


class Mixup(BatchAugment):
    """Mixup with ``λ ~ Beta(alpha, alpha)`` and a random partner per example; target :class:`MixedTarget`."""

    def __init__(self, alpha: float = 1.0, prob: float = 1.0, seed: int = 0):
        super().__init__(prob, seed)
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def apply(self, x, y):
        x_mix, y_a, y_b, lam = mixup(x, y, float(self.rng.beta(self.alpha, self.alpha)), self.perm(len(x), x.device))
        return x_mix, MixedTarget(y_a, y_b, lam)

    def __repr__(self) -> str:
        return f"Mixup(alpha={self.alpha}, prob={self.prob})"


class Cutout(BatchAugment):
    """Cutout of a ``size × size`` square around a uniformly random pixel of each image; the
    target stays the plain label."""

    def __init__(self, size: int, prob: float = 1.0, seed: int = 0):
        super().__init__(prob, seed)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        self.size = size

    def apply(self, x, y):
        b, _, h, w = x.shape
        centers = torch.from_numpy(np.stack([self.rng.integers(0, h, b), self.rng.integers(0, w, b)], 1))
        return cutout(x, self.size, centers.to(x.device)), y

    def __repr__(self) -> str:
        return f"Cutout(size={self.size}, prob={self.prob})"
