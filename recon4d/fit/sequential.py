"""GFlow-style sequential fit: frame 0 from depth, then per frame a camera step, flow-driven motion of the
dynamic Gaussians, new content, and a Gaussian step.

Pure helpers (sampling, unprojection, PnP initialisation) on top, one small trainer below. The trainer
checkpoints after every frame through a callback so that an interrupted fit resumes where it stopped; each
frame reseeds its random generator from (seed, frame), so a resumed fit gives the same result.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from recon4d.fit.config import FitConfig
from recon4d.fit.model import GaussianParams
from recon4d.fit.losses import depth_loss, flow_loss, isotropy_loss, photometric_loss
from recon4d.geometry.camera import invert_pose, transform_points
from recon4d.geometry.lie import apply_pose_delta
from recon4d.io.scene import Gaussians
from recon4d.render import RenderResult, rasterize

# PnP: smallest outlier threshold (pixels) and the fewest inliers to trust its pose.
PNP_REPROJECTION_PX = 1.5
PNP_MIN_INLIERS = 30
PNP_ROUNDS = 3
PNP_MAX_POINTS = 4000
# Pixels whose rendered alpha is above this count as covered when reading the rendered depth.
COVERED_ALPHA = 0.9


@dataclass
class FitInputs:
    """Everything the fit reads, at working resolution, on the compute device.

    Attributes:
        frames: [T, H, W, 3] float in [0, 1].
        flow_forward, flow_backward: [T-1, H, W, 2] pixels (t -> t+1 on frame t; t+1 -> t on frame t+1).
        valid_forward, valid_backward: [T-1, H, W] bool.
        depth: [T, H, W] prior depth (up to scale); depth_confidence: [T, H, W] in [0, 1].
        moving: [T, H, W] bool moving-object masks.
        K: [3, 3] intrinsics.
    """

    frames: torch.Tensor
    flow_forward: torch.Tensor
    flow_backward: torch.Tensor
    valid_forward: torch.Tensor
    valid_backward: torch.Tensor
    depth: torch.Tensor
    depth_confidence: torch.Tensor
    moving: torch.Tensor
    K: torch.Tensor

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]


@dataclass
class FitState:
    """What the fit has produced so far; checkpointed after every frame.

    Attributes:
        gaussians: the trainable Gaussians (their current, latest-frame state).
        camera_from_world: per fitted frame, [4, 4].
        dynamic_states: per fitted frame, (indices of dynamic Gaussians alive then, their means, quats).
        frame_stats: per fitted frame, seconds, iterations and losses.
    """

    gaussians: GaussianParams
    camera_from_world: list[torch.Tensor] = field(default_factory=list)
    dynamic_states: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    frame_stats: list[dict] = field(default_factory=list)

    @property
    def next_frame(self) -> int:
        return len(self.camera_from_world)

    def state_dict(self) -> dict:
        return {
            "gaussians": self.gaussians.state_dict(),
            "camera_from_world": [p.cpu() for p in self.camera_from_world],
            "dynamic_states": [tuple(x.cpu() for x in s) for s in self.dynamic_states],
            "frame_stats": self.frame_stats,
        }

    @staticmethod
    def from_state_dict(state: dict, device: torch.device) -> "FitState":
        gaussians = GaussianParams.from_state_dict({k: v.to(device) for k, v in state["gaussians"].items()})
        return FitState(
            gaussians=gaussians,
            camera_from_world=[p.to(device) for p in state["camera_from_world"]],
            dynamic_states=[tuple(x.to(device) for x in s) for s in state["dynamic_states"]],
            frame_stats=list(state["frame_stats"]),
        )


# ----------------------------------------------------------------------------------------------------------
# Pure helpers


def image_gradient_magnitude(image: torch.Tensor) -> torch.Tensor:
    """image: [H, W, 3] -> Sobel gradient magnitude of its luminance [H, W]."""
    gray = image.mean(-1)[None, None]
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=image.dtype, device=image.device) / 8
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, kx[None, None])
    gy = F.conv2d(padded, kx.T[None, None])
    return torch.sqrt(gx**2 + gy**2)[0, 0]


def sample_pixels(weights: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Draw up to `count` distinct pixels with probability proportional to `weights` [H, W] -> flat indices."""
    flat = weights.flatten().clamp_min(0)
    available = int((flat > 0).sum())
    count = min(count, available)
    if count == 0:
        return torch.zeros(0, dtype=torch.long, device=weights.device)
    if count == available:
        return flat.nonzero().squeeze(1)
    return torch.multinomial(flat.cpu(), count, replacement=False, generator=generator).to(weights.device)


