"""`recon4d fit`: decode -> priors -> sequential fit -> (refinement) -> scene, cameras, metrics, comparison video.

Orchestration and checkpointing; the outputs are written by `recon4d.fit.outputs` (layout there), evaluated by
`recon4d.eval.reconstruction`. Besides the outputs, OUT holds:
    .checkpoint/     per-frame checkpoint (safetensors + JSON); a rerun of the same command resumes from it
    .lock            held while a fit or refinement writes here (a second run exits 2)

The four outputs are replaced together (`recon4d.io.outputs.OutputSet`): a reader sees the previous set or
the new one, never a mix. A folder that holds a finished scene of another run (other input or settings)
is never replaced without `overwrite`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from recon4d import __version__
from recon4d.cpp import build_in_background
from recon4d.device import in_background
from recon4d.errors import InputError, Recon4DError
from recon4d.eval.reconstruction import evaluate
from recon4d.fit.checkpoint import (
    CHECKPOINT_NAME,
    LEGACY_NAMES,
    DamagedCheckpoint,
    load_checkpoint,
    save_checkpoint,
)
from recon4d.fit.config import FLAT_KEYS, SECTIONS, FitConfig, with_long_clip, with_static_scene
from recon4d.fit.keyframes import consecutive_motion, select_keyframes, sequential_keyframes
from recon4d.fit.outputs import FitResult, assemble_scene, finish, peak_rss_mb
from recon4d.fit.sequential import FitInputs, FitState, SequentialFitter, subset_window_boundaries
from recon4d.fit.sfm_scene import SFM_CAMERAS, misplaced_views, placed_frames, scene_from_sfm, view_errors
from recon4d.io.outputs import check_output_dir, locked_output_dir
from recon4d.io.scene import Scene4D, read_manifest
from recon4d.io.video import Clip, read_clip
from recon4d.priors.sfm import SfmCameras
from recon4d.progress import progress_bar


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


@dataclasses.dataclass
class Prepared:
    """Decoded clip, split, intrinsics and priors of the fitted frames: everything a fit or a refinement reads."""

    clip: Clip
    fitted: list[int]
    held: list[int]
    skipped: list[int]
    K: np.ndarray
    priors: object
    inputs: FitInputs
    seconds: dict
    peak_rss: dict
    sequential: list[int] | None = None
    sequential_priors: object = None
    sequential_inputs: FitInputs | None = None
    long_clip: bool = False  # the sequential pass fits a sparser subset of many keyframes (`keyframes.long_clip`)
    keyframes: list[int] | None = None  # the fitted frames, or the keyframes among them when every frame is refined
    sfm_scene: Scene4D | None = None  # `sfm.joint`: the start the refinement fits instead of a sequential pass
    sfm: SfmCameras | None = None  # `sfm.joint`: COLMAP's result the start was built from
    # `prepare(overlap=True)` of a long clip: the priors and inputs of the fitted frames, still being computed in the
    # background (`wait_priors` takes them in); `priors` and `inputs` are None until then.
    pending: Callable[[], tuple[object, FitInputs, float]] | None = None
    background_seconds: float = 0.0  # what the pending priors took on their thread, beside the caller's work

    def __post_init__(self) -> None:
        if self.sequential is None:  # the sequential pass fits every fitted frame
            self.sequential, self.sequential_priors, self.sequential_inputs = self.fitted, self.priors, self.inputs
        if self.keyframes is None:
            self.keyframes = self.fitted

    def wait_priors(self) -> None:
        """Wait for the fitted frames' priors that `prepare(overlap=True)` left computing, and take them in."""
        if self.pending is not None:
            started = time.perf_counter()
            self.priors, self.inputs, self.background_seconds = self.pending()
            self.pending = None
            self.seconds["priors"] += time.perf_counter() - started  # the caller's wall time waiting for them

    def drop_priors(self) -> None:
        """Let go of the priors and the inputs made from them (`priors`, `inputs` and the sequential pass's); the
        clip, the split and the timings stay. For a refinement that takes them over (`run_refinement`)."""
        self.priors = self.inputs = self.sequential_priors = self.sequential_inputs = None

    def window_boundaries(self, window_frames: int) -> list[int] | None:
        """Where the sequential pass starts new temporal windows (indices into `sequential`), or None for its
        own rule (`window_boundaries` of its frames). A long clip's sparser pass still puts `window_frames`
        keyframes in a window (`subset_window_boundaries`): keyframes, not refined frames, since a window's
        Gaussian budget is sized for the keyframes it fits."""
        return subset_window_boundaries(self.keyframes, self.sequential, window_frames) if self.long_clip else None


