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

from recon4d.fit.config import FitConfig, RefineConfig
from recon4d.fit.losses import COVERED_ALPHA, depth_loss, flow_loss, photometric_loss
from recon4d.fit.model import SceneModel
from recon4d.fit.optim import SelectiveAdam
from recon4d.fit.pyramid import Pyramid, level_at
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


def windows_of(scene: Scene4D, fitted: list[int]) -> list[tuple[float, float, list[int]]]:
    """The temporal windows of a scene (`Scene4D.trajectory_windows`) as (first frame, last frame, the fitted
    frames inside), in time order."""
    windows = torch.unique(scene.trajectory_windows(), dim=0).tolist()
    return [(first, last, [f for f in fitted if first <= f <= last]) for first, last in sorted(windows)]


def initial_motion(scene: Scene4D, fitted: list[int], config: RefineConfig) -> MotionModel:
    """Least-squares trajectories through the per-frame states of the fitted frames (while each Gaussian
    exists), each over its temporal window; one basis size for all windows (the smallest they allow)."""
    windows = windows_of(scene, fitted)
    fourier_terms = min(fourier_terms_for(int(last - first) + 1, config, frames) for first, last, frames in windows)
    count = basis_size(config.poly_degree, fourier_terms)
    dynamic = scene.is_dynamic.nonzero().squeeze(1)
    row_windows = scene.trajectory_windows()[dynamic]
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
        means = scene.dynamic_means[frames][:, rows].float()
        quats = scene.dynamic_quats[frames][:, rows].float()
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


