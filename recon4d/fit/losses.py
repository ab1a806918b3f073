"""Loss terms of the fit; each takes rendered and prior maps of one frame and returns a scalar. Also the
alignment of a frame's prior depth to the rendered scene (`align_prior_depth`) that the depth term's scale-free
comparison implies, for the stages that place Gaussians by the prior (spawning, the carrying of dynamic ones)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from recon4d.image import ssim_map

# Pixels rendered with more alpha than this count as covered: only there is the rendered depth compared with
# the prior, read to scale new content, or used for PnP matches.
COVERED_ALPHA = 0.9
# Fewer covered pixels than this give no depth term: a median of a handful is noise.
MIN_DEPTH_PIXELS = 16


def photometric_loss(rendered: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, ssim_share: float) -> torch.Tensor:
    """(1 - s) L1 + s (1 - SSIM), averaged with per-pixel `weight` [H, W]; images [H, W, 3]."""
    per_pixel = (rendered - target).abs().mean(-1)
    if ssim_share:  # the SSIM map costs more than the L1 term and the render's backward together at 64 px
        per_pixel = (1 - ssim_share) * per_pixel + ssim_share * (1 - ssim_map(rendered, target))
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1)


class PriorAlignment(NamedTuple):
    """A frame's prior depth against the scene's rendered depth (`align_prior_depth`).

    scale: factor that brings the prior to the scene's depth (0-dim tensor).
    residual: median of |scale x prior - rendered| / rendered over the pixels compared (0-dim tensor): 0.006 on
        bear's keyframes, 0.05 on backpack's, 0.24-0.41 on cup's (a static camera: the video prior's depth
        there is a fill, not triangulated).
    """

    scale: torch.Tensor
    residual: torch.Tensor


def align_prior_depth(prior_depth: torch.Tensor, rendered_depth: torch.Tensor, alpha: torch.Tensor,
                      moving: torch.Tensor) -> PriorAlignment | None:
    """Scale a frame's prior depth [H, W] to the scene's: the median ratio of rendered to prior depth over covered
    (alpha [H, W] above `COVERED_ALPHA`) still pixels (`moving` [H, W] bool off), or over all covered pixels
    when fewer than `MIN_DEPTH_PIXELS` are still; None when fewer are covered.

        >>> prior = torch.full((8, 8), 2.0)
        >>> fit = align_prior_depth(prior, prior * 3, torch.ones(8, 8), torch.zeros(8, 8, dtype=torch.bool))
        >>> float(fit.scale), float(fit.residual)
        (3.0, 0.0)
    """
    covered = (alpha > COVERED_ALPHA) & ~moving
    if covered.sum() < MIN_DEPTH_PIXELS:
        covered = alpha > COVERED_ALPHA
    if covered.sum() < MIN_DEPTH_PIXELS:
        return None
    rendered, prior = rendered_depth[covered], prior_depth[covered]
    scale = (rendered / prior.clamp_min(1e-6)).median()
    return PriorAlignment(scale, ((scale * prior - rendered).abs() / rendered.clamp_min(1e-6)).median())


def depth_loss(rendered_depth: torch.Tensor, prior_depth: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """L1 between rendered depth and the prior scaled to it by the (detached) median ratio, relative to the
    rendered median. Scale-invariant, so priors known up to scale per frame are usable. Maps [H, W]; 0 where
    fewer than `MIN_DEPTH_PIXELS` pixels have weight.

    The medians (`_lower_medians`) read no pixel count back from a GPU.
    """
    valid = weight > 0
    medians = _lower_medians(torch.stack([rendered_depth.detach(), prior_depth]), valid)
    rendered_median = medians[0].nan_to_num(1.0).clamp_min(1e-6)
    scale = rendered_median / medians[1].nan_to_num(1.0).clamp_min(1e-6)
    residual = (rendered_depth - scale * prior_depth).abs() / rendered_median
    loss = (residual * weight).sum() / weight.sum().clamp_min(1e-12)
    return torch.where(valid.sum() >= MIN_DEPTH_PIXELS, loss, 0.0)


def _lower_medians(maps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Lower median (`torch.median`'s: the smaller middle value of an even count) of each map [M, H, W] over the
    pixels `valid` [H, W] -> [M]; NaN where no pixel is valid.

    On the CPU the valid values are selected and NumPy's introselect picks the median: at 854x480, 2.5 ms for
    two maps where `nanmedian` takes 6 ms (torch's CPU median is an order of magnitude slower than
    `np.partition`). Elsewhere `nanmedian` over the maps with the other pixels set to NaN: no host read of the
    pixel count, which a GPU would wait on.
    """
    if maps.device.type != "cpu":
        return maps.where(valid, torch.nan).flatten(1).nanmedian(dim=1).values
    medians = torch.full((maps.shape[0],), torch.nan, dtype=maps.dtype)
    for row, values in enumerate(maps[:, valid].numpy()):
        values = values[~np.isnan(values)] if np.isnan(values).any() else values  # as nanmedian skips them
        if values.size:
            middle = (values.size - 1) // 2
            medians[row] = float(np.partition(values, middle)[middle])
    return medians


def flow_loss(rendered_flow: torch.Tensor, prior_flow: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean end-point error in pixels over `weight` [H, W]; flows [H, W, 2]."""
    epe = (rendered_flow - prior_flow).norm(dim=-1)
    return (epe * weight).sum() / weight.sum().clamp_min(1)


def isotropy_loss(log_scales: torch.Tensor) -> torch.Tensor:
    """Mean absolute deviation of each Gaussian's log scales from their mean: 0 for spheres. [N, 3]."""
    if log_scales.shape[0] == 0:
        return log_scales.sum()
    return (log_scales - log_scales.mean(-1, keepdim=True)).abs().mean()
