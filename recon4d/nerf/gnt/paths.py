"""Novel-view camera paths around a posed image set: orbit, spiral, or a JSON file (`recon4d render`'s schema).

The scene centre is the point closest to all optical axes; "up" is the mean of the cameras' up vectors
(-y in OpenCV). JSON views are ``{"world_from_camera": 4x4, "fx", "fy", "cx"?, "cy"?, "time"?}`` in pixels
of the data's (resized) resolution; the time is ignored (the scene is static).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from recon4d.errors import InputError
from recon4d.geometry import look_at
from recon4d.nerf.data.posed import PosedImages

PATHS = ("orbit", "spiral")
SPIRAL_TURNS = 2


def scene_centre(data: PosedImages) -> torch.Tensor:
    """[3] least-squares intersection of the optical axes."""
    axes = F.normalize(data.world_from_camera[:, :3, 2].double(), dim=-1)
    origins = data.world_from_camera[:, :3, 3].double()
    projectors = torch.eye(3, dtype=torch.float64) - axes[:, :, None] * axes[:, None, :]
    return torch.linalg.lstsq(projectors.sum(0), torch.einsum("nij,nj->i", projectors, origins)).solution.float()


def _up(data: PosedImages) -> torch.Tensor:
    return F.normalize(-data.world_from_camera[:, :3, 1].mean(0), dim=0)


def orbit(data: PosedImages, frames: int) -> torch.Tensor:
    """[frames, 4, 4]: a circle around the centre at the cameras' mean height and distance."""
    centre, up = scene_centre(data), _up(data)
    offsets = data.world_from_camera[:, :3, 3] - centre
    height = float((offsets @ up).mean())
    radius = float((offsets - (offsets @ up)[:, None] * up).norm(dim=-1).mean())
    first = offsets[0] - (offsets[0] @ up) * up
    x = F.normalize(first, dim=0)
    y = torch.linalg.cross(up, x)
    poses = []
    for k in range(frames):
        angle = 2 * math.pi * k / frames
        eye = centre + height * up + radius * (math.cos(angle) * x + math.sin(angle) * y)
        poses.append(look_at(eye, centre, -up))
    return torch.stack(poses).float()


def spiral(data: PosedImages, frames: int) -> torch.Tensor:
    """[frames, 4, 4]: a forward-facing spiral around the mean camera, looking at the centre."""
    centre = scene_centre(data)
    mean_eye = data.world_from_camera[:, :3, 3].mean(0)
    right, down = F.normalize(data.world_from_camera[:, :3, 0].mean(0), dim=0), F.normalize(data.world_from_camera[:, :3, 1].mean(0), dim=0)
    spread = (data.world_from_camera[:, :3, 3] - mean_eye).norm(dim=-1)
    radius = float(spread.quantile(0.5)) if len(spread) > 1 else 0.1
    poses = []
    for k in range(frames):
        angle = 2 * math.pi * SPIRAL_TURNS * k / frames
        eye = mean_eye + radius * (math.cos(angle) * right + math.sin(angle) * down)
        poses.append(look_at(eye, centre, down))
    return torch.stack(poses).float()


def read_path(path: str | os.PathLike, data: PosedImages) -> tuple[torch.Tensor, torch.Tensor]:
    """A JSON camera path -> (poses [N, 4, 4], intrinsics [N, 4])."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InputError(f"camera path file not found: {path}") from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc})") from exc
    views = content.get("views") if isinstance(content, dict) else content
    if not isinstance(views, list) or not views:
        raise InputError(f"{path}: expected a non-empty list of views")
    poses, intrinsics = [], []
    for index, view in enumerate(views):
        try:
            pose = torch.tensor(view["world_from_camera"], dtype=torch.float32)
            K = [float(view["fx"]), float(view["fy"]), float(view.get("cx", (data.width - 1) / 2)),
                 float(view.get("cy", (data.height - 1) / 2))]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}, view {index}: needs world_from_camera (4x4), fx, fy ({exc})") from exc
        if pose.shape != (4, 4) or not torch.isfinite(pose).all() or min(K[:2]) <= 0:
            raise InputError(f"{path}, view {index}: bad pose or focal length")
        poses.append(pose)
        intrinsics.append(K)
    return torch.stack(poses), torch.tensor(intrinsics)


def make_path(name: str, data: PosedImages, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(poses [N, 4, 4], intrinsics [N, 4]) of 'orbit', 'spiral' or a JSON file path."""
    if name in PATHS:
        poses = orbit(data, frames) if name == "orbit" else spiral(data, frames)
        return poses, data.intrinsics[:1].expand(len(poses), 4).clone()
    return read_path(name, data)
