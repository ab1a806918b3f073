"""Rays of pinhole cameras as image-shaped tensors, the input of both light-field students.

A ray is 6 numbers per pixel: its origin (the camera centre) and its direction scaled so that its camera-z
component is 1, both in world coordinates. A point at parameter t along it therefore lies at camera depth t,
so the students' sample depths, the teacher's depth maps and its density-profile bins use one axis.
"""
from __future__ import annotations

import torch

from recon4d.errors import InputError


def pixel_rays(world_from_camera: torch.Tensor, K: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Rays through the pixel centres of one camera (OpenCV pixel convention).

    Args:
        world_from_camera: [4, 4]; K: [3, 3] in pixels of (width, height).
    Returns:
        [6, H, W] float32: origin xyz, direction xyz (camera-z component 1).
    """
    pose, K = world_from_camera.double(), K.double()
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")
    camera_dirs = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], -1)
    directions = camera_dirs @ pose[:3, :3].T
    origins = pose[:3, 3].expand_as(directions)
    return torch.cat([origins, directions], -1).permute(2, 0, 1).float().contiguous()


def batch_rays(poses: torch.Tensor, Ks: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """poses: [B, 4, 4]; Ks: [B, 3, 3] -> rays [B, 6, H, W]."""
    return torch.stack([pixel_rays(p, k, width, height) for p, k in zip(poses, Ks)])


def check_resolution(width: int, height: int, factor: int) -> None:
    """Raise InputError unless both sides are positive multiples of the super-resolution factor."""
    if width <= 0 or height <= 0 or width % factor or height % factor:
        raise InputError(
            f"resolution {width}x{height} is not allowed by the student's super-resolution factor {factor}",
            hint=f"use a width and height divisible by {factor}",
        )


def disparity_depths(near: float, far: float, count: int) -> torch.Tensor:
    """`count` depths [count] spread uniformly in inverse depth between near and far (bin centres)."""
    s = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    return (1.0 / (1.0 / near + s * (1.0 / far - 1.0 / near))).float()


def disparity_bins(depth: torch.Tensor, near: float, far: float, count: int) -> torch.Tensor:
    """Index of the inverse-depth bin (the ones `disparity_depths` centres) of each depth [...] -> long [...],
    clamped to 0..count-1."""
    s = (1.0 / depth.clamp_min(1e-9) - 1.0 / near) / (1.0 / far - 1.0 / near)
    return (s * count).floor().clamp(0, count - 1).long()
