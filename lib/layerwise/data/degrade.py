"""Seeded, vectorised image degradations for blind restoration (chapter 16, DifFace).

A degraded image is made the way blind face restoration papers synthesise their training pairs
(GFPGAN's model, which DifFace's restorer is trained on, minus JPEG):

    y = up_r( down_r( x ⊛ k_σ ) + n_δ ),     then clipped to [0, 1],

with ``k_σ`` a Gaussian blur of standard deviation σ pixels, ``down_r`` an area downsampling by an
integer factor r, ``n_δ`` Gaussian noise of standard deviation δ added at the low resolution and
``up_r`` a bilinear upsampling back to the input size. Each image draws its own (σ, r, δ) from the
ranges of a preset (:data:`DEGRADATIONS`): ``"mild"`` is what the chapter's restorer is trained on,
``"severe"`` goes beyond every training range (as DifFace's test sets go beyond its training scale
factors), and ``"unseen"`` adds a corruption the restorer never saw: salt-and-pepper impulses.
:func:`colour_cast` is another unseen corruption, for experiments.

Conventions (those of :mod:`layerwise.data`): images ``(B, C, H, W)`` floating, values in [0, 1];
randomness only from a ``torch.Generator`` (or an int seed); every operation is vectorised over
the batch (the only Python loop is over the few distinct integer scale factors).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from layerwise.data._checks import as_generator, check_name

__all__ = ["DEGRADATIONS", "gaussian_blur", "down_up", "add_noise", "salt_and_pepper", "colour_cast",
           "sample_params", "degrade"]

#: The presets: ranges (lo, hi) each image draws from. ``blur``: σ in pixels (uniform); ``scale``:
#: integer factor r (uniform over lo..hi); ``noise``: δ on the [0, 1] scale (uniform);
#: ``impulse``: share of pixels set to 0 or 1 (uniform).
DEGRADATIONS: dict[str, dict[str, tuple[float, float]]] = {
    "mild": dict(blur=(0.1, 1.0), scale=(1, 2), noise=(0.0, 0.05), impulse=(0.0, 0.0)),
    "severe": dict(blur=(2.0, 2.5), scale=(4, 4), noise=(0.1, 0.15), impulse=(0.0, 0.0)),
    "unseen": dict(blur=(0.1, 1.0), scale=(1, 2), noise=(0.0, 0.05), impulse=(0.08, 0.15)),
}


# ----------------------------------------------------------------------------- argument checks

def _images(x: Tensor, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch of images (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def _per_image(value: float | Sequence[float] | Tensor, name: str, batch: int, like: Tensor, *,
               low: float = 0.0, high: float = math.inf) -> Tensor:
    """A number, or one number per image, as a (B,) tensor of ``like``'s dtype, checked to lie in [low, high]."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or one number per image, got a bool")
    if isinstance(value, (int, float)):
        v = torch.full((batch,), float(value), dtype=like.dtype, device=like.device)
    else:
        try:
            v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a number or one number per image, got {type(value).__name__}") from None
        if v.dim() != 1 or v.shape[0] != batch:
            raise ValueError(f"{name} must be a number or have shape ({batch},) (one per image), got shape "
                             f"{tuple(v.shape)}")
    if not torch.isfinite(v).all() or (v < low).any() or (v > high).any():
        raise ValueError(f"{name} must lie in [{low}, {high}], got {v.tolist()}")
    return v


# ----------------------------------------------------------------------------- the operations

