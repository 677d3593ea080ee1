"""Multi-Sample Dropout (Inoue, 2019, arXiv:1905.09788).

The trunk computes features ``h`` once; the head is applied to ``M`` differently-dropped copies
of ``h``; the training loss is the mean of the ``M`` per-sample cross-entropies (paper §2, Fig. 1).
At inference dropout is off, so all samples agree and one head evaluation suffices.

Here the ``M`` samples are evaluated in one batched call of the head on an ``(M, B, D)`` tensor,
not in a Python loop, so the cost of extra samples is one larger matrix multiply.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["dropout_masks", "sample_dropout_masks", "msd_logits", "msd_loss", "ce_of_mean_logits",
           "MultiSampleDropout"]


def _check_p(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"p must be a float in [0, 1), got {type(p).__name__}")
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"p (the drop probability) must be in [0, 1), got {p}")
    return float(p)


def dropout_masks(u: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted-dropout multipliers from uniform noise ``u`` (any shape, values in [0, 1)).

    An entry is kept where ``u >= p`` and then scaled by ``1 / (1 - p)`` so that the expected
    value of ``mask * h`` is ``h``; dropped entries are 0. Returns a tensor shaped and typed
    like ``u``.
    """
    p = _check_p(p)
    if not isinstance(u, torch.Tensor):
        raise TypeError(f"u must be a torch.Tensor, got {type(u).__name__}")
    if not u.is_floating_point():
        raise TypeError(f"u must be a floating-point tensor, got dtype {u.dtype}")
    return (u >= p).to(u.dtype) / (1.0 - p)


def sample_dropout_masks(num_samples: int, shape: tuple[int, ...] | torch.Size, p: float, *,
                         generator: torch.Generator | None = None, device: torch.device | str | None = None,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``num_samples`` independent inverted-dropout masks of ``shape``: ``(M, *shape)``."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples (M) must be an int >= 1, got {num_samples!r}")
    _check_p(p)
    # the noise is drawn where the generator lives, then moved to ``device``
    u = torch.rand((num_samples, *shape), generator=generator, dtype=dtype,
                   device=generator.device if generator is not None else device)
    masks = dropout_masks(u, p)
    return masks if device is None else masks.to(device)


def msd_logits(h: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor],
               masks: torch.Tensor) -> torch.Tensor:
    """Logits of every dropout sample, in one batched call of ``head`` (paper Fig. 1).

    h: ``(B, D)`` features; head: maps ``(..., D)`` to ``(..., C)`` (e.g. ``nn.Linear``);
    masks: ``(M, B, D)`` inverted-dropout multipliers. Returns ``(M, B, C)`` with
    ``out[m] = head(masks[m] * h)``.
    """
    if not isinstance(h, torch.Tensor) or h.dim() != 2:
        raise ValueError(f"h must be a (B, D) tensor, got {getattr(h, 'shape', type(h).__name__)}")
    if not isinstance(masks, torch.Tensor) or masks.dim() != 3:
        raise ValueError(f"masks must be an (M, B, D) tensor, got {getattr(masks, 'shape', type(masks).__name__)}")
    if masks.shape[1:] != h.shape:
        raise ValueError(f"masks has shape {tuple(masks.shape)} but h is {tuple(h.shape)}: "
                         "expected masks of shape (M, B, D) matching h")
    if not callable(head):
        raise TypeError("head must be callable (an nn.Module mapping (..., D) to (..., C))")
    return head(masks * h.unsqueeze(0))


def msd_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Multi-sample dropout loss: the mean over samples of each sample's cross-entropy.

    logits: ``(M, B, C)`` (or ``(B, C)``, treated as M = 1); y: ``(B,)`` class indices.
    Returns a scalar: ``mean_m CE(logits[m], y)``, each CE averaged over the batch.
    This is not the cross-entropy of the averaged logits (see :func:`ce_of_mean_logits`).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() not in (2, 3):
        raise ValueError(f"logits must be (M, B, C) or (B, C), got {getattr(logits, 'shape', type(logits).__name__)}")
    if logits.dim() == 2:
        logits = logits.unsqueeze(0)
    m, b, c = logits.shape
    if not isinstance(y, torch.Tensor) or y.shape != (b,):
        raise ValueError(f"y must be a ({b},) tensor of class indices to match logits {tuple(logits.shape)}, "
                         f"got {getattr(y, 'shape', type(y).__name__)}")
    # Every sample-row pair weighs the same, so one CE over the flattened (M*B) rows is the mean
    # over m of the per-sample batch means.
    return F.cross_entropy(logits.reshape(m * b, c), y.repeat(m))


def ce_of_mean_logits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the logits averaged over samples: a common *mistake* when implementing
    multi-sample dropout, kept here for comparison. By Jensen's inequality it is never larger
    than :func:`msd_loss`; the two agree when all samples are identical (p = 0)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(f"logits must be (M, B, C), got {getattr(logits, 'shape', type(logits).__name__)}")
    return F.cross_entropy(logits.mean(0), y)


class MultiSampleDropout(nn.Module):
    """A classifier head with multi-sample dropout.

    Training: ``forward(h: (B, D))`` returns ``(M, B, C)`` logits, one slice per dropout sample
    (train it with :func:`msd_loss`). Evaluation (``.eval()``) or ``p = 0`` with M = 1: returns
    ``head(h)`` of shape ``(B, C)`` — dropout is off at inference.
    """

    def __init__(self, head: nn.Module, num_samples: int = 8, p: float = 0.5):
        super().__init__()
        if not isinstance(head, nn.Module):
            raise TypeError(f"head must be an nn.Module, got {type(head).__name__}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples (M) must be an int >= 1, got {num_samples!r}")
        self.head = head
        self.num_samples = num_samples
        self.p = _check_p(p)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.head(h)
        if not isinstance(h, torch.Tensor) or h.dim() != 2:
            raise ValueError(f"h must be a (B, D) tensor, got {getattr(h, 'shape', type(h).__name__)}")
        masks = sample_dropout_masks(self.num_samples, h.shape, self.p, device=h.device, dtype=h.dtype)
        return msd_logits(h, self.head, masks)

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, p={self.p}"
