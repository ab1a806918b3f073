"""Point tracks from a fitted scene: a query pixel follows the Gaussians under it through time.

A query (t0, u, v) is lifted to 3D with the rendered depth of frame t0, attached to its K nearest visible
Gaussians (inverse-distance weights), and moved at every frame by their weighted displacement. Visibility
at a frame: inside the image and not behind the rendered surface (depth test with a relative tolerance).

A long clip is fitted in temporal windows, each with its own Gaussians (`Scene4D.window_at`), whose
trajectories mean nothing outside their window. A track is handed over at each window boundary: at the first
frame of the next window, which the previous window's Gaussians still hold (it is their death frame), it is
attached to the next window's Gaussians nearest to it; backwards in time likewise.
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


@dataclass(frozen=True)
class _Anchor:
    """Points [P, 3] at frame `frame`, each held by its k nearest Gaussians: `neighbours` [G] (distinct),
    `inverse` [P, k] picks each point's among them, `weights` [P, k] (inverse distance, summing to 1),
    `origin` [G, 3] their positions at `frame`; `dynamic` [G] bool marks those with a trajectory and
    `trajectories` [D] their rows among the scene's dynamic Gaussians (still ones never move)."""

    frame: int
    points: torch.Tensor
    neighbours: torch.Tensor
    inverse: torch.Tensor
    weights: torch.Tensor
    origin: torch.Tensor
    dynamic: torch.Tensor
    trajectories: torch.Tensor


def _anchor(scene: Scene4D, points: torch.Tensor, frame: int, candidates: torch.Tensor, count: int,
            means: torch.Tensor | None = None) -> _Anchor:
    """Attach points [P, 3] at `frame` to their `count` nearest Gaussians among `candidates` ([N] or [P, N]
    bool); `means`: all N positions at `frame` when the caller has them."""
    means = _all_means(scene, frame) if means is None else means
    distance = torch.cdist(points, means).masked_fill(~candidates, float("inf"))
    near_dist, near_idx = distance.topk(count, largest=False)
    weights = 1.0 / near_dist.clamp_min(1e-6)
    weights = torch.where(torch.isfinite(near_dist), weights, torch.zeros_like(weights))
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
    held, inverse = torch.unique(near_idx, return_inverse=True)
    dynamic = scene.is_dynamic[held]
    place = torch.cumsum(scene.is_dynamic.long(), 0) - 1  # each Gaussian's row among the dynamic ones
    return _Anchor(frame, points, held, inverse, weights, means[held], dynamic, place[held[dynamic]])


def _follow(scene: Scene4D, anchor: _Anchor, t: int) -> torch.Tensor:
    """The anchored points at frame t [P, 3]: moved by their Gaussians' weighted displacement. Only those
    Gaussians' trajectories are evaluated (the same numbers as `_all_means`)."""
    positions = anchor.origin.clone()
    positions[anchor.dynamic] = scene.dynamic_state_at(t, anchor.trajectories)[0]
    displacement = (positions - anchor.origin)[anchor.inverse]  # [P, k, 3]
    return anchor.points + (anchor.weights[..., None] * displacement).sum(1)


def _handed_over(scene: Scene4D, anchor: _Anchor, points: torch.Tensor, frame: int, holders: torch.Tensor,
                 config: TrackConfig) -> _Anchor:
    """`points` at `frame` attached to the Gaussians `holders` [N] bool (another window's), or left with
    `anchor` when there are none."""
    count = int(holders.sum())
    return _anchor(scene, points, frame, holders, min(config.neighbours, count)) if count else anchor


def _track(scene: Scene4D, start: _Anchor, config: TrackConfig) -> torch.Tensor:
    """Tracks [T, P, 3] of the anchored points over all frames, handed over at every window boundary."""
    tracks = torch.empty(scene.num_frames, start.points.shape[0], 3)
    first, last = scene.window_at(start.frame)
    for t in range(first, last + 1):
        tracks[t] = _follow(scene, start, t)
    anchor, boundary = start, last + 1
    while boundary < scene.num_frames:  # later windows
        points = _follow(scene, anchor, boundary)
        anchor = _handed_over(scene, anchor, points, boundary, scene.alive_at(boundary), config)
        _, last = scene.window_at(boundary)
        for t in range(boundary, last + 1):
            tracks[t] = _follow(scene, anchor, t)
        boundary = last + 1
    anchor, boundary = start, first
    while boundary > 0:  # earlier windows: their Gaussians hold `boundary`, their death frame
        anchor = _handed_over(scene, anchor, tracks[boundary], boundary, scene.alive_at(boundary - 1), config)
        first, _ = scene.window_at(boundary - 1)
        for t in range(first, boundary):
            tracks[t] = _follow(scene, anchor, t)
        boundary = first
    return tracks


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
        _, gauss_z = _project(means_start, scene, p_start)
        # Candidates: alive Gaussians near the surface seen at the query (not hidden far behind it).
        behind = gauss_z[None] > z[:, None] * (1 + config.depth_tolerance)
        start = _anchor(scene, points, p_start, alive[None] & ~behind, min(config.neighbours, int(alive.sum())),
                        means_start)
        tracks_3d[:, rows] = _track(scene, start, config)
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