def gaussian_blur(x: Tensor, sigma: float | Sequence[float] | Tensor) -> Tensor:
    """Blur each image with an isotropic Gaussian of standard deviation ``sigma`` pixels.

    x: (B, C, H, W) floating; sigma: a number or (B,) numbers ≥ 0 (0 leaves the image as it is).
    The kernel spans ±⌈3σ_max⌉ pixels and is normalised to sum 1; borders are reflected, so a flat
    background stays flat. Returns (B, C, H, W) with x's dtype.
    """
    _images(x)
    b, c, h, w = x.shape
    s = _per_image(sigma, "sigma", b, x, low=0.0, high=64.0)
    radius = int(math.ceil(3 * float(s.max()))) if float(s.max()) > 0 else 0
    radius = min(radius, h - 1, w - 1)                       # reflect padding needs radius < size
    if radius == 0:
        return x.clone()
    d = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    sq = (d[:, None] ** 2 + d[None, :] ** 2)[None]            # (1, k, k)
    safe = s.clamp_min(1e-6)[:, None, None]
    k = torch.exp(-sq / (2 * safe ** 2))
    delta = (sq == 0).to(x.dtype).expand_as(k)
    k = torch.where((s > 1e-3)[:, None, None], k, delta)      # σ ≈ 0: the identity kernel
    k = k / k.sum((1, 2), keepdim=True)
    weight = k[:, None].repeat_interleave(c, dim=0)           # (B·C, 1, k, k): one kernel per image, per channel
    padded = F.pad(x.reshape(1, b * c, h, w), (radius,) * 4, mode="reflect")
    return F.conv2d(padded, weight, groups=b * c).reshape(b, c, h, w)


