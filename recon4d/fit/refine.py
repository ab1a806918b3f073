"""Continuous-time refinement of a sequential fit: Gaussian-Flow's deformation model plus global bundle adjustment.

The sequential (GFlow) pass stores one state per frame and never revisits a frame once it has moved on. This
stage turns each dynamic Gaussian's per-frame positions and rotations into a compact polynomial + Fourier
trajectory (`recon4d.geometry.trajectory`, initialised by least squares) and then optimises, jointly over
all fitted frames sampled at random: every Gaussian's appearance, still positions, the trajectory
coefficients (position, rotation, colour) and every camera but the first. Losses: photometric (L1 + SSIM),
scale-invariant depth, optical flow between consecutive fitted frames (which ties cameras and motion to the
2D correspondences), temporal smoothness of the trajectories (acceleration) and KNN rigidity (neighbouring
dynamic Gaussians keep their distances).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from recon4d.fit.config import FitConfig
from recon4d.fit.gaussians import logit
from recon4d.fit.losses import depth_loss, flow_loss, photometric_loss
from recon4d.fit.optim import SelectiveAdam
from recon4d.fit.sequential import COVERED_ALPHA, FitInputs, project_to_pixels
from recon4d.geometry.camera import invert_pose
from recon4d.geometry.lie import apply_pose_delta, fill_poses
from recon4d.geometry.quaternion import normalize_quaternion
from recon4d.geometry.trajectory import basis_size, evaluate_trajectories, fit_trajectories, time_basis
from recon4d.io.scene import Gaussians, MotionModel, Scene4D
from recon4d.render import rasterize


def fourier_terms_for(num_frames: int, config: FitConfig) -> int:
    """Fourier terms for a clip: as configured, but no period shorter than `refine_min_period_frames`."""
    return min(config.refine_fourier_terms, max(num_frames - 1, 0) // max(config.refine_min_period_frames, 1))


def initial_motion(scene: Scene4D, fitted: list[int], config: FitConfig) -> MotionModel:
    """Least-squares trajectories through the per-frame states of the fitted frames (after each birth)."""
    num_frames = scene.num_frames
    fourier_terms = fourier_terms_for(num_frames, config)
    times = torch.tensor(fitted, dtype=torch.float32)
    basis = time_basis(times / max(num_frames - 1, 1), config.refine_poly_degree, fourier_terms)
    dynamic = scene.is_dynamic.nonzero().squeeze(1)
    birth = scene.birth_frame[dynamic].to(torch.float32)
    weights = (times[:, None] >= birth[None]).float()  # [F, Nd]: a Gaussian's states before its birth are fillers
    means = scene.dynamic_means[fitted].float()
    quats = scene.dynamic_quats[fitted].float()
    # One sign per Gaussian and frame: q and -q are the same rotation, the fit needs one continuous branch.
    reference = quats[torch.clamp(torch.searchsorted(times, birth), max=len(fitted) - 1), torch.arange(dynamic.numel())]
    quats = torch.where((quats * reference[None]).sum(-1, keepdim=True) < 0, -quats, quats)
    count = basis_size(config.refine_poly_degree, fourier_terms)
    return MotionModel(
        position=fit_trajectories(means, basis, weights, config.refine_ridge),
        rotation=fit_trajectories(quats, basis, weights, config.refine_ridge),
        color=torch.zeros(dynamic.numel(), count, 3),
        poly_degree=config.refine_poly_degree, fourier_terms=fourier_terms,
        time_span=float(max(num_frames - 1, 1)),
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
    """Joint optimisation of Gaussians, trajectories and cameras; `run()` returns the refined Scene4D."""

    def __init__(self, data: RefineInputs, config: FitConfig, device: torch.device,
                 on_progress: Callable[[int, int], None] | None = None):
        self.data, self.config, self.device, self.on_progress = data, config, device, on_progress
        scene = data.scene
        self.width, self.height = scene.cameras.width, scene.cameras.height
        self.K = data.inputs.K.to(device)
        self.dynamic = scene.is_dynamic.nonzero().squeeze(1).to(device)
        self.still = (~scene.is_dynamic).nonzero().squeeze(1).to(device)
        self.birth = scene.birth_frame.to(device)
        g = scene.gaussians
        tensor = lambda x: x.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)  # noqa: E731
        self.still_means = tensor(g.means[self.still.cpu()])
        self.quats = tensor(g.quats)
        self.log_scales = tensor(torch.log(g.scales.clamp_min(1e-8)))
        self.opacity_logits = tensor(logit(g.opacities))
        self.color_logits = tensor(logit(g.colors))
        motion = initial_motion(scene, data.fitted, config)
        self.position = tensor(motion.position)
        self.rotation = tensor(motion.rotation)
        self.color_offsets = tensor(motion.color)
        self.motion_meta = motion.metadata()
        self.base_cfw = [invert_pose(scene.cameras.world_from_camera[t]).float().to(device) for t in data.fitted]
        self.camera_deltas = torch.zeros(len(data.fitted), 6, device=device, requires_grad=True)
        first_center = scene.cameras.world_from_camera[data.fitted[0], :3, 3].float().to(device)
        self.depth_unit = float(torch.linalg.norm(g.means.to(device) - first_center, dim=-1).median()) if len(g) else 1.0
        with torch.no_grad():  # rigidity pairs from each dynamic Gaussian's state at its own birth frame
            birth_basis = self._basis(self.birth[self.dynamic].float())  # [Nd, B]: one time per Gaussian
            birth_state = torch.einsum("nbd,nb->nd", self.position, birth_basis)
        self.pairs = knn_pairs(birth_state, config.refine_rigid_neighbours)

    # -- model ---------------------------------------------------------------------------------------------
    def _basis(self, t: torch.Tensor) -> torch.Tensor:
        tau = t.reshape(-1).float() / self.motion_meta["time_span"]
        return time_basis(tau.to(self.device), self.motion_meta["poly_degree"], self.motion_meta["fourier_terms"])

    def _unit(self) -> torch.Tensor:
        du = self.depth_unit
        return torch.tensor([1.0, 1.0, 1.0, du, du, du], device=self.device)

    def camera_from_world(self, k: int) -> torch.Tensor:
        """Refined camera of fitted frame k; the first stays where the sequential pass put it (gauge)."""
        if k == 0:
            return self.base_cfw[0]
        return apply_pose_delta(self.camera_deltas[k] * self._unit(), self.base_cfw[k])

    def dynamic_positions(self, t: float) -> torch.Tensor:
        return evaluate_trajectories(self.position, self._basis(torch.tensor([t]))[0])

    def gaussians_at(self, t: float) -> tuple[Gaussians, torch.Tensor]:
        """All Gaussians at clip time t (differentiable) and the mask [N] of those alive at t."""
        basis = self._basis(torch.tensor([t]))[0]
        n = self.quats.shape[0]
        means = torch.zeros(n, 3, device=self.device)
        means = means.index_put((self.still,), self.still_means).index_put(
            (self.dynamic,), evaluate_trajectories(self.position, basis))
        quats = self.quats.index_put((self.dynamic,), evaluate_trajectories(self.rotation, basis))
        colors = torch.sigmoid(self.color_logits)
        colors = colors.index_put((self.dynamic,), (colors[self.dynamic] + evaluate_trajectories(self.color_offsets, basis)).clamp(0, 1))
        gaussians = Gaussians(means, normalize_quaternion(quats), torch.exp(self.log_scales),
                              torch.sigmoid(self.opacity_logits), colors)
        return gaussians, self.birth <= t

    # -- losses --------------------------------------------------------------------------------------------
    def frame_loss(self, k: int) -> tuple[torch.Tensor, float]:
        """Loss of fitted frame k (photometric, depth and flow to fitted frame k+1); returns (loss, L1)."""
        cfg, inputs = self.config, self.data.inputs
        t = float(self.data.fitted[k])
        gaussians, alive = self.gaussians_at(t)
        view = gaussians.select(alive)
        cfw = self.camera_from_world(k)
        extra = None
        has_next = k + 1 < len(self.data.fitted) and cfg.refine_lambda_flow > 0
        if has_next:
            next_means = view.means.clone()
            alive_dynamic = self.is_dynamic_alive(alive)
            next_means[alive_dynamic] = self.dynamic_positions(float(self.data.fitted[k + 1]))[self.birth[self.dynamic] <= t]
            extra = project_to_pixels(next_means, self.camera_from_world(k + 1), self.K) - project_to_pixels(view.means, cfw, self.K)
        features = view.colors if extra is None else torch.cat([view.colors, extra], -1)
        out = rasterize(view.means, view.quats, view.scales, view.opacities, features, cfw, self.K, self.width, self.height)
        color = out.color[..., :3]
        ones = torch.ones(self.height, self.width, device=self.device)
        loss = cfg.lambda_photo * photometric_loss(color, inputs.frames[k], ones, cfg.lambda_ssim)
        depth_weight = inputs.depth_confidence[k] * (out.alpha.detach() > COVERED_ALPHA)
        loss = loss + cfg.lambda_depth * depth_loss(out.depth, inputs.depth[k], depth_weight)
        if extra is not None:
            loss = loss + cfg.refine_lambda_flow * flow_loss(out.color[..., 3:5], inputs.flow_forward[k], inputs.valid_forward[k].float())
        l1 = float((color.detach() - inputs.frames[k]).abs().mean())
        return loss, l1

    def is_dynamic_alive(self, alive: torch.Tensor) -> torch.Tensor:
        """Among the alive Gaussians (in index order), which are dynamic: [alive.sum()] bool."""
        flags = torch.zeros_like(alive)
        flags[self.dynamic] = True
        return flags[alive]

    def motion_regularisers(self, t: float) -> torch.Tensor:
        """Temporal smoothness (acceleration over one frame) and KNN rigidity at time t, in depth units."""
        cfg = self.config
        if self.dynamic.numel() == 0:
            return torch.zeros((), device=self.device)
        times = torch.tensor([t - 1.0, t, t + 1.0]).clamp(0, self.motion_meta["time_span"])
        positions = evaluate_trajectories(self.position, self._basis(times))  # [3, Nd, 3]
        acceleration = (positions[0] - 2 * positions[1] + positions[2]).norm(dim=-1) / self.depth_unit
        loss = cfg.refine_lambda_smooth * acceleration.mean()
        if self.pairs.numel():
            i, j = self.pairs[:, 0], self.pairs[:, 1]
            now = (positions[1, i] - positions[1, j]).norm(dim=-1)
            later = (positions[2, i] - positions[2, j]).norm(dim=-1)
            loss = loss + cfg.refine_lambda_rigid * ((now - later).abs() / self.depth_unit).mean()
        return loss

    # -- driver --------------------------------------------------------------------------------------------
    def optimizer(self) -> torch.optim.Adam:
        cfg, du = self.config, self.depth_unit
        motion_lr = cfg.refine_lr_scale * cfg.lr_means * du
        groups = [
            {"params": [self.still_means, self.position], "lr": motion_lr},
            {"params": [self.rotation, self.quats], "lr": cfg.refine_lr_scale * cfg.lr_quats},
            {"params": [self.log_scales], "lr": cfg.refine_lr_scale * cfg.lr_scales},
            {"params": [self.opacity_logits], "lr": cfg.refine_lr_scale * cfg.lr_opacities},
            {"params": [self.color_logits], "lr": cfg.refine_lr_scale * cfg.lr_colors},
            {"params": [self.color_offsets], "lr": cfg.refine_lr_scale * cfg.lr_colors if cfg.refine_dynamic_color else 0.0},
            {"params": [self.camera_deltas], "lr": cfg.refine_lr_camera},
        ]
        return SelectiveAdam(groups, eps=1e-15)

    def run(self, generator: torch.Generator | None = None) -> tuple[Scene4D, dict]:
        cfg = self.config
        generator = generator or torch.Generator().manual_seed(cfg.seed)
        optimizer = self.optimizer()
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.refine_lr_decay ** (1 / max(cfg.refine_iters, 1)))
        started = time.perf_counter()
        order: list[int] = []
        l1_history = []
        for step in range(cfg.refine_iters):
            if not order:  # epochs over the fitted frames in random order
                order = torch.randperm(len(self.data.fitted), generator=generator).tolist()
            k = order.pop()
            loss, l1 = self.frame_loss(k)
            loss = loss + self.motion_regularisers(float(self.data.fitted[k]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            l1_history.append(l1)
            if self.on_progress is not None:
                self.on_progress(step + 1, cfg.refine_iters)
        window = max(1, len(self.data.fitted))
        stats = {
            "refine_iters": cfg.refine_iters,
            "refine_seconds": time.perf_counter() - started,
            "refine_l1_first_epoch": sum(l1_history[:window]) / max(len(l1_history[:window]), 1),
            "refine_l1_last_epoch": sum(l1_history[-window:]) / max(len(l1_history[-window:]), 1),
            "dynamic_gaussians": int(self.dynamic.numel()),
            "rigid_pairs": int(self.pairs.shape[0]),
        }
        return self.refined_scene(), stats

    @torch.no_grad()
    def refined_scene(self) -> Scene4D:
        """The scene with the continuous motion model, refined Gaussians and cameras (held-out frames'
        cameras re-interpolated between their refined neighbours)."""
        scene = self.data.scene
        motion = MotionModel(self.position.detach().cpu(), self.rotation.detach().cpu(), self.color_offsets.detach().cpu(),
                             **self.motion_meta)
        means = scene.gaussians.means.clone()
        means[self.still.cpu()] = self.still_means.detach().cpu()
        dyn_means, dyn_quats, _ = motion.states(torch.arange(scene.num_frames, dtype=torch.float32))
        means[self.dynamic.cpu()] = dyn_means[0] if dyn_means.shape[0] else means[self.dynamic.cpu()]
        gaussians = Gaussians(means, normalize_quaternion(self.quats.detach().cpu()), torch.exp(self.log_scales.detach().cpu()),
                              torch.sigmoid(self.opacity_logits.detach().cpu()), torch.sigmoid(self.color_logits.detach().cpu()))
        world_from_camera = scene.cameras.world_from_camera.clone()
        for k, t in enumerate(self.data.fitted):
            world_from_camera[t] = invert_pose(self.camera_from_world(k).detach().cpu()).to(world_from_camera.dtype)
        world_from_camera = fill_poses(world_from_camera, self.data.fitted)
        cameras = type(scene.cameras)(world_from_camera=world_from_camera, intrinsics=scene.cameras.intrinsics,
                                      timestamps=scene.cameras.timestamps, width=scene.cameras.width,
                                      height=scene.cameras.height, frame_names=list(scene.cameras.frame_names))
        refined = Scene4D(gaussians=gaussians, is_dynamic=scene.is_dynamic, birth_frame=scene.birth_frame,
                          dynamic_means=dyn_means, dynamic_quats=dyn_quats, cameras=cameras, arrays=dict(scene.arrays),
                          config=dict(scene.config), metrics=dict(scene.metrics), motion=motion)
        refined.validate()
        return refined
