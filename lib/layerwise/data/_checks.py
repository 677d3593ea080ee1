"""Argument checks shared by the data modules: clear errors that name the argument."""

from __future__ import annotations

import math
import operator
from typing import Sequence

import torch
from torch import Tensor


def canvas_size(size: int | Sequence[int], name: str = "size") -> tuple[int, int]:
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


def as_generator(generator: torch.Generator | int, name: str = "generator") -> torch.Generator:
    """A CPU ``torch.Generator``: ``generator`` itself, or a fresh one seeded with the int."""
    if isinstance(generator, torch.Generator):
        if generator.device.type != "cpu":
            raise ValueError(f"{name} must be a CPU torch.Generator, got one on {generator.device}")
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"{name} must be a torch.Generator or an int seed, got {type(generator).__name__}")


def check_name(value: str, allowed: tuple[str, ...], name: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")
    return value


def check_names(values: Sequence[str] | str, allowed: tuple[str, ...], name: str) -> tuple[str, ...]:
    """A non-empty sequence of names, each one of ``allowed``."""
    values = (values,) if isinstance(values, str) else tuple(values)
    if not values:
        raise ValueError(f"{name} must not be empty; expected names from {allowed}")
    for v in values:
        check_name(v, allowed, name)
    return values


def check_layer(x: Tensor, name: str, channels: int) -> Tensor:
    """``x`` must be a floating tensor shaped ``(..., channels, H, W)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 3 or x.shape[-3] != channels:
        raise ValueError(f"{name} must have shape (..., {channels}, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_unit(value: float, name: str, *, low: float = 0.0, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not low <= float(value) <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return float(value)


def check_positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not float(value) > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive number, got {value}")
    return float(value)


def value_range(value: float | Sequence[float], name: str, low: float, high: float) -> tuple[float, float]:
    """``value`` or ``(lo, hi)`` as a range ``low < lo <= hi <= high``."""
    pair = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in pair):
        raise ValueError(f"{name} must be a number or a pair (lo, hi), got {value!r}")
    lo, hi = float(pair[0]), float(pair[1])
    if not low < lo <= hi <= high:
        raise ValueError(f"{name} must satisfy {low} < lo <= hi <= {high}, got {value!r}")
    return lo, hi


def int_range(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``value`` or ``(lo, hi)`` (inclusive) as ints ``0 <= lo <= hi``."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints (lo, hi), got {value!r}")
    if not 0 <= pair[0] <= pair[1]:
        raise ValueError(f"{name} must satisfy 0 <= lo <= hi, got {value!r}")
    return pair


def check_count(n: int, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be an int >= 1, got {n!r}")
    return n


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return seed
