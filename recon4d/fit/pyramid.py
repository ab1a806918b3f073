"""Coarse-to-fine image pyramids of the fit's inputs: both passes optimise at a reduced resolution first.

A coarse level sees the same scene through the same cameras with fewer pixels: its first optimisation steps
are cheaper (the rasterizer and the image losses scale with the pixel count) and see larger structures,
which is what the start of an optimisation needs; the finest level then fits the detail.

Level l is the working resolution downsampled by 2^l with area averaging (each coarse pixel is the mean of
a 2^l x 2^l block; a remainder row or column is dropped). The intrinsics follow the pixel-centre convention
of recon4d (the centre of pixel (row i, column j) is at (u=j, v=i)): coarse pixel j covers fine pixels
s*j .. s*j+s-1, whose centre is at u = s*j + (s-1)/2, so u_coarse = (u + 0.5)/s - 0.5 and fx, fy shrink by s.

Priors are downsampled to match: depth and its confidence averaged, flow averaged over its valid pixels
and divided by s (it is measured in pixels), a coarse pixel's flow valid when most of its block is, and it
is moving when any of its block is (the camera step leaves moving pixels out: an edge of a mover must not
leak into it).

`level_at(step, total, levels, coarse_share)` schedules levels over a stage: the first `coarse_share` of the
steps go to the coarser levels, coarsest first, in equal parts; the rest to the working resolution.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from recon4d.geometry.camera import scale_camera_matrix

if TYPE_CHECKING:  # recon4d.fit.sequential builds its pyramid from here
    from recon4d.fit.sequential import FitInputs

# A level whose short side would fall below this many pixels is not built: SSIM's 11-pixel window and the
# Gaussians' footprints stop making sense on smaller images.
MIN_LEVEL_SHORT_SIDE_PX = 32


def area_downsample(maps: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean over factor x factor blocks of [T, H, W, C] -> [T, H // factor, W // factor, C] (float)."""
    if factor == 1:
        return maps.float()
    return F.avg_pool2d(maps.permute(0, 3, 1, 2).float(), factor, factor).permute(0, 2, 3, 1).contiguous()


def downsample_flow(flow: torch.Tensor, valid: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow [T, H, W, 2] (pixels) and its validity [T, H, W] bool at the coarse level: the mean flow of each
    block's valid pixels in coarse pixels, valid where more than half of the block is."""
    share = area_downsample(valid[..., None], factor)
    summed = area_downsample(flow * valid[..., None], factor)
    return summed / share.clamp_min(1e-6) / factor, share[..., 0] > 0.5


def downsample_inputs(inputs: FitInputs, factor: int) -> FitInputs:
    """The fit's frames and priors at 1/factor of the working resolution, with their intrinsics."""
    if factor == 1:
        return inputs
    flow_forward, valid_forward = downsample_flow(inputs.flow_forward, inputs.valid_forward, factor)
    flow_backward, valid_backward = downsample_flow(inputs.flow_backward, inputs.valid_backward, factor)
    return dataclasses.replace(
        inputs,
        frames=area_downsample(inputs.frames, factor),
        flow_forward=flow_forward, flow_backward=flow_backward,
        valid_forward=valid_forward, valid_backward=valid_backward,
        depth=area_downsample(inputs.depth[..., None], factor)[..., 0],
        depth_confidence=area_downsample(inputs.depth_confidence[..., None], factor)[..., 0],
        moving=area_downsample(inputs.moving[..., None], factor)[..., 0] > 0,
        K=scale_camera_matrix(inputs.K, 1 / factor, 1 / factor),
    )


def usable_levels(height: int, width: int, levels: int) -> int:
    """How many of `levels` (1 = the working resolution only) keep a short side >= MIN_LEVEL_SHORT_SIDE_PX."""
    count = 1
    while count < levels and min(height, width) // 2**count >= MIN_LEVEL_SHORT_SIDE_PX:
        count += 1
    return count


def level_at(step: int, total: int, levels: int, coarse_share: float) -> int:
    """Pyramid level (0 = working resolution, levels-1 = coarsest) of step `step` (0-based) of `total`."""
    coarse_steps = round(coarse_share * total) if levels > 1 else 0
    if step >= coarse_steps:
        return 0
    return levels - 1 - step * (levels - 1) // coarse_steps


@dataclass
class Level:
    """One pyramid level: inputs (frames, priors, K) at `factor` times fewer pixels per side."""

    factor: int
    inputs: FitInputs

    @property
    def height(self) -> int:
        return self.inputs.frames.shape[1]

    @property
    def width(self) -> int:
        return self.inputs.frames.shape[2]


class Pyramid:
    """Levels of a `FitInputs`, built on first use (level 0 is the inputs themselves)."""

    def __init__(self, inputs: FitInputs, levels: int) -> None:
        height, width = inputs.frames.shape[1:3]
        self.inputs = inputs
        self.levels = usable_levels(height, width, levels)
        self._built: dict[int, Level] = {0: Level(1, inputs)}

    def level(self, index: int) -> Level:
        if index not in self._built:
            self._built[index] = Level(2**index, downsample_inputs(self.inputs, 2**index))
        return self._built[index]


def level_phases(total: int, levels: int, coarse_share: float) -> list[tuple[int, int]]:
    """The schedule of `level_at` as (level, steps) phases, coarsest first; phases of zero steps are left out."""
    counts: dict[int, int] = {}
    for step in range(total):
        level = level_at(step, total, levels, coarse_share)
        counts[level] = counts.get(level, 0) + 1
    return sorted(counts.items(), reverse=True)


def pixels_at_level(pixels: torch.Tensor, factor: int) -> torch.Tensor:
    """Pixel coordinates [..., 2] at the working resolution -> the same points in a level's pixels."""
    if factor == 1:
        return pixels  # exactly: a fit without a pyramid stays bit for bit what it was
    return (pixels + 0.5) / factor - 0.5
