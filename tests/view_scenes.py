"""A small 4D Gaussian scene with exactly known motion, for render-path and track tests.

A textured wall of still Gaussians (plane z = WALL_Z) and a square patch of dynamic Gaussians (plane
z = PATCH_Z) that translates by PATCH_STEP per frame; the camera slides sideways looking along +z. Every
Gaussian is a thin disc lying in its plane, so rendered depth is exact away from the patch's border.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from recon4d.io.scene import Cameras, Gaussians, Scene4D

WALL_Z, PATCH_Z = 4.0, 2.5
WALL_HALF = (2.9, 1.7)  # half extents in x, y
PATCH_CENTRE0 = np.array([-0.3, -0.1, PATCH_Z])
PATCH_HALF = 0.3
PATCH_STEP = np.array([0.05, 0.02, 0.0])  # world units per frame
CAMERA_STEP = 0.04  # sideways camera motion per frame
PATCH_RGB = (0.1, 0.8, 0.3)


def _discs(points: np.ndarray, spacing: float, colors: np.ndarray):
    n = len(points)
    quats = np.tile([1.0, 0.0, 0.0, 0.0], (n, 1))  # discs in the x-y plane, thin along z
    scales = np.tile([0.6 * spacing, 0.6 * spacing, 0.02 * spacing], (n, 1))
    return points, quats, scales, colors


def camera_pose(t: float) -> torch.Tensor:
    """world_from_camera [4, 4] float64 of frame t: identity rotation, sliding along x."""
    pose = torch.eye(4, dtype=torch.float64)
    pose[0, 3] = -0.1 + CAMERA_STEP * t
    pose[1, 3] = -0.05
    return pose


def moving_patch_scene(num_frames: int = 6, width: int = 96, height: int = 54, wall_spacing: float = 0.06,
                       patch_spacing: float = 0.025) -> Scene4D:
    """The scene described in the module docstring; the patch's Gaussians are the last ones (dynamic)."""
    xs = np.arange(-WALL_HALF[0], WALL_HALF[0], wall_spacing) + wall_spacing / 2
    ys = np.arange(-WALL_HALF[1], WALL_HALF[1], wall_spacing) + wall_spacing / 2
    x, y = (a.ravel() for a in np.meshgrid(xs, ys, indexing="ij"))
    wall_points = np.stack([x, y, np.full_like(x, WALL_Z)], 1)
    wall_colors = np.stack([0.5 + 0.4 * np.sin(3 * x) * np.cos(2 * y), 0.5 + 0.3 * np.sin(5 * y + x),
                            0.55 + 0.35 * np.cos(4 * x - y)], 1)
    ps = np.arange(-PATCH_HALF, PATCH_HALF, patch_spacing) + patch_spacing / 2
    px, py = (a.ravel() for a in np.meshgrid(ps, ps, indexing="ij"))
    patch_points = np.stack([px, py, np.zeros_like(px)], 1) + PATCH_CENTRE0
    patch_colors = np.tile(PATCH_RGB, (len(px), 1)) + 0.1 * np.stack([np.sin(20 * px), np.cos(20 * py), 0 * px], 1)
    parts = [_discs(wall_points, wall_spacing, wall_colors), _discs(patch_points, patch_spacing, patch_colors)]
    means, quats, scales, colors = (np.concatenate([p[i] for p in parts]).astype(np.float32) for i in range(4))
    n, n_patch = len(means), len(patch_points)
    is_dynamic = torch.zeros(n, dtype=torch.bool)
    is_dynamic[n - n_patch:] = True
    offsets = np.stack([PATCH_STEP * t for t in range(num_frames)])
    dynamic_means = torch.from_numpy(patch_points[None] + offsets[:, None]).float()
    fx = 0.5 * width / math.tan(math.radians(30))
    scene = Scene4D(
        gaussians=Gaussians(torch.from_numpy(means), torch.from_numpy(quats), torch.from_numpy(scales),
                            torch.full((n,), 0.97), torch.from_numpy(np.clip(colors, 0, 1))),
        is_dynamic=is_dynamic,
        birth_frame=torch.zeros(n, dtype=torch.int32),
        dynamic_means=dynamic_means,
        dynamic_quats=torch.from_numpy(quats[n - n_patch:])[None].repeat(num_frames, 1, 1),
        cameras=Cameras(torch.stack([camera_pose(t) for t in range(num_frames)]),
                        torch.tensor([[fx, fx, (width - 1) / 2, (height - 1) / 2]]).repeat(num_frames, 1),
                        torch.arange(num_frames, dtype=torch.float64) / 10, width, height,
                        [f"frame_{t:06d}" for t in range(num_frames)]),
        config={"preset": "test"},
    )
    scene.validate()
    return scene