def prepare(source: str | Path, config: FitConfig, device: torch.device, log=print, before_priors=None,
            overlap: bool = False) -> Prepared:
    """Decode the clip, split off held-out frames and compute (or load cached) priors of the fitted frames.

    `before_priors(clip, K)`, if given, runs after decoding and before the (expensive) priors: the place
    for checks that need the decoded clip. `overlap`: when the sequential pass fits a subset of the fitted frames
    (a long clip), return once its priors are in and leave those of all fitted frames, which only the refinement
    reads, computing in the background (`Prepared.pending`; `Prepared.wait_priors`). The sequential pass keeps
    about 1.4 of 2 cores busy, and the priors fill the rest at the lowest priority (nice 19), so that they take
    only what the pass leaves: at the same priority they slowed backpack's 450-frame pass by 88 s (README,
    "A long clip's priors beside its sequential pass").
    """
    if config.sfm.enabled:  # a missing pycolmap is reported before any decoding
        from recon4d.priors.sfm import require_pycolmap

        require_pycolmap()
    if device.type == "cpu":  # the fit's C++ kernels build beside the decoding and the priors on a first run
        building = build_in_background()
        if building:
            log(f"building C++ kernels {', '.join(building)} in the background (first use on this machine)")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    clip = read_clip(source, stride=config.input.stride, max_frames=config.input.max_frames, short_side=config.input.short_side)
    seconds["decode"] = time.perf_counter() - started
    peak_rss = {"decode": peak_rss_mb()}
    log(f"decoded {clip.num_frames} frames at {clip.width}x{clip.height} from {source}")
    fitted, held = holdout_split(clip.num_frames, config.input.holdout_every)
    skipped: list[int] = []
    sequential, long_clip, keyframes = None, False, None
    if config.keyframes.enabled:
        t0 = time.perf_counter()
        motion = consecutive_motion(clip.frames, min(clip.width, clip.height), config.keyframes)
        keys = set(select_keyframes(motion, config.keyframes))
        keyframes = [t for t in fitted if t in keys]
        if not (config.refine.enabled and len(fitted) <= config.keyframes.dense_refine_frames):
            skipped, fitted = [t for t in fitted if t not in keys], keyframes
        # Else the refinement fits every frame that is not held out, and the sequential pass the keyframes.
        sequential = None if fitted == keyframes else keyframes
        if config.refine.enabled and config.keyframes.sequential_budget_px > 0:
            sequential = sequential_keyframes(keyframes, motion, config.keyframes)
            long_clip = sequential != keyframes
        seconds["keyframes"] = time.perf_counter() - t0
        log(f"keyframes: fitting {len(fitted)} of {clip.num_frames} frames"
            + (f", {len(sequential)} of them in the sequential pass"
               if sequential is not None and not (config.sfm.enabled and config.sfm.joint) else ""))
    intrinsics = config.input.intrinsics
    K = default_intrinsics(clip.width, clip.height, config.input.fov_x_deg) if intrinsics is None else np.asarray(intrinsics, float)
    if before_priors is not None:
        before_priors(clip, K)
    sfm_scene = sfm = None
    if config.sfm.enabled and config.sfm.joint:
        t0 = time.perf_counter()
        joint = _joint_start(source, clip, fitted, K, config, log)
        seconds["sfm"] = time.perf_counter() - t0
        peak_rss["sfm"] = peak_rss_mb()
        if joint is not None:  # no sequential pass: the refinement fits every fitted frame COLMAP placed
            sfm_scene, placed, sfm = joint
            skipped = sorted(set(skipped) | (set(fitted) - set(placed)))
            fitted = keyframes = placed
            sequential, long_clip = None, False
    t0 = time.perf_counter()
    # The sequential pass's flow runs between its own consecutive frames. Its set is computed beside the other
    # one: each keeps about 1.35 of 2 cores busy (the depth prior's per-frame solves are serial).
    subset = sequential is not None and sequential != fitted
    fitted_priors = lambda: _fitted_priors(clip, fitted, K, config, device, log)  # noqa: E731
    pending = in_background(fitted_priors, nice=19 if overlap else 0) if subset else None
    sequential_priors = _priors_of(clip, sequential, K, config, log) if subset else None
    if pending is None:
        priors, inputs, _ = fitted_priors()
    elif not overlap:
        (priors, inputs, _), pending = pending(), None
    else:
        priors = inputs = None
    seconds["priors"] = time.perf_counter() - t0
    peak_rss["priors"] = peak_rss_mb()
    prepared = Prepared(clip, fitted, held, skipped, K, priors, inputs, seconds, peak_rss, long_clip=long_clip,
                        keyframes=keyframes, sfm_scene=sfm_scene, sfm=sfm, pending=pending)
    if sequential_priors is not None:
        prepared.sequential, prepared.sequential_priors = sequential, sequential_priors
        prepared.sequential_inputs = _to_inputs(clip.frames[sequential], sequential_priors, K, device)
    if config.sfm.enabled and not config.sfm.joint:
        t0 = time.perf_counter()
        prepared.sequential_inputs = _with_sfm_prior(source, clip, prepared.sequential, prepared.sequential_inputs, K,
                                                     config, device, log)
        seconds["sfm"] = time.perf_counter() - t0
        peak_rss["sfm"] = peak_rss_mb()
    return prepared


