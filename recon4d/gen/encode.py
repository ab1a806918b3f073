"""The latent encoder: a fast static Gaussian fit of posed RGBA views to exactly G Gaussians.

It is recon4d's own reconstruction with known cameras: `recon4d.render.rasterize` renders, the fit's
`photometric_loss` (L1 + SSIM) compares with the views composited on a random background each step (so
transparent pixels must be explained by low alpha, not by background-coloured Gaussians), an L1 term
matches the alpha channel, and the fixed-size `RelocateStrategy` (3DGS-MCMC relocation) moves
near-transparent Gaussians onto visible ones, so every object ends as G Gaussians.

Initialisation is the views' visual hull: random points kept where every view's alpha says "object",
preferring points near the hull's surface (where visible Gaussians end up), coloured by the mean colour
they project to.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from recon4d.fit.model import logit
from recon4d.fit.losses import photometric_loss
from recon4d.fit.strategy.relocate import RelocateStrategy
from recon4d.gen.latents import Latent, canonical_frame, canonicalize, pack, sort_rows, to_gaussians
from recon4d.gen.views import ViewSet
from recon4d.geometry import invert_pose, project_to_pixels
from recon4d.image import psnr, ssim
from recon4d.render import rasterize
from recon4d.render.config import RasterConfig


@dataclass
class EncodeConfig:
    """Settings of the latent encoder.

    Attributes:
        num_gaussians: G, Gaussians per object.
        steps: optimisation steps; views_per_step: views rendered per step.
        holdout_every: every k-th view is held out of the fit and scored (0: fit all views).
        lr_means, lr_means_final: position learning rate, decayed exponentially to the final value
            (scene units are the views' scale, ~1 for the corpus).
        lr_log_scales, lr_quats, lr_opacity, lr_colors: Adam learning rates of the other parameters.
        ssim_share: weight of (1 - SSIM) in the photometric loss; alpha_weight: weight of the alpha L1.
        eps2d, antialiased: the rasterizer's low-pass (px^2) while fitting and scoring, and whether it is
            opacity-compensated (Mip-Splatting's 2D filter, `RasterConfig.antialiased`). Corpus views are
            area-sampled, and the classic 0.3 px^2 of 3DGS blurs every edge, so latents fitted under it come
            out too sharp and draw right only at the views' size. Antialiased at 0.1 (Mip-Splatting's value):
            +0.94 dB held-out over 200 objects at the same CPU, and the same score drawn at 4x the size and
            box-averaged (classic-fitted latents fall from 28.0 to 23.7 dB there). The filter goes into each
            latent (`raster_filter`) and from there into decoded scenes.
        steps 300 and the rates above: under the antialiased filter steps pay (150 -> 300: +0.8 dB on 12
            objects, 400: +0.06 more); 2.6 CPU s per object.
        relocate_every, min_opacity: relocation period and the opacity under which a Gaussian is dead.
        init_candidates: random points tested against the visual hull; init_opacity: starting opacity.
        seed: seeds initialisation, view order, backgrounds and relocation.
    """

    num_gaussians: int = 1024
    steps: int = 300
    views_per_step: int = 2
    holdout_every: int = 6
    lr_means: float = 4e-3
    lr_means_final: float = 1e-3
    lr_log_scales: float = 8e-2
    lr_quats: float = 5e-2
    lr_opacity: float = 1e-1
    lr_colors: float = 6e-2
    ssim_share: float = 0.2
    alpha_weight: float = 1.0
    eps2d: float = 0.1
    antialiased: bool = True
    relocate_every: int = 40
    min_opacity: float = 0.01
    init_candidates: int = 40000
    init_opacity: float = 0.5
    seed: int = 0

    def raster(self) -> RasterConfig:
        """The rasterizer settings of the fit, stored with each latent as its filter."""
        return RasterConfig(eps2d=self.eps2d, antialiased=self.antialiased)


def fit_views(views: ViewSet, fit_index: list[int]) -> tuple[torch.Tensor, float]:
    """Centre [3] and half-width of the cube that every fitting camera sees around its optical axes' meeting
    point (least-squares closest point to all axes)."""
    poses = views.world_from_camera[fit_index]
    origins, axes = poses[:, :3, 3], poses[:, :3, 2]
    projector = torch.eye(3) - axes[:, :, None] * axes[:, None, :]  # [V, 3, 3] orthogonal to each axis
    center = torch.linalg.lstsq(projector.sum(0), (projector @ origins[:, :, None]).sum(0)).solution[:, 0]
    depth = ((center - origins) * axes).sum(-1)
    K = views.K[fit_index]
    half_width = depth * torch.minimum(K[:, 0, 2] / K[:, 0, 0], K[:, 1, 2] / K[:, 1, 1])
    return center, float(half_width.amin())


def hull_votes(points: torch.Tensor, views: ViewSet, fit_index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether each point [M, 3] is inside every view's silhouette (alpha > 0.5 where it projects into the
    image) -> inside [M] bool, and its mean colour [M, 3] over the views."""
    inside = torch.ones(points.shape[0], dtype=torch.bool)
    color_sum = torch.zeros(points.shape[0], 3)
    for index in fit_index:
        uv, z = project_to_pixels(points, invert_pose(views.world_from_camera[index]), views.K[index])
        col, row = uv[:, 0].round().long(), uv[:, 1].round().long()
        in_image = (z > 0) & (col >= 0) & (col < views.width) & (row >= 0) & (row < views.height)
        pixel = views.images[index][row.clamp(0, views.height - 1), col.clamp(0, views.width - 1)]
        inside &= ~in_image | (pixel[:, 3] > 0.5)
        color_sum += pixel[:, :3]
    return inside, color_sum / len(fit_index)


def initial_gaussians(views: ViewSet, fit_index: list[int], config: EncodeConfig,
                      generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Raw parameters of G Gaussians on the visual hull's surface (random cube points if the hull is empty)."""
    g = config.num_gaussians
    center, half = fit_views(views, fit_index)
    candidates = center + (torch.rand(config.init_candidates, 3, generator=generator) * 2 - 1) * half
    inside, colors = hull_votes(candidates, views, fit_index)
    step = 2 * half / config.init_candidates ** (1 / 3)  # the candidates' mean spacing
    if int(inside.sum()) >= 4:
        hull, hull_colors = candidates[inside], colors[inside]
        offsets = torch.cat([torch.eye(3), -torch.eye(3)]) * 1.5 * step
        near_surface = torch.zeros(hull.shape[0], dtype=torch.bool)
        for offset in offsets:
            near_surface |= ~hull_votes(hull + offset, views, fit_index)[0]
        priority = torch.rand(hull.shape[0], generator=generator) + near_surface.float()  # surface first
        chosen = priority.argsort(descending=True)[:g]
        if chosen.numel() < g:
            chosen = chosen[torch.randint(chosen.numel(), (g,), generator=generator)]
        means, colors = hull[chosen], hull_colors[chosen]
        extent = (hull.amax(0) - hull.amin(0)).norm()
    else:
        means, colors = candidates[:g], torch.full((g, 3), 0.5)
        extent = torch.tensor(2 * half)
    spacing = float(extent) / math.sqrt(g)  # G points spread over a surface of about extent^2
    means = means + torch.randn(means.shape, generator=generator) * 0.25 * step  # break the candidate grid
    quats = torch.zeros(g, 4)
    quats[:, 0] = 1
    return {
        "means": means, "quats": quats, "log_scales": torch.full((g, 3), math.log(0.5 * spacing)),
        "opacity_logits": logit(torch.full((g,), config.init_opacity)), "color_logits": logit(colors.clamp(0.02, 0.98)),
    }


def _learning_rates(config: EncodeConfig) -> dict[str, float]:
    return {"means": config.lr_means, "quats": config.lr_quats, "log_scales": config.lr_log_scales,
            "opacity_logits": config.lr_opacity, "color_logits": config.lr_colors}


def render_params(params: dict[str, torch.Tensor], camera_from_world: torch.Tensor, K: torch.Tensor, width: int,
                  height: int, background: torch.Tensor, raster: RasterConfig):
    return rasterize(params["means"], params["quats"], params["log_scales"].exp(),
                     torch.sigmoid(params["opacity_logits"]), torch.sigmoid(params["color_logits"]),
                     camera_from_world, K, width, height, background=background, config=raster)


def composite(image: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """RGBA [H, W, 4] (straight alpha) over a background colour [3] -> RGB [H, W, 3]."""
    return image[..., :3] * image[..., 3:] + background * (1 - image[..., 3:])


def fit_gaussians(views: ViewSet, config: EncodeConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """Fit G Gaussians to the views (held-out views excluded). Returns raw parameters and fit metrics."""
    count = views.images.shape[0]
    holdout = [i for i in range(count) if config.holdout_every > 0 and i % config.holdout_every == config.holdout_every - 1]
    fit_index = [i for i in range(count) if i not in holdout] or list(range(count))
    generator = torch.Generator().manual_seed(config.seed)
    params = {k: torch.nn.Parameter(v) for k, v in initial_gaussians(views, fit_index, config, generator).items()}
    rates = _learning_rates(config)
    optimizers = {k: torch.optim.Adam([p], lr=rates[k], eps=1e-15) for k, p in params.items()}
    decay = (config.lr_means_final / config.lr_means) ** (1 / max(config.steps, 1))
    strategy = RelocateStrategy(min_opacity=config.min_opacity, every=config.relocate_every,
                                start=config.relocate_every, stop=int(config.steps * 0.8), seed=config.seed)
    state, info = strategy.initialize_state(), {}
    cameras = [invert_pose(p) for p in views.world_from_camera]
    raster = config.raster()
    order = torch.tensor(fit_index)[torch.randperm(len(fit_index), generator=generator)]
    cursor, loss_value = 0, float("nan")
    for step in range(1, config.steps + 1):
        loss = torch.zeros(())
        for _ in range(config.views_per_step):
            index = int(order[cursor % len(order)])
            cursor += 1
            background = torch.rand(3, generator=generator)
            out = render_params(params, cameras[index], views.K[index], views.width, views.height, background, raster)
            target = views.images[index]
            loss = loss + photometric_loss(out.color, composite(target, background), torch.ones_like(out.alpha),
                                           config.ssim_share)
            loss = loss + config.alpha_weight * (out.alpha - target[..., 3]).abs().mean()
        (loss / config.views_per_step).backward()
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        optimizers["means"].param_groups[0]["lr"] *= decay
        strategy.step_post_backward(params, optimizers, state, step, info)
        loss_value = float(loss.detach()) / config.views_per_step
    detached = {k: v.detach() for k, v in params.items()}
    return detached, {"final_loss": loss_value, "relocated": info.get("relocated", 0),
                      "fit_views": len(fit_index), "holdout_views": holdout}


def score_views(gaussians, views: ViewSet, index: list[int], raster: RasterConfig) -> dict:
    """PSNR/SSIM (on white) and silhouette IoU of a Gaussian set at the given views."""
    if not index:
        return {}
    white = torch.ones(3)
    psnrs, ssims, ious = [], [], []
    with torch.no_grad():
        for i in index:
            out = rasterize(gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.colors,
                            invert_pose(views.world_from_camera[i]), views.K[i], views.width, views.height,
                            background=white, config=raster)
            target = composite(views.images[i], white)
            psnrs.append(psnr(out.color.clamp(0, 1), target))
            ssims.append(float(ssim(out.color.clamp(0, 1), target)))
            predicted, true = out.alpha > 0.5, views.images[i][..., 3] > 0.5
            ious.append(float((predicted & true).sum()) / max(float((predicted | true).sum()), 1.0))
    return {"psnr": sum(psnrs) / len(psnrs), "ssim": sum(ssims) / len(ssims), "iou": sum(ious) / len(ious)}


def encode_views(views: ViewSet, config: EncodeConfig, info: dict | None = None) -> Latent:
    """Posed RGBA views -> a canonical, Morton-sorted latent with held-out scores in its info."""
    start, cpu_start = time.perf_counter(), time.process_time()
    params, metrics = fit_gaussians(views, config)
    packed = pack(params["means"], params["quats"], params["log_scales"], params["opacity_logits"],
                  torch.sigmoid(params["color_logits"]))
    opacities = torch.sigmoid(params["opacity_logits"])
    center, radius = canonical_frame(params["means"], params["log_scales"].exp(), opacities)
    latent = sort_rows(canonicalize(packed, center, radius))
    metrics["seconds"] = time.perf_counter() - start
    metrics["cpu_seconds"] = time.process_time() - cpu_start  # this process's CPU time: robust to a busy machine
    decoded = to_gaussians(latent, center, radius)
    raster = config.raster()
    heldout = score_views(decoded, views, metrics["holdout_views"], raster)
    metrics.update({f"heldout_{k}": v for k, v in heldout.items()})
    if raster != RasterConfig():  # as a 3DGS viewer that knows only the classic filter draws it at this size
        classic = score_views(decoded, views, metrics["holdout_views"], RasterConfig())
        metrics["heldout_psnr_classic_raster"] = classic.get("psnr", float("nan"))
    metrics.update({"num_gaussians": config.num_gaussians, "steps": config.steps})
    return Latent(latent, center, radius, {**(info or {}), "raster_filter": raster.filter_dict(), "metrics": metrics})
