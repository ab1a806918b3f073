"""Unit quaternions in (w, x, y, z) order and their rotation matrices.

Example:
    >>> import torch
    >>> q = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    >>> rotation_from_quaternion(q)[0]
    tensor([[1., 0., 0.],
            [0., 1., 0.],
            [0., 0., 1.]])
"""
from __future__ import annotations

import torch

#: Floor on a quaternion's length when it is normalised (`normalize_quaternion`; the refinement's C++ frame state
#: repeats it).
NORM_EPS = 1e-12


def normalize_quaternion(quats: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """quats: [..., 4] (w, x, y, z), any norm -> unit quaternions [..., 4]."""
    return quats / quats.norm(dim=-1, keepdim=True).clamp_min(eps)


def rotation_from_quaternion(quats: torch.Tensor) -> torch.Tensor:
    """quats: [..., 4] (w, x, y, z), normalised here -> rotation matrices [..., 3, 3]."""
    w, x, y, z = normalize_quaternion(quats).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)


def quaternion_from_rotation(rotation: torch.Tensor) -> torch.Tensor:
    """rotation: [..., 3, 3] proper rotation matrices -> unit quaternions [..., 4] (w, x, y, z), w >= 0.

    Uses the largest-diagonal branch for numerical stability (Shepperd's method).
    """
    m = rotation
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    candidates = torch.stack(
        [
            torch.stack([1 + trace, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2], m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
        ],
        dim=-2,
    )  # [..., 4, 4]: row k is 4*q_k*q scaled, best conditioned where q_k is largest
    diag = torch.stack([trace, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1)
    best = diag.argmax(-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = normalize_quaternion(q)
    return torch.where(q[..., :1] < 0, -q, q)
