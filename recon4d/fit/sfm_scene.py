"""A still scene's model started from structure-from-motion (`sfm.joint`): COLMAP's points and cameras.

The sequential pass builds a model view by view, each view's new Gaussians placed by the depth prior. On a
walk-around (steps of 20-95 degrees) later views contradict what earlier ones placed, and what the views share
never becomes one surface (lego, every 4th view held out: 11.6 dB held out). 3DGS fits a photo set the other
way: COLMAP's points start the Gaussians, COLMAP's cameras place every view, and one optimisation fits all
views at once. This module builds that start as a `Scene4D` of still Gaussians; the refinement
(`recon4d.fit.refine`) is the optimisation.

World and unit: the frame of the first fitted frame COLMAP placed, and the median depth of COLMAP's points in
front of that camera (the depth unit the fit's learning rates are given in, as the sequential pass's frame 0).
"""
from __future__ import annotations

import numpy as np
import torch

from recon4d.fit.sfm_start import sfm_start
from recon4d.geometry.camera import invert_pose
from recon4d.geometry.lie import fill_poses
from recon4d.io.scene import Cameras, Gaussians, Scene4D
from recon4d.io.video import Clip
from recon4d.priors.sfm import SfmCameras, SfmConfig

_COLOR_CHUNK = 16384  # points per median: 500 frames x 16384 points x 3 float32 = 98 MB
SFM_CAMERAS = "sfm_camera_from_world"  # scene array [T, 4, 4]: COLMAP's cameras in the scene's world, NaN unplaced


def placed_frames(camera_from_world: np.ndarray | torch.Tensor) -> list[int]:
    """Frames whose camera [T, 4, 4] is finite (COLMAP placed them)."""
    rows = camera_from_world[:, 0, 0]
    finite = np.isfinite(rows) if isinstance(rows, np.ndarray) else torch.isfinite(rows).numpy()
    return [int(t) for t in np.flatnonzero(finite)]


