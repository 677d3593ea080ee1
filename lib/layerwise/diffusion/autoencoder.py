"""A tiny convolutional autoencoder standing in for a latent diffusion model's VAE.

RGB images in [0, 1], (B, 3, H, W) ↔ latents (B, 4, H/4, W/4): 32×32 ↔ 4×8×8. Stable
Diffusion's VAE compresses 8× per side into 4 channels; at our image sizes 4× keeps detail.
It is deterministic (no KL term): ``scale`` rescales latents to unit variance, as SD's
``scaling_factor`` does, so a diffusion model can be trained on them directly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

__all__ = ["AEConfig", "TinyAutoencoder", "ResBlock"]


@dataclass
class AEConfig:
    in_channels: int = 3
    latent_channels: int = 4
    width: int = 32
    downsample: int = 2          # number of stride-2 stages: 2 → H/4
    scale: float = 1.0           # initial latent scale; the trained value is the buffer ``scale``

    def to_dict(self) -> dict:
        return asdict(self)


class ResBlock(nn.Module):
    """``x + body(x)`` with body = (GroupNorm, SiLU, 3×3 conv) twice: the autoencoder's residual block."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                  nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class TinyAutoencoder(nn.Module):
    """``encode(x) → z`` and ``decode(z) → x̂``; x in [0, 1], z scaled to about unit variance."""

    def __init__(self, config: AEConfig | None = None, **overrides):
        super().__init__()
        cfg = config or AEConfig(**overrides)
        self.config = cfg
        chs = [cfg.width * min(2**i, 2) for i in range(cfg.downsample + 1)]   # e.g. 32, 64, 64
        enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)]
        for a, b in zip(chs, chs[1:]):
            enc += [nn.SiLU(), nn.Conv2d(a, b, 3, stride=2, padding=1), ResBlock(b)]
        enc += [nn.GroupNorm(8, chs[-1]), nn.SiLU(), nn.Conv2d(chs[-1], cfg.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, chs[-1], 3, padding=1)]
        for a, b in zip(chs[::-1], chs[::-1][1:]):
            dec += [ResBlock(a), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, padding=1)]
        dec += [nn.GroupNorm(8, chs[0]), nn.SiLU(), nn.Conv2d(chs[0], cfg.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        # latent = encoder(x) · scale; set from the latents' std after training (saved with the weights)
        self.register_buffer("scale", torch.tensor(float(cfg.scale)))

    def _check(self, name: str, x: Tensor, channels: int) -> None:
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(f"{name} must be (B, {channels}, H, W), got shape {tuple(x.shape)}")

    def encode(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) in [0, 1] → z: (B, latent, H/4, W/4)."""
        self._check("x", x, self.config.in_channels)
        return self.encoder(x * 2 - 1) * self.scale

    def decode(self, z: Tensor) -> Tensor:
        """z: (B, latent, h, w) → x̂: (B, C, 4h, 4w), about [0, 1] (not clipped)."""
        self._check("z", z, self.config.latent_channels)
        return (self.decoder(z / self.scale) + 1) / 2

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))
