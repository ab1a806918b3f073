"""NeRFool: adversarial perturbations of the source views of a generalizable NeRF, and a defence.

Threat model (NeRFool, Fu et al. 2023): the attacker adds a perturbation delta with |delta|_inf <= eps to
the source images, which reach the model twice: through the feature CNN and as the RGB the view
transformer blends. `paths` chooses which of the two see the perturbation ("both" is the physical case:
one perturbed photo; "cnn" or "blend" isolate each path). The loss maximised is the MSE between the
render of target rays and the clean ground truth; PGD with signed gradients and a random start.
View-specific: one delta per held-out target view (over its K sources). Universal: one delta per source
image, shared by all held-out targets, optimised over all of them.

Defence: input purification by a Gaussian blur (sigma in pixels) of every source image before the model.
It is differentiable, so `adaptive=True` attacks the purified model directly (white box); `adaptive=False`
reports the transfer of perturbations crafted against the undefended model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recon4d.errors import InputError
from recon4d.image import psnr, ssim
from recon4d.nerf.data.posed import PosedImages
from recon4d.nerf.gnt.model import GNT
from recon4d.nerf.gnt.rays import image_pixels, nearest_views
from recon4d.nerf.gnt.render import render_pixels

PATHS = ("both", "cnn", "blend")


@dataclass(frozen=True)
class AttackConfig:
    """eps: L-inf radius in [0, 1] units; steps: PGD iterations; step_size: per-iteration step (default eps/4);
    rays: target rays per iteration (random pixels of each target); paths: which inputs see the perturbation;
    defence_sigma: Gaussian blur of the purification defence, pixels; seed: random start and ray choice."""

    eps: float = 8 / 255
    steps: int = 10
    step_size: float | None = None
    rays: int = 256
    paths: str = "both"
    universal: bool = False
    defence_sigma: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 1 or self.steps < 1 or self.rays < 1:
            raise InputError(f"need 0 < eps <= 1, steps >= 1, rays >= 1 (got {self.eps}, {self.steps}, {self.rays})")
        if self.paths not in PATHS:
            raise InputError(f"unknown attack path {self.paths!r}", hint=f"use one of {', '.join(PATHS)}")


def purify(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of images [V, H, W, 3] with std `sigma` pixels (reflect padding); identity for sigma <= 0."""
    if sigma <= 0:
        return images
    radius = max(1, round(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.permute(0, 3, 1, 2)
    v = channels.shape[0] * 3
    flat = channels.reshape(1, v, *channels.shape[-2:])
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1).expand(v, 1, 1, -1), groups=v)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1).expand(v, 1, -1, 1), groups=v)
    return flat.reshape(channels.shape).permute(0, 2, 3, 1)


def _render(model: GNT, sources: PosedImages, delta: torch.Tensor, config: AttackConfig, pose: torch.Tensor,
            K: torch.Tensor, pixels: torch.Tensor, defence: float) -> torch.Tensor:
    """rgb [R, 3] of target pixels with `delta` [V, H, W, 3] added to the chosen paths of `sources`."""
    perturbed = (sources.images + delta).clamp(0, 1)
    cnn = perturbed if config.paths in ("both", "cnn") else sources.images
    blend = perturbed if config.paths in ("both", "blend") else sources.images
    cnn, blend = purify(cnn, defence), purify(blend, defence)
    context = model.encode(cnn, sources.world_from_camera, sources.intrinsics, sources.near, sources.far,
                           blend_images=blend, valid=sources.valid)
    rgb, _ = render_pixels(model, context, pose, K, pixels, coarse_grad=True)
    return rgb


