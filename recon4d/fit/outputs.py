"""What a fit produces: the Scene4D assembled from the sequential state, and the output set on disk.

Output directory layout (written together by `finish`):
    scene.r4d        the Scene4D (all input frames, held-out ones with interpolated cameras/states)
    cameras.json     one camera per input frame, in order (`recon4d.io.camera_json`)
    metrics.json     per-frame and mean PSNR/SSIM (fitted and held-out), seconds per stage, memory, ...
    comparison.mp4   input | reconstruction, side by side
"""
from __future__ import annotations

import json
import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recon4d import __version__
from recon4d.eval.reconstruction import evaluate, refine_cameras
from recon4d.fit.config import FitConfig
from recon4d.fit.sequential import FitState
from recon4d.geometry.camera import invert_pose
from recon4d.geometry.lie import fill_poses
from recon4d.geometry.quaternion import normalize_quaternion
from recon4d.io.atomic import write_bytes_atomic
from recon4d.io.camera_json import camera_json_bytes, scene_cameras_json
from recon4d.io.outputs import OutputSet
from recon4d.io.scene import NEVER, Cameras, Gaussians, Scene4D, save_scene
from recon4d.io.video import Clip
from recon4d.io.video_writer import write_video

OUTPUT_NAMES = ("scene.r4d", "cameras.json", "metrics.json", "comparison.mp4")


@dataclass
class FitResult:
    scene: Scene4D
    metrics: dict
    out_dir: Path