def unproject_pixels(flat_index: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, width: int,
                     world_from_camera: torch.Tensor) -> torch.Tensor:
    """Pixels (flat indices into [H, W]) with z-depths [n] -> world points [n, 3]."""
    v = (flat_index // width).to(K.dtype)
    u = (flat_index % width).to(K.dtype)
    x = (u - K[0, 2]) / K[0, 0] * depth
    y = (v - K[1, 2]) / K[1, 1] * depth
    return transform_points(world_from_camera, torch.stack([x, y, depth], -1))


def project_to_pixels(means: torch.Tensor, camera_from_world: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """World points [N, 3] -> pixels [N, 2]; points at or behind the camera are clamped to z = 1e-3."""
    cam = transform_points(camera_from_world, means)
    z = cam[:, 2:3].clamp_min(1e-3)
    return cam[:, :2] / z * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])


def bilinear_sample(image: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """image: [H, W, C]; pixels: [N, 2] (u, v) -> values [N, C] (border-clamped)."""
    height, width = image.shape[:2]
    grid = torch.stack([pixels[:, 0] / max(width - 1, 1) * 2 - 1, pixels[:, 1] / max(height - 1, 1) * 2 - 1], -1)
    sampled = F.grid_sample(image.permute(2, 0, 1)[None], grid[None, None], mode="bilinear",
                            padding_mode="border", align_corners=True)
    return sampled[0, :, 0].T


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of [H, W] bool by a square of the given radius."""
    if radius <= 0:
        return mask
    size = 2 * radius + 1
    return F.max_pool2d(mask[None, None].float(), size, stride=1, padding=radius)[0, 0] > 0


def pnp_camera_from_world(points_world: np.ndarray, pixels: np.ndarray, K: np.ndarray,
                          guess: np.ndarray) -> np.ndarray | None:
    """PnP of 3D-2D matches from a pose guess: Levenberg-Marquardt, then re-solved without the matches whose
    reprojection error exceeds a robust threshold. Deterministic (no RANSAC sampling), which keeps a resumed
    fit identical to an uninterrupted one; the matches come from flow on still pixels, so outliers are few.
    Returns camera_from_world [4, 4] or None."""
    if len(points_world) < PNP_MIN_INLIERS:
        return None
    points = points_world.astype(np.float64)
    image = pixels.astype(np.float64)
    K = K.astype(np.float64)
    rvec, _ = cv2.Rodrigues(guess[:3, :3].astype(np.float64))
    tvec = guess[:3, 3:4].astype(np.float64).copy()
    keep = np.ones(len(points), dtype=bool)
    for _ in range(PNP_ROUNDS):
        ok, rvec, tvec = cv2.solvePnP(points[keep], image[keep], K, None, rvec=rvec, tvec=tvec,
                                      useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        if not ok:
            return None
        projected, _ = cv2.projectPoints(points, rvec, tvec, K, None)
        error = np.linalg.norm(projected[:, 0] - image, axis=1)
        threshold = max(PNP_REPROJECTION_PX, 3.0 * float(np.median(error[keep])))
        keep = error < threshold
        if keep.sum() < PNP_MIN_INLIERS:
            return None
    pose = np.eye(4)
    pose[:3, :3] = cv2.Rodrigues(rvec)[0]
    pose[:3, 3] = tvec[:, 0]
    return pose


class Plateau:
    """Stops a stage once its loss has not improved by `tolerance` (relative) for `patience` steps."""

    def __init__(self, patience: int, tolerance: float) -> None:
        self.patience, self.tolerance = patience, tolerance
        self.best = math.inf
        self.since_best = 0

    def step(self, loss: float) -> bool:
        if loss < self.best * (1 - self.tolerance):
            self.best, self.since_best = loss, 0
        else:
            self.since_best += 1
        return self.since_best >= self.patience


# ----------------------------------------------------------------------------------------------------------
# The trainer


class SequentialFitter:
    """Runs the per-frame optimisation over `inputs`, continuing from `state` when given."""

    def __init__(self, inputs: FitInputs, config: FitConfig, on_frame: Callable[[FitState, int], None] | None = None):
        self.inputs = inputs
        self.config = config
        self.on_frame = on_frame
        self.height, self.width = inputs.frames.shape[1:3]
        self.device = inputs.frames.device
        self.K = inputs.K
        # Scene units: the median prior depth of frame 0 sets the scale of lr_means and camera translation.
        self.depth_unit = float(inputs.depth[0].median())

    # -- rendering -----------------------------------------------------------------------------------------
    def render(self, gaussians: Gaussians, camera_from_world: torch.Tensor,
               extra: torch.Tensor | None = None) -> RenderResult:
        features = gaussians.colors if extra is None else torch.cat([gaussians.colors, extra], -1)
        return rasterize(gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, features,
                         camera_from_world, self.K, self.width, self.height)

    # -- creation of Gaussians -----------------------------------------------------------------------------
    def spawn(self, t: int, weights: torch.Tensor, count: int, depth_map: torch.Tensor,
              camera_from_world: torch.Tensor, generator: torch.Generator) -> GaussianParams | None:
        """New Gaussians at up to `count` pixels of frame t drawn by `weights`, at depths `depth_map`."""
        flat = sample_pixels(weights, count, generator)
        if flat.numel() == 0:
            return None
        available = int((weights > 0).sum())
        spacing_px = math.sqrt(max(available, 1) / flat.numel())  # pixels per sample along one axis
        depth = depth_map.flatten()[flat]
        world_from_camera = invert_pose(camera_from_world)
        means = unproject_pixels(flat, depth, self.K, self.width, world_from_camera)
        scales = self.config.init.scale * spacing_px * depth / self.K[0, 0]
        colors = self.inputs.frames[t].reshape(-1, 3)[flat]
        moving = self.inputs.moving[t].flatten()[flat]
        return GaussianParams.create(means, scales, colors, self.config.init.opacity, moving, t)

    def aligned_prior_depth(self, t: int, rendered: RenderResult) -> torch.Tensor:
        """Prior depth of frame t scaled to the scene by the median ratio on covered still pixels."""
        prior = self.inputs.depth[t]
        covered = (rendered.alpha > COVERED_ALPHA) & ~self.inputs.moving[t]
        if covered.sum() < 16:
            covered = rendered.alpha > COVERED_ALPHA
        if covered.sum() < 16:
            return prior
        return prior * (rendered.depth[covered] / prior[covered].clamp_min(1e-6)).median()

    # -- stages ----------------------------------------------------------------------------------------------
    def fit_first_frame(self, generator: torch.Generator) -> tuple[FitState, dict]:
        cfg = self.config
        frame = self.inputs.frames[0]
        weights = image_gradient_magnitude(frame)
        weights = weights + cfg.init.gradient_floor * weights.mean().clamp_min(1e-6)
        gaussians = self.spawn(0, weights, cfg.init.num_gaussians, self.inputs.depth[0], torch.eye(4, device=self.device),
                               generator)
        state = FitState(gaussians=gaussians)
        stats = self.optimize_gaussians(state, 0, torch.eye(4, device=self.device), cfg.sequential.frame0_iters, generator,
                                        move_still=True, previous_pixels=None)
        return state, stats

    def camera_step(self, state: FitState, t: int, init: torch.Tensor, previous_pixels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Optimise camera t with the Gaussians frozen; returns camera_from_world [4, 4]."""
        cfg = self.config
        inputs = self.inputs
        with torch.no_grad():
            gaussians = state.gaussians.activated()
            gaussians = Gaussians(*(x.detach() for x in (gaussians.means, gaussians.quats, gaussians.scales,
                                                        gaussians.opacities, gaussians.colors)))
        delta = torch.zeros(6, device=self.device, requires_grad=True)
        optimizer = torch.optim.Adam([
            {"params": [delta], "lr": cfg.sequential.lr_camera_rotation},
        ])
        # Translation and rotation share one tensor; scale translation steps to scene units.
        unit = torch.tensor([1.0, 1.0, 1.0, self.depth_unit, self.depth_unit, self.depth_unit], device=self.device)
        translation_ratio = cfg.sequential.lr_camera_translation / cfg.sequential.lr_camera_rotation
        unit = unit * torch.tensor([1.0, 1.0, 1.0] + [translation_ratio] * 3, device=self.device)
        still = ~dilate(inputs.moving[t], cfg.sequential.motion_dilation)
        still_w = still.float()
        flow_w = (still & inputs.valid_backward[t - 1]).float()
        plateau = Plateau(cfg.sequential.plateau_patience, cfg.sequential.plateau_tolerance)
        # Step sizes shrink over the stage so that Adam settles instead of hovering one step around the optimum.
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.sequential.camera_lr_decay ** (1 / max(cfg.sequential.camera_iters, 1)))
        losses, iterations = [], 0
        best_loss, best_delta = math.inf, delta.detach().clone()
        for iterations in range(1, cfg.sequential.camera_iters + 1):
            camera_from_world = apply_pose_delta(delta * unit, init)
            pixels = project_to_pixels(gaussians.means, camera_from_world, self.K)
            out = self.render(gaussians, camera_from_world, extra=previous_pixels - pixels)
            loss = cfg.losses.photo * photometric_loss(out.color[..., :3], inputs.frames[t], still_w, cfg.losses.ssim)
            loss = loss + cfg.losses.depth * depth_loss(out.depth, inputs.depth[t], still_w * (out.alpha.detach() > COVERED_ALPHA))
            loss = loss + cfg.losses.flow_camera * flow_loss(out.color[..., 3:5], inputs.flow_backward[t - 1], flow_w)
            losses.append(loss.item())
            if losses[-1] < best_loss:  # the loss was evaluated at the current delta, before this step
                best_loss, best_delta = losses[-1], delta.detach().clone()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if plateau.step(losses[-1]):
                break
        with torch.no_grad():
            camera_from_world = apply_pose_delta(best_delta * unit, init)
        return camera_from_world.detach(), {"camera_iters": iterations, "camera_loss": best_loss}

    def move_dynamic(self, state: FitState, t: int, previous_cfw: torch.Tensor, camera_from_world: torch.Tensor) -> None:
        """Carry dynamic Gaussians from frame t-1 to t along the forward flow, re-reading their depth change
        from the depth prior (ratio of the prior at the target and source pixels)."""
        g = state.gaussians
        dynamic = g.is_dynamic.nonzero().squeeze(1)
        if dynamic.numel() == 0:
            return
        with torch.no_grad():
            means = g.means[dynamic]
            cam = transform_points(previous_cfw, means)
            z = cam[:, 2].clamp_min(1e-3)
            pixels = cam[:, :2] / z[:, None] * torch.stack([self.K[0, 0], self.K[1, 1]]) + self.K[:2, 2]
            inside = (pixels[:, 0] >= 0) & (pixels[:, 0] <= self.width - 1) & (pixels[:, 1] >= 0) & (pixels[:, 1] <= self.height - 1)
            flow = bilinear_sample(self.inputs.flow_forward[t - 1], pixels)
            target = pixels + flow
            depth_before = bilinear_sample(self.inputs.depth[t - 1][..., None], pixels)[:, 0]
            depth_after = bilinear_sample(self.inputs.depth[t][..., None], target)[:, 0]
            ratio = (depth_after / depth_before.clamp_min(1e-6)).clamp(0.5, 2.0)
            new_z = z * ratio
            x = (target[:, 0] - self.K[0, 2]) / self.K[0, 0] * new_z
            y = (target[:, 1] - self.K[1, 2]) / self.K[1, 1] * new_z
            moved = transform_points(invert_pose(camera_from_world), torch.stack([x, y, new_z], -1))
            # The camera moved too: Gaussians outside the view keep their world position.
            g.means[dynamic] = torch.where(inside[:, None] & (cam[:, 2:3] > 1e-3), moved, means)

    def optimize_gaussians(self, state: FitState, t: int, camera_from_world: torch.Tensor, iterations: int,
                           generator: torch.Generator, move_still: bool, previous_pixels: torch.Tensor | None) -> dict:
        """Gaussian step at frame t (camera fixed). Still Gaussians keep their positions unless `move_still`."""
        cfg = self.config
        inputs = self.inputs
        target = inputs.frames[t]
        ones = torch.ones(self.height, self.width, device=self.device)
        depth_w = inputs.depth_confidence[t]
        flow_w = (inputs.moving[t] & inputs.valid_backward[t - 1]).float() if t > 0 else None
        lrs = {"means": cfg.sequential.lr_means * self.depth_unit, "quats": cfg.sequential.lr_quats, "log_scales": cfg.sequential.lr_scales,
               "opacity_logits": cfg.sequential.lr_opacities, "color_logits": cfg.sequential.lr_colors}
        optimizer = state.gaussians.optimizer(lrs)
        plateau = Plateau(cfg.sequential.plateau_patience, cfg.sequential.plateau_tolerance)
        added, losses, step = 0, [], 0
        for step in range(1, iterations + 1):
            g = state.gaussians
            active = g.activated()
            extra = None
            if previous_pixels is not None:
                extra = previous_pixels - project_to_pixels(active.means, camera_from_world, self.K)
            out = self.render(active, camera_from_world, extra=extra)
            color = out.color[..., :3]
            loss = cfg.losses.photo * photometric_loss(color, target, ones, cfg.losses.ssim)
            loss = loss + cfg.losses.depth * depth_loss(out.depth, inputs.depth[t], depth_w * (out.alpha.detach() > COVERED_ALPHA))
            if extra is not None and flow_w is not None and flow_w.sum() > 0:
                loss = loss + cfg.losses.flow * flow_loss(out.color[..., 3:5], inputs.flow_backward[t - 1], flow_w)
            loss = loss + cfg.losses.iso * isotropy_loss(g.log_scales)
            if t > 0 and cfg.sequential.replay_every > 0 and step % cfg.sequential.replay_every == 0:
                past = int(torch.randint(0, t, (1,), generator=generator))
                loss = loss + cfg.losses.replay * self.replay_loss(state, past)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not move_still and g.means.grad is not None:
                g.means.grad[~g.is_dynamic] = 0
            optimizer.step()
            losses.append(loss.item())
            stop = plateau.step(losses[-1])
            densify_now = cfg.densify.spawn_every > 0 and step % cfg.densify.spawn_every == 0 and step < iterations
            if densify_now and len(g) < cfg.densify.max_gaussians and added < cfg.densify.spawn_max_per_frame:
                with torch.no_grad():
                    error = (color.detach() - target).abs().mean(-1)
                    weights = (error > cfg.densify.spawn_error).float() * error
                    budget = min(cfg.densify.spawn_max_per_frame - added, cfg.densify.max_gaussians - len(g))
                    new = self.spawn(t, weights, budget, self.aligned_prior_depth(t, out), camera_from_world, generator)
                if new is not None:
                    previous_pixels = self._extend_previous(previous_pixels, new, t, camera_from_world)
                    g.append(new)
                    added += len(new)
                    optimizer = g.optimizer(lrs)
                    plateau = Plateau(cfg.sequential.plateau_patience, cfg.sequential.plateau_tolerance)
                    stop = False
            if stop:
                break
        state.gaussians.requires_grad_(False)
        return {"gaussian_iters": step, "gaussian_loss": losses[-1] if losses else None, "error_densified": added}

    def replay_loss(self, state: FitState, k: int) -> torch.Tensor:
        """Photometric loss of an earlier frame k with its camera and the dynamic Gaussians where they were.

        Shared attributes (colours, opacities, scales, rotations of still Gaussians) are refitted at every
        frame; replaying past frames keeps them consistent with the whole sequence instead of the latest
        frame only, which is what lets the scene render frames other than the last one.
        """
        g = state.gaussians
        ids, means_k, quats_k = state.dynamic_states[k]
        means = g.means.clone()
        quats = g.quats.clone()
        means[ids] = means_k
        quats[ids] = quats_k
        alive = g.birth_frame <= k
        active = g.activated()
        view = Gaussians(means[alive], quats[alive], active.scales[alive], active.opacities[alive], active.colors[alive])
        out = self.render(view, state.camera_from_world[k])
        weight = torch.ones(self.height, self.width, device=self.device)
        return photometric_loss(out.color, self.inputs.frames[k], weight, self.config.losses.ssim)

    def _extend_previous(self, previous_pixels: torch.Tensor | None, new: GaussianParams, t: int,
                         camera_from_world: torch.Tensor) -> torch.Tensor | None:
        """Previous-frame pixels of newly added Gaussians: their pixel at t moved by the backward flow."""
        if previous_pixels is None:
            return None
        pixels = project_to_pixels(new.means, camera_from_world, self.K)
        back = bilinear_sample(self.inputs.flow_backward[t - 1], pixels)
        return torch.cat([previous_pixels, pixels + back])

    def snapshot(self, state: FitState, camera_from_world: torch.Tensor) -> None:
        g = state.gaussians
        dynamic = g.is_dynamic.nonzero().squeeze(1)
        state.camera_from_world.append(camera_from_world.detach().clone())
        state.dynamic_states.append((dynamic.clone(), g.means[dynamic].detach().clone(), g.quats[dynamic].detach().clone()))

    def initial_camera(self, state: FitState, t: int) -> tuple[torch.Tensor, str]:
        """Camera t from PnP on still pixels of frame t-1 (rendered depth) matched by the forward flow;
        falls back to constant velocity."""
        previous = state.camera_from_world[t - 1]
        if t >= 2:
            velocity = previous @ invert_pose(state.camera_from_world[t - 2])
            guess = velocity @ previous
        else:
            guess = previous
        with torch.no_grad():
            out = self.render(state.gaussians.activated(), previous)
        usable = (out.alpha > COVERED_ALPHA) & self.inputs.valid_forward[t - 1] & ~dilate(self.inputs.moving[t - 1], self.config.sequential.motion_dilation)
        flat = usable.flatten().nonzero().squeeze(1)
        if flat.numel() > PNP_MAX_POINTS:
            step = flat.numel() // PNP_MAX_POINTS + 1
            flat = flat[::step]
        if flat.numel() < PNP_MIN_INLIERS:
            return guess, "constant-velocity"
        points = unproject_pixels(flat, out.depth.flatten()[flat], self.K, self.width, invert_pose(previous))
        pixels = torch.stack([flat % self.width, flat // self.width], -1).to(self.K.dtype)
        pixels = pixels + self.inputs.flow_forward[t - 1].reshape(-1, 2)[flat]
        pose = pnp_camera_from_world(points.cpu().numpy(), pixels.cpu().numpy(), self.K.cpu().numpy(),
                                     guess.cpu().numpy())
        if pose is None:
            return guess, "constant-velocity"
        return torch.tensor(pose, dtype=previous.dtype, device=self.device), "pnp"

    def add_new_content(self, state: FitState, t: int, camera_from_world: torch.Tensor, generator: torch.Generator) -> int:
        """Gaussians at pixel resolution where frame t is not covered or was just disoccluded."""
        cfg = self.config
        with torch.no_grad():
            out = self.render(state.gaussians.activated(), camera_from_world)
            uncovered = out.alpha < cfg.densify.spawn_alpha
            disoccluded = ~self.inputs.valid_backward[t - 1] & (out.alpha < COVERED_ALPHA)
            weights = (uncovered | disoccluded).float()
            budget = min(cfg.densify.spawn_max_per_frame, cfg.densify.max_gaussians - len(state.gaussians))
            if budget <= 0:
                return 0
            new = self.spawn(t, weights, budget, self.aligned_prior_depth(t, out), camera_from_world, generator)
        if new is None:
            return 0
        state.gaussians.append(new)
        return len(new)

    # -- driver ----------------------------------------------------------------------------------------------
    def run(self, state: FitState | None = None) -> FitState:
        cfg = self.config
        start_frame = 0 if state is None else state.next_frame
        for t in range(start_frame, self.inputs.num_frames):
            started = time.perf_counter()
            generator = torch.Generator().manual_seed(cfg.seed * 100003 + t)
            torch.manual_seed(cfg.seed * 100003 + t)
            if t == 0:
                state, stats = self.fit_first_frame(generator)
                camera_from_world = torch.eye(4, device=self.device)
            else:
                previous_cfw = state.camera_from_world[t - 1]
                init, init_kind = self.initial_camera(state, t)
                with torch.no_grad():
                    previous_pixels = project_to_pixels(state.gaussians.means, previous_cfw, self.K)
                camera_from_world, stats = self.camera_step(state, t, init, previous_pixels)
                stats["camera_init"] = init_kind
                # previous_pixels were taken before the move: they are where each Gaussian was at t-1.
                self.move_dynamic(state, t, previous_cfw, camera_from_world)
                n_before = len(state.gaussians)
                stats["new_content"] = self.add_new_content(state, t, camera_from_world, generator)
                new = GaussianParams.from_state_dict({k: v[n_before:] for k, v in state.gaussians.state_dict().items()})
                if len(new):
                    previous_pixels = self._extend_previous(previous_pixels, new, t, camera_from_world)
                stats.update(self.optimize_gaussians(state, t, camera_from_world, cfg.sequential.gaussian_iters, generator,
                                                     move_still=False, previous_pixels=previous_pixels))
            self.snapshot(state, camera_from_world)
            stats.update({"frame": t, "seconds": time.perf_counter() - started, "gaussians": len(state.gaussians)})
            state.frame_stats.append(stats)
            if self.on_frame is not None:
                self.on_frame(state, t)
        return state
