"""Scores of a fitted scene against synthetic ground truth (`recon4d eval OUT --gt DIR`)."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from recon4d.eval.metrics import ate_rpe, depth_errors, mask_iou, track_errors
from recon4d.eval.synthetic import SyntheticClip
from recon4d.io.scene import Scene4D
from recon4d.io.scene_render import render_scene
from recon4d.track import track_points


def _resize_nearest(maps: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.stack([cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) for m in maps]).astype(bool)


def evaluate_scene(scene: Scene4D, gt: SyntheticClip) -> dict:
    """Camera ATE/RPE (Sim(3)-aligned), depth AbsRel, moving-mask IoU and 2D track error.

    The scene may be at a lower resolution than the ground truth and cover only its first frames; ground
    truth is resized (masks: nearest; depth: area) and tracks scaled to the scene's pixels.
    """
    num_frames = scene.num_frames
    width, height = scene.cameras.width, scene.cameras.height
    gt_height, gt_width = gt.depth.shape[1:3]
    sx, sy = width / gt_width, height / gt_height
    results: dict = {}

    poses = ate_rpe(scene.cameras.world_from_camera.double().numpy(), gt.world_from_camera[:num_frames])
    results.update({f"camera_{k}": v for k, v in poses.items()})
    results["ate_percent"] = 100 * poses["ate_rmse"] / poses["path_length"] if poses["path_length"] > 0 else None

    rendered, alphas = [], []
    for t in range(num_frames):
        with torch.no_grad():
            out = render_scene(scene, t, size=(width, height))
        rendered.append(out.depth.numpy())
        alphas.append(out.alpha.numpy())
    gt_depth = np.stack([cv2.resize(d, (width, height), interpolation=cv2.INTER_AREA) for d in gt.depth[:num_frames]])
    valid = np.stack(alphas) > 0.5
    depth = depth_errors(np.stack(rendered), gt_depth, valid=valid, align="median")
    results.update({"depth_abs_rel": depth["abs_rel"], "depth_delta_1_25": depth["delta_1_25"]})

    if "moving_masks" in scene.arrays:
        gt_masks = _resize_nearest(gt.moving_mask[:num_frames], width, height)
        results["mask_iou"] = mask_iou(scene.arrays["moving_masks"].numpy().astype(bool), gt_masks)

    scale = np.array([sx, sy])
    gt_tracks = (gt.tracks_2d[:num_frames] + 0.5) * scale - 0.5  # pixel centres stay centres under resizing
    queries = torch.tensor(np.concatenate([np.zeros((gt_tracks.shape[1], 1)), gt_tracks[0]], 1), dtype=torch.float32)
    tracks = track_points(scene, queries)
    errors = track_errors(tracks.tracks_2d.numpy(), gt_tracks, gt.track_visible[:num_frames], tracks.visible.numpy())
    results.update({"track_median_px": errors["median_px"], "track_within_2px": errors["within_2px"],
                    "track_visibility_accuracy": errors["visibility_accuracy"]})
    results["resolution"] = [width, height]
    return results
