"""The small CNN shared by all source views: a U-Net giving features at half the image resolution.

GNT/IBRNet use a ResNet-34 U-Net with features at a quarter of the resolution; this one has the same
shape (encoder with two stride-2 stages, decoder with a skip connection) at a size that trains on a CPU,
and keeps half resolution because our images are small. Full-resolution colour reaches the model
separately (the blended RGB). Instance normalisation keeps the features independent of each image's
exposure, as IBRNet's does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, padding_mode="reflect"),
                         nn.InstanceNorm2d(out_channels, affine=True), nn.ReLU(inplace=True))


class FeatureNet(nn.Module):
    """images [V, 3, H, W] in [0, 1] -> features [V, out_dim, ceil(H / 2), ceil(W / 2)]."""

    def __init__(self, out_dim: int = 32, base: int = 8) -> None:
        super().__init__()
        self.level0 = _conv(3, base)
        self.level1 = nn.Sequential(_conv(base, 2 * base, stride=2), _conv(2 * base, 2 * base))
        self.level2 = nn.Sequential(_conv(2 * base, 4 * base, stride=2), _conv(4 * base, 4 * base))
        self.up1 = _conv(6 * base, 2 * base)
        self.out = nn.Conv2d(2 * base, out_dim, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x1 = self.level1(self.level0(images * 2 - 1))
        x2 = self.level2(x1)
        y1 = self.up1(torch.cat([F.interpolate(x2, size=x1.shape[-2:], mode="bilinear", align_corners=False), x1], 1))
        return self.out(y1)
