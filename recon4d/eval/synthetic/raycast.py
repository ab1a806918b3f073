"""Exact ray casting against the primitives of a synthetic scene, and the visibility test built on it."""
from __future__ import annotations

import numpy as np
import torch

from recon4d.eval.synthetic.scene import Scene
from recon4d.geometry import intrinsics_matrix, invert_pose, project_to_pixels

_MIN_DEPTH = 1e-9  # nearest camera depth that counts as in front (and is projected unclamped)


def intersect(kind: str, size: np.ndarray, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Ray parameter of the first hit in front of the origin, inf on a miss.

    origin: [N, 3] or [3] local-frame ray origins; dirs: [N, 3] local directions. Returns [N] float64.
    """
    eps = 1e-9
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "plane":
            t = -origin[..., 2] / dirs[:, 2]
        elif kind == "sphere":
            a = np.einsum("ij,ij->i", dirs, dirs)
            b = 2.0 * (dirs @ origin) if origin.ndim == 1 else 2.0 * np.einsum("ij,ij->i", dirs, origin)
            c = float(origin @ origin) if origin.ndim == 1 else np.einsum("ij,ij->i", origin, origin)
            c = c - size[0] ** 2
            disc = b * b - 4.0 * a * c
            t = (-b - np.sqrt(disc)) / (2.0 * a)  # cameras are never inside a sphere: near root
        elif kind == "box":
            t1 = (-size - origin) / dirs
            t2 = (size - origin) / dirs
            t_near = np.max(np.minimum(t1, t2), axis=1)
            t_far = np.min(np.maximum(t1, t2), axis=1)
            t = np.where(t_near <= t_far, t_near, np.inf)
        else:  # pragma: no cover - internal
            raise ValueError(kind)
    return np.where(np.isfinite(t) & (t > eps), t, np.inf)


def local_normal(kind: str, size: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[N, 3] outward unit normals at local surface points [N, 3]."""
    if kind == "plane":
        return np.tile(np.array([0.0, 0.0, 1.0]), (len(points), 1))
    if kind == "sphere":
        return points / size[0]
    scaled = np.abs(points) / size
    axis = np.argmax(scaled, axis=1)
    normal = np.zeros_like(points)
    normal[np.arange(len(points)), axis] = np.sign(points[np.arange(len(points)), axis])
    return normal


def cast_rays(
    scene: Scene, object_poses: list[tuple[np.ndarray, np.ndarray]], origin: np.ndarray, dirs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Closest hit of rays origin + s * dirs. origin [3] world, dirs [N, 3] world.

    Returns ray parameter [N] (inf on a miss) and primitive index [N] int (-1 on a miss).
    """
    hits = np.empty((len(scene.primitives), len(dirs)))
    for k, (prim, (rotation, centre)) in enumerate(zip(scene.primitives, object_poses)):
        local_origin = rotation.T @ (origin - centre)
        hits[k] = intersect(prim.kind, prim.size, local_origin, dirs @ rotation)
    index = np.argmin(hits, axis=0)
    param = hits[index, np.arange(len(dirs))]
    index = np.where(np.isfinite(param), index, -1)
    return param, index


def pixel_directions(width: int, height: int, intrinsics: np.ndarray, du: float, dv: float) -> np.ndarray:
    """[H*W, 3] camera-frame ray directions (z = 1) through (u=j+du, v=i+dv), row-major."""
    fx, fy, cx, cy = intrinsics
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([((u + du) - cx) / fx, ((v + dv) - cy) / fy, np.ones_like(u)], axis=-1).reshape(-1, 3)


def project(
    points: np.ndarray, world_from_camera: np.ndarray, intrinsics: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """World points [N, 3] -> pixels [N, 2] (u, v) and z-depth [N] in the camera (see `project_to_pixels` for
    points at or behind the camera; `points_visible` rejects them by z)."""
    camera_from_world = invert_pose(torch.as_tensor(world_from_camera, dtype=torch.float64))
    K = intrinsics_matrix(*(float(k) for k in intrinsics), dtype=torch.float64)
    uv, z = project_to_pixels(torch.as_tensor(points, dtype=torch.float64), camera_from_world, K, _MIN_DEPTH)
    return uv.numpy(), z.numpy()


def points_visible(
    scene: Scene,
    object_poses: list[tuple[np.ndarray, np.ndarray]],
    world_from_camera: np.ndarray,
    intrinsics: np.ndarray,
    uv: np.ndarray,
    z: np.ndarray,
    index: np.ndarray,
    width: int,
    height: int,
    rel_tol: float,
) -> np.ndarray:
    """[N] bool: points (projected to uv [N, 2] at depth z [N], on primitives index [N]) are seen.

    In view means z > 0 and uv inside the image rectangle [-0.5, W-0.5] x [-0.5, H-0.5]; seen means the ray
    through uv hits the same primitive at the same depth (exact ray cast, not an interpolated depth map).
    """
    fx, fy, cx, cy = intrinsics
    in_view = (z > _MIN_DEPTH) & (uv[:, 0] >= -0.5) & (uv[:, 0] <= width - 0.5)
    in_view &= (uv[:, 1] >= -0.5) & (uv[:, 1] <= height - 0.5)
    visible = np.zeros(len(z), dtype=bool)
    sel = np.nonzero(in_view)[0]
    if len(sel) == 0:
        return visible
    dirs_cam = np.stack([(uv[sel, 0] - cx) / fx, (uv[sel, 1] - cy) / fy, np.ones(len(sel))], axis=1)
    dirs = dirs_cam @ world_from_camera[:3, :3].T
    param, hit = cast_rays(scene, object_poses, world_from_camera[:3, 3], dirs)
    visible[sel] = (hit == index[sel]) & (np.abs(param - z[sel]) <= rel_tol * z[sel] + 1e-9)
    return visible