def _pgd(model: GNT, pool: PosedImages, targets: list[tuple[int, torch.Tensor]], data: PosedImages,
         config: AttackConfig, defence: float, g: torch.Generator) -> torch.Tensor:
    """PGD on one delta [V, H, W, 3] over the images of `pool`, maximising the summed MSE of every target
    (data index, indices into `pool` of its sources) -> delta."""
    step = config.step_size or config.eps / 4
    delta = ((torch.rand(pool.images.shape, generator=g) * 2 - 1) * config.eps).to(pool.images.device)
    for _ in range(config.steps):
        delta.requires_grad_(True)
        loss = delta.new_zeros(())
        for i, chosen in targets:
            truth = data.images[i]
            height, width = truth.shape[:2]
            pick = torch.randint(height * width, (min(config.rays, height * width),), generator=g)
            rgb = _render(model, pool.subset(chosen), delta[chosen], config, data.world_from_camera[i],
                          data.intrinsics[i], image_pixels(width, height)[pick], defence)
            loss = loss + F.mse_loss(rgb, truth.reshape(-1, 3)[pick])
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (delta + step * grad.sign()).clamp(-config.eps, config.eps)
            delta = (pool.images + delta).clamp(0, 1) - pool.images  # stay a valid image
    return delta.detach()


@torch.no_grad()
def _score(model: GNT, sources: PosedImages, delta: torch.Tensor, config: AttackConfig, pose: torch.Tensor,
           K: torch.Tensor, truth: torch.Tensor, defence: float) -> tuple[float, float]:
    height, width = truth.shape[:2]
    rgb = _render(model, sources, delta, config, pose, K, image_pixels(width, height), defence).reshape(height, width, 3)
    return psnr(rgb, truth), float(ssim(rgb, truth))


def attack(model: GNT, data: PosedImages, held: list[int], source_index: list[int], config: AttackConfig,
           adaptive: bool = True) -> dict:
    """Clean vs attacked PSNR/SSIM per held-out view, without and with the purification defence."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(config.seed)
    pool = data.subset(source_index)
    count = model.config.source_views
    targets = []
    for i in held:
        chosen = nearest_views(data.world_from_camera[i], pool.world_from_camera, count, exclude_same=False)
        targets.append((i, chosen))
    rows, sigma = [], config.defence_sigma
    deltas = {}
    if config.universal:
        universal = {0.0: _pgd(model, pool, targets, data, config, 0.0, g)}
        universal[sigma] = _pgd(model, pool, targets, data, config, sigma, g) if adaptive else universal[0.0]
        deltas = {(i, d): universal[d][chosen] for i, chosen in targets for d in universal}
    else:
        for i, chosen in targets:
            own = [(i, torch.arange(len(chosen)))]
            sources = pool.subset(chosen)
            deltas[(i, 0.0)] = _pgd(model, sources, own, data, config, 0.0, g)
            deltas[(i, sigma)] = _pgd(model, sources, own, data, config, sigma, g) if adaptive else deltas[(i, 0.0)]
    for i, chosen in targets:
        sources = pool.subset(chosen)
        pose, K, truth = data.world_from_camera[i], data.intrinsics[i], data.images[i]
        zero = torch.zeros_like(sources.images)
        row = {"index": i, "name": data.names[i]}
        row["clean_psnr"], row["clean_ssim"] = _score(model, sources, zero, config, pose, K, truth, 0.0)
        row["attacked_psnr"], row["attacked_ssim"] = _score(model, sources, deltas[(i, 0.0)], config, pose, K, truth, 0.0)
        row["defended_clean_psnr"], _ = _score(model, sources, zero, config, pose, K, truth, config.defence_sigma)
        row["defended_attacked_psnr"], _ = _score(model, sources, deltas[(i, config.defence_sigma)], config, pose, K,
                                                  truth, config.defence_sigma)
        row["max_abs_perturbation"] = float(deltas[(i, 0.0)].abs().max())
        rows.append(row)
    mean = lambda key: sum(r[key] for r in rows) / len(rows)
    keys = ["clean_psnr", "clean_ssim", "attacked_psnr", "attacked_ssim", "defended_clean_psnr", "defended_attacked_psnr"]
    result = {key: mean(key) for key in keys}
    result.update({"psnr_drop": result["clean_psnr"] - result["attacked_psnr"],
                   "defence_recovery": result["defended_attacked_psnr"] - result["attacked_psnr"],
                   "defence_clean_cost": result["clean_psnr"] - result["defended_clean_psnr"],
                   "max_abs_perturbation": max(r["max_abs_perturbation"] for r in rows),
                   "eps": config.eps, "steps": config.steps, "paths": config.paths, "universal": config.universal,
                   "adaptive_defence_attack": adaptive, "defence": f"gaussian blur sigma {config.defence_sigma} px",
                   "views": rows})
    return result