def patch_centre(t: float) -> np.ndarray:
    return PATCH_CENTRE0 + PATCH_STEP * t


def project(scene: Scene4D, t: int, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points [N, 3] -> pixels [N, 2] and camera z [N] in frame t."""
    pose = scene.cameras.world_from_camera[t].double().numpy()
    fx, fy, cx, cy = scene.cameras.intrinsics[t].double().numpy()
    cam = (points - pose[:3, 3]) @ pose[:3, :3]
    return np.stack([cam[:, 0] / cam[:, 2] * fx + cx, cam[:, 1] / cam[:, 2] * fy + cy], 1), cam[:, 2]


def true_tracks(scene: Scene4D, queries: np.ndarray, margin: float = 0.0):
    """Exact tracks of queries [P, 3] (t0, u, v): -> uv [T, P, 2], visible [T, P], on_patch [P].

    A query hits the patch if its ray meets the patch square (shrunk by `margin` world units) at t0, else the
    wall. Wall points are hidden where the patch covers them.
    """
    num_frames = scene.num_frames
    uv = np.empty((num_frames, len(queries), 2))
    visible = np.empty((num_frames, len(queries)), bool)
    on_patch = np.empty(len(queries), bool)
    points = np.empty((len(queries), 3))
    for p, (t0, u, v) in enumerate(queries):
        t0 = int(t0)
        pose = scene.cameras.world_from_camera[t0].double().numpy()
        fx, fy, cx, cy = scene.cameras.intrinsics[t0].double().numpy()
        direction = pose[:3, :3] @ np.array([(u - cx) / fx, (v - cy) / fy, 1.0])
        hit = pose[:3, 3] + direction * (PATCH_Z - pose[2, 3]) / direction[2]
        on_patch[p] = bool(np.all(np.abs(hit[:2] - patch_centre(t0)[:2]) < PATCH_HALF - margin))
        if on_patch[p]:
            points[p] = hit - PATCH_STEP * t0  # position at frame 0
        else:
            points[p] = pose[:3, 3] + direction * (WALL_Z - pose[2, 3]) / direction[2]
    width, height = scene.cameras.width, scene.cameras.height
    for t in range(num_frames):
        current = np.where(on_patch[:, None], points + PATCH_STEP * t, points)
        uv[t], z = project(scene, t, current)
        inside = (uv[t, :, 0] > -0.5) & (uv[t, :, 0] < width - 0.5) & (uv[t, :, 1] > -0.5) & (uv[t, :, 1] < height - 0.5)
        # Wall points behind the patch: the ray from the camera to them crosses the patch square.
        pose = scene.cameras.world_from_camera[t].double().numpy()
        ray = current - pose[:3, 3]
        cross = pose[:3, 3] + ray * ((PATCH_Z - pose[2, 3]) / ray[:, 2])[:, None]
        covered = np.all(np.abs(cross[:, :2] - patch_centre(t)[:2]) < PATCH_HALF, axis=1) & ~on_patch
        visible[t] = inside & (z > 0) & ~covered
    return uv, visible, on_patch


def with_linear_motion(scene: Scene4D) -> Scene4D:
    """`moving_patch_scene` with its patch's motion as a continuous-time model instead of per-frame states:
    the same straight lines, written over two trajectory windows (half the patch normalised over the clip,
    half over twice its length), so that evaluating a frame goes window by window."""
    import dataclasses

    from recon4d.io.scene import MotionModel

    start, quats = scene.dynamic_means[0], scene.dynamic_quats[0]
    nd, last = start.shape[0], float(scene.num_frames - 1)
    span = torch.full((nd,), last)
    span[nd // 2:] = 2 * last
    position = torch.stack([start, torch.from_numpy(PATCH_STEP).float()[None] * span[:, None]], 1)  # [Nd, 2, 3]
    rotation = torch.stack([quats, torch.zeros_like(quats)], 1)
    window = torch.stack([torch.zeros(nd), span], 1)
    motion = MotionModel(position, rotation, torch.zeros(nd, 2, 3), poly_degree=1, fourier_terms=0,
                         time_span=last, window=window)
    continuous = dataclasses.replace(scene, dynamic_means=None, dynamic_quats=None, motion=motion)
    continuous.validate()
    return continuous
