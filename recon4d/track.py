"""Point tracks from a fitted scene: a query pixel follows the Gaussians under it through time.

A query (t0, u, v) is lifted to 3D with the rendered depth of frame t0, attached to its K nearest visible
Gaussians (inverse-distance weights), and moved at every frame by their weighted displacement. Visibility
at a frame: inside the image and not behind the rendered surface (depth test with a relative tolerance).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from recon4d.geometry.camera import invert_pose, project_to_pixels, transform_points
from recon4d.io.scene import Scene4D
from recon4d.io.scene_render import render_scene


@dataclass(frozen=True)
class TrackConfig:
    """neighbours: Gaussians a query is attached to; depth_tolerance: relative depth slack of the visibility
    test and of the attachment (Gaussians farther than this behind the surface are not candidates)."""

    neighbours: int = 4
    depth_tolerance: float = 0.05


@dataclass
class Tracks:
    """tracks_2d: [T, P, 2] pixels (OpenCV centres); tracks_3d: [T, P, 3] world; visible: [T, P] bool."""

    tracks_2d: torch.Tensor
    tracks_3d: torch.Tensor
    visible: torch.Tensor


def _render_depth(scene: Scene4D, t: int) -> torch.Tensor:
    with torch.no_grad():
        out = render_scene(scene, t)
    return torch.where(out.alpha > 0.5, out.depth, torch.full_like(out.depth, float("inf")))


def _all_means(scene: Scene4D, t: int) -> torch.Tensor:
    """Positions of all N Gaussians at frame t (unborn ones included), [N, 3]."""
    means = scene.gaussians.means.clone()
    means[scene.is_dynamic] = scene.dynamic_state_at(t)[0]
    return means


def _means_of(scene: Scene4D, t: int, index: torch.Tensor) -> torch.Tensor:
    """Positions [I, 3] at frame t of the Gaussians `index` [I] (distinct), the same numbers as `_all_means`:
    only their own trajectories are evaluated."""
    means = scene.gaussians.means[index].clone()
    dynamic = scene.is_dynamic[index]
    place = torch.cumsum(scene.is_dynamic.long(), 0) - 1  # each Gaussian's row among the dynamic ones
    means[dynamic] = scene.dynamic_state_at(t, place[index[dynamic]])[0]
    return means


def _project(points: torch.Tensor, scene: Scene4D, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World points [N, 3] -> pixels [N, 2] and z [N] in the input camera of frame t."""
    return project_to_pixels(points, invert_pose(scene.cameras.world_from_camera[t]).float(), scene.cameras.K(t))


def track_points(scene: Scene4D, queries: torch.Tensor, config: TrackConfig = TrackConfig()) -> Tracks:
    """queries: [P, 3] rows (t0, u, v) with t0 a frame index -> Tracks over all frames."""
    num_frames, width, height = scene.num_frames, scene.cameras.width, scene.cameras.height
    depths = {}
    tracks_3d = torch.empty(num_frames, queries.shape[0], 3)
    for p_start in torch.unique(queries[:, 0].long()).tolist():
        rows = (queries[:, 0].long() == p_start).nonzero().squeeze(1)
        depth = depths.setdefault(p_start, _render_depth(scene, p_start))
        uv = queries[rows, 1:3].float()
        col = uv[:, 0].round().long().clamp(0, width - 1)
        row = uv[:, 1].round().long().clamp(0, height - 1)
        z = depth[row, col]
        z = torch.where(torch.isfinite(z), z, depth[torch.isfinite(depth)].median() if torch.isfinite(depth).any() else torch.ones_like(z))
        K = scene.cameras.K(p_start)
        cam = torch.stack([(uv[:, 0] - K[0, 2]) / K[0, 0] * z, (uv[:, 1] - K[1, 2]) / K[1, 1] * z, z], -1)
        points = transform_points(scene.cameras.world_from_camera[p_start].float(), cam)
        means_start = _all_means(scene, p_start)
        alive = scene.alive_at(p_start)
        gauss_uv, gauss_z = _project(means_start, scene, p_start)
        # Candidates: alive Gaussians near the surface seen at the query (not hidden far behind it).
        distance = torch.cdist(points, means_start)
        behind = gauss_z[None] > z[:, None] * (1 + config.depth_tolerance)
        distance = distance.masked_fill(~alive[None] | behind, float("inf"))
        k = min(config.neighbours, int(alive.sum()))
        near_dist, near_idx = distance.topk(k, largest=False)
        weights = 1.0 / near_dist.clamp_min(1e-6)
        weights = torch.where(torch.isfinite(near_dist), weights, torch.zeros_like(weights))
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
        neighbours, inverse = torch.unique(near_idx, return_inverse=True)
        for t in range(num_frames):
            displacement = (_means_of(scene, t, neighbours) - means_start[neighbours])[inverse]  # [P, k, 3]
            tracks_3d[t, rows] = points + (weights[..., None] * displacement).sum(1)
    tracks_2d = torch.empty(num_frames, queries.shape[0], 2)
    visible = torch.empty(num_frames, queries.shape[0], dtype=torch.bool)
    for t in range(num_frames):
        uv, z = _project(tracks_3d[t], scene, t)
        depth = depths.setdefault(t, _render_depth(scene, t))
        inside = (uv[:, 0] > -0.5) & (uv[:, 0] < width - 0.5) & (uv[:, 1] > -0.5) & (uv[:, 1] < height - 0.5) & (z > 0)
        col = uv[:, 0].round().long().clamp(0, width - 1)
        row = uv[:, 1].round().long().clamp(0, height - 1)
        surface = depth[row, col]
        visible[t] = inside & (z <= surface * (1 + config.depth_tolerance))
        tracks_2d[t] = uv
    return Tracks(tracks_2d=tracks_2d, tracks_3d=tracks_3d, visible=visible)
