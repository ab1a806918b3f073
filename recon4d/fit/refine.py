"""Continuous-time refinement of a sequential fit: Gaussian-Flow's deformation model plus global bundle adjustment.

The sequential (GFlow) pass stores one state per frame and never revisits a frame once it has moved on. This
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
budget instead of a gradient threshold (a threshold on a loss averaged over pixels depends on the resolution):
every `refine_densify_every` steps the highest-ranked Gaussians are cloned (small footprint) or split in two
(large footprint), moving ones with their whole trajectory.

The prior's still/moving split misses slow motion (below its per-pair threshold), and a Gaussian labelled still
can then only be explained by the cameras. In the second part of the refinement (`refine_still_motion_from`)
still Gaussians may take a residual trajectory under a group-lasso penalty; those whose residual motion reaches
`refine_keep_motion_px` keep it as a trajectory (dynamic, but not labelled moving: a residue this small is as
often the background absorbing what the cameras and depth cannot explain as a slow object), the others keep
their mean position.
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
from recon4d.fit.optim import SelectiveAdam, replace_parameter
from recon4d.fit.sequential import COVERED_ALPHA, FitInputs, project_to_pixels
from recon4d.geometry.camera import invert_pose
from recon4d.geometry.lie import apply_pose_delta, fill_poses
from recon4d.geometry.quaternion import normalize_quaternion, rotation_from_quaternion
from recon4d.geometry.trajectory import basis_size, evaluate_trajectories, fit_trajectories, time_basis
from recon4d.io.scene import Gaussians, MotionModel, Scene4D
from recon4d.render import rasterize


def fourier_terms_for(num_frames: int, config: FitConfig) -> int:
    """Fourier terms for a clip: as configured, but no period shorter than `refine_min_period_frames`."""
    return min(config.refine.fourier_terms, max(num_frames - 1, 0) // max(config.refine.min_period_frames, 1))


def initial_motion(scene: Scene4D, fitted: list[int], config: FitConfig) -> MotionModel:
    """Least-squares trajectories through the per-frame states of the fitted frames (after each birth)."""
    num_frames = scene.num_frames
    fourier_terms = fourier_terms_for(num_frames, config)
    times = torch.tensor(fitted, dtype=torch.float32)
    basis = time_basis(times / max(num_frames - 1, 1), config.refine.poly_degree, fourier_terms)
    dynamic = scene.is_dynamic.nonzero().squeeze(1)
    birth = scene.birth_frame[dynamic].to(torch.float32)
    weights = (times[:, None] >= birth[None]).float()  # [F, Nd]: a Gaussian's states before its birth are fillers
    means = scene.dynamic_means[fitted].float()
    quats = scene.dynamic_quats[fitted].float()
    # One sign per Gaussian and frame: q and -q are the same rotation, the fit needs one continuous branch.
    reference = quats[torch.clamp(torch.searchsorted(times, birth), max=len(fitted) - 1), torch.arange(dynamic.numel())]
    quats = torch.where((quats * reference[None]).sum(-1, keepdim=True) < 0, -quats, quats)
    count = basis_size(config.refine.poly_degree, fourier_terms)
    return MotionModel(
        position=fit_trajectories(means, basis, weights, config.refine.ridge),
        rotation=fit_trajectories(quats, basis, weights, config.refine.ridge),
        color=torch.zeros(dynamic.numel(), count, 3),
        poly_degree=config.refine.poly_degree, fourier_terms=fourier_terms,
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
        self.is_moving = scene.is_moving.to(device)
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
        # Residual motion of still Gaussians: the non-constant coefficients of a trajectory, held near zero
        # by a group-lasso penalty. The prior's still/moving split misses slow or sub-pixel motion (a hand
        # shifting its grip); where the images demand it, a still Gaussian moves and keeps a trajectory.
        self.still_motion = tensor(torch.zeros(self.still.numel(), motion.position.shape[1] - 1, 3))
        self.base_cfw = [invert_pose(scene.cameras.world_from_camera[t]).float().to(device) for t in data.fitted]
        self.camera_deltas = torch.zeros(len(data.fitted), 6, device=device, requires_grad=True)
        first_center = scene.cameras.world_from_camera[data.fitted[0], :3, 3].float().to(device)
        self.depth_unit = float(torch.linalg.norm(g.means.to(device) - first_center, dim=-1).median()) if len(g) else 1.0
        self.pairs = knn_pairs(self._at_birth(self.position), config.refine.rigid_neighbours)
        self._reset_densify_statistics()
        self.densified = 0

    # -- model ---------------------------------------------------------------------------------------------
    def _basis(self, t: torch.Tensor) -> torch.Tensor:
        tau = t.reshape(-1).float() / self.motion_meta["time_span"]
        return time_basis(tau.to(self.device), self.motion_meta["poly_degree"], self.motion_meta["fourier_terms"])

    @torch.no_grad()
    def _at_birth(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Each moving Gaussian's trajectory [Nd, B, D] evaluated at its own birth frame -> [Nd, D]."""
        return torch.einsum("nbd,nb->nd", coeffs.detach(), self._basis(self.birth[self.dynamic].float()))

    def _unit(self) -> torch.Tensor:
        du = self.depth_unit
        return torch.tensor([1.0, 1.0, 1.0, du, du, du], device=self.device)

    def camera_from_world(self, k: int) -> torch.Tensor:
        """Refined camera of fitted frame k; the first stays where the sequential pass put it (gauge)."""
        if k == 0:
            return self.base_cfw[0]
        return apply_pose_delta(self.camera_deltas[k] * self._unit(), self.base_cfw[k])

    def means_at(self, t: float) -> torch.Tensor:
        """Positions [N, 3] of all Gaussians at clip time t (differentiable)."""
        basis = self._basis(torch.tensor([t]))[0]
        still = self.still_means
        if self.config.refine.lambda_still_motion > 0:  # off: it stays zero, so it is not evaluated
            still = still + evaluate_trajectories(self.still_motion, basis[1:])
        means = torch.zeros(self.quats.shape[0], 3, device=self.device)
        return means.index_put((self.still,), still).index_put((self.dynamic,), evaluate_trajectories(self.position, basis))

    def gaussians_at(self, t: float) -> tuple[Gaussians, torch.Tensor]:
        """All Gaussians at clip time t (differentiable) and the mask [N] of those alive at t."""
        basis = self._basis(torch.tensor([t]))[0]
        means = self.means_at(t)
        quats = self.quats.index_put((self.dynamic,), evaluate_trajectories(self.rotation, basis))
        colors = torch.sigmoid(self.color_logits)
        colors = colors.index_put((self.dynamic,), (colors[self.dynamic] + evaluate_trajectories(self.color_offsets, basis)).clamp(0, 1))
        gaussians = Gaussians(means, normalize_quaternion(quats), torch.exp(self.log_scales),
                              torch.sigmoid(self.opacity_logits), colors)
        return gaussians, self.birth <= t

    # -- losses --------------------------------------------------------------------------------------------
    def frame_loss(self, k: int, track_means: bool = False) -> tuple[torch.Tensor, float, torch.Tensor]:
        """Loss of fitted frame k (photometric, depth and flow to fitted frame k+1).

        Returns (loss, L1, means [N, 3] of all Gaussians at frame k; with `track_means` their gradient is kept
        after backward for the densification statistics).
        """
        cfg, inputs = self.config, self.data.inputs
        t = float(self.data.fitted[k])
        gaussians, alive = self.gaussians_at(t)
        means = gaussians.means
        if track_means and means.requires_grad:
            means.retain_grad()
        view = gaussians.select(alive)
        cfw = self.camera_from_world(k)
        extra = None
        has_next = k + 1 < len(self.data.fitted) and cfg.refine.lambda_flow > 0
        if has_next:
            next_means = self.means_at(float(self.data.fitted[k + 1]))[alive]
            extra = project_to_pixels(next_means, self.camera_from_world(k + 1), self.K) - project_to_pixels(view.means, cfw, self.K)
        features = view.colors if extra is None else torch.cat([view.colors, extra], -1)
        out = rasterize(view.means, view.quats, view.scales, view.opacities, features, cfw, self.K, self.width, self.height)
        color = out.color[..., :3]
        ones = torch.ones(self.height, self.width, device=self.device)
        loss = cfg.losses.photo * photometric_loss(color, inputs.frames[k], ones, cfg.losses.ssim)
        depth_weight = inputs.depth_confidence[k] * (out.alpha.detach() > COVERED_ALPHA)
        loss = loss + cfg.losses.depth * depth_loss(out.depth, inputs.depth[k], depth_weight)
        if extra is not None:
            loss = loss + cfg.refine.lambda_flow * flow_loss(out.color[..., 3:5], inputs.flow_forward[k], inputs.valid_forward[k].float())
        l1 = float((color.detach() - inputs.frames[k]).abs().mean())
        return loss, l1, means

    def motion_regularisers(self, t: float) -> torch.Tensor:
        """Temporal smoothness (acceleration over one frame) and KNN rigidity at time t, in depth units."""
        cfg = self.config
        loss = torch.zeros((), device=self.device)
        if cfg.refine.lambda_still_motion > 0 and self.still.numel():
            # Group lasso: a Gaussian's whole residual trajectory is zero unless the images pay for it.
            loss = loss + cfg.refine.lambda_still_motion * (self.still_motion.flatten(1).norm(dim=-1).mean() / self.depth_unit)
        if self.dynamic.numel() == 0:
            return loss
        times = torch.tensor([t - 1.0, t, t + 1.0]).clamp(0, self.motion_meta["time_span"])
        positions = evaluate_trajectories(self.position, self._basis(times))  # [3, Nd, 3]
        acceleration = (positions[0] - 2 * positions[1] + positions[2]).norm(dim=-1) / self.depth_unit
        loss = loss + cfg.refine.lambda_smooth * acceleration.mean()
        if self.pairs.numel():
            i, j = self.pairs[:, 0], self.pairs[:, 1]
            now = (positions[1, i] - positions[1, j]).norm(dim=-1)
            later = (positions[2, i] - positions[2, j]).norm(dim=-1)
            loss = loss + cfg.refine.lambda_rigid * ((now - later).abs() / self.depth_unit).mean()
        return loss

    # -- densification -------------------------------------------------------------------------------------
    def _reset_densify_statistics(self) -> None:
        n = self.quats.shape[0]
        self.grad_px_sum = torch.zeros(n, device=self.device)
        self.footprint_px_sum = torch.zeros(n, device=self.device)
        self.seen_count = torch.zeros(n, device=self.device)

    @torch.no_grad()
    def accumulate_densify_statistics(self, means: torch.Tensor, k: int) -> None:
        """Add one step's screen-space position gradient (loss per pixel of motion) and footprint radius
        (pixels) of every Gaussian that got a gradient; means [N, 3] after backward."""
        if means.grad is None:
            return
        cfw = self.camera_from_world(k)
        depth = means @ cfw[2, :3] + cfw[2, 3]
        focal = float(self.K[0, 0])
        seen = (means.grad.abs().sum(-1) > 0) & (depth > 1e-6)
        depth = depth.clamp_min(1e-6)
        self.grad_px_sum += torch.where(seen, means.grad.norm(dim=-1) * depth / focal, 0.0)
        self.footprint_px_sum += torch.where(seen, torch.exp(self.log_scales).amax(-1) * focal / depth, 0.0)
        self.seen_count += seen.float()

    def densifying(self, step: int) -> bool:
        """Whether a densification is still ahead at `step` (statistics are only gathered then)."""
        cfg = self.config
        return cfg.densify.grow_every > 0 and step < cfg.densify.grow_until * cfg.refine.iters

    def densify_now(self, step: int) -> bool:
        cfg = self.config
        return (cfg.densify.grow_every > 0 and step > 0 and step % cfg.densify.grow_every == 0
                and step <= cfg.densify.grow_until * cfg.refine.iters)

    def _reference_rotations(self) -> torch.Tensor:
        """[N, 4] rotation of each Gaussian: its static one, or a moving one's at its birth frame."""
        quats = self.quats.detach().clone()
        if self.dynamic.numel():
            quats[self.dynamic] = self._at_birth(self.rotation)
        return normalize_quaternion(quats)

    @torch.no_grad()
    def densify(self, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> int:
        """Clone or split the Gaussians with the largest mean screen-space gradient; returns how many were added.

        A budget of `refine_densify_fraction` of the current count (within `max_gaussians`) goes to the
        highest mean gradients. A Gaussian whose footprint radius exceeds `refine_split_px` is split: it and
        its copy move to two samples of its own distribution and shrink by `refine_split_scale`; a smaller one
        is cloned in place. Appended rows start with zero Adam moments, split rows have theirs reset.
        """
        cfg = self.config
        count = self.quats.shape[0]
        budget = min(int(cfg.densify.grow_fraction * count), cfg.densify.max_gaussians - count)
        seen = self.seen_count > 0
        score = torch.where(seen, self.grad_px_sum / self.seen_count.clamp_min(1), 0.0)
        budget = min(budget, int((score > 0).sum()))
        if budget <= 0:
            self._reset_densify_statistics()
            return 0
        chosen = score.topk(budget).indices.sort().values
        split = (self.footprint_px_sum[chosen] / self.seen_count[chosen]) > cfg.densify.split_px
        is_dynamic = torch.zeros(count, dtype=torch.bool, device=self.device)
        is_dynamic[self.dynamic] = True
        row_of = torch.full((count,), -1, dtype=torch.long, device=self.device)  # row in still_means / trajectories
        row_of[self.still] = torch.arange(self.still.numel(), device=self.device)
        row_of[self.dynamic] = torch.arange(self.dynamic.numel(), device=self.device)

        # Two samples of each split Gaussian's distribution (local axes scaled, then rotated to world).
        scales = torch.exp(self.log_scales[chosen])
        rotations = rotation_from_quaternion(self._reference_rotations()[chosen])
        noise = torch.randn(2, chosen.numel(), 3, generator=generator).to(self.device)
        offsets = torch.einsum("nij,knj->kni", rotations, noise * scales) * split[None, :, None]
        shrink = math.log(cfg.densify.split_scale) * split.float()[:, None]

        chosen_still, chosen_dynamic = ~is_dynamic[chosen], is_dynamic[chosen]
        new_ids = torch.arange(count, count + chosen.numel(), device=self.device)
        still_rows, dynamic_rows = row_of[chosen[chosen_still]], row_of[chosen[chosen_dynamic]]

        # A split Gaussian moves to the first sample, its copy to the second; moving ones shift their
        # whole trajectory (the constant coefficient).
        still_means = self.still_means.detach().clone()
        still_means[still_rows] += offsets[0][chosen_still]
        added_still = self.still_means.detach()[still_rows] + offsets[1][chosen_still]
        position = self.position.detach().clone()
        position[dynamic_rows, 0] += offsets[0][chosen_dynamic]
        added_position = self.position.detach()[dynamic_rows].clone()
        added_position[:, 0] += offsets[1][chosen_dynamic]
        log_scales = self.log_scales.detach().clone()
        log_scales[chosen] -= shrink
        updates = {
            "still_means": (torch.cat([still_means, added_still]), still_rows[split[chosen_still]]),
            "position": (torch.cat([position, added_position]), dynamic_rows[split[chosen_dynamic]]),
            "still_motion": (torch.cat([self.still_motion.detach(), self.still_motion.detach()[still_rows]]), None),
            "rotation": (torch.cat([self.rotation.detach(), self.rotation.detach()[dynamic_rows]]), None),
            "color_offsets": (torch.cat([self.color_offsets.detach(), self.color_offsets.detach()[dynamic_rows]]), None),
            "quats": (torch.cat([self.quats.detach(), self.quats.detach()[chosen]]), None),
            "log_scales": (torch.cat([log_scales, log_scales[chosen]]), chosen[split]),
            "opacity_logits": (torch.cat([self.opacity_logits.detach(), self.opacity_logits.detach()[chosen]]), None),
            "color_logits": (torch.cat([self.color_logits.detach(), self.color_logits.detach()[chosen]]), None),
        }
        for name, (value, reset_rows) in updates.items():
            old = getattr(self, name)
            new = value.contiguous().requires_grad_(True)
            replace_parameter(optimizer, old, new, reset_rows)
            setattr(self, name, new)
        self.still = torch.cat([self.still, new_ids[chosen_still]])
        self.dynamic = torch.cat([self.dynamic, new_ids[chosen_dynamic]])
        self.birth = torch.cat([self.birth, self.birth[chosen]])
        self.is_moving = torch.cat([self.is_moving, self.is_moving[chosen]])
        if chosen_dynamic.any():
            self.pairs = knn_pairs(self._at_birth(self.position), cfg.refine.rigid_neighbours)
        self._reset_densify_statistics()
        self.densified += chosen.numel()
        return chosen.numel()

    # -- driver --------------------------------------------------------------------------------------------
    def optimizer(self) -> torch.optim.Adam:
        cfg, du = self.config, self.depth_unit
        motion_lr = cfg.refine.lr_scale * cfg.sequential.lr_means * du
        groups = [
            {"params": [self.still_means, self.position], "lr": motion_lr},
            # Before `refine_still_motion_from` residual motion has a zero rate but still takes gradients: Adam's
            # moments start primed when it joins (measured: starting them fresh costs cup 0.33 dB held-out).
            {"params": [self.still_motion], "lr": motion_lr if cfg.refine.lambda_still_motion > 0 else 0.0,
             "start": cfg.refine.still_motion_from * cfg.refine.iters},
            {"params": [self.rotation, self.quats], "lr": cfg.refine.lr_scale * cfg.sequential.lr_quats},
            {"params": [self.log_scales], "lr": cfg.refine.lr_scale * cfg.sequential.lr_scales},
            {"params": [self.opacity_logits], "lr": cfg.refine.lr_scale * cfg.sequential.lr_opacities},
            {"params": [self.color_logits], "lr": cfg.refine.lr_scale * cfg.sequential.lr_colors},
            {"params": [self.color_offsets], "lr": cfg.refine.lr_scale * cfg.sequential.lr_colors if cfg.refine.dynamic_color else 0.0},
            {"params": [self.camera_deltas], "lr": cfg.refine.lr_camera},
        ]
        return SelectiveAdam(groups, eps=1e-15)

    def run(self, generator: torch.Generator | None = None) -> tuple[Scene4D, dict]:
        cfg = self.config
        generator = generator or torch.Generator().manual_seed(cfg.seed)
        optimizer = self.optimizer()
        decay = lambda start: lambda step: 0.0 if step < start else cfg.refine.lr_decay ** (step / max(cfg.refine.iters, 1))  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [decay(group.get("start", 0)) for group in optimizer.param_groups])
        started = time.perf_counter()
        order: list[int] = []
        l1_history = []
        for step in range(cfg.refine.iters):
            if not order:  # epochs over the fitted frames in random order
                order = torch.randperm(len(self.data.fitted), generator=generator).tolist()
            k = order.pop()
            track = self.densifying(step)
            loss, l1, means = self.frame_loss(k, track_means=track)
            loss = loss + self.motion_regularisers(float(self.data.fitted[k]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if track:
                self.accumulate_densify_statistics(means, k)
            optimizer.step()
            scheduler.step()
            if self.densify_now(step + 1):
                self.densify(optimizer, generator)
            l1_history.append(l1)
            if self.on_progress is not None:
                self.on_progress(step + 1, cfg.refine.iters)
        residual = self.settle_still_motion()
        window = max(1, len(self.data.fitted))
        stats = {
            "refine_iters": cfg.refine.iters,
            "refine_seconds": time.perf_counter() - started,
            "refine_l1_first_epoch": sum(l1_history[:window]) / max(len(l1_history[:window]), 1),
            "refine_l1_last_epoch": sum(l1_history[-window:]) / max(len(l1_history[-window:]), 1),
            "dynamic_gaussians": int(self.dynamic.numel()),
            "refine_densified": self.densified,
            "residual_motion_gaussians": residual,
            "gaussians": int(self.quats.shape[0]),
            "rigid_pairs": int(self.pairs.shape[0]),
        }
        return self.refined_scene(), stats

    @torch.no_grad()
    def settle_still_motion(self) -> int:
        """Turn into dynamic Gaussians (trajectory = mean + residual motion; not labelled moving) the still
        ones whose residual motion reaches `refine_keep_motion_px` (image pixels, seen from the first camera)
        at some frame after their birth; the others keep their mean position and lose the residue. Returns
        how many kept a trajectory."""
        if self.still.numel() == 0 or not bool(self.still_motion.detach().abs().gt(0).any()):
            return 0
        times = torch.arange(self.data.scene.num_frames, dtype=torch.float32)
        displacement = evaluate_trajectories(self.still_motion.detach(), self._basis(times)[:, 1:])  # [T, Ns, 3]
        alive = (times.to(self.device)[:, None] >= self.birth[self.still][None].float()).float()  # [T, Ns]
        center = invert_pose(self.base_cfw[0])[:3, 3]
        distance = torch.linalg.norm(self.still_means.detach() - center, dim=-1).clamp_min(1e-6)
        pixels = (displacement.norm(dim=-1) * alive).amax(0) / distance * float(self.K[0, 0])
        promote = pixels >= self.config.refine.keep_motion_px
        mean_displacement = (displacement * alive[..., None]).sum(0) / alive.sum(0).clamp_min(1)[:, None]
        still_means, still_motion = self.still_means.detach(), self.still_motion.detach()
        promoted = int(promote.sum())
        if promoted:
            count = self.position.shape[1]
            position = torch.cat([still_means[promote][:, None], still_motion[promote]], 1)  # [P, B, 3]
            rotation = torch.zeros(promoted, count, 4, device=self.device)
            rotation[:, 0] = self.quats.detach()[self.still[promote]]
            ids = torch.cat([self.dynamic, self.still[promote]])
            order = ids.argsort()  # moving Gaussians are stored in index order
            self.dynamic = ids[order]
            self.position = torch.cat([self.position.detach(), position])[order]
            self.rotation = torch.cat([self.rotation.detach(), rotation])[order]
            self.color_offsets = torch.cat([self.color_offsets.detach(), torch.zeros(promoted, count, 3, device=self.device)])[order]
        keep = ~promote
        self.still = self.still[keep]
        self.still_means = still_means[keep] + mean_displacement[keep]
        self.still_motion = torch.zeros_like(still_motion[keep])
        return promoted

    @torch.no_grad()
    def refined_scene(self) -> Scene4D:
        """The scene with the continuous motion model, refined Gaussians and cameras (held-out frames'
        cameras re-interpolated between their refined neighbours)."""
        scene = self.data.scene
        motion = MotionModel(self.position.detach().cpu(), self.rotation.detach().cpu(), self.color_offsets.detach().cpu(),
                             **self.motion_meta)
        count = self.quats.shape[0]
        is_dynamic = torch.zeros(count, dtype=torch.bool)
        is_dynamic[self.dynamic.cpu()] = True
        means = torch.zeros(count, 3)
        means[self.still.cpu()] = self.still_means.detach().cpu()
        dyn_means, dyn_quats, _ = motion.states(torch.arange(scene.num_frames, dtype=torch.float32))
        if dyn_means.shape[0]:  # moving Gaussians' static slot: their state at frame 0, as the sequential pass has it
            means[self.dynamic.cpu()] = dyn_means[0]
        gaussians = Gaussians(means, normalize_quaternion(self.quats.detach().cpu()), torch.exp(self.log_scales.detach().cpu()),
                              torch.sigmoid(self.opacity_logits.detach().cpu()), torch.sigmoid(self.color_logits.detach().cpu()))
        world_from_camera = scene.cameras.world_from_camera.clone()
        for k, t in enumerate(self.data.fitted):
            world_from_camera[t] = invert_pose(self.camera_from_world(k).detach().cpu()).to(world_from_camera.dtype)
        world_from_camera = fill_poses(world_from_camera, self.data.fitted)
        cameras = type(scene.cameras)(world_from_camera=world_from_camera, intrinsics=scene.cameras.intrinsics,
                                      timestamps=scene.cameras.timestamps, width=scene.cameras.width,
                                      height=scene.cameras.height, frame_names=list(scene.cameras.frame_names))
        birth_frame = self.birth.cpu().to(scene.birth_frame.dtype)
        refined = Scene4D(gaussians=gaussians, is_dynamic=is_dynamic, birth_frame=birth_frame,
                          dynamic_means=dyn_means, dynamic_quats=dyn_quats, cameras=cameras, arrays=dict(scene.arrays),
                          config=dict(scene.config), metrics=dict(scene.metrics), motion=motion,
                          is_moving=self.is_moving.cpu().clone())
        refined.validate()
        return refined
