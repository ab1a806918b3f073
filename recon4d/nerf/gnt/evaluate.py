"""Zero- and few-shot evaluation of GNT models on held-out views of a posed image set.

Held-out views: index i with i % K == K - 1 in the data's file order; every other view is a candidate
source. Each held-out view is rendered from its `shots` (default: the model's K) nearest sources and
compared with PSNR and SSIM (Gaussian-window SSIM of `recon4d.image`; no LPIPS backbone is available
offline). Baselines: the nearest source image itself ("nearest view"), and optionally a second model
(the dense GNT).
"""
from __future__ import annotations

import time

import torch

from recon4d.errors import InputError
from recon4d.image import psnr, ssim
from recon4d.nerf.data.posed import PosedImages, holdout_split
from recon4d.nerf.gnt.model import GNT
from recon4d.nerf.gnt.rays import nearest_views, pixel_rays, project_points
from recon4d.nerf.gnt.render import render_view

# Overlap check: rays on an OVERLAP_GRID^2 grid, OVERLAP_DEPTHS depths each; a held-out view whose points
# are seen by no chosen source view in more than MIN_OVERLAP of cases cannot be rendered.
OVERLAP_GRID, OVERLAP_DEPTHS, MIN_OVERLAP = 8, 8, 0.05


def split_views(count: int, holdout_every: int | None, views: list[int] | None) -> tuple[list[int], list[int]]:
    """(held-out, source) indices from --views or --holdout-every."""
    if views:
        bad = [v for v in views if not 0 <= v < count]
        if bad:
            raise InputError(f"view {bad[0]} does not exist (the data has {count} views)")
        held = sorted(set(views))
        return held, [i for i in range(count) if i not in held]
    return holdout_split(count, holdout_every or 8)


def overlap_fraction(sources: PosedImages, world_from_camera: torch.Tensor, intrinsics: torch.Tensor,
                     width: int, height: int) -> float:
    """Fraction of points in the target frustum (between near and far) that some source view sees."""
    u = torch.linspace(0, width - 1, OVERLAP_GRID, device=world_from_camera.device)
    v = torch.linspace(0, height - 1, OVERLAP_GRID, device=world_from_camera.device)
    pixels = torch.stack(torch.meshgrid(u, v, indexing="xy"), -1).reshape(-1, 2)
    origins, directions = pixel_rays(world_from_camera, intrinsics, pixels)
    depths = torch.linspace(sources.near, sources.far, OVERLAP_DEPTHS, device=world_from_camera.device)
    points = origins[:, None] + depths[None, :, None] * directions[:, None]
    _, visible = project_points(points, sources.world_from_camera, sources.intrinsics, sources.width, sources.height)
    return float(visible.any(0).float().mean())


def evaluate(model: GNT, data: PosedImages, held: list[int], source_index: list[int], shots: int | None = None,
             baseline: GNT | None = None) -> dict:
    """Per held-out view and mean PSNR/SSIM of `model`, the nearest source view, and `baseline` if given."""
    if len(source_index) < 1:
        raise InputError("no source views left after holding out views")
    sources = data.subset(source_index)
    count = shots or model.config.source_views
    per_view, started = [], time.perf_counter()
    for i in held:
        pose, K, truth = data.world_from_camera[i], data.intrinsics[i], data.images[i]
        chosen = sources.subset(nearest_views(pose, sources.world_from_camera, count, exclude_same=False))
        if overlap_fraction(chosen, pose, K, data.width, data.height) < MIN_OVERLAP:
            raise InputError(f"held-out view {data.names[i]} shares no content with its source views",
                             hint="the views do not overlap: check the poses or use more views")
        rgb, _ = render_view(model, chosen, pose, K, data.width, data.height, count)
        nearest = chosen.images[0]
        row = {"index": i, "name": data.names[i], "psnr": psnr(rgb, truth), "ssim": float(ssim(rgb, truth)),
               "nearest_view_psnr": psnr(nearest, truth), "nearest_view_ssim": float(ssim(nearest, truth)),
               "nearest_view": chosen.names[0]}
        if baseline is not None:
            dense, _ = render_view(baseline, chosen, pose, K, data.width, data.height, count)
            row.update({"dense_psnr": psnr(dense, truth), "dense_ssim": float(ssim(dense, truth))})
        per_view.append(row)
    seconds = time.perf_counter() - started
    mean = lambda key: sum(r[key] for r in per_view) / len(per_view)
    keys = ["psnr", "ssim", "nearest_view_psnr", "nearest_view_ssim"] + (["dense_psnr", "dense_ssim"] if baseline else [])
    result = {key: mean(key) for key in keys}
    pixels = len(held) * data.width * data.height * (2 if baseline else 1)
    result.update({"views": per_view, "held_out": len(held), "sources": len(source_index), "shots": count,
                   "resolution": [data.width, data.height], "seconds": round(seconds, 2),
                   "rays_per_second": round(pixels / max(seconds, 1e-9), 1)})
    return result