def to_anchor_frame(camera_from_world: np.ndarray, points: np.ndarray, anchor: int) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP's cameras [T, 4, 4] (NaN rows: not placed) and points [P, 3] moved into camera `anchor`'s frame and
    scaled so that the median depth of the points in front of it is 1.

        >>> cameras = np.stack([np.eye(4), np.eye(4)]); cameras[1, 0, 3] = -2.0  # camera 1 two units to the right
        >>> cameras_1, points_1 = to_anchor_frame(cameras, np.array([[0.0, 0, 4], [2.0, 0, 4]]), 1)
        >>> points_1.tolist(), cameras_1[0, 0, 3].item()
        ([[-0.5, 0.0, 1.0], [0.0, 0.0, 1.0]], 0.5)
    """
    anchor_from_world = camera_from_world[anchor]
    points = points @ anchor_from_world[:3, :3].T + anchor_from_world[:3, 3]
    in_front = points[:, 2] > 0
    if not in_front.any():
        raise ValueError("no COLMAP point lies in front of the anchor camera")
    scale = 1.0 / float(np.median(points[in_front, 2]))
    cameras = camera_from_world @ np.linalg.inv(anchor_from_world)
    cameras[:, :3, 3] *= scale
    return cameras, points * scale


def gaussians_from_points(points: np.ndarray, colors: np.ndarray, opacity: float, neighbours: int) -> Gaussians:
    """Round Gaussians at `points` [P, 3] with `colors` [P, 3] in [0, 1]: each as wide as its mean distance to its
    `neighbours` nearest points (3DGS's start), as opaque as `opacity`.

        >>> g = gaussians_from_points(np.array([[0.0, 0, 1], [0.1, 0, 1], [0.0, 0.1, 1]]), np.full((3, 3), 0.5), 0.5, 2)
        >>> [round(float(s), 3) for s in g.scales[:, 0]]
        [0.1, 0.121, 0.121]
    """
    from scipy.spatial import cKDTree

    count = points.shape[0]
    k = min(neighbours, count - 1)
    distances, _ = cKDTree(points).query(points, k=k + 1)
    width = distances[:, 1:].mean(1) if k > 0 else np.ones(count)
    width = np.maximum(width, np.median(width) * 1e-2)  # points on top of each other: not a zero-width Gaussian
    return Gaussians(means=torch.as_tensor(points, dtype=torch.float32),
                     quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(count, 1),
                     scales=torch.as_tensor(width, dtype=torch.float32)[:, None].repeat(1, 3),
                     opacities=torch.full((count,), float(opacity)),
                     colors=torch.as_tensor(np.clip(colors, 0.0, 1.0), dtype=torch.float32))


def colors_from_frames(points: np.ndarray, camera_from_world: np.ndarray, K: np.ndarray,
                       frames: np.ndarray) -> np.ndarray:
    """[P, 3] colour in [0, 1] of each point: the median over `frames` [F, H, W, 3] uint8 of the pixel it lands on
    (cameras [F, 4, 4], intrinsics K [4]); 0.5 grey where it lands on none. The median keeps out the views
    where something else covers the point.

        >>> frames = np.zeros((3, 4, 4, 3), np.uint8); frames[:2, 1, 1] = 255  # two of three views see white
        >>> colors_from_frames(np.array([[0.0, 0, 1]]), np.stack([np.eye(4)] * 3), np.array([2.0, 2, 1, 1]), frames)
        array([[1., 1., 1.]])
    """
    from recon4d.geometry.camera import project_to_pixels

    fx, fy, cx, cy = (float(v) for v in K)
    matrix = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    pixels, depth = project_to_pixels(torch.as_tensor(points), torch.as_tensor(camera_from_world), matrix)
    u, v = pixels[..., 0].round().long().numpy(), pixels[..., 1].round().long().numpy()
    height, width = frames.shape[1:3]
    seen = (depth.numpy() > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    colors = np.full((points.shape[0], 3), 0.5)
    for start in range(0, points.shape[0], _COLOR_CHUNK):  # [F, chunk, 3] samples at a time
        part = slice(start, start + _COLOR_CHUNK)
        samples = np.full((frames.shape[0], seen[:, part].shape[1], 3), np.nan, dtype=np.float32)
        for f in range(frames.shape[0]):
            hit = seen[f, part]
            samples[f, hit] = frames[f, v[f, part][hit], u[f, part][hit]] / 255.0
        any_seen = seen[:, part].any(0)
        colors[start:start + samples.shape[1]][any_seen] = np.nanmedian(samples[:, any_seen], axis=0)
    return colors


def place_unfitted(world_from_camera: torch.Tensor, sfm_camera_from_world: torch.Tensor,
                   fitted: list[int]) -> torch.Tensor:
    """Cameras [T, 4, 4] where every frame COLMAP placed but the fit did not fit (held out, skipped) takes
    COLMAP's motion from the nearest fitted frame applied to that frame's (fitted) camera; the rest unchanged.
    A walk-around's neighbouring views are 20-95 degrees apart: interpolating between them would miss.

    world_from_camera: [T, 4, 4]; sfm_camera_from_world: [T, 4, 4] in the same world and unit (NaN: not placed).
    """
    placed = set(placed_frames(sfm_camera_from_world)) - set(fitted)
    anchors = [t for t in fitted if bool(torch.isfinite(sfm_camera_from_world[t, 0, 0]))]
    if not anchors:
        return world_from_camera
    out = world_from_camera.clone()
    for t in sorted(placed):
        k = min(anchors, key=lambda a: abs(a - t))
        fitted_camera = invert_pose(world_from_camera[k].double())
        camera = sfm_start(sfm_camera_from_world[t], sfm_camera_from_world[k], fitted_camera, 1.0)
        out[t] = invert_pose(camera).to(out.dtype)
    return out


def view_errors(scene: Scene4D, frames: np.ndarray, views: list[int],
                device: torch.device | str = "cpu") -> dict[int, float]:
    """{view: mean absolute error in [0, 1] of the scene rendered from its camera against frames[view]} for clip
    frames `frames` [T, H, W, 3] uint8, rendered on `device`."""
    from recon4d.io.scene_render import render_scene

    errors = {}
    for t in views:
        color = render_scene(scene, float(t), device=device).color.clamp(0, 1).cpu()
        errors[t] = float((color - torch.from_numpy(frames[t]).float() / 255.0).abs().mean())
    return errors


def misplaced_views(errors: dict[int, float], ratio: float) -> list[int]:
    """Views whose error is above `ratio` times the median view's: the model, fitted to all views, cannot draw
    them from their cameras (COLMAP placed them wrongly). None for ratio 0.

        >>> misplaced_views({0: 0.02, 1: 0.03, 2: 0.025, 3: 0.4}, 5.0)
        [3]
    """
    if ratio <= 0 or not errors:
        return []
    median = float(np.median(list(errors.values())))
    return [t for t, error in errors.items() if error > ratio * median]


def scene_from_sfm(sfm: SfmCameras, clip: Clip, K: np.ndarray, fitted: list[int], config: SfmConfig) -> Scene4D | None:
    """The start of a joint fit: still Gaussians at COLMAP's points, every frame's camera COLMAP's (frames it
    did not place interpolated between placed ones, or the nearest placed one's at the ends), COLMAP's cameras
    kept as the `SFM_CAMERAS` array. None when COLMAP placed no fitted frame or too few points.

    sfm: COLMAP's result for all `clip` frames; K: [4] fx, fy, cx, cy at the clip's size; fitted: the frames the
    refinement fits.
    """
    placed = placed_frames(sfm.camera_from_world)
    placed_set = set(placed)
    placed_fitted = [t for t in fitted if t in placed_set]
    if not placed_fitted or sfm.points.shape[0] < config.min_scale_points:
        return None
    cameras_sfm, points = to_anchor_frame(sfm.camera_from_world, sfm.points, placed_fitted[0])
    colors = colors_from_frames(points, cameras_sfm[placed_fitted], K, clip.frames[placed_fitted])
    gaussians = gaussians_from_points(points, colors, config.point_opacity, config.point_neighbours)
    world_from_camera = torch.eye(4, dtype=torch.float64).repeat(clip.num_frames, 1, 1)
    world_from_camera[placed] = invert_pose(torch.as_tensor(cameras_sfm[placed]))
    world_from_camera = fill_poses(world_from_camera, placed)
    world_from_camera[: placed[0]] = world_from_camera[placed[0]]
    world_from_camera[placed[-1] + 1:] = world_from_camera[placed[-1]]
    count, frames = len(gaussians), clip.num_frames
    return Scene4D(
        gaussians=gaussians, is_dynamic=torch.zeros(count, dtype=torch.bool),
        birth_frame=torch.zeros(count, dtype=torch.int32),
        dynamic_means=torch.zeros(len(fitted), 0, 3), dynamic_quats=torch.zeros(len(fitted), 0, 4),
        state_frames=torch.as_tensor(fitted),
        cameras=Cameras(world_from_camera=world_from_camera,
                        intrinsics=torch.as_tensor(K, dtype=torch.float32)[None].repeat(frames, 1),
                        timestamps=torch.as_tensor(clip.timestamps, dtype=torch.float64),
                        width=clip.width, height=clip.height, frame_names=list(clip.names)),
        arrays={"moving_masks": torch.zeros(frames, clip.height, clip.width, dtype=torch.bool),
                "source_indices": torch.as_tensor(clip.source_indices),
                SFM_CAMERAS: torch.as_tensor(cameras_sfm)},
    )