def _fitted_priors(clip: Clip, fitted: list[int], K: np.ndarray, config: FitConfig, device: torch.device,
                   log) -> tuple[object, FitInputs, float]:
    """The priors of the fitted frames, the fit's inputs made of them and the seconds both took."""
    started = time.perf_counter()
    priors = _priors_of(clip, fitted, K, config, log)
    return priors, _to_inputs(clip.frames[fitted], priors, K, device), time.perf_counter() - started


def _priors_of(clip: Clip, frames: list[int], K: np.ndarray, config: FitConfig, log):
    """The priors of clip `frames` (computed, or read from the prior cache)."""
    from recon4d.priors.pipeline import compute_priors

    return compute_priors(clip.frames[frames], K, config.priors, log=log, static_scene=config.input.static_scene,
                          clip_hash=f"{clip.source_hash}:{','.join(map(str, frames))}")


def _sfm_of(source: str | Path, clip: Clip, frames: list[int], K: np.ndarray, config: FitConfig, log):
    """COLMAP's cameras of clip `frames` (`recon4d.priors.sfm`), or None where it places under
    `sfm.min_registered` of them; the clip is decoded again at `sfm.short_side`."""
    from recon4d.geometry.camera import scale_intrinsics
    from recon4d.priors.sfm import cached_sfm_cameras

    sharp = read_clip(source, stride=config.input.stride, max_frames=config.input.max_frames,
                      short_side=config.sfm.short_side)
    intrinsics = scale_intrinsics(K, sharp.width / clip.width, sharp.height / clip.height)
    cameras, cached = cached_sfm_cameras(sharp.frames[frames], intrinsics, config.sfm,
                                         f"{sharp.source_hash}:{','.join(map(str, frames))}", config.priors.use_cache)
    del sharp
    if cameras.not_run:
        log(f"sfm: COLMAP not run: {cameras.not_run}")
        return None
    used = cameras.registered >= config.sfm.min_registered * len(frames)
    log(f"sfm: COLMAP placed {cameras.registered} of {len(frames)} frames and {len(cameras.points)} points "
        + ("(from the cache)" if cached else f"in {cameras.seconds:.1f} s")
        + ("" if used else f" (under sfm.min_registered = {config.sfm.min_registered}: not used)"))
    return cameras if used else None


def _joint_start(source: str | Path, clip: Clip, fitted: list[int], K: np.ndarray, config: FitConfig,
                 log) -> tuple[Scene4D, list[int], SfmCameras] | None:
    """`sfm.joint`: the start of the joint fit from COLMAP's cameras of every clip frame (held-out ones too:
    they are withheld from the photometric fit only) and the `fitted` frames it fits: those COLMAP placed. A
    fitted frame it did not place is left out, since its camera would start between views far apart; the fit
    then treats it as skipped (its camera searched against its frame at the end). None: no start (the
    sequential pass runs, without the prior)."""
    cameras = _sfm_of(source, clip, list(range(clip.num_frames)), K, config, log)
    placed_any = set() if cameras is None else set(placed_frames(cameras.camera_from_world))
    placed = [t for t in fitted if t in placed_any]
    scene = scene_from_sfm(cameras, clip, K, placed, config.sfm) if len(placed) >= 2 else None
    if scene is None:
        log("sfm: no joint start; the sequential pass fits the clip without the prior")
        return None
    scene.config = {**config.to_dict(), "source": clip.source}
    log(f"sfm: joint fit of {len(placed)} frames from {len(scene.gaussians)} COLMAP points"
        + (f"; {len(fitted) - len(placed)} frames COLMAP did not place are skipped"
           if len(placed) < len(fitted) else ""))
    return scene, placed, cameras


