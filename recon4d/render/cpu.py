"""CPU backend: a C++ tile rasterizer with a hand-written backward pass.

Forward and backward run over screen tiles on `torch.get_num_threads()` OpenMP threads (small renders stay
on one); images and gradients are bit-identical for any thread count. On a shared, busy machine set
OMP_WAIT_POLICY=PASSIVE before torch is imported: spin-waiting OpenMP threads otherwise cost several times
the work of PyTorch's many small parallel ops.

The kernels (csrc/tile_raster.cpp here, csrc/projection.cpp for `recon4d.render.projection`) are built and
cached by `recon4d.cpp.load_extension`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from recon4d.cpp import load_extension

_CSRC = Path(__file__).with_name("csrc")


def extension():
    """The compiled tile rasterizer (csrc/tile_raster.cpp)."""
    return load_extension(_CSRC / "tile_raster.cpp")


def projection_extension():
    """The compiled EWA projection (csrc/projection.cpp)."""
    return load_extension(_CSRC / "projection.cpp")


class _RasterizeTiles(torch.autograd.Function):
    """Composites projected Gaussians; differentiable in means2d, conics, features and opacities."""

    @staticmethod
    def forward(ctx, means2d, conics, features, opacities, radii, offsets, ids, width, height, tile):
        inputs = [x.detach().contiguous() for x in (means2d, conics, features, opacities)]
        out_features, transmittance, pixel_end = extension().rasterize_forward(
            *inputs, radii, offsets, ids, width, height, tile
        )
        ctx.save_for_backward(*inputs, radii, offsets, ids, transmittance, pixel_end)
        ctx.dims = (width, height, tile)
        ctx.mark_non_differentiable(pixel_end)
        return out_features, 1.0 - transmittance

    @staticmethod
    def backward(ctx, v_features, v_alpha):
        means2d, conics, features, opacities, radii, offsets, ids, transmittance, pixel_end = ctx.saved_tensors
        width, height, tile = ctx.dims
        v_features = torch.zeros((height, width, features.shape[1])) if v_features is None else v_features
        v_alpha = torch.zeros((height, width)) if v_alpha is None else v_alpha
        grads = extension().rasterize_backward(
            means2d, conics, features, opacities, radii, offsets, ids, transmittance, pixel_end,
            v_features.float().contiguous(), v_alpha.float().contiguous(), width, height, tile,
        )
        return grads[:, 0:2], grads[:, 2:5], grads[:, 6:], grads[:, 5], None, None, None, None, None, None


def rasterize_tiles(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    features: torch.Tensor,
    opacities: torch.Tensor,
    radii: torch.Tensor,
    depths: torch.Tensor,
    width: int,
    height: int,
    tile_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha-composite projected Gaussians front to back.

    Args:
        means2d: [N, 2] pixel coordinates with pixel centres at (x + 0.5, y + 0.5) (gsplat's frame).
        conics: [N, 3] (a, b, c) of the inverse 2D covariance.
        features: [N, D] anything to composite (colour channels, depth, ...).
        opacities: [N].
        radii: [N, 2] int32 pixel half-extents of each Gaussian's footprint; 0 culls it.
        depths: [N] camera z used for ordering only.
    Returns:
        features [H, W, D] (no background) and alpha [H, W].
    """
    radii = radii.to(torch.int32).contiguous()
    offsets, ids = extension().bin_gaussians(
        means2d.detach().float().contiguous(), conics.detach().float().contiguous(),
        opacities.detach().float().contiguous(), radii, depths.detach().float().contiguous(), width, height, tile_size,
    )
    return _RasterizeTiles.apply(
        means2d.float(), conics.float(), features.float(), opacities.float(), radii, offsets, ids,
        width, height, tile_size,
    )
