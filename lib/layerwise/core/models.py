"""Small trunks shared by chapters (the paper modules add their heads on top)."""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn


class ConvTrunk(nn.Sequential):
    """A small VGG-style feature extractor: for each width, two 3×3 conv–BN–ReLU layers and a
    2×2 max-pool; then global average pooling. ``(B, C_in, H, W) -> (B, widths[-1])``."""

    def __init__(self, in_channels: int, widths: Sequence[int] = (32, 64)):
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths}")
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)
        self.out_features = c