def _with_sfm_prior(source: str | Path, clip: Clip, frames: list[int], inputs: FitInputs, K: np.ndarray,
                    config: FitConfig, device: torch.device, log) -> FitInputs:
    """`inputs` (the sequential pass's, of `frames`) with COLMAP's cameras (`_sfm_of`) when it places at least
    `sfm.min_registered` of the frames."""
    cameras = _sfm_of(source, clip, frames, K, config, log)
    if cameras is None:
        return inputs
    tensor = lambda x: torch.as_tensor(x, dtype=torch.float64, device=device)  # noqa: E731
    return dataclasses.replace(inputs, sfm_camera_from_world=tensor(cameras.camera_from_world),
                               sfm_points=tensor(cameras.points))


def run_refinement(scene: Scene4D, prepared: Prepared, config: FitConfig, device: torch.device) -> tuple[Scene4D, dict]:
    """Continuous-time refinement of a sequential scene (progress bar on stderr). Takes the scene and the priors:
    each is dropped once read (`refine_scene`'s `consume`; `Prepared.drop_priors`), so the caller must use
    neither again."""
    from recon4d.fit.refine import RefineInputs, refine_scene

    data = RefineInputs(scene, prepared.fitted, prepared.inputs)
    prepared.drop_priors()
    fixed_cameras = SFM_CAMERAS in scene.arrays and not config.sfm.refine_camera
    with progress_bar("refining") as progress:
        task = progress.add_task("refine", total=None)
        return refine_scene(data, config, device, consume=True, fixed_cameras=fixed_cameras,
                            on_progress=lambda done, total: progress.update(task, completed=done, total=total))


def _summary(metrics: dict) -> dict:
    return {"fitted": metrics["fitted"], "held_out": metrics["held_out"], "skipped": metrics["skipped"]}


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
    config = with_static_scene(config)
    def check_before_priors(clip: Clip, K: np.ndarray) -> None:
        check_replaceable(out_dir, _run_key(clip, config, K), overwrite)

    prepared = prepare(source, config, device, log, before_priors=check_before_priors, overlap=True)
    if prepared.sfm_scene is not None:
        return _fit_joint(prepared, config, device, out_dir, log)
    # The sequential pass fits `prepared.sequential`: all fitted frames, or a subset of them that the refinement
    # completes (a long clip's sparser keyframes, or a short clip's keyframes when every frame is refined).
    # The same dict: `wait_priors` adds the wait for the pending priors to its "priors".
    clip, fitted, K, seconds = prepared.clip, prepared.sequential, prepared.K, prepared.seconds
    inputs = prepared.sequential_inputs
    key = _run_key(clip, config, K)  # of the settings asked for: the long-clip ones follow from them and the clip
    if prepared.long_clip and config.keyframes.long_clip:
        log("long clip: " + ", ".join(f"{k} {v}" for k, v in config.keyframes.long_clip.items()))
        config = with_long_clip(config)
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

    with progress_bar("fitting frames") as progress:
        task = progress.add_task("fit", total=len(fitted), completed=0 if state is None else state.next_frame)
        boundaries = prepared.window_boundaries(config.sequential.window_frames)
        fitter = SequentialFitter(inputs, config, on_frame=on_frame, boundaries=boundaries)
        state = fitter.run(state)
        slow_movers = fitter.label_slow_movers(state) + sum(s.get("slow_movers", 0) for s in state.frame_stats)
    seconds["fit"] = prior_fit_seconds + time.perf_counter() - fit_started
    prepared.peak_rss["fit"] = peak_rss_mb()

    prepared.wait_priors()
    scene = assemble_scene(state, fitted, clip, K, config, prepared.sequential_priors.moving_masks)
    if fitted != prepared.fitted:  # the prior's masks of the keyframes the refinement adds
        scene.arrays["moving_masks"][prepared.fitted] = torch.from_numpy(np.asarray(prepared.priors.moving_masks))
    scene.config["run_key"] = key
    extra = {"peak_rss_mb_by_stage": prepared.peak_rss, "camera_inits": [s.get("camera_init") for s in state.frame_stats],
             "frame_stats": state.frame_stats, "slow_movers": slow_movers, "sequential_frames": list(fitted),
             "priors_background_seconds": prepared.background_seconds}
    del fitter, state, inputs  # the sequential pass's priors are read by nothing more: the refinement frees them
    if config.refine.enabled:
        if config.eval.before_refine:
            t0 = time.perf_counter()
            sequential_metrics, _, _ = evaluate(scene, clip.frames, prepared.held, config, device, skipped=prepared.skipped)
            seconds["evaluate"] = time.perf_counter() - t0
            extra["sequential"] = _summary(sequential_metrics)
            log(f"sequential held-out PSNR {sequential_metrics['held_out']['psnr']}")
        t0 = time.perf_counter()
        scene, refine_stats = run_refinement(scene, prepared, config, device)
        seconds["refine"] = time.perf_counter() - t0
        prepared.peak_rss["refine"] = peak_rss_mb()
        extra["refine_stats"] = refine_stats
        log(f"refined in {seconds['refine']:.0f} s")
    return finish(scene, clip, prepared.held, config, device, out_dir, seconds, extra, skipped=prepared.skipped)


