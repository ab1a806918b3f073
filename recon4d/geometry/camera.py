"""Pinhole cameras in the OpenCV convention (x right, y down, z forward).

Pixel convention: the centre of pixel (row i, column j) is at image coordinates (u=j, v=i), as in OpenCV.
Poses: `world_from_camera` maps camera coordinates to world coordinates; `camera_from_world` is its inverse.
"""
from __future__ import annotations

import torch


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float, **tensor_options) -> torch.Tensor:
    """-> K [3, 3] for focal lengths and principal point in pixels."""
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], **tensor_options)


def invert_pose(pose: torch.Tensor) -> torch.Tensor:
    """pose: [..., 4, 4] rigid transform -> its inverse [..., 4, 4] (uses R^T, no general inverse)."""
    rotation = pose[..., :3, :3].transpose(-1, -2)
    translation = -(rotation @ pose[..., :3, 3:4])
    bottom = pose[..., 3:4, :]
    return torch.cat([torch.cat([rotation, translation], -1), bottom], -2)


def transform_points(transform: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """transform: [4, 4]; points: [N, 3] -> [N, 3]."""
    return points @ transform[:3, :3].transpose(0, 1) + transform[:3, 3]


def project_points(points_camera: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """points_camera: [N, 3] in camera coordinates (z > 0); K: [3, 3] -> pixel coordinates (u, v) [N, 2]."""
    z = points_camera[:, 2:3]
    return points_camera[:, :2] / z * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """OpenCV camera at `eye` [3] looking at `target` [3]; `up` [3] is the world's up -> world_from_camera [4, 4].

    The camera's y axis points down, so it is aligned with -up.
    """
    forward = target - eye
    forward = forward / forward.norm()
    right = torch.linalg.cross(-up, forward)
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    pose = torch.eye(4, dtype=eye.dtype, device=eye.device)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, eye
    return pose
