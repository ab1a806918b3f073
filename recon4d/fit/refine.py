"""Continuous-time refinement of a sequential fit: Gaussian-Flow's deformation model plus global bundle adjustment.

The model is `recon4d.fit.model.SceneModel`. The sequential (GFlow) pass stores one state per frame and never revisits a frame once it has moved on. This
stage turns each dynamic Gaussian's per-frame positions and rotations into a compact polynomial + Fourier
trajectory (`recon4d.geometry.trajectory`, initialised by least squares) and then optimises, jointly over
all fitted frames sampled at random: every Gaussian's appearance, still positions, the trajectory
coefficients (position, rotation, colour) and every camera but the first. Losses: photometric (L1 + SSIM),
scale-invariant depth, optical flow between consecutive fitted frames (which ties cameras and motion to the
2D correspondences), temporal smoothness of the trajectories (acceleration) and KNN rigidity (neighbouring
dynamic Gaussians keep their distances).

The sequential pass sizes its Gaussian budget for one frame at a time; the joint fit over all frames asks more
of it (edges that shift by a fraction of a pixel between frames, detail seen from several cameras). So the
refinement densifies as 3DGS does, driven by the screen-space gradient of each Gaussian's position, but with a
budget instead of a gradient threshold: `recon4d.fit.strategy.grow.GrowStrategy` (settings in
`FitConfig.densify`, the `grow_*` and `split_*` fields).

The prior's still/moving split misses slow motion (below its per-pair threshold), and a Gaussian labelled still
can then only be explained by the cameras. In the second part of the refinement (`refine.still_motion_from`)
still Gaussians may take a residual trajectory under a group-lasso penalty; those whose residual motion reaches
`refine.keep_motion_px` keep it as a trajectory (dynamic, but not labelled moving: a residue this small is as
often the background absorbing what the cameras and depth cannot explain as a slow object), the others keep
their mean position.

Coarse to fine (`refine.pyramid_levels`, `refine.coarse_share`; `recon4d.fit.pyramid`): the first steps fit the
frames and priors downsampled, through intrinsics scaled to match; every loss keeps its unit (the flow error
is counted in working-resolution pixels) and the densification statistics are taken in working-resolution
pixels, so a level changes the cost of a step, not the balance of the terms.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from recon4d.device import raise_if_cancelled, release_freed_memory, side_by_side
from recon4d.fit.config import FitConfig, RefineConfig
from recon4d.fit.losses import COVERED_ALPHA, depth_loss, flow_loss, photometric_loss
from recon4d.fit.model import SceneModel, scene_from_models
from recon4d.fit.optim import SelectiveAdam
from recon4d.fit.pyramid import Pyramid, level_at
from recon4d.fit.rigidity import knn_neighbours, rigidity_loss
from recon4d.fit.sequential import MIN_DEPTH, FitInputs
from recon4d.fit.strategy.grow import GrowStrategy
from recon4d.geometry.camera import project_to_pixels
from recon4d.geometry.trajectory import (
    basis_size,
    evaluate_trajectories,
    fit_trajectories,
    time_basis,
)
from recon4d.io.scene import MotionModel, Scene4D
from recon4d.render import rasterize


def fourier_terms_for(num_frames: int, config: RefineConfig, fitted: list[int] | None = None) -> int:
    """Fourier terms for a clip: as configured, but no period shorter than `min_period_frames`; with the
    `fitted` frames (sorted clip indices) also none shorter than two of their widest gap, since a term of a
    shorter period is not sampled by them (Nyquist) and swings freely in between, and no more basis functions
    than fitted frames (1 + poly_degree + 2 terms), which would leave the trajectories underdetermined."""
    gap = max((b - a for a, b in zip(fitted[:-1], fitted[1:])), default=1) if fitted else 1
    terms = min(config.fourier_terms, max(num_frames - 1, 0) // max(config.min_period_frames, 2 * gap, 1))
    if fitted is not None:
        terms = min(terms, max(0, (len(fitted) - 1 - config.poly_degree) // 2))
    return terms


def windows_of(row_windows: torch.Tensor, fitted: list[int]) -> list[tuple[float, float, list[int]]]:
    """The temporal windows of rows with trajectory windows `row_windows` [N, 2] (`Scene4D.trajectory_windows`)
    as (first frame, last frame, the fitted frames inside), in time order."""
    windows = torch.unique(row_windows, dim=0).tolist()
    return [(first, last, [f for f in fitted if first <= f <= last]) for first, last in sorted(windows)]


def shared_fourier_terms(windows: list[tuple[float, float, list[int]]], config: RefineConfig) -> int:
    """One Fourier count for all windows: the smallest any of them allows (`fourier_terms_for`)."""
    return min(fourier_terms_for(int(last - first) + 1, config, frames) for first, last, frames in windows)


def initial_motion(scene: Scene4D, fitted: list[int], config: RefineConfig, window: torch.Tensor | None = None,
                   fourier_terms: int | None = None) -> MotionModel:
    """Least-squares trajectories through the per-frame states of the fitted frames (while each Gaussian
    exists), each over its temporal window (`window` [N, 2] overrides `scene.trajectory_windows()`); one basis
    size for all windows (`fourier_terms`, by default the smallest they allow)."""
    window = scene.trajectory_windows() if window is None else window
    dynamic = scene.is_dynamic.nonzero().squeeze(1)
    row_windows = window[dynamic]
    windows = windows_of(window, fitted)
    if fourier_terms is None:
        fourier_terms = shared_fourier_terms(windows, config)
    count = basis_size(config.poly_degree, fourier_terms)
    birth = scene.birth_frame[dynamic].to(torch.float32)
    death = (scene.death_frame[dynamic].to(torch.float32) if scene.death_frame is not None
             else torch.full_like(birth, math.inf))
    position = torch.zeros(dynamic.numel(), count, 3)
    rotation = torch.zeros(dynamic.numel(), count, 4)
    for first, last, frames in windows:
        rows = ((row_windows[:, 0] == first) & (row_windows[:, 1] == last)).nonzero().squeeze(1)
        if rows.numel() == 0 or not frames:
            continue
        times = torch.tensor(frames, dtype=torch.float32)
        basis = time_basis((times - first) / max(last - first, 1.0), config.poly_degree, fourier_terms)
        # [F, R]: states before a Gaussian's birth are fillers; its death frame holds its last state.
        weights = ((times[:, None] >= birth[rows][None]) & (times[:, None] <= death[rows][None])).float()
        means, quats = (x.float() for x in scene.dynamic_states(frames, rows))  # [F, R]: only the window's rows
        # One sign per Gaussian and frame: q and -q are the same rotation, the fit needs one continuous branch.
        reference = quats[torch.clamp(torch.searchsorted(times, birth[rows]), max=len(frames) - 1), torch.arange(rows.numel())]
        quats = torch.where((quats * reference[None]).sum(-1, keepdim=True) < 0, -quats, quats)
        position[rows] = fit_trajectories(means, basis, weights, config.ridge)
        rotation[rows] = fit_trajectories(quats, basis, weights, config.ridge)
    return MotionModel(
        position=position, rotation=rotation, color=torch.zeros(dynamic.numel(), count, 3),
        poly_degree=config.poly_degree, fourier_terms=fourier_terms,
        time_span=float(max(scene.num_frames - 1, 1)),
        window=row_windows if scene.death_frame is not None else None,
    )


@dataclass
class RefineInputs:
    """What the refinement fits: the sequential scene and the priors of its fitted frames.

    Attributes:
        scene: Scene4D over all clip frames (from the sequential pass).
        fitted: clip frame index of each fitted frame; inputs.frames[k] is clip frame fitted[k].
        inputs: frames and priors of the fitted frames (flow between consecutive fitted frames).
    """

    scene: Scene4D
    fitted: list[int]
    inputs: FitInputs


class Refiner:
    """Joint optimisation of a `SceneModel` (Gaussians, trajectories, cameras) over the fitted frames, grown by a
    `GrowStrategy`; `run()` returns the refined Scene4D."""

    def __init__(self, data: RefineInputs, config: FitConfig, device: torch.device,
                 on_progress: Callable[[int, int], None] | None = None, rows: torch.Tensor | None = None,
                 motion: MotionModel | None = None, gauge: tuple[int, ...] = (0,)):
        """`rows`: the scene's Gaussians to refine (`SceneModel`; all by default); `motion`: their dynamic
        Gaussians' initial trajectories (by default `initial_motion` of the scene's per-frame states, which
        covers all of them: with `rows` it is required); `gauge`: the fitted frames (indices into `data.fitted`)
        whose cameras stay fixed."""
        if rows is not None and motion is None:
            raise ValueError("a Refiner of some of the scene's rows needs their initial motion")
        self.data, self.config, self.device, self.on_progress = data, config, device, on_progress
        self.K = data.inputs.K.to(device)
        self.focal = float(self.K[0, 0])  # working-resolution pixels: the densification statistics' unit
        self.pyramid = Pyramid(data.inputs, config.refine.pyramid_levels)
        if motion is None:
            motion = initial_motion(data.scene, data.fitted, config.refine)
        self.model = SceneModel(data.scene, motion, data.fitted, device, rows, gauge)
        # A window's last frame belongs to the next window's Gaussians: it only serves the flow to it.
        self.drawn = [k for k, t in enumerate(data.fitted) if bool(self.model.alive_at(float(t)).any())]
        self.neighbours = self.rigid_neighbours()
        self.strategy = GrowStrategy(config.densify, config.refine.iters)
        self.strategy.initialize_state(self.model)

    def rigid_neighbours(self) -> torch.Tensor:
        """[Nd, k] trajectory rows of each dynamic Gaussian's nearest neighbours at birth within its temporal
        window (`knn_neighbours`)."""
        model = self.model
        return knn_neighbours(model.at_birth(model.position), model.window[model.dynamic], self.config.refine.rigid_neighbours)

    # -- losses --------------------------------------------------------------------------------------------
    def frame_loss(self, k: int, track_means: bool = False, level: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Loss of fitted frame k (photometric, depth and flow to fitted frame k+1) at pyramid `level`.

        Returns (loss, L1 as a 0-dim tensor, and with `track_means` the densification statistics' inputs:
        "rows" [A] the Gaussians drawn and "means" [T, A, 3] their positions at frame k (and k+1), whose
        gradient is kept after backward).
        """
        cfg, model, pyramid_level = self.config, self.model, self.pyramid.level(level)
        inputs, K, width, height = pyramid_level.inputs, pyramid_level.inputs.K, pyramid_level.width, pyramid_level.height
        still_motion = cfg.refine.lambda_still_motion > 0
        t = float(self.data.fitted[k])
        has_next = k + 1 < len(self.data.fitted) and cfg.refine.lambda_flow > 0
        rows = model.rows_alive_at(t)
        times = [t, float(self.data.fitted[k + 1])] if has_next else [t]
        means, view = model.frame_state(times, rows, still_motion)  # means [T, A, 3]; view: at frame k
        if track_means and means.requires_grad:
            means.retain_grad()
        cfw = model.cameras.camera_from_world(k)
        features = view.colors
        if has_next:  # one projection of both frames' positions through both cameras
            cameras = torch.stack([cfw, model.cameras.camera_from_world(k + 1)])
            pixels = project_to_pixels(means, cameras, K, min_depth=MIN_DEPTH)[0]
            features = torch.cat([view.colors, pixels[1] - pixels[0]], -1)
        out = rasterize(view.means, view.quats, view.scales, view.opacities, features, cfw, K, width, height)
        color = out.color[..., :3]
        ones = torch.ones(height, width, device=self.device)
        loss = cfg.losses.photo * photometric_loss(color, inputs.frames[k], ones, cfg.losses.ssim)
        depth_weight = inputs.depth_confidence[k] * (out.alpha.detach() > COVERED_ALPHA)
        loss = loss + cfg.losses.depth * depth_loss(out.depth, inputs.depth[k], depth_weight)
        if has_next:
            # x factor: the end-point error in working-resolution pixels at every level
            loss = loss + cfg.refine.lambda_flow * pyramid_level.factor * flow_loss(out.color[..., 3:5], inputs.flow_forward[k], inputs.valid_forward[k].float())
        l1 = (color.detach() - inputs.frames[k]).abs().mean()
        return loss, l1, {"rows": rows, "means": means} if track_means else {}

    def motion_regularisers(self, times: list[float]) -> torch.Tensor:
        """Temporal smoothness (acceleration over one frame) and KNN rigidity at each of `times` (clip frames), in
        depth units, and the group-lasso penalty on the residual motion of still Gaussians. One evaluation of
        the trajectories at all times: three samples per time, for the acceleration and the distance change."""
        cfg, model = self.config.refine, self.model
        loss = torch.zeros((), device=self.device)
        if cfg.lambda_still_motion > 0 and model.still.numel():
            # Group lasso: a Gaussian's whole residual trajectory is zero unless the images pay for it.
            loss = loss + cfg.lambda_still_motion * (model.still_motion.flatten(1).norm(dim=-1).mean() / model.depth_unit)
        if model.dynamic.numel() == 0:
            return loss
        t = torch.tensor(times, device=self.device)
        # The trajectories of other temporal windows are not at t (a single window: every one is).
        window = model.window[model.dynamic]
        alive = ((window[:, 0] <= t[:, None]) & (t[:, None] <= window[:, 1])).float()  # [T, Nd]
        samples = torch.stack([t - 1.0, t, t + 1.0], -1).clamp(0, model.motion_meta["time_span"])
        positions = evaluate_trajectories(model.position, model.basis(samples, model.dynamic))
        positions = positions.reshape(len(times), 3, -1, 3)  # [T, 3, Nd, 3]
        acceleration = (positions[:, 0] - 2 * positions[:, 1] + positions[:, 2]).norm(dim=-1) / model.depth_unit
        loss = loss + cfg.lambda_smooth * _masked_means(acceleration, alive)
        if self.neighbours.numel():
            # Each time's mean over the pairs of the rows alive then (a pair lies within one window).
            pairs_alive = alive * (self.neighbours >= 0).sum(-1)
            weight = alive / (model.depth_unit * pairs_alive.sum(-1, keepdim=True).clamp_min(1.0))
            loss = loss + cfg.lambda_rigid * rigidity_loss(positions[:, 1:].contiguous(), self.neighbours, weight).sum()
        return loss

    # -- driver --------------------------------------------------------------------------------------------
    def optimizer(self) -> torch.optim.Adam:
        cfg, model = self.config, self.model
        scale, lrs = cfg.refine.lr_scale, cfg.sequential
        motion_lr = scale * lrs.lr_means * model.depth_unit
        groups = [
            {"params": [model.still_means, model.position], "lr": motion_lr},
            # Before `refine.still_motion_from` residual motion has a zero rate but still takes gradients: Adam's
            # moments start primed when it joins (measured: starting them fresh costs cup 0.33 dB held-out).
            {"params": [model.still_motion], "lr": motion_lr if cfg.refine.lambda_still_motion > 0 else 0.0,
             "start": cfg.refine.still_motion_from * cfg.refine.iters},
            {"params": [model.rotation, model.quats], "lr": scale * lrs.lr_quats},
            {"params": [model.log_scales], "lr": scale * lrs.lr_scales},
            {"params": [model.opacity_logits], "lr": scale * lrs.lr_opacities},
            {"params": [model.color_logits], "lr": scale * lrs.lr_colors},
            {"params": [model.color_offsets], "lr": scale * lrs.lr_colors if cfg.refine.dynamic_color else 0.0},
            {"params": [model.cameras.deltas], "lr": cfg.refine.lr_camera},
        ]
        return SelectiveAdam(groups, eps=1e-15)

    def run(self, generator: torch.Generator | None = None) -> tuple[Scene4D, dict]:
        """Optimise (`optimise`) and return the refined Scene4D and the statistics."""
        stats = self.optimise(generator)
        return self.model.to_scene(self.data.scene), stats

    def optimise(self, generator: torch.Generator | None = None) -> dict:
        """`refine.iters` steps over the drawn fitted frames in random epochs; returns statistics."""
        cfg, model, strategy = self.config.refine, self.model, self.strategy
        generator = generator or torch.Generator().manual_seed(self.config.seed)
        optimizer = self.optimizer()
        decay = lambda start: lambda step: 0.0 if step < start else cfg.lr_decay ** (step / max(cfg.iters, 1))  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [decay(group.get("start", 0)) for group in optimizer.param_groups])
        started = time.perf_counter()
        order: list[int] = []
        l1_history = []  # 0-dim tensors, read once at the end: a float() per step would wait for the device
        for step in range(cfg.iters):
            raise_if_cancelled()  # a window beside others: Ctrl-C ends it now, not at its last step
            if not order:  # epochs over the fitted frames in random order
                order = [self.drawn[i] for i in torch.randperm(len(self.drawn), generator=generator).tolist()]
            k = order.pop()
            info: dict = {}
            strategy.step_pre_backward(model, step, info)
            level = level_at(step, cfg.iters, self.pyramid.levels, cfg.coarse_share)
            loss, l1, tracked = self.frame_loss(k, track_means=info["track_means"], level=level)
            # The trajectories are smoothed at the fitted frame and at a random time of the clip: between fitted
            # frames (keyframes of a long clip) no image constrains them.
            if step % cfg.regularise_every == 0:
                first, last = model.time_range
                between = first + float(torch.rand((), generator=generator)) * (last - first)
                loss = loss + cfg.regularise_every * self.motion_regularisers([float(self.data.fitted[k]), between])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if info["track_means"] and tracked["means"].grad is not None:
                with torch.no_grad():  # the working resolution's K: statistics in its pixels at every level
                    info.update(rows=tracked["rows"], means=tracked["means"][0].detach(), means_grad=tracked["means"].grad[0],
                                camera_from_world=model.cameras.camera_from_world(k), focal=self.focal)
            strategy.step_post_backward(model, step, info)
            optimizer.step()
            scheduler.step()
            dynamic_before = model.dynamic.numel()
            if strategy.step_post_optimizer(model, optimizer, step + 1, info, generator) and model.dynamic.numel() > dynamic_before:
                self.neighbours = self.rigid_neighbours()
            l1_history.append(l1)
            if self.on_progress is not None:
                self.on_progress(step + 1, cfg.iters)
        # The last step's gradients are read by nothing more; kept, a finished window's model would hold a copy of
        # its parameters until every window is refined (their size: about 0.2 GB by the end of an 1800-frame clip).
        optimizer.zero_grad(set_to_none=True)
        residual = model.settle_still_motion(self.data.scene.num_frames, cfg.keep_motion_px, self.focal)
        window = max(1, len(self.drawn))
        l1_history = torch.stack(l1_history).tolist() if l1_history else []
        return {
            "refine_iters": cfg.iters,
            "refine_seconds": time.perf_counter() - started,
            "refine_l1_first_epoch": sum(l1_history[:window]) / max(len(l1_history[:window]), 1),
            "refine_l1_last_epoch": sum(l1_history[-window:]) / max(len(l1_history[-window:]), 1),
            "dynamic_gaussians": int(model.dynamic.numel()),
            "refine_densified": strategy.added,
            "residual_motion_gaussians": residual,
            "gaussians": model.num_gaussians,
            "rigid_pairs": int((self.neighbours >= 0).sum()),
        }


