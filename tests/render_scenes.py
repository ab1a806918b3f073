"""Random Gaussian scenes shared by the rasterizer tests."""
from __future__ import annotations

import math

import torch


def random_scene(n: int, channels: int = 3, seed: int = 0, dtype=torch.float32):
    """N Gaussians spread in front of a slightly rotated camera; returns a dict of rasterize() inputs."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g, dtype=dtype) * torch.tensor([3.0, 2.2, 3.0], dtype=dtype) - torch.tensor([1.5, 1.1, -1.5], dtype=dtype)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.exp(torch.rand(n, 3, generator=g, dtype=dtype) * 1.6 - 3.4)
    opacities = torch.rand(n, generator=g, dtype=dtype) * 0.85 + 0.1
    colors = torch.rand(n, channels, generator=g, dtype=dtype)
    angle = 0.1
    c, s = math.cos(angle), math.sin(angle)
    camera_from_world = torch.tensor(
        [[c, 0, s, 0.05], [0, 1, 0, -0.02], [-s, 0, c, 0.1], [0, 0, 0, 1]], dtype=dtype
    )
    return dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
                camera_from_world=camera_from_world)


def intrinsics(width: int, height: int, fov_x_deg: float = 60.0, dtype=torch.float32) -> torch.Tensor:
    fx = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    return torch.tensor([[fx, 0, (width - 1) / 2], [0, fx, (height - 1) / 2], [0, 0, 1]], dtype=dtype)
