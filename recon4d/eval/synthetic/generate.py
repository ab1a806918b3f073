"""`make_synthetic`: frames, depth, exact forward flow and occlusion, moving masks and point tracks of a
synthetic clip, all from rays through pixel centres (RGB supersampled)."""
from __future__ import annotations

import numpy as np

from recon4d.errors import InputError, Recon4DError
from recon4d.eval.synthetic.clip import SyntheticClip
from recon4d.eval.synthetic.config import VARIANTS, SyntheticConfig
from recon4d.eval.synthetic.raycast import cast_rays, pixel_directions, points_visible, project
from recon4d.eval.synthetic.scene import Scene, build_scene, camera_poses, make_intrinsics
from recon4d.eval.synthetic.shading import shade


def make_synthetic(
    variant: str = "translate",
    num_frames: int = 12,
    width: int = 128,
    height: int = 96,
    seed: int = 0,
    config: SyntheticConfig | None = None,
) -> SyntheticClip:
    """Render a synthetic clip with exact depth, flow, occlusion, motion masks and point tracks.

    Args:
        variant: one of ``VARIANTS``.
        num_frames: T >= 2.
        width, height: image size in pixels (>= 16 each).
        seed: picks colours, texture and motion phases; the same seed gives the same clip.
        config: generator settings (``SyntheticConfig()`` when None).
    """
    config = config or SyntheticConfig()
    if variant not in VARIANTS:
        raise InputError(f"unknown synthetic variant {variant!r}", hint=f"use one of {', '.join(VARIANTS)}")
    if num_frames < 2:
        raise InputError(f"num_frames must be >= 2, got {num_frames}", hint="flow needs two frames")
    if width < 16 or height < 16:
        raise InputError(f"image size {width}x{height} is too small", hint="use at least 16x16 pixels")
    if config.supersample < 1:
        raise InputError("supersample must be >= 1", hint="1 disables anti-aliasing")

    scene = build_scene(variant, seed, config)
    intrinsics = make_intrinsics(width, height, config.horizontal_fov_deg)
    poses = camera_poses(variant, num_frames, config)
    object_poses = [[prim.pose(float(t)) for prim in scene.primitives] for t in range(num_frames)]
    moving_ids = np.array([k for k, prim in enumerate(scene.primitives) if prim.moving], dtype=np.int64)

    n_pix = width * height
    centre_dirs_cam = pixel_directions(width, height, intrinsics, 0.0, 0.0)
    ss = config.supersample
    sub_offsets = [((a + 0.5) / ss - 0.5, (b + 0.5) / ss - 0.5) for b in range(ss) for a in range(ss)]
    sub_dirs_cam = np.concatenate([pixel_directions(width, height, intrinsics, du, dv) for du, dv in sub_offsets])

    frames = np.empty((num_frames, height, width, 3), np.uint8)
    depth = np.empty((num_frames, height, width), np.float32)
    moving_mask = np.empty((num_frames, height, width), bool)
    hit_points: list[np.ndarray] = []
    hit_index: list[np.ndarray] = []
    for t in range(num_frames):
        rotation, origin = poses[t, :3, :3], poses[t, :3, 3]
        dirs = centre_dirs_cam @ rotation.T
        param, index = cast_rays(scene, object_poses[t], origin, dirs)
        if np.any(index < 0):
            raise Recon4DError("synthetic camera looks past the scene", hint="reduce camera motion amplitudes")
        depth[t] = param.reshape(height, width)
        moving_mask[t] = np.isin(index, moving_ids).reshape(height, width)
        hit_points.append(origin + param[:, None] * dirs)
        hit_index.append(index)

        sub_dirs = sub_dirs_cam @ rotation.T
        sub_param, sub_index = cast_rays(scene, object_poses[t], origin, sub_dirs)
        colour = shade(scene, object_poses[t], origin, sub_dirs, sub_param, sub_index, config)
        colour = colour.reshape(len(sub_offsets), n_pix, 3).mean(axis=0)
        frames[t] = np.clip(np.round(colour * 255.0), 0, 255).astype(np.uint8).reshape(height, width, 3)

    # Exact forward flow: carry each pixel's surface point with its object to t+1 and project it there.
    pixel_uv = centre_dirs_cam[:, :2] * intrinsics[:2] + intrinsics[2:]
    flow = np.empty((num_frames - 1, height, width, 2), np.float32)
    occluded = np.empty((num_frames - 1, height, width), bool)
    for t in range(num_frames - 1):
        moved = move_points(hit_points[t], hit_index[t], object_poses[t], object_poses[t + 1])
        uv, z = project(moved, poses[t + 1], intrinsics)
        flow[t] = (uv - pixel_uv).reshape(height, width, 2)
        seen = points_visible(scene, object_poses[t + 1], poses[t + 1], intrinsics, uv, z, hit_index[t], width, height,
                        config.occlusion_rel_tol)
        occluded[t] = ~seen.reshape(height, width)

    tracks_3d, tracks_2d, track_visible = _make_tracks(
        scene, object_poses, poses, intrinsics, hit_points[0], hit_index[0], moving_mask[0], width, height, seed,
        config,
    )
    return SyntheticClip(
        frames=frames,
        intrinsics=intrinsics,
        world_from_camera=poses,
        depth=depth,
        flow_forward=flow,
        occluded_forward=occluded,
        moving_mask=moving_mask,
        tracks_3d=tracks_3d,
        tracks_2d=tracks_2d,
        track_visible=track_visible,
        variant=variant,
    )


