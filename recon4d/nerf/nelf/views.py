"""Training and evaluation views: teacher pseudo-views and the real input frames, with their rays.

A `ViewSet` holds V cameras with target images at the fit's working resolution, a per-pixel loss weight
(0 where a real frame shows something the teacher state does not: moving things for a static teacher), the
teacher's density profiles (NeRDF) and the student's input rays.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recon4d.io.scene import Scene4D
from recon4d.nerf.nelf.teacher import Teacher, render_gaussians
from recon4d.progress import track


@dataclass
class ViewSet:
    """V views at H x W.

    Attributes:
        poses: [V, 4, 4] float64 world_from_camera; Ks: [V, 3, 3] intrinsics at (W, H).
        colors: [V, 3, H, W] targets in [0, 1]; weights: [V, 1, H, W] per-pixel loss weights.
        profiles: [V, S, H, W] teacher weights per inverse-depth bin, or None.
        rays: [V, 6, H/f, W/f] student input rays (f: the student's input factor), or None until set.
    """

    poses: torch.Tensor
    Ks: torch.Tensor
    colors: torch.Tensor
    weights: torch.Tensor
    profiles: torch.Tensor | None = None
    rays: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.poses.shape[0]


def render_teacher_views(teacher: Teacher, poses: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
                         profile_samples: int | None, description: str) -> ViewSet:
    """Teacher renders of every camera (progress bar); profiles with `profile_samples` bins when given."""
    bins = None if profile_samples is None else (teacher.near, teacher.far, profile_samples)
    colors, profiles = [], []
    for pose, K in track(list(zip(poses, Ks)), description, total=len(poses)):
        view = render_gaussians(teacher.gaussians, pose, K, width, height, bins)
        colors.append(view.color.permute(2, 0, 1))
        if view.profile is not None:
            profiles.append(view.profile.permute(2, 0, 1))
    colors_t = torch.stack(colors)
    return ViewSet(poses, Ks, colors_t, torch.ones_like(colors_t[:, :1]),
                   torch.stack(profiles) if profiles else None)


def real_views(scene: Scene4D, frames: np.ndarray, time: float | None, window: tuple[int, int]) -> ViewSet | None:
    """The input frames that show the teacher's state: every frame of its temporal window `window` (first,
    last: `Teacher.frames`) with its moving pixels weighted 0 for a static teacher; the frame at `time` (if it
    is an integer frame) for a time-T teacher. None if none does."""
    if time is None:
        indices = list(range(window[0], window[1] + 1))
    elif abs(time - round(time)) < 1e-6:
        indices = [int(round(time))]
    else:
        return None
    colors = torch.from_numpy(frames[indices]).permute(0, 3, 1, 2).float() / 255
    weights = torch.ones_like(colors[:, :1])
    masks = scene.arrays.get("moving_masks")
    if time is None and masks is not None and tuple(masks.shape[1:]) == tuple(colors.shape[2:]):
        weights = (~masks[indices].bool()).float()[:, None]
    poses = scene.cameras.world_from_camera[indices].double()
    Ks = torch.stack([scene.cameras.K(t).float() for t in indices])
    return ViewSet(poses, Ks, colors, weights)
