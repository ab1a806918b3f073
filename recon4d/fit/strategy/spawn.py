"""Densification of the sequential pass: spawn Gaussians where the current frame is uncovered or wrong.

GFlow grows its scene frame by frame. A Gaussian is born at a pixel of frame t, unprojected at the prior
depth (scaled to the scene by the median ratio to the rendered depth on covered still pixels), with an
isotropic footprint of `init.scale` sampling distances, the pixel's colour and `init.opacity`; it is dynamic
when the prior's moving mask marks its pixel. Three places draw pixels:

- frame 0: every pixel, weighted by image gradient (plus a floor for flat regions), `init.num_gaussians`;
- after each camera step (`after_camera_step`): pixels rendered with alpha below `densify.spawn_alpha`, and
  pixels just disoccluded (no valid backward flow) that are not fully covered;
- during the Gaussian step (`step_post_optimizer`), every `densify.spawn_every` iterations: pixels whose mean
  absolute colour error exceeds `densify.spawn_error`, weighted by the error;

within `densify.spawn_max_per_frame` per frame and `densify.max_gaussians` overall.

Optimiser state: after a spawn the existing rows keep their Adam moments and the new ones start at zero
(`GaussianParams.append` with the optimiser), the same choice as the refinement's growth; measured in
`recon4d.fit.sequential`.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from recon4d.fit.config import DensifyConfig, InitConfig
from recon4d.fit.losses import COVERED_ALPHA, align_prior_depth
from recon4d.fit.model import GaussianParams
from recon4d.geometry.camera import invert_pose, transform_points
from recon4d.render import RenderResult



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


class SpawnStrategy:
    """Where and how the sequential pass adds Gaussians (see the module docstring).

    inputs: the fit's `FitInputs` (frames [T, H, W, 3], depth [T, H, W], moving [T, H, W], valid_backward,
    K [3, 3]); the strategy only reads them.
    """

    def __init__(self, inputs: Any, init: InitConfig, densify: DensifyConfig) -> None:
        self.inputs, self.init, self.config = inputs, init, densify
        self.height, self.width = inputs.frames.shape[1:3]
        self.K = inputs.K

    def spawn(self, t: int, weights: torch.Tensor, count: int, depth_map: torch.Tensor,
              camera_from_world: torch.Tensor, generator: torch.Generator) -> GaussianParams | None:
        """New Gaussians at up to `count` pixels of frame t drawn by `weights` [H, W], at depths `depth_map`."""
        flat = sample_pixels(weights, count, generator)
        if flat.numel() == 0:
            return None
        available = int((weights > 0).sum())
        spacing_px = math.sqrt(max(available, 1) / flat.numel())  # pixels per sample along one axis
        depth = depth_map.flatten()[flat]
        means = unproject_pixels(flat, depth, self.K, self.width, invert_pose(camera_from_world))
        scales = self.init.scale * spacing_px * depth / self.K[0, 0]
        colors = self.inputs.frames[t].reshape(-1, 3)[flat]
        moving = self.inputs.moving[t].flatten()[flat]
        return GaussianParams.create(means, scales, colors, self.init.opacity, moving, t)

    def first_frame(self, generator: torch.Generator) -> GaussianParams:
        """`init.num_gaussians` Gaussians on frame 0 (camera at the origin), drawn by image gradient."""
        frame = self.inputs.frames[0]
        weights = image_gradient_magnitude(frame)
        weights = weights + self.init.gradient_floor * weights.mean().clamp_min(1e-6)
        return self.spawn(0, weights, self.init.num_gaussians, self.inputs.depth[0],
                          torch.eye(4, device=frame.device), generator)

    def aligned_prior_depth(self, t: int, rendered: RenderResult) -> torch.Tensor:
        """Prior depth of frame t scaled to the scene by the median ratio on covered still pixels."""
        prior = self.inputs.depth[t]
        alignment = align_prior_depth(prior, rendered.depth, rendered.alpha, self.inputs.moving[t])
        return prior if alignment is None else prior * alignment.scale

    @torch.no_grad()
    def after_camera_step(self, gaussians: GaussianParams, t: int, camera_from_world: torch.Tensor,
                          rendered: RenderResult, generator: torch.Generator) -> GaussianParams | None:
        """Gaussians at pixel resolution where frame t (rendered from its new camera: `rendered`) is not covered
        or was just disoccluded; None when there is nothing to add or no budget."""
        uncovered = rendered.alpha < self.config.spawn_alpha
        disoccluded = ~self.inputs.valid_backward[t - 1] & (rendered.alpha < COVERED_ALPHA)
        weights = (uncovered | disoccluded).float()
        budget = min(self.config.spawn_max_per_frame, self.config.max_gaussians - len(gaussians))
        if budget <= 0:
            return None
        return self.spawn(t, weights, budget, self.aligned_prior_depth(t, rendered), camera_from_world, generator)

    @torch.no_grad()
    def step_post_optimizer(self, gaussians: GaussianParams, step: int, info: dict[str, Any],
                            generator: torch.Generator) -> GaussianParams | None:
        """Error-driven spawn after Gaussian-step iteration `step` when due.

        info: "t", "iterations" (of this stage), "added" (Gaussians added at this frame so far), "color"
        [H, W, 3] rendered before the step, "render" (that RenderResult), "camera_from_world" [4, 4].
        """
        cfg = self.config
        due = cfg.spawn_every > 0 and step % cfg.spawn_every == 0 and step < info["iterations"]
        if not due or len(gaussians) >= cfg.max_gaussians or info["added"] >= cfg.spawn_max_per_frame:
            return None
        t = info["t"]
        error = (info["color"].detach() - self.inputs.frames[t]).abs().mean(-1)
        weights = (error > cfg.spawn_error).float() * error
        budget = min(cfg.spawn_max_per_frame - info["added"], cfg.max_gaussians - len(gaussians))
        return self.spawn(t, weights, budget, self.aligned_prior_depth(t, info["render"]), info["camera_from_world"],
                          generator)
