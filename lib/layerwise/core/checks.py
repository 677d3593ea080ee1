"""Argument checks shared by the paper modules: clear errors that name the argument."""

from __future__ import annotations

from typing import Any

import torch


def float_tensor(x: Any, name: str, ndim: int, what: str) -> torch.Tensor:
    """Return ``x`` if it is a floating-point ``torch.Tensor`` with ``ndim`` dimensions.

    Otherwise raise ``TypeError`` (not a tensor, not floating point) or ``ValueError`` (wrong number
    of dimensions), naming ``name`` and describing the expected value with ``what`` (e.g.
    ``"(B, C, H, W)"``).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {what}, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor {what}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x