def _masked_means(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over rows of the mean of values [T, N] where mask [T, N] (float 0/1) is set; rows without any count 0."""
    return ((values * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)).sum()


def refine_scene(data: RefineInputs, config: FitConfig, device: torch.device,
                 on_progress: Callable[[int, int], None] | None = None,
                 consume: bool = False, fixed_cameras: bool = False) -> tuple[Scene4D, dict]:
    """Refine a sequential scene window by window; returns the refined scene and statistics.

    Windows share no Gaussians, and their only shared frames are the boundaries (a window's last fitted frame is
    the next one's first, drawn by the next window's Gaussians). So each window is refined on its own, with its
    boundary cameras held as the sequential pass left them (they anchor neighbouring windows to one frame): a
    step then touches one window's rows instead of all of them. Steps: `refine.iters` shared by the windows in
    proportion to their drawn frames, and at least `refine.min_visits` per drawn frame. On the CPU the windows
    are refined side by side (`recon4d.device.side_by_side`), each on one thread: two windows so make up to 1.34x the
    steps of one window on both threads (a window of backpack's 450 frames, alone: 47.4 ms per step on one
    thread, 31.8 ms on two; README, "Long clips with a moving camera"), and each window draws from its own generator,
    so the result does not depend on the thread count (a window on two threads would differ in the last bits).

    The sequential scene's stored states of dynamic Gaussians (`dynamic_means`, `dynamic_quats`) are read
    once, to start every window's trajectories, and the priors (`data.inputs`) until the last window is refined.
    With `consume` each is dropped from `data` then (the states set to None in `data.scene`, `data.inputs` to
    None; the caller must use neither again): on a long clip they are the largest things the fit holds (450
    frames at 180 px: about 1 GB of priors, 0.24 GB of the states of 80 fitted frames). Consumed priors of
    several windows are first split into a copy per window (`FitInputs.split`), and each copy is freed when its
    window ends instead of when the last one does; what the window freed then goes back to the system
    (`release_freed_memory`). The refined scene keeps no per-frame states: its motion model defines them.
    `fixed_cameras`: every camera stays as the scene has it (a joint fit on COLMAP's cameras, `sfm.joint`).
    """
    started = time.perf_counter()
    scene, fitted, cfg = data.scene, data.fitted, config.refine
    row_windows = scene.trajectory_windows()
    windows = windows_of(row_windows, fitted)
    fourier_terms = shared_fourier_terms(windows, cfg)
    motion = initial_motion(scene, fitted, cfg, row_windows, fourier_terms)
    if consume:
        scene.dynamic_means = scene.dynamic_quats = scene.state_frames = None
    dynamic = scene.is_dynamic.nonzero().squeeze(1)
    parts = []
    for i, (first, last, frames) in enumerate(windows):
        final = i == len(windows) - 1
        rows = ((row_windows[:, 0] == first) & (row_windows[:, 1] == last)).nonzero().squeeze(1)
        start = fitted.index(frames[0])
        drawn = len(frames) if final else len(frames) - 1
        gauge = tuple(range(len(frames))) if fixed_cameras else (0,) if final else (0, len(frames) - 1)
        parts.append((rows, frames, start, drawn, gauge))
    total_drawn = sum(part[3] for part in parts)
    steps = [max(round(cfg.iters * drawn / max(total_drawn, 1)), cfg.min_visits * drawn) for *_, drawn, _ in parts]
    completed = [0] * len(parts)
    window_inputs = None  # consumed priors of several windows: a copy each, freed when its window ends
    if consume and len(parts) > 1:
        window_inputs = data.inputs.split([(start, start + len(frames)) for _, frames, start, *_ in parts])
        data.inputs = None

    def refine_part(index: int) -> tuple[SceneModel, dict]:
        (rows, frames, start, _, gauge), iters = parts[index], steps[index]

        def progress(step: int, _: int) -> None:
            completed[index] = step
            on_progress(sum(completed), sum(steps))

        if window_inputs is None:
            inputs = data.inputs.between(start, start + len(frames))
        else:
            inputs, window_inputs[index] = window_inputs[index], None
        window_data = RefineInputs(scene, frames, inputs)
        window_rows, window_motion = None, motion
        if len(parts) > 1:  # the window's dynamic Gaussians among all (both in index order): their trajectories
            window_rows, window_motion = rows, motion.select(torch.searchsorted(dynamic, rows[scene.is_dynamic[rows]]))
        refiner = Refiner(window_data, config.replace(refine_iters=iters), device,
                          None if on_progress is None else progress, rows=window_rows, motion=window_motion, gauge=gauge)
        result = refiner.model, refiner.optimise()
        if window_inputs is not None:  # the window's priors and working memory, freed now, go back to the system
            del refiner, window_data, inputs
            release_freed_memory()
        return result

    models, stats = map(list, zip(*side_by_side(refine_part, range(len(parts)), device)))
    if consume:
        data.inputs = None
    merged = {key: sum(s[key] for s in stats) for key in stats[0] if not key.startswith("refine_l1")}
    for key in ("refine_l1_first_epoch", "refine_l1_last_epoch"):
        merged[key] = sum(s[key] * part[3] for s, part in zip(stats, parts)) / max(total_drawn, 1)
    merged["refine_windows"] = len(parts)
    merged["refine_seconds"] = time.perf_counter() - started  # wall time; the windows' own seconds overlap
    return scene_from_models(models, scene), merged
