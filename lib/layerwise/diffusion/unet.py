"""diffusers' ``UNet2DModel`` behind the course's denoiser interface ``model(x, t, cond) → ε̂``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn

__all__ = ["UNetConfig", "UNetDenoiser"]


@dataclass
class UNetConfig:
    in_channels: int = 3
    image_size: int = 16
    channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention: bool = False       # self-attention in the lowest-resolution blocks
    num_classes: int = 0          # > 0: label conditioning (index num_classes = "no label")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d


class UNetDenoiser(nn.Module):
    """A small diffusers ``UNet2DModel`` that returns ε̂ as a tensor."""

    def __init__(self, config: UNetConfig | None = None, **overrides):
        super().__init__()
        from diffusers import UNet2DModel

        cfg = config or UNetConfig(**overrides)
        cfg.channels = tuple(cfg.channels)
        self.config = cfg
        n = len(cfg.channels)
        down = ["DownBlock2D"] * n
        up = ["UpBlock2D"] * n
        if cfg.attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        self.unet = UNet2DModel(
            sample_size=cfg.image_size, in_channels=cfg.in_channels, out_channels=cfg.in_channels,
            block_out_channels=cfg.channels, down_block_types=tuple(down), up_block_types=tuple(up),
            layers_per_block=cfg.layers_per_block, norm_num_groups=min(8, cfg.channels[0]),
            num_class_embeds=cfg.num_classes + 1 if cfg.num_classes else None)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        labels = None
        if self.config.num_classes:
            labels = cond.long() if cond is not None else t.new_full((x.shape[0],), self.config.num_classes)
        return self.unet(x, t, class_labels=labels).sample
