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


class BasicBlock(nn.Module):
    """A ResNet basic block: conv–BN–ReLU–conv–BN plus a shortcut (identity, or a 1×1 conv–BN
    when the width changes), then ReLU. ``(B, c_in, H, W) -> (B, c_out, H, W)``."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Identity() if c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A small residual classifier: a 3×3 conv–BN–ReLU stem, then for each width a
    :class:`BasicBlock` followed by a 2×2 max-pool (none after the last), global average
    pooling and a linear head. ``(B, C_in, H, W) -> (B, num_classes)``."""

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = (32, 64)):
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        c = widths[0]
        for i, w in enumerate(widths):
            stages.append(BasicBlock(c, w))
            if i < len(widths) - 1:
                stages.append(nn.MaxPool2d(2))
            c = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))
