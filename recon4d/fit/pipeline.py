"""`recon4d fit`: decode -> priors -> sequential fit -> scene, cameras, metrics and a comparison video.

Output directory layout:
    scene.r4d        the Scene4D (all input frames, held-out ones with interpolated cameras/states)
    cameras.json     one camera per input frame, in order
    metrics.json     per-frame and mean PSNR/SSIM (fitted and held-out), seconds per stage, memory, ...
    comparison.mp4   input | reconstruction, side by side
    .checkpoint/     per-frame checkpoint (safetensors + JSON); a rerun of the same command resumes from it
    .lock            held while a fit or refinement writes here (a second run exits 2)

The four outputs are replaced together (`recon4d.io.outputs.OutputSet`): a reader sees the previous set or
the new one, never a mix. A folder that holds a finished scene of another run (other input or settings)
is never replaced without `overwrite`.
"""
from __future__ import annotations

import hashlib
import json
import math
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recon4d import __version__
from recon4d.errors import InputError, Recon4DError
from recon4d.fit.checkpoint import CHECKPOINT_NAME, LEGACY_NAMES, DamagedCheckpoint, load_checkpoint, save_checkpoint
from recon4d.fit.config import FLAT_KEYS, SECTIONS, FitConfig
from recon4d.fit.sequential import FitInputs, FitState, SequentialFitter
from recon4d.geometry.camera import invert_pose
from recon4d.geometry.lie import apply_pose_delta, fill_poses
from recon4d.geometry.quaternion import normalize_quaternion
from recon4d.image import psnr, ssim
from recon4d.io.atomic import write_bytes_atomic
from recon4d.io.outputs import OutputSet, check_output_dir, locked_output_dir
from recon4d.io.scene import Cameras, Gaussians, Scene4D, read_manifest, save_scene
from recon4d.io.scene_render import render_scene
from recon4d.io.video import Clip, read_clip
from recon4d.io.video_writer import write_video
from recon4d.progress import track

OUTPUT_NAMES = ("scene.r4d", "cameras.json", "metrics.json", "comparison.mp4")


@dataclass
class FitResult:
    scene: Scene4D
    metrics: dict
    out_dir: Path


def default_intrinsics(width: int, height: int, fov_x_deg: float) -> np.ndarray:
    """fx, fy, cx, cy [4] for a centred principal point and square pixels."""
    fx = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    return np.array([fx, fx, (width - 1) / 2, (height - 1) / 2], dtype=np.float64)


def holdout_split(num_frames: int, every: int) -> tuple[list[int], list[int]]:
    """Every `every`-th frame (1-based: frames every-1, 2*every-1, ...) is held out; never the first or last."""
    if every <= 0:
        return list(range(num_frames)), []
    if every < 2:
        raise InputError("--holdout-every must be 0 (off) or at least 2")
    held = [i for i in range(every - 1, num_frames - 1, every) if i > 0]
    return [i for i in range(num_frames) if i not in set(held)], held


