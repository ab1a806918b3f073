"""MobileR2L-style student (Cao et al. 2023, after R2L, Wang et al. 2022): one forward pass per image.

Each ray of a grid `sr_factor` times coarser than the output carries `num_points` points between the scene's
near and far (uniform in inverse depth); their normalised coordinates, positionally encoded, are the input
channels of a residual network of 1x1 convolutions (conv-BN-GELU-conv-BN + skip, as MobileR2L), and a tail of
stride-2 transposed convolutions upsamples to the output resolution.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from recon4d.nerf.nelf.config import R2LConfig
from recon4d.nerf.nelf.encoding import RayFrame, positional_encoding


class ResidualBlock(nn.Module):
    """x + BN(conv(GELU(BN(conv(x))))) then GELU; 1x1 convolutions: each ray is processed on its own."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.GELU(),
                                  nn.Conv2d(width, width, 1), nn.BatchNorm2d(width))
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


def sr_stages(factor: int) -> int:
    """Number of x2 transposed-conv stages of a power-of-two factor."""
    stages = int(round(math.log2(factor)))
    if factor < 1 or 2**stages != factor:
        raise ValueError(f"sr_factor must be a power of two, got {factor}")
    return stages


class R2LStudent(nn.Module):
    """rays [B, 6, H/s, W/s] (origin, direction with camera-z 1; see `recon4d.nerf.nelf.rays`) -> RGB
    [B, 3, H, W] in [0, 1], s = config.sr_factor."""

    kind = "r2l"

    def __init__(self, config: R2LConfig, frame: RayFrame | None = None) -> None:
        super().__init__()
        self.config = config
        self.frame = frame or RayFrame()
        in_channels = 3 * config.num_points * (1 + 2 * config.pe_freqs)
        self.head = nn.Sequential(nn.Conv2d(in_channels, config.width, 1), nn.GELU())
        self.body = nn.Sequential(*(ResidualBlock(config.width) for _ in range(config.blocks)))
        tail, channels = [], config.width
        for stage in range(sr_stages(config.sr_factor)):
            out = max(config.sr_width // 2**stage, 16)
            tail += [nn.ConvTranspose2d(channels, out, 4, stride=2, padding=1), nn.GELU()]
            channels = out
        self.tail = nn.Sequential(*tail, nn.Conv2d(channels, 3, 1), nn.Sigmoid())

    def encode(self, rays: torch.Tensor) -> torch.Tensor:
        """rays [B, 6, h, w] -> encoded points [B, 3 N (1 + 2 F), h, w]."""
        depths = self.frame.depths(self.config.num_points)
        points = rays[:, None, :3] + depths[None, :, None, None, None] * rays[:, None, 3:]  # [B, N, 3, h, w]
        return positional_encoding(self.frame.normalise(points).flatten(1, 2), self.config.pe_freqs)

    def forward(self, rays: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(self.head(self.encode(rays))))