def assemble_scene(state: FitState, fitted: list[int], clip: Clip, K: np.ndarray, config: FitConfig,
                   moving_masks: np.ndarray) -> Scene4D:
    """Scene over all clip frames; frames between fitted ones get interpolated cameras, and their dynamic states
    blend those of the fitted frames around them (the scene stores the fitted frames' states: `state_frames`).
    The Gaussians of every temporal window are in it, each living from its birth to its death frame."""
    g = state.all_gaussians()
    dynamic = g.is_dynamic.nonzero().squeeze(1)
    position = {int(i): k for k, i in enumerate(dynamic.tolist())}
    device = g.means.device

    def slots_of(ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor([position[int(i)] for i in ids.tolist()], dtype=torch.long, device=device)

    # Before its birth a dynamic Gaussian is not rendered; those frames hold its first recorded state.
    first_means, first_quats = g.means[dynamic].clone(), g.quats[dynamic].clone()
    for ids, means, quats in reversed(state.dynamic_states):
        slots = slots_of(ids)
        first_means[slots], first_quats[slots] = means, quats
    fitted_means = first_means[None].repeat(len(fitted), 1, 1)
    fitted_quats = first_quats[None].repeat(len(fitted), 1, 1)
    for k, (ids, means, quats) in enumerate(state.dynamic_states):
        slots = slots_of(ids)
        fitted_means[k, slots], fitted_quats[k, slots] = means, quats

    num_frames = clip.num_frames
    world_from_camera = torch.eye(4, dtype=torch.float64).repeat(num_frames, 1, 1)
    world_from_camera[fitted] = invert_pose(torch.stack(state.camera_from_world).double().cpu())
    world_from_camera = fill_poses(world_from_camera, fitted)
    birth = g.birth_frame.clone().cpu()
    # Birth and death frames are stored in clip frame numbers.
    fitted_tensor = torch.tensor(fitted)
    birth = fitted_tensor[birth.long()].to(torch.int32)
    death = None
    if state.retired is not None:
        death = g.death_frame.clone().cpu()
        ends = death != NEVER
        death[ends] = fitted_tensor[death[ends].long()].to(torch.int32)
    active = g.activated()
    gaussians = Gaussians(*(x.detach().cpu() for x in (active.means, normalize_quaternion(active.quats), active.scales,
                                                       active.opacities, active.colors)))
    intrinsics = torch.tensor(K, dtype=torch.float32)[None].repeat(num_frames, 1)
    masks = np.zeros((num_frames, clip.height, clip.width), dtype=bool)
    masks[fitted] = moving_masks
    return Scene4D(
        gaussians=gaussians, is_dynamic=g.is_dynamic.cpu(), birth_frame=birth, death_frame=death,
        dynamic_means=fitted_means.cpu(), dynamic_quats=fitted_quats.cpu(), state_frames=fitted_tensor,
        cameras=Cameras(world_from_camera=world_from_camera, intrinsics=intrinsics,
                        timestamps=torch.as_tensor(clip.timestamps, dtype=torch.float64),
                        width=clip.width, height=clip.height, frame_names=list(clip.names)),
        arrays={"moving_masks": torch.from_numpy(masks), "source_indices": torch.as_tensor(clip.source_indices)},
        config={**config.to_dict(), "source": clip.source},
    )


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, MiB (stages record it as they end: metrics.json
    `peak_rss_mb_by_stage`; a stage's own peak is where the value jumps)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def refine_skipped_cameras(scene: Scene4D, frames: np.ndarray, skipped: list[int], config: FitConfig,
                           device: torch.device) -> None:
    """Cameras of the frames skipped between keyframes: interpolated, then refined photometrically against
    their frame (Gaussians frozen), in place in `scene.cameras`."""
    for t, camera_from_world in refine_cameras(scene, frames, list(skipped), config, device).items():
        scene.cameras.world_from_camera[t] = invert_pose(camera_from_world.cpu()).to(scene.cameras.world_from_camera.dtype)


def finish(scene: Scene4D, clip: Clip, held: list[int], config: FitConfig, device: torch.device, out_dir: Path,
           seconds: dict, extra: dict, skipped: list[int] = ()) -> FitResult:
    """Evaluate `scene` on every frame of `clip` (`held`: the held-out ones; `skipped`: not fitted between
    keyframes, whose cameras are refined first) and write scene.r4d, cameras.json, metrics.json and
    comparison.mp4 as one set (`recon4d.io.outputs.OutputSet`)."""
    if skipped and config.eval.holdout_refine_iters > 0:
        t0 = time.perf_counter()
        refine_skipped_cameras(scene, clip.frames, list(skipped), config, device)
        seconds["skipped_cameras"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if "prior_moving_masks" not in scene.arrays:
        scene.arrays["prior_moving_masks"] = scene.arrays["moving_masks"]
    metrics, renders, masks = evaluate(scene, clip.frames, held, config, device, with_masks=True, skipped=list(skipped))
    scene.arrays["moving_masks"] = masks
    seconds["evaluate"] = seconds.get("evaluate", 0.0) + time.perf_counter() - t0
    metrics.update(extra)
    metrics.setdefault("peak_rss_mb_by_stage", {})["evaluate"] = peak_rss_mb()
    metrics.update({
        "seconds": seconds,
        "seconds_total": sum(seconds.values()),
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "gaussians": len(scene.gaussians),
        "dynamic_gaussians": int(scene.is_dynamic.sum()),
        "moving_gaussians": int(scene.is_moving.sum()),
        "continuous_motion": scene.motion is not None,
        "device": str(device),
        "host": platform.node(),
        "threads": torch.get_num_threads(),
        "frames": clip.num_frames,
        "resolution": [clip.width, clip.height],
        "recon4d_version": __version__,
    })
    scene.metrics = {k: v for k, v in metrics.items() if k not in ("per_frame", "frame_stats")}
    outputs = OutputSet(out_dir)
    try:
        save_scene(scene, outputs.path("scene.r4d"))
        write_bytes_atomic(outputs.path("cameras.json"), camera_json_bytes(scene_cameras_json(scene, clip.source_indices)))
        write_bytes_atomic(outputs.path("metrics.json"), json.dumps(metrics, indent=1).encode())
        write_video(outputs.path("comparison.mp4"), np.concatenate([clip.frames, renders], axis=2), clip.fps or 10)
    except BaseException:
        outputs.discard()
        raise
    outputs.commit()
    return FitResult(scene=scene, metrics=metrics, out_dir=out_dir)