def _fit_joint(prepared: Prepared, config: FitConfig, device: torch.device, out_dir: Path, log) -> FitResult:
    """`sfm.joint`: the refinement fits the start from COLMAP (`prepared.sfm_scene`) to every fitted frame. Views
    the fitted model cannot draw (`misplaced_views`: COLMAP placed them wrongly) are dropped, once: the start is
    built and fitted again without them, and they count as skipped."""
    clip, K = prepared.clip, prepared.K
    start, prepared.sfm_scene = prepared.sfm_scene, None
    start.config["run_key"] = _run_key(clip, config, K)  # of the settings asked for, as `check_replaceable`'s
    config = config.replace(**{"losses.depth": config.sfm.joint_depth_weight})
    seconds, points = dict(prepared.seconds), len(start.gaussians)
    t0 = time.perf_counter()
    scene, refine_stats = run_refinement(start, prepared, config, device)
    errors = view_errors(scene, clip.frames, prepared.fitted, device)
    dropped = misplaced_views(errors, config.sfm.drop_error_ratio)
    if dropped and len(prepared.fitted) - len(dropped) >= 2:
        median = float(np.median(list(errors.values())))
        log(f"sfm: {'view' if len(dropped) == 1 else 'views'} {', '.join(map(str, dropped))} drawn at "
            f"{', '.join(f'{errors[t] / median:.0f}x' for t in dropped)} the median view's error (placed wrongly by "
            "COLMAP): fitting again without")
        fitted = [t for t in prepared.fitted if t not in dropped]
        sfm = dataclasses.replace(prepared.sfm, camera_from_world=prepared.sfm.camera_from_world.copy())
        sfm.camera_from_world[dropped] = np.nan
        start = scene_from_sfm(sfm, clip, K, fitted, config.sfm)
        start.config = dict(scene.config)
        inputs = _to_inputs(clip.frames[fitted], _priors_of(clip, fitted, K, config, log), K, device)
        prepared = dataclasses.replace(prepared, fitted=fitted, skipped=sorted(prepared.skipped + dropped),
                                       inputs=inputs)
        scene, refine_stats = run_refinement(start, prepared, config, device)
        errors = view_errors(scene, clip.frames, fitted, device)
    else:
        dropped = []
    seconds["refine"] = time.perf_counter() - t0
    prepared.peak_rss["refine"] = peak_rss_mb()
    log(f"refined in {seconds['refine']:.0f} s")
    worst = max(errors.values()) / max(float(np.median(list(errors.values()))), 1e-12)
    extra = {"peak_rss_mb_by_stage": prepared.peak_rss, "refine_stats": refine_stats,
             "sfm_joint": {"points": points, "placed": len(placed_frames(scene.arrays[SFM_CAMERAS])),
                           "fitted": list(prepared.fitted), "dropped": dropped, "worst_view_error_ratio": worst}}
    return finish(scene, clip, prepared.held, config, device, out_dir, seconds, extra, skipped=prepared.skipped)


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
    prepared.peak_rss["refine"] = peak_rss_mb()
    refined.config = {**config.to_dict(), "source": source,
                      **({"run_key": stored["run_key"]} if "run_key" in stored else {})}
    return finish(refined, prepared.clip, prepared.held, config, device, out_dir, seconds,
                  {"sequential": sequential, "refine_stats": refine_stats, "peak_rss_mb_by_stage": prepared.peak_rss},
                  skipped=prepared.skipped)
