"""Small rigid motions for optimisation, and pose interpolation.

Example:
    >>> import torch
    >>> R = so3_exp(torch.tensor([0.0, 0.0, torch.pi / 2]))
    >>> torch.allclose(R @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]), atol=1e-6)
    True
"""
from __future__ import annotations

import torch

from recon4d.geometry.quaternion import quaternion_from_rotation, rotation_from_quaternion

_SMALL_ANGLE = 1e-4


def skew(v: torch.Tensor) -> torch.Tensor:
    """v: [..., 3] -> cross-product matrices [..., 3, 3]."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*v.shape[:-1], 3, 3)


def so3_exp(omega: torch.Tensor) -> torch.Tensor:
    """Axis-angle omega [..., 3] (radians) -> rotation [..., 3, 3], smooth at zero (Taylor branch)."""
    theta2 = (omega * omega).sum(-1, keepdim=True)[..., None]
    theta = theta2.clamp_min(_SMALL_ANGLE**2).sqrt()
    small = theta2 < _SMALL_ANGLE**2
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(_SMALL_ANGLE**2))
    k = skew(omega)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def so3_log(rotation: torch.Tensor) -> torch.Tensor:
    """rotation [..., 3, 3] -> axis-angle [..., 3] (via the quaternion, stable near 0 and pi)."""
    q = quaternion_from_rotation(rotation)
    w, xyz = q[..., :1], q[..., 1:]
    norm = xyz.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(norm, w)
    return torch.where(norm > 1e-12, xyz / norm.clamp_min(1e-12) * angle, 2 * xyz)


def apply_pose_delta(delta: torch.Tensor, camera_from_world: torch.Tensor) -> torch.Tensor:
    """Left-multiply a [4, 4] pose by the motion delta [6] = (rotation axis-angle, translation)."""
    update = torch.eye(4, dtype=camera_from_world.dtype, device=camera_from_world.device)
    update = torch.cat([torch.cat([so3_exp(delta[:3]), delta[3:, None]], 1), update[3:]], 0)
    return update @ camera_from_world


def interpolate_pose(pose_a: torch.Tensor, pose_b: torch.Tensor, weight: float) -> torch.Tensor:
    """Rigid poses [4, 4]; rotation by slerp, translation linearly; weight 0 -> a, 1 -> b."""
    qa, qb = quaternion_from_rotation(pose_a[:3, :3]), quaternion_from_rotation(pose_b[:3, :3])
    if (qa * qb).sum() < 0:
        qb = -qb
    cos = (qa * qb).sum().clamp(-1, 1)
    angle = torch.acos(cos)
    if angle < 1e-6:
        q = qa + weight * (qb - qa)
    else:
        q = (torch.sin((1 - weight) * angle) * qa + torch.sin(weight * angle) * qb) / torch.sin(angle)
    pose = torch.eye(4, dtype=pose_a.dtype, device=pose_a.device)
    pose[:3, :3] = rotation_from_quaternion(q)
    pose[:3, 3] = (1 - weight) * pose_a[:3, 3] + weight * pose_b[:3, 3]
    return pose


def fill_poses(poses: torch.Tensor, known: list[int]) -> torch.Tensor:
    """Poses [T, 4, 4] where only frames `known` (sorted) are trusted: each frame between two known ones is
    interpolated between them (`interpolate_pose` by time); frames outside the known range are kept."""
    filled = poses.clone()
    for before, after in zip(known[:-1], known[1:]):
        for frame in range(before + 1, after):
            filled[frame] = interpolate_pose(poses[before], poses[after], (frame - before) / (after - before))
    return filled