def move_points(
    points: np.ndarray,
    index: np.ndarray,
    poses_from: list[tuple[np.ndarray, np.ndarray]],
    poses_to: list[tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """Carry world points [N, 3] lying on primitives ``index`` [N] from one time to another."""
    moved = points.copy()
    for k, ((r0, c0), (r1, c1)) in enumerate(zip(poses_from, poses_to)):
        sel = index == k
        if np.any(sel):
            moved[sel] = ((points[sel] - c0) @ r0) @ r1.T + c1
    return moved


def _make_tracks(
    scene: Scene,
    object_poses: list[list[tuple[np.ndarray, np.ndarray]]],
    poses: np.ndarray,
    intrinsics: np.ndarray,
    points0: np.ndarray,
    index0: np.ndarray,
    moving0: np.ndarray,
    width: int,
    height: int,
    seed: int,
    config: SyntheticConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick P pixel centres of frame 0 (a share on moving objects) and follow their surface points."""
    rng = np.random.default_rng(seed + 7919)  # independent of the scene's stream, still seeded
    n_pix = width * height
    num_tracks = min(config.num_tracks, n_pix)
    moving_pixels = np.flatnonzero(moving0.reshape(-1))
    still_pixels = np.flatnonzero(~moving0.reshape(-1))
    n_moving = min(len(moving_pixels), int(round(num_tracks * config.track_moving_fraction)))
    picked = np.concatenate([
        rng.choice(moving_pixels, n_moving, replace=False),
        rng.choice(still_pixels, num_tracks - n_moving, replace=False),
    ])
    index = index0[picked]
    num_frames = len(poses)
    tracks_3d = np.empty((num_frames, num_tracks, 3))
    tracks_2d = np.empty((num_frames, num_tracks, 2))
    visible = np.empty((num_frames, num_tracks), bool)
    for t in range(num_frames):
        tracks_3d[t] = move_points(points0[picked], index, object_poses[0], object_poses[t])
        uv, z = project(tracks_3d[t], poses[t], intrinsics)
        tracks_2d[t] = uv
        visible[t] = points_visible(scene, object_poses[t], poses[t], intrinsics, uv, z, index, width, height,
                              config.occlusion_rel_tol)
    # Frame 0 projections are the picked pixel centres up to rounding; make them exact.
    tracks_2d[0] = np.stack([picked % width, picked // width], axis=1).astype(np.float64)
    return tracks_3d, tracks_2d, visible