def knn_pairs(points: torch.Tensor, neighbours: int) -> torch.Tensor:
    """Indices [M, 2] of each point's `neighbours` nearest other points; points [N, 3]."""
    count = points.shape[0]
    if count < 2 or neighbours <= 0:
        return torch.zeros(0, 2, dtype=torch.long, device=points.device)
    k = min(neighbours, count - 1)
    rows = []
    for start in range(0, count, 2048):  # chunks bound the [chunk, N] distance matrix
        distance = torch.cdist(points[start:start + 2048], points)
        distance[torch.arange(distance.shape[0]), torch.arange(start, start + distance.shape[0])] = math.inf
        rows.append(distance.topk(k, largest=False).indices)
    nearest = torch.cat(rows)
    return torch.stack([torch.arange(count, device=points.device).repeat_interleave(k), nearest.reshape(-1)], -1)


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
                 on_progress: Callable[[int, int], None] | None = None):
        self.data, self.config, self.device, self.on_progress = data, config, device, on_progress
        scene = data.scene
        self.K = data.inputs.K.to(device)
        self.pyramid = Pyramid(data.inputs, config.refine.pyramid_levels)
        self.model = SceneModel(scene, initial_motion(scene, data.fitted, config.refine), data.fitted, device)
        self.pairs = self.rigid_pairs()
        self.strategy = GrowStrategy(config.densify, config.refine.iters)
        self.strategy.initialize_state(self.model)

    def rigid_pairs(self) -> list[tuple[float, float, torch.Tensor]]:
        """Per temporal window (first frame, last frame, KNN pairs [M, 2] of trajectory rows): the dynamic
        Gaussians' nearest neighbours at birth within the window. Kept apart so that a step takes its window's
        pairs without filtering all of them."""
        model = self.model
        points = model.at_birth(model.position)
        window = model.window[model.dynamic]
        pairs = []
        for first, last in torch.unique(window, dim=0).tolist():
            rows = ((window[:, 0] == first) & (window[:, 1] == last)).nonzero().squeeze(1)
            pairs.append((first, last, rows[knn_pairs(points[rows], self.config.refine.rigid_neighbours)]))
        return pairs

    # -- losses --------------------------------------------------------------------------------------------
    def frame_loss(self, k: int, track_means: bool = False, level: int = 0) -> tuple[torch.Tensor, float, torch.Tensor]:
        """Loss of fitted frame k (photometric, depth and flow to fitted frame k+1) at pyramid `level`.

        Returns (loss, L1, means [N, 3] of all Gaussians at frame k; with `track_means` their gradient is kept
        after backward for the densification statistics).
        """
        cfg, model, pyramid_level = self.config, self.model, self.pyramid.level(level)
        inputs, K, width, height = pyramid_level.inputs, pyramid_level.inputs.K, pyramid_level.width, pyramid_level.height
        still_motion = cfg.refine.lambda_still_motion > 0
        t = float(self.data.fitted[k])
        gaussians, alive = model.gaussians_at(t, still_motion)
        means = gaussians.means
        if track_means and means.requires_grad:
            means.retain_grad()
        view = gaussians.select(alive)
        cfw = model.cameras.camera_from_world(k)
        extra = None
        has_next = k + 1 < len(self.data.fitted) and cfg.refine.lambda_flow > 0
        if has_next:
            next_means = model.means_at(float(self.data.fitted[k + 1]), still_motion)[alive]
            next_cfw = model.cameras.camera_from_world(k + 1)
            extra = (project_to_pixels(next_means, next_cfw, K, min_depth=MIN_DEPTH)[0]
                     - project_to_pixels(view.means, cfw, K, min_depth=MIN_DEPTH)[0])
        features = view.colors if extra is None else torch.cat([view.colors, extra], -1)
        out = rasterize(view.means, view.quats, view.scales, view.opacities, features, cfw, K, width, height)
        color = out.color[..., :3]
        ones = torch.ones(height, width, device=self.device)
        loss = cfg.losses.photo * photometric_loss(color, inputs.frames[k], ones, cfg.losses.ssim)
        depth_weight = inputs.depth_confidence[k] * (out.alpha.detach() > COVERED_ALPHA)
        loss = loss + cfg.losses.depth * depth_loss(out.depth, inputs.depth[k], depth_weight)
        if extra is not None:
            # x factor: the end-point error in working-resolution pixels at every level
            loss = loss + cfg.refine.lambda_flow * pyramid_level.factor * flow_loss(out.color[..., 3:5], inputs.flow_forward[k], inputs.valid_forward[k].float())
        l1 = float((color.detach() - inputs.frames[k]).abs().mean())
        return loss, l1, means

    def motion_regularisers(self, t: float, still: bool = True) -> torch.Tensor:
        """Temporal smoothness (acceleration over one frame) and KNN rigidity at time t, in depth units, and
        (with `still`) the group-lasso penalty on the residual motion of still Gaussians."""
        cfg, model = self.config.refine, self.model
        loss = torch.zeros((), device=self.device)
        if still and cfg.lambda_still_motion > 0 and model.still.numel():
            # Group lasso: a Gaussian's whole residual trajectory is zero unless the images pay for it.
            loss = loss + cfg.lambda_still_motion * (model.still_motion.flatten(1).norm(dim=-1).mean() / model.depth_unit)
        if model.dynamic.numel() == 0:
            return loss
        # The trajectories of other temporal windows are not at t (a single window: every one is).
        window = model.window[model.dynamic]
        alive = (window[:, 0] <= t) & (t <= window[:, 1])
        if not bool(alive.any()):
            return loss
        times = torch.tensor([t - 1.0, t, t + 1.0]).clamp(0, model.motion_meta["time_span"])
        positions = evaluate_trajectories(model.position, model.basis(times, model.dynamic))  # [3, Nd, 3]
        acceleration = (positions[0] - 2 * positions[1] + positions[2]).norm(dim=-1) / model.depth_unit
        loss = loss + cfg.lambda_smooth * acceleration[alive].mean()
        pairs = [p for first, last, p in self.pairs if first <= t <= last]
        pairs = pairs[0] if len(pairs) == 1 else torch.cat(pairs) if pairs else torch.zeros(0, 2, dtype=torch.long, device=self.device)
        if pairs.numel():
            i, j = pairs[:, 0], pairs[:, 1]
            now = (positions[1, i] - positions[1, j]).norm(dim=-1)
            later = (positions[2, i] - positions[2, j]).norm(dim=-1)
            loss = loss + cfg.lambda_rigid * ((now - later).abs() / model.depth_unit).mean()
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
        cfg, model, strategy = self.config.refine, self.model, self.strategy
        generator = generator or torch.Generator().manual_seed(self.config.seed)
        optimizer = self.optimizer()
        decay = lambda start: lambda step: 0.0 if step < start else cfg.lr_decay ** (step / max(cfg.iters, 1))  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [decay(group.get("start", 0)) for group in optimizer.param_groups])
        started = time.perf_counter()
        order: list[int] = []
        l1_history = []
        for step in range(cfg.iters):
            if not order:  # epochs over the fitted frames in random order
                order = torch.randperm(len(self.data.fitted), generator=generator).tolist()
            k = order.pop()
            info: dict = {}
            strategy.step_pre_backward(model, step, info)
            level = level_at(step, cfg.iters, self.pyramid.levels, cfg.coarse_share)
            loss, l1, means = self.frame_loss(k, track_means=info["track_means"], level=level)
            # The trajectories are smoothed at the fitted frame and at a random time of the clip: between fitted
            # frames (keyframes of a long clip) no image constrains them.
            between = float(torch.rand((), generator=generator)) * model.motion_meta["time_span"]
            loss = loss + self.motion_regularisers(float(self.data.fitted[k])) + self.motion_regularisers(between, still=False)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if info["track_means"]:
                with torch.no_grad():  # the working resolution's K: statistics in its pixels at every level
                    info.update(means=means, camera_from_world=model.cameras.camera_from_world(k), K=self.K)
            strategy.step_post_backward(model, step, info)
            optimizer.step()
            scheduler.step()
            dynamic_before = model.dynamic.numel()
            if strategy.step_post_optimizer(model, optimizer, step + 1, info, generator) and model.dynamic.numel() > dynamic_before:
                self.pairs = self.rigid_pairs()
            l1_history.append(l1)
            if self.on_progress is not None:
                self.on_progress(step + 1, cfg.iters)
        residual = model.settle_still_motion(self.data.scene.num_frames, cfg.keep_motion_px, float(self.K[0, 0]))
        window = max(1, len(self.data.fitted))
        stats = {
            "refine_iters": cfg.iters,
            "refine_seconds": time.perf_counter() - started,
            "refine_l1_first_epoch": sum(l1_history[:window]) / max(len(l1_history[:window]), 1),
            "refine_l1_last_epoch": sum(l1_history[-window:]) / max(len(l1_history[-window:]), 1),
            "dynamic_gaussians": int(model.dynamic.numel()),
            "refine_densified": strategy.added,
            "residual_motion_gaussians": residual,
            "gaussians": model.num_gaussians,
            "rigid_pairs": sum(int(p.shape[0]) for *_, p in self.pairs),
        }
        return model.to_scene(self.data.scene), stats