def down_up(x: Tensor, factor: int | Sequence[int] | Tensor, noise: Tensor | None = None) -> Tensor:
    """Downsample each image by its integer ``factor`` r (area average), add ``noise`` at the low
    resolution if given, and upsample back to (H, W) bilinearly: the loss of resolution.

    x: (B, C, H, W) floating; factor: an int or (B,) ints ≥ 1 (1: no resampling); noise: None or
    (B, C, H, W) standard noise scaled by the caller (only its top-left (H/r, W/r) corner is used
    for an image of factor r, so one draw serves every factor). Returns (B, C, H, W).
    """
    _images(x)
    b, c, h, w = x.shape
    if isinstance(factor, bool) or (isinstance(factor, float) and not float(factor).is_integer()):
        raise TypeError(f"factor must be an int or one int per image, got {factor!r}")
    r = _per_image(factor, "factor", b, x.double(), low=1.0, high=min(h, w))
    if (r != r.round()).any():
        raise TypeError(f"factor must hold integers, got {r.tolist()}")
    r = r.round().long()
    if noise is not None:
        _images(noise, "noise")
        if noise.shape != x.shape:
            raise ValueError(f"noise must have x's shape {tuple(x.shape)}, got {tuple(noise.shape)}")
    out = x.clone()
    for f in torch.unique(r).tolist():
        idx = torch.nonzero(r == f)[:, 0]
        if f == 1:
            low = x[idx]
            out[idx] = low + (noise[idx] if noise is not None else 0)
            continue
        low = F.interpolate(x[idx], size=(h // f, w // f), mode="area")
        if noise is not None:
            low = low + noise[idx][..., : h // f, : w // f]
        out[idx] = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return out


def add_noise(x: Tensor, std: float | Sequence[float] | Tensor, generator: torch.Generator | int) -> Tensor:
    """x + std · z with z ~ N(0, I) drawn from ``generator``; std: a number or (B,) numbers ≥ 0."""
    _images(x)
    s = _per_image(std, "std", x.shape[0], x, low=0.0)
    z = torch.randn(x.shape, generator=as_generator(generator), dtype=x.dtype).to(x.device)
    return x + s.view(-1, 1, 1, 1) * z


def salt_and_pepper(x: Tensor, amount: float | Sequence[float] | Tensor, generator: torch.Generator | int) -> Tensor:
    """Set a share ``amount`` of each image's pixels (all channels at once) to 0 or 1 at random
    (impulse noise, a corruption Gaussian-noise training never shows). amount: a number or (B,)
    numbers in [0, 1]. Returns a new tensor."""
    _images(x)
    a = _per_image(amount, "amount", x.shape[0], x, low=0.0, high=1.0)
    g = as_generator(generator)
    b, _, h, w = x.shape
    u = torch.rand((b, 1, h, w), generator=g, dtype=x.dtype).to(x.device)
    salt = (torch.rand((b, 1, h, w), generator=g) < 0.5).to(x.device, x.dtype)
    hit = u < a.view(-1, 1, 1, 1)
    return torch.where(hit, salt.expand_as(x), x)


def colour_cast(x: Tensor, shift: Sequence[float] | Tensor) -> Tensor:
    """Add a per-channel offset (a colour cast) and clip to [0, 1]. shift: (C,) for every image or
    (B, C), each entry in [-1, 1]."""
    _images(x)
    try:
        s = torch.as_tensor(shift, dtype=x.dtype, device=x.device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"shift must be a sequence of numbers (C,) or (B, C), got {type(shift).__name__}") from None
    if s.shape not in (torch.Size([x.shape[1]]), torch.Size([x.shape[0], x.shape[1]])):
        raise ValueError(f"shift must have shape ({x.shape[1]},) or ({x.shape[0]}, {x.shape[1]}), got {tuple(s.shape)}")
    if not torch.isfinite(s).all() or (s.abs() > 1).any():
        raise ValueError(f"shift must lie in [-1, 1], got {s.tolist()}")
    return (x + s.reshape(-1, x.shape[1], 1, 1)).clamp(0, 1)


# ----------------------------------------------------------------------------- the pipeline

def _range(spec: dict, key: str, kind: str) -> tuple[float, float]:
    lo, hi = spec[key]
    if not lo <= hi:
        raise ValueError(f"{kind}: range {key} must have lo <= hi, got {(lo, hi)}")
    return float(lo), float(hi)


def sample_params(n: int, kind: str | dict, generator: torch.Generator | int) -> dict[str, Tensor]:
    """Draw each of ``n`` images' degradation from the preset ``kind`` (a name of
    :data:`DEGRADATIONS` or a dict of the same keys): ``{"blur": (n,), "scale": (n,) long,
    "noise": (n,), "impulse": (n,)}``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if isinstance(kind, str):
        spec = DEGRADATIONS[check_name(kind, tuple(DEGRADATIONS), "kind")]
    elif isinstance(kind, dict):
        missing = {"blur", "scale", "noise", "impulse"} - set(kind)
        if missing:
            raise ValueError(f"kind must have the keys blur, scale, noise, impulse; missing {sorted(missing)}")
        spec = kind
    else:
        raise TypeError(f"kind must be a preset name {tuple(DEGRADATIONS)} or a dict, got {type(kind).__name__}")
    g = as_generator(generator)
    u = torch.rand(n, 3, generator=g)
    (b0, b1), (n0, n1), (i0, i1) = (_range(spec, k, str(kind)) for k in ("blur", "noise", "impulse"))
    s0, s1 = _range(spec, "scale", str(kind))
    if s0 < 1 or s0 != int(s0) or s1 != int(s1):
        raise ValueError(f"scale must be a range of ints >= 1, got {spec['scale']}")
    scale = torch.randint(int(s0), int(s1) + 1, (n,), generator=g)
    return {"blur": b0 + (b1 - b0) * u[:, 0], "scale": scale, "noise": n0 + (n1 - n0) * u[:, 1],
            "impulse": i0 + (i1 - i0) * u[:, 2]}


def degrade(x: Tensor, kind: str | dict, generator: torch.Generator | int, *,
            return_params: bool = False) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Degrade clean images ``x`` (B, C, H, W) in [0, 1] with per-image parameters drawn from the
    preset ``kind`` (:data:`DEGRADATIONS`): blur → area downsampling → Gaussian noise at the low
    resolution → bilinear upsampling → salt-and-pepper → clip to [0, 1].

    Seeded: the same ``generator`` seed and inputs give bit-identical outputs. With
    ``return_params`` also returns the parameters each image drew (:func:`sample_params`).
    """
    _images(x)
    g = as_generator(generator)
    p = sample_params(x.shape[0], kind, g)
    y = gaussian_blur(x, p["blur"].to(x.dtype))
    z = torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
    y = down_up(y, p["scale"], noise=z * p["noise"].to(x.device, x.dtype).view(-1, 1, 1, 1))
    if float(p["impulse"].max()) > 0:
        y = salt_and_pepper(y, p["impulse"].to(x.dtype), g)
    y = y.clamp(0, 1)
    return (y, p) if return_params else y
