"""A tiny static Gaussian world seen by a moving camera, with exact depth and flow, for fit tests."""
from __future__ import annotations

import math

import torch

from recon4d.fit.sequential import FitInputs
from recon4d.fit.strategy.spawn import unproject_pixels
from recon4d.geometry.camera import project_to_pixels
from recon4d.geometry import invert_pose, look_at
from recon4d.render import rasterize


def _texture(points: torch.Tensor) -> torch.Tensor:
    x, y, z = points.unbind(-1)
    return torch.stack([
        0.5 + 0.45 * torch.sin(x * 7) * torch.cos(y * 5 + z * 3),
        0.5 + 0.45 * torch.sin(x * 3.1 + z * 4),
        0.5 + 0.4 * torch.cos(y * 6.3),
    ], -1).clamp(0, 1)


def static_world_inputs(width: int = 64, height: int = 36, num_frames: int = 5, step: float = 0.1, seed: int = 0):
    """Render a textured wall, floor and box from a sideways-moving camera.

    Returns (FitInputs with exact priors, ground-truth world_from_camera [T, 4, 4]).
    """
    g = torch.Generator().manual_seed(seed)
    n = 20000
    wall = torch.stack([torch.rand(n, generator=g) * 12 - 6, torch.rand(n, generator=g) * 7 - 4, torch.full((n,), 6.0)], -1)
    floor = torch.stack([torch.rand(n // 2, generator=g) * 10 - 5, torch.full((n // 2,), 1.0),
                         torch.rand(n // 2, generator=g) * 5 + 1.5], -1)
    box = torch.rand(n // 3, 3, generator=g) * torch.tensor([1.0, 1.0, 0.01]) + torch.tensor([-0.8, -0.5, 3.0])
    means = torch.cat([wall, floor, box])
    count = means.shape[0]
    quats = torch.zeros(count, 4)
    quats[:, 0] = 1
    scales = torch.full((count, 3), 0.05)
    opacities = torch.full((count,), 0.9)
    colors = _texture(means)
    fx = 0.5 * width / math.tan(math.radians(30))
    K = torch.tensor([[fx, 0, (width - 1) / 2], [0, fx, (height - 1) / 2], [0, 0, 1]])
    poses = [look_at(torch.tensor([-0.6 + step * t, -0.1 + 0.2 * step * t, -0.2 + 0.3 * step * t]),
                     torch.tensor([0.5 * step * t, 0.0, 5.0]), torch.tensor([0.0, -1.0, 0.0])) for t in range(num_frames)]
    poses = [invert_pose(poses[0]) @ p for p in poses]  # frame 0 at the origin, as the fit assumes
    frames, depths = [], []
    for pose in poses:
        out = rasterize(means, quats, scales, opacities, colors, invert_pose(pose), K, width, height)
        frames.append(out.color.clamp(0, 1))
        depths.append(out.depth)
    flat = torch.arange(height * width)
    grid = torch.stack([flat % width, flat // width], -1).float()

    def flow(src: int, dst: int) -> torch.Tensor:
        points = unproject_pixels(flat, depths[src].flatten(), K, width, poses[src])
        return (project_to_pixels(points, invert_pose(poses[dst]), K, min_depth=1e-3)[0] - grid).reshape(height, width, 2)

    inputs = FitInputs(
        frames=torch.stack(frames),
        flow_forward=torch.stack([flow(t, t + 1) for t in range(num_frames - 1)]),
        flow_backward=torch.stack([flow(t + 1, t) for t in range(num_frames - 1)]),
        valid_forward=torch.ones(num_frames - 1, height, width, dtype=torch.bool),
        valid_backward=torch.ones(num_frames - 1, height, width, dtype=torch.bool),
        depth=torch.stack(depths),
        depth_confidence=torch.ones(num_frames, height, width),
        moving=torch.zeros(num_frames, height, width, dtype=torch.bool),
        K=K,
    )
    return inputs, torch.stack(poses)
