"""Quality of a fitted scene against its input frames: PSNR/SSIM of fitted and held-out frames, moving masks.

A held-out frame is scored from its photometrically refined camera (the interpolated one only starts the
search; the Gaussians stay frozen), as NeRF-W and the dynamic-NVS benchmarks do for test views. Moving masks
are rendered from the 4D model (share of each pixel's colour that comes from moving Gaussians), at every frame.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from recon4d.device import side_by_side
from recon4d.fit.camera import optimize_camera
from recon4d.fit.config import FitConfig
from recon4d.fit.losses import photometric_loss
from recon4d.fit.model import CameraParams, median_distance
from recon4d.fit.pyramid import area_downsample
from recon4d.geometry.camera import invert_pose, scale_camera_matrix
from recon4d.image import psnr, ssim
from recon4d.io.scene import Gaussians, Scene4D
from recon4d.io.scene_render import render_scene
from recon4d.progress import progress_bar
from recon4d.render import rasterize

MIN_COARSE_SIDE = 16  # pixels: a frame whose half is smaller is searched at its own resolution only


def moving_share(scene: Scene4D) -> Callable[[Gaussians, torch.Tensor], torch.Tensor]:
    """Feature function for `render_scene`: 1 for moving Gaussians (`Scene4D.is_moving`), else 0 -> [Na, 1]."""
    return lambda gaussians, alive: scene.is_moving[alive].float()[:, None]


def moving_mask_from(share: torch.Tensor, alpha: torch.Tensor, threshold: float) -> torch.Tensor:
    """[H, W] bool: pixels whose rendered colour comes mostly (> threshold) from moving Gaussians
    (occlusion-aware, since the share is alpha-blended like colour)."""
    return share > threshold * alpha.clamp_min(1e-6)


@torch.no_grad()
def render_moving_masks(scene: Scene4D, threshold: float, device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """Moving-object masks [T, H, W] bool from the 4D model (`moving_mask_from`), at every frame, held-out
    frames included, unlike the flow-based prior masks of the fitted frames."""
    masks = torch.zeros(scene.num_frames, scene.cameras.height, scene.cameras.width, dtype=torch.bool)
    for t in range(scene.num_frames):
        out = render_scene(scene, t, colors=moving_share(scene), device=device)
        masks[t] = moving_mask_from(out.color[..., 0], out.alpha, threshold).cpu()
    return masks


def refine_camera(scene: Scene4D, t: int, target: torch.Tensor, config: FitConfig,
                  device: torch.device) -> torch.Tensor:
    """Camera [4, 4] of an unfitted frame t (held out, or skipped between keyframes): its stored (interpolated)
    camera refined photometrically against `target` [H, W, 3] with the Gaussians frozen
    (`config.eval.holdout_refine_iters` Adam steps on L1 + `holdout_refine_ssim` x (1 - SSIM), the rate
    shrinking by `holdout_refine_lr_decay` over all of them; the first `holdout_refine_coarse_share` of them at
    half resolution; each resolution keeps the pose of its lowest loss)."""
    cfg = config.eval
    pose = invert_pose(scene.cameras.world_from_camera[t]).float().to(device)
    gaussians = scene.gaussians_at(t)  # frozen: evaluated once, not at every step
    frozen = [x.to(device=device, dtype=torch.float32) for x in
              (gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.colors)]
    depth_unit = median_distance(frozen[0], invert_pose(pose)[:3, 3])
    K = scene.cameras.K(t).to(device=device, dtype=torch.float32)
    total = cfg.holdout_refine_iters
    coarse = round(total * cfg.holdout_refine_coarse_share) if min(target.shape[:2]) >= 2 * MIN_COARSE_SIDE else 0
    done = 0
    for factor, steps in ((2, coarse), (1, total - coarse)):
        if steps <= 0:
            continue
        level_target = area_downsample(target[None], factor)[0]
        level_K = scale_camera_matrix(K, 1 / factor, 1 / factor)
        height, width = level_target.shape[:2]
        weight = torch.ones(height, width, device=device)

        def loss_of(camera_from_world: torch.Tensor) -> torch.Tensor:
            color = rasterize(*frozen, camera_from_world, level_K, width, height).color
            return photometric_loss(color, level_target, weight, cfg.holdout_refine_ssim)

        # One rate schedule across the phases: this one covers steps done .. done + steps of the total.
        lr = config.sequential.lr_camera_rotation * cfg.holdout_refine_lr_decay ** (done / total)
        pose, _ = optimize_camera(CameraParams(pose[None], depth_unit), 0, loss_of, steps, lr,
                                  lr_decay=cfg.holdout_refine_lr_decay ** (steps / total), keep_best=True)
        done += steps
    return pose


def refine_cameras(scene: Scene4D, frames: np.ndarray, times: list[int], config: FitConfig,
                   device: torch.device) -> dict[int, torch.Tensor]:
    """`refine_camera` of each frame t in `times` against frames[t] ([T, H, W, 3] uint8): {t: [4, 4]}.

    On the CPU the frames are searched side by side (`recon4d.device.side_by_side`): a single search is a
    chain of small steps that keeps only part of a second core busy. Each search is independent, so the poses
    do not depend on the thread count."""
    def search(t: int) -> torch.Tensor:
        target = torch.as_tensor(frames[t], dtype=torch.float32, device=device) / 255.0
        return refine_camera(scene, t, target, config, device)

    return dict(zip(times, side_by_side(search, times, device)))


def evaluate(scene: Scene4D, frames: np.ndarray, held: list[int], config: FitConfig, device: torch.device,
             with_masks: bool = False, skipped: list[int] = ()) -> tuple[dict, np.ndarray, torch.Tensor | None]:
    """Per-frame PSNR/SSIM of the fitted frames, of held-out frames and of `skipped` frames (not fitted
    between keyframes; their stored cameras count as part of the fit, so they are rendered as they are).

    Returns metrics, renders [T, H, W, 3] uint8 and, with `with_masks`, the moving masks [T, H, W] of
    `render_moving_masks` from the same renders (one render per fitted frame: colour and moving share are
    blended together; a held-out frame is evaluated from its photometrically refined camera, while its mask
    belongs to the stored camera, so it gets a second render)."""
    renders = np.zeros_like(frames)
    masks = torch.zeros(scene.num_frames, scene.cameras.height, scene.cameras.width, dtype=torch.bool) if with_masks else None
    share = moving_share(scene)

    def features(gaussians: Gaussians, alive: torch.Tensor) -> torch.Tensor:
        return torch.cat([gaussians.colors, share(gaussians, alive)], -1) if with_masks else gaussians.colors

    held, skipped = set(held), set(skipped)  # tested once per frame
    searched = refine_cameras(scene, frames, sorted(held), config, device) if config.eval.holdout_refine_iters > 0 else {}

    def score(t: int) -> tuple[np.ndarray, torch.Tensor | None, dict]:
        target = torch.as_tensor(frames[t], dtype=torch.float32, device=device) / 255.0
        mask = None
        with torch.no_grad():
            if t in held:
                image = render_scene(scene, t, camera_from_world=searched.get(t), device=device).color.clamp(0, 1)
                if with_masks:
                    out = render_scene(scene, t, colors=share, device=device)
                    mask = moving_mask_from(out.color[..., 0], out.alpha, config.eval.moving_mask_threshold).cpu()
            else:
                out = render_scene(scene, t, colors=features, device=device)
                image = out.color[..., :3].clamp(0, 1)
                if with_masks:
                    mask = moving_mask_from(out.color[..., 3], out.alpha, config.eval.moving_mask_threshold).cpu()
        row = {"frame": t, "held_out": t in held, "skipped": t in skipped, "psnr": psnr(image, target),
               "ssim": float(ssim(image, target))}
        progress.advance(task)
        return (image.cpu().numpy() * 255 + 0.5).astype(np.uint8), mask, row

    # Frames are scored side by side (`recon4d.device.side_by_side`): each render is small.
    with progress_bar("evaluating") as progress:
        task = progress.add_task("evaluate", total=scene.num_frames)
        scored = side_by_side(score, range(scene.num_frames), device)
    per_frame = []
    for t, (image, mask, row) in enumerate(scored):
        renders[t] = image
        if with_masks:
            masks[t] = mask
        per_frame.append(row)

    def mean(rows, key):
        values = [r[key] for r in rows]
        return float(np.mean(values)) if values else None

    groups = {"fitted": [r for r in per_frame if not r["held_out"] and not r["skipped"]],
              "held_out": [r for r in per_frame if r["held_out"]],
              "skipped": [r for r in per_frame if r["skipped"]]}
    metrics = {
        **{name: {"psnr": mean(rows, "psnr"), "ssim": mean(rows, "ssim"), "frames": len(rows)} for name, rows in groups.items()},
        "lpips": None,
        "lpips_note": "LPIPS needs network weights that are not bundled; install `lpips` with its weights to add it",
        "per_frame": per_frame,
    }
    return metrics, renders, masks
