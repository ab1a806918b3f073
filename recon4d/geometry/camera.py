"""Pinhole cameras in the OpenCV convention (x right, y down, z forward).

Pixel convention: the centre of pixel (row i, column j) is at image coordinates (u=j, v=i), as in OpenCV.
Poses: `world_from_camera` maps camera coordinates to world coordinates; `camera_from_world` is its inverse.
"""
from __future__ import annotations

import numpy as np
import torch


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float, **tensor_options) -> torch.Tensor:
    """-> K [3, 3] for focal lengths and principal point in pixels."""
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], **tensor_options)


def scale_intrinsics(intrinsics: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """[..., 4] fx, fy, cx, cy (OpenCV pixel centres) of an image resized by (scale_x, scale_y).

    A pixel edge u + 0.5 scales linearly, so a centre u maps to (u + 0.5) * s - 0.5.

        >>> scale_intrinsics(np.array([100.0, 100.0, 63.5, 35.5]), 2.0, 2.0).tolist()
        [200.0, 200.0, 127.5, 71.5]
    """
    out = np.array(intrinsics, dtype=np.float64, copy=True)
    out[..., 0] *= scale_x
    out[..., 1] *= scale_y
    out[..., 2] = (out[..., 2] + 0.5) * scale_x - 0.5
    out[..., 3] = (out[..., 3] + 0.5) * scale_y - 0.5
    return out


def scale_camera_matrix(K: torch.Tensor, scale_x: float, scale_y: float) -> torch.Tensor:
    """K [..., 3, 3] (OpenCV pixel centres) -> a new K [..., 3, 3] of the same camera on an image resized by
    (scale_x, scale_y): new width = scale_x * width (a downsampling by f is scale 1 / f).

    The torch counterpart of `scale_intrinsics`: fx' = fx * scale_x, fy' = fy * scale_y and a centre u maps to
    (u + 0.5) * scale_x - 0.5 (v likewise). Same dtype and device as K; K is not modified and gradients flow
    through (no in-place ops).

        >>> K = intrinsics_matrix(100.0, 100.0, 63.5, 35.5, dtype=torch.float64)
        >>> scale_camera_matrix(K, 2.0, 2.0).tolist()
        [[200.0, 0.0, 127.5], [0.0, 200.0, 71.5], [0.0, 0.0, 1.0]]
        >>> scale_camera_matrix(K, 0.5, 0.25)[..., :2, 2].tolist()
        [31.5, 8.5]
    """
    bottom = K[..., 2:3, :]  # [0, 0, 1]: the homogeneous row, unchanged
    row_x = (K[..., 0:1, :] + 0.5 * bottom) * scale_x - 0.5 * bottom
    row_y = (K[..., 1:2, :] + 0.5 * bottom) * scale_y - 0.5 * bottom
    return torch.cat([row_x, row_y, bottom], dim=-2)


def rotation_angle_deg(rotation: np.ndarray) -> np.ndarray:
    """[..., 3, 3] rotation matrices -> [...] their angles in degrees (from the trace, clipped so that round-off
    near 0 and 180 degrees stays finite).

        >>> float(rotation_angle_deg(np.diag([-1.0, -1.0, 1.0])))
        180.0
    """
    cos = (np.trace(rotation, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def invert_pose(pose: torch.Tensor) -> torch.Tensor:
    """pose: [..., 4, 4] rigid transform -> its inverse [..., 4, 4] (uses R^T, no general inverse)."""
    rotation = pose[..., :3, :3].transpose(-1, -2)
    translation = -(rotation @ pose[..., :3, 3:4])
    bottom = pose[..., 3:4, :]
    return torch.cat([torch.cat([rotation, translation], -1), bottom], -2)


def transform_points(transform: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """transform: [4, 4]; points: [N, 3] -> [N, 3]."""
    return points @ transform[:3, :3].transpose(0, 1) + transform[:3, 3]


def intrinsics_matrices(intrinsics: torch.Tensor) -> torch.Tensor:
    """intrinsics [..., 4] rows (fx, fy, cx, cy) -> K [..., 3, 3]."""
    fx, fy, cx, cy = intrinsics.unbind(-1)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    return torch.stack([fx, zero, cx, zero, fy, cy, zero, zero, one], -1).reshape(*intrinsics.shape[:-1], 3, 3)


def project_to_pixels(points_world: torch.Tensor, camera_from_world: torch.Tensor, K: torch.Tensor,
                      min_depth: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """World points -> pixel coordinates (u, v) and camera z-depth: recon4d's one world-to-pixel projection.

    points_world: [..., N, 3]; camera_from_world: [..., 4, 4]; K: [..., 3, 3]. Leading dimensions broadcast,
    so V cameras ([V, 4, 4], [V, 3, 3]) project shared points [N, 3] to [V, N, 2].
    Returns pixels [..., N, 2] and z [..., N], the depth *before* clamping (test `z > min_depth` for "in front").
    Points at or behind `min_depth` are projected as if their depth were `min_depth`: the result stays finite
    and is never mirrored through the centre (a point behind the camera and to its right lands to the right,
    far out of the image unless it is near the optical axis), so callers must test z to know what is in front.

    >>> K = torch.tensor([[100.0, 0.0, 32.0], [0.0, 100.0, 24.0], [0.0, 0.0, 1.0]])
    >>> pixels, z = project_to_pixels(torch.tensor([[0.2, -0.1, 2.0]]), torch.eye(4), K)
    >>> pixels.tolist(), z.tolist()
    ([[42.0, 19.0]], [2.0])
    """
    camera = points_world @ camera_from_world[..., :3, :3].transpose(-1, -2) + camera_from_world[..., None, :3, 3]
    z = camera[..., 2]
    focal = torch.stack([K[..., 0, 0], K[..., 1, 1]], -1)[..., None, :]
    centre = torch.stack([K[..., 0, 2], K[..., 1, 2]], -1)[..., None, :]
    return camera[..., :2] / z.clamp_min(min_depth)[..., None] * focal + centre, z


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