def _run_key(clip: Clip, config: FitConfig, K: np.ndarray) -> str:
    """Identity of a sequential pass: the clip, the intrinsics, and the settings it depends on, prior backends
    included (`FitConfig.sequential_key`; not the later stages')."""
    payload = json.dumps({"clip": clip.source_hash, "config": config.sequential_key(),
                          "intrinsics": [float(x) for x in K], "version": __version__}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def check_replaceable(out_dir: Path, key: str | None, overwrite: bool) -> None:
    """Refuse to replace a finished scene of another run in `out_dir` unless `overwrite` is set."""
    scene_file = out_dir / "scene.r4d"
    if overwrite or not scene_file.is_file():
        return
    try:
        stored = read_manifest(scene_file).get("config", {}).get("run_key")
    except Recon4DError:
        stored = None  # a damaged or foreign file is not a finished result of this run either
    if key is None or stored != key:
        raise InputError(f"{out_dir} holds a finished scene of another input or settings",
                         hint="pass --overwrite to replace it, or choose another --out")


def _to_inputs(frames: np.ndarray, priors, K: np.ndarray, device: torch.device) -> FitInputs:
    def tensor(x, dtype=torch.float32):
        return torch.as_tensor(np.ascontiguousarray(x)).to(device=device, dtype=dtype)

    return FitInputs(
        frames=tensor(frames) / 255.0,
        flow_forward=tensor(priors.flow.flow_forward),
        flow_backward=tensor(priors.flow.flow_backward),
        valid_forward=tensor(priors.flow.valid_forward, torch.bool),
        valid_backward=tensor(priors.flow.valid_backward, torch.bool),
        depth=tensor(priors.depth.depth),
        depth_confidence=tensor(priors.depth.confidence),
        moving=tensor(priors.moving_masks, torch.bool),
        K=tensor([[K[0], 0, K[2]], [0, K[1], K[3]], [0, 0, 1]]),
    )


def assemble_scene(state: FitState, fitted: list[int], clip: Clip, K: np.ndarray, config: FitConfig,
                   moving_masks: np.ndarray) -> Scene4D:
    """Scene over all clip frames; frames between fitted ones get interpolated cameras and dynamic states."""
    g = state.gaussians
    dynamic = g.is_dynamic.nonzero().squeeze(1)
    position = {int(i): k for k, i in enumerate(dynamic.tolist())}
    nd = dynamic.numel()
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
    means_all = torch.empty(num_frames, nd, 3)
    quats_all = torch.empty(num_frames, nd, 4)
    birth = g.birth_frame.clone().cpu()
    fitted_index = {f: k for k, f in enumerate(fitted)}
    for frame in range(num_frames):
        if frame in fitted_index:
            k = fitted_index[frame]
            means_all[frame], quats_all[frame] = fitted_means[k].cpu(), fitted_quats[k].cpu()
            continue
        after = next(k for k, f in enumerate(fitted) if f > frame)
        before = after - 1
        w = (frame - fitted[before]) / (fitted[after] - fitted[before])
        means_all[frame] = ((1 - w) * fitted_means[before] + w * fitted_means[after]).cpu()
        quats_all[frame] = normalize_quaternion((1 - w) * fitted_quats[before] + w * fitted_quats[after]).cpu()
    # birth_frame is stored in clip frame numbers.
    fitted_tensor = torch.tensor(fitted)
    birth = fitted_tensor[birth.long()].to(torch.int32)
    active = g.activated()
    gaussians = Gaussians(*(x.detach().cpu() for x in (active.means, normalize_quaternion(active.quats), active.scales,
                                                       active.opacities, active.colors)))
    intrinsics = torch.tensor(K, dtype=torch.float32)[None].repeat(num_frames, 1)
    masks = np.zeros((num_frames, clip.height, clip.width), dtype=bool)
    masks[fitted] = moving_masks
    return Scene4D(
        gaussians=gaussians, is_dynamic=g.is_dynamic.cpu(), birth_frame=birth,
        dynamic_means=means_all, dynamic_quats=quats_all,
        cameras=Cameras(world_from_camera=world_from_camera, intrinsics=intrinsics,
                        timestamps=torch.as_tensor(clip.timestamps, dtype=torch.float64),
                        width=clip.width, height=clip.height, frame_names=list(clip.names)),
        arrays={"moving_masks": torch.from_numpy(masks), "source_indices": torch.as_tensor(clip.source_indices)},
        config={**config.to_dict(), "source": clip.source},
    )


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


def refine_holdout_camera(scene: Scene4D, t: int, target: torch.Tensor, config: FitConfig,
                          device: torch.device) -> torch.Tensor:
    """Camera of a held-out frame: interpolated, then refined photometrically with the Gaussians frozen."""
    from recon4d.fit.losses import photometric_loss

    init = invert_pose(scene.cameras.world_from_camera[t]).float().to(device)
    g = scene.gaussians_at(t)
    depth_unit = float(torch.linalg.norm(g.means.to(device) - invert_pose(init)[:3, 3], dim=-1).median()) if len(g) else 1.0
    delta = torch.zeros(6, device=device, requires_grad=True)
    unit = torch.tensor([1.0, 1.0, 1.0, depth_unit, depth_unit, depth_unit], device=device)
    optimizer = torch.optim.Adam([delta], lr=config.sequential.lr_camera_rotation)
    weight = torch.ones(target.shape[:2], device=device)
    for _ in range(config.eval.holdout_refine_iters):
        cfw = apply_pose_delta(delta * unit, init)
        out = render_scene(scene, t, camera_from_world=cfw, device=device)
        loss = photometric_loss(out.color, target, weight, config.losses.ssim)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return apply_pose_delta(delta.detach() * unit, init)


def evaluate(scene: Scene4D, frames: np.ndarray, held: list[int], config: FitConfig, device: torch.device,
             with_masks: bool = False) -> tuple[dict, np.ndarray, torch.Tensor | None]:
    """Per-frame PSNR/SSIM of the fitted frames and of held-out frames.

    Returns metrics, renders [T, H, W, 3] uint8 and, with `with_masks`, the moving masks [T, H, W] of
    `render_moving_masks` from the same renders (one render per fitted frame: colour and moving share are
    blended together; a held-out frame is evaluated from its photometrically refined camera, while its mask
    belongs to the stored camera, so it gets a second render)."""
    renders = np.zeros_like(frames)
    masks = torch.zeros(scene.num_frames, scene.cameras.height, scene.cameras.width, dtype=torch.bool) if with_masks else None
    share = moving_share(scene)

    def features(gaussians: Gaussians, alive: torch.Tensor) -> torch.Tensor:
        return torch.cat([gaussians.colors, share(gaussians, alive)], -1) if with_masks else gaussians.colors

    per_frame = []
    held = set(held)
    for t in track(range(scene.num_frames), "evaluating", total=scene.num_frames):
        target = torch.as_tensor(frames[t], dtype=torch.float32, device=device) / 255.0
        if t in held:
            cfw = refine_holdout_camera(scene, t, target, config, device) if config.eval.holdout_refine_iters > 0 else None
            with torch.no_grad():
                image = render_scene(scene, t, camera_from_world=cfw, device=device).color.clamp(0, 1)
                if with_masks:
                    out = render_scene(scene, t, colors=share, device=device)
                    masks[t] = moving_mask_from(out.color[..., 0], out.alpha, config.eval.moving_mask_threshold).cpu()
        else:
            with torch.no_grad():
                out = render_scene(scene, t, colors=features, device=device)
            image = out.color[..., :3].clamp(0, 1)
            if with_masks:
                masks[t] = moving_mask_from(out.color[..., 3], out.alpha, config.eval.moving_mask_threshold).cpu()
        renders[t] = (image.cpu().numpy() * 255 + 0.5).astype(np.uint8)
        per_frame.append({"frame": t, "held_out": t in held, "psnr": psnr(image, target),
                          "ssim": float(ssim(image, target))})

    def mean(rows, key):
        values = [r[key] for r in rows]
        return float(np.mean(values)) if values else None

    fitted_rows = [r for r in per_frame if not r["held_out"]]
    held_rows = [r for r in per_frame if r["held_out"]]
    metrics = {
        "fitted": {"psnr": mean(fitted_rows, "psnr"), "ssim": mean(fitted_rows, "ssim"), "frames": len(fitted_rows)},
        "held_out": {"psnr": mean(held_rows, "psnr"), "ssim": mean(held_rows, "ssim"), "frames": len(held_rows)},
        "lpips": None,
        "lpips_note": "LPIPS needs network weights that are not bundled; install `lpips` with its weights to add it",
        "per_frame": per_frame,
    }
    return metrics, renders, masks


def cameras_json(scene: Scene4D, clip: Clip) -> dict:
    cams = scene.cameras
    return {
        "convention": "OpenCV (x right, y down, z forward); world_from_camera maps camera to world coordinates",
        "width": cams.width, "height": cams.height,
        "frames": [
            {
                "index": t, "name": cams.frame_names[t], "source_index": int(clip.source_indices[t]),
                "timestamp": float(cams.timestamps[t]),
                "world_from_camera": cams.world_from_camera[t].tolist(),
                "fx": float(cams.intrinsics[t, 0]), "fy": float(cams.intrinsics[t, 1]),
                "cx": float(cams.intrinsics[t, 2]), "cy": float(cams.intrinsics[t, 3]),
                "width": cams.width, "height": cams.height,
            }
            for t in range(len(cams))
        ],
    }


@dataclass
class Prepared:
    """Decoded clip, split, intrinsics and priors of the fitted frames: everything a fit or a refinement reads."""

    clip: Clip
    fitted: list[int]
    held: list[int]
    K: np.ndarray
    priors: object
    inputs: FitInputs
    seconds: dict


def prepare(source: str | Path, config: FitConfig, device: torch.device, log=print, before_priors=None) -> Prepared:
    """Decode the clip, split off held-out frames and compute (or load cached) priors of the fitted frames.

    `before_priors(clip, K)`, if given, runs after decoding and before the (expensive) priors: the place
    for checks that need the decoded clip.
    """
    from recon4d.priors.pipeline import compute_priors

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    clip = read_clip(source, stride=config.input.stride, max_frames=config.input.max_frames, short_side=config.input.short_side)
    seconds["decode"] = time.perf_counter() - started
    log(f"decoded {clip.num_frames} frames at {clip.width}x{clip.height} from {source}")
    fitted, held = holdout_split(clip.num_frames, config.input.holdout_every)
    intrinsics = config.input.intrinsics
    K = default_intrinsics(clip.width, clip.height, config.input.fov_x_deg) if intrinsics is None else np.asarray(intrinsics, float)
    if before_priors is not None:
        before_priors(clip, K)
    t0 = time.perf_counter()
    priors = compute_priors(clip.frames[fitted], K, config.priors,
                            clip_hash=f"{clip.source_hash}:{','.join(map(str, fitted))}", log=log)
    seconds["priors"] = time.perf_counter() - t0
    return Prepared(clip, fitted, held, K, priors, _to_inputs(clip.frames[fitted], priors, K, device), seconds)


def run_refinement(scene: Scene4D, prepared: Prepared, config: FitConfig, device: torch.device) -> tuple[Scene4D, dict]:
    """Continuous-time refinement of a sequential scene (progress bar on stderr)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from recon4d.fit.refine import RefineInputs, Refiner
    from recon4d.progress import progress_enabled

    with Progress(TextColumn("refining"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), disable=not progress_enabled()) as progress:
        task = progress.add_task("refine", total=config.refine.iters)
        refiner = Refiner(RefineInputs(scene, prepared.fitted, prepared.inputs), config, device,
                          on_progress=lambda done, total: progress.update(task, completed=done))
        return refiner.run()


def _summary(metrics: dict) -> dict:
    return {"fitted": metrics["fitted"], "held_out": metrics["held_out"]}


def finish(scene: Scene4D, prepared: Prepared, config: FitConfig, device: torch.device, out_dir: Path,
           seconds: dict, extra: dict) -> "FitResult":
    """Evaluate `scene` on every clip frame and write scene.r4d, cameras.json, metrics.json, comparison.mp4."""
    clip = prepared.clip
    t0 = time.perf_counter()
    if "prior_moving_masks" not in scene.arrays:
        scene.arrays["prior_moving_masks"] = scene.arrays["moving_masks"]
    metrics, renders, masks = evaluate(scene, clip.frames, prepared.held, config, device, with_masks=True)
    scene.arrays["moving_masks"] = masks
    seconds["evaluate"] = seconds.get("evaluate", 0.0) + time.perf_counter() - t0
    metrics.update(extra)
    metrics.update({
        "seconds": seconds,
        "seconds_total": sum(seconds.values()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
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
        write_bytes_atomic(outputs.path("cameras.json"), json.dumps(cameras_json(scene, clip), indent=1).encode())
        write_bytes_atomic(outputs.path("metrics.json"), json.dumps(metrics, indent=1).encode())
        write_video(outputs.path("comparison.mp4"), np.concatenate([clip.frames, renders], axis=2), clip.fps or 10)
    except BaseException:
        outputs.discard()
        raise
    outputs.commit()
    return FitResult(scene=scene, metrics=metrics, out_dir=out_dir)


def fit_video(source: str | Path, out_dir: str | Path, config: FitConfig, device: torch.device, log=print,
              overwrite: bool = False, restart: bool = False) -> FitResult:
    """Run the whole fit; resumes from `out_dir/.checkpoint` when it holds the same run.

    `restart` ignores the checkpoint and, like `overwrite`, allows replacing a finished scene of another run.
    """
    out_dir = check_output_dir(out_dir)
    with locked_output_dir(out_dir):
        return _fit_locked(source, out_dir, config, device, log, overwrite or restart, restart)


def _read_checkpoint(checkpoint_dir: Path, key: str, num_fitted: int, device: torch.device, restart: bool,
                     log) -> tuple:
    """(state or None, seconds) of a usable checkpoint of this run; removes legacy, foreign or damaged ones."""
    for legacy in LEGACY_NAMES:  # pickled checkpoints could execute code: never read, never kept
        (checkpoint_dir / legacy).unlink(missing_ok=True)
    checkpoint = checkpoint_dir / CHECKPOINT_NAME
    if not checkpoint.is_file():
        return None, {}
    if restart:
        checkpoint.unlink()
        return None, {}
    try:
        saved = load_checkpoint(checkpoint, device)
    except DamagedCheckpoint as exc:
        log(f"checkpoint {checkpoint} is damaged ({exc}): starting over")
        checkpoint.unlink()
        return None, {}
    if saved.key != key:
        log("checkpoint belongs to another input or config: starting over")
        return None, {}
    log(f"resuming from frame {saved.state.next_frame} of {num_fitted} ({checkpoint})")
    return saved.state, {k: v for k, v in saved.seconds.items() if k not in ("decode", "priors")}


def _fit_locked(source, out_dir: Path, config: FitConfig, device: torch.device, log, overwrite: bool,
                restart: bool) -> FitResult:
    def check_before_priors(clip: Clip, K: np.ndarray) -> None:
        check_replaceable(out_dir, _run_key(clip, config, K), overwrite)

    prepared = prepare(source, config, device, log, before_priors=check_before_priors)
    clip, fitted, K, seconds = prepared.clip, prepared.fitted, prepared.K, dict(prepared.seconds)
    inputs = prepared.inputs
    key = _run_key(clip, config, K)
    checkpoint_dir = out_dir / ".checkpoint"
    state, saved_seconds = _read_checkpoint(checkpoint_dir, key, len(fitted), device, restart, log)
    seconds.update(saved_seconds)

    fit_started = time.perf_counter()
    prior_fit_seconds = seconds.get("fit", 0.0)

    def on_frame(current: FitState, t: int) -> None:
        seconds["fit"] = prior_fit_seconds + time.perf_counter() - fit_started
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        try:
            save_checkpoint(checkpoint_dir / CHECKPOINT_NAME, key, current, dict(seconds))
        except BaseException:
            if checkpoint_dir.is_dir() and not any(checkpoint_dir.iterdir()):
                checkpoint_dir.rmdir()  # no empty .checkpoint/ after a failed first write
            raise
        progress.update(task, completed=t + 1)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from recon4d.progress import progress_enabled

    with Progress(TextColumn("fitting frames"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), disable=not progress_enabled()) as progress:
        task = progress.add_task("fit", total=len(fitted), completed=0 if state is None else state.next_frame)
        fitter = SequentialFitter(inputs, config, on_frame=on_frame)
        state = fitter.run(state)
    seconds["fit"] = prior_fit_seconds + time.perf_counter() - fit_started

    scene = assemble_scene(state, fitted, clip, K, config, prepared.priors.moving_masks)
    scene.config["run_key"] = key
    extra = {"camera_inits": [s.get("camera_init") for s in state.frame_stats], "frame_stats": state.frame_stats}
    if config.refine.enabled:
        t0 = time.perf_counter()
        sequential_metrics, _, _ = evaluate(scene, clip.frames, prepared.held, config, device)
        seconds["evaluate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scene, refine_stats = run_refinement(scene, prepared, config, device)
        seconds["refine"] = time.perf_counter() - t0
        extra.update({"sequential": _summary(sequential_metrics), "refine_stats": refine_stats})
        log(f"refined in {seconds['refine']:.0f} s; sequential held-out PSNR {sequential_metrics['held_out']['psnr']}")
    return finish(scene, prepared, config, device, out_dir, seconds, extra)


def refine_output(out_dir: str | Path, device: torch.device, overrides: dict | None = None, log=print) -> FitResult:
    """`recon4d refine OUT`: continuous-time refinement of an existing sequential result, in place.

    The priors are those the fit used (backends and options stored in the scene)."""
    out_dir = check_output_dir(out_dir, "scene folder")
    with locked_output_dir(out_dir):
        return _refine_locked(out_dir, device, overrides or {}, log)


def _refine_locked(out_dir: Path, device: torch.device, overrides: dict, log) -> FitResult:
    from recon4d.io.scene import load_scene

    scene = load_scene(out_dir)
    if scene.motion is not None:
        raise InputError(f"{out_dir} is already refined", hint="fit again with `recon4d fit --restart` to start over")
    stored = dict(scene.config)
    source = stored.pop("source", None)
    if not source or not Path(source).exists():
        raise InputError(f"the source video of {out_dir} is not at {source!r}", hint="refine needs the input frames")
    # The stored tree (or the flat keys of a scene written by an earlier version): the fit's priors included.
    known = {k: v for k, v in stored.items() if k in SECTIONS or k in FLAT_KEYS or k in ("preset", "seed")}
    config = FitConfig.from_dict(known, where=f"{out_dir}/scene.r4d")
    config = config.replace(**{k: v for k, v in overrides.items() if v is not None})
    config.refine.enabled = True
    if config.input.intrinsics is None:  # the intrinsics the fit derived from its field of view
        config.input.intrinsics = [float(x) for x in scene.cameras.intrinsics[0]]
    config.validate()
    prepared = prepare(source, config, device, log=log)
    if prepared.clip.num_frames != scene.num_frames:
        raise InputError(f"the source now decodes to {prepared.clip.num_frames} frames, the scene has {scene.num_frames}")
    seconds = dict(prepared.seconds)
    sequential = {"fitted": scene.metrics.get("fitted"), "held_out": scene.metrics.get("held_out")}
    t0 = time.perf_counter()
    refined, refine_stats = run_refinement(scene, prepared, config, device)
    seconds["refine"] = time.perf_counter() - t0
    refined.config = {**config.to_dict(), "source": source,
                      **({"run_key": stored["run_key"]} if "run_key" in stored else {})}
    return finish(refined, prepared, config, device, out_dir, seconds, {"sequential": sequential, "refine_stats": refine_stats})
