"""Differentiable Gaussian rasterization with one entry point for every device.

Example:
    >>> import torch
    >>> from recon4d.render import rasterize
    >>> K = torch.tensor([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])
    >>> out = rasterize(torch.tensor([[0.0, 0, 2]]), torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.05),
    ...                 torch.tensor([0.9]), torch.tensor([[1.0, 0.5, 0.2]]), torch.eye(4), K, 64, 48)
    >>> out.color.shape, round(out.depth[24, 32].item(), 3)
    (torch.Size([48, 64, 3]), 2.0)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from recon4d.errors import InputError
from recon4d.render.config import RasterConfig

__all__ = ["RasterConfig", "RenderResult", "rasterize"]


@dataclass
class RenderResult:
    """One rendered view.

    Attributes:
        color: [H, W, C] composited colours with the background where alpha < 1.
        depth: [H, W] expected camera z of the visible Gaussians (alpha-normalised; 0 where alpha = 0).
        alpha: [H, W] accumulated opacity.
        means2d: [N, 2] projected centres in OpenCV pixels (centre of pixel (i, j) at (u=j, v=i)).
        radii: [N] int footprint radius in pixels, 0 for culled Gaussians.
    """

    color: torch.Tensor
    depth: torch.Tensor
    alpha: torch.Tensor
    means2d: torch.Tensor
    radii: torch.Tensor


def _check_inputs(means, quats, scales, opacities, colors, camera_from_world, K, width, height, background):
    n = means.shape[0] if means.dim() == 2 else -1
    expected = {
        "means": (means, (n, 3)), "quats": (quats, (n, 4)), "scales": (scales, (n, 3)),
        "opacities": (opacities, (n,)), "camera_from_world": (camera_from_world, (4, 4)), "K": (K, (3, 3)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise InputError(f"rasterize: {name} has shape {tuple(tensor.shape)}, expected {shape}")
    if colors.dim() != 2 or colors.shape[0] != n or colors.shape[1] < 1:
        raise InputError(f"rasterize: colors has shape {tuple(colors.shape)}, expected ({n}, C)")
    if background is not None and tuple(background.shape) != (colors.shape[1],):
        raise InputError(f"rasterize: background has shape {tuple(background.shape)}, expected ({colors.shape[1]},)")
    if width <= 0 or height <= 0:
        raise InputError(f"rasterize: image size {width}x{height} must be positive")
    devices = {t.device for t in (means, quats, scales, opacities, colors, camera_from_world, K)}
    if len(devices) != 1:
        raise InputError(f"rasterize: inputs live on several devices {sorted(map(str, devices))}")


def rasterize(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    camera_from_world: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    background: torch.Tensor | None = None,
    config: RasterConfig | None = None,
) -> RenderResult:
    """Render N 3D Gaussians into one pinhole camera, differentiably in every tensor input and the pose.

    The backend follows the tensors: CUDA tensors go to gsplat, CPU tensors to recon4d's C++ tile
    rasterizer. Both share gsplat's numerics (EWA splatting, eps2d low-pass, 1/255 alpha cut-off).

    Args:
        means: [N, 3] centres in world coordinates.
        quats: [N, 4] rotations (w, x, y, z), normalised internally.
        scales: [N, 3] standard deviations along the Gaussian's axes (linear, not log).
        opacities: [N] in [0, 1] (not logits).
        colors: [N, C] features to composite, any C >= 1.
        camera_from_world: [4, 4] OpenCV world-to-camera transform.
        K: [3, 3] intrinsics in pixels, OpenCV pixel centres.
        width, height: image size in pixels.
        background: [C] colour behind the Gaussians, or None for black.
        config: numerical settings; defaults match gsplat.
    """
    config = config or RasterConfig()
    _check_inputs(means, quats, scales, opacities, colors, camera_from_world, K, width, height, background)
    n, channels = means.shape[0], colors.shape[1]
    if n == 0:
        # Tied to the (empty) inputs so that a loss on an empty render can still be back-propagated.
        features = torch.zeros((height, width, channels), dtype=colors.dtype, device=colors.device) + 0 * colors.sum()
        depth = torch.zeros((height, width), dtype=means.dtype, device=means.device) + 0 * means.sum()
        alpha = torch.zeros_like(depth)
        means2d = torch.zeros((0, 2), dtype=means.dtype, device=means.device)
        radii = torch.zeros((0,), dtype=torch.int32, device=means.device)
    elif means.is_cuda:
        from recon4d.render.gsplat_backend import rasterize_gsplat

        features, depth, alpha, means2d, radii = rasterize_gsplat(
            means, quats, scales, opacities, colors, camera_from_world, K, width, height, config
        )
    else:
        features, depth, alpha, means2d, radii = _rasterize_cpu(
            means, quats, scales, opacities, colors, camera_from_world, K, width, height, config
        )
    if background is not None:
        features = features + (1.0 - alpha)[..., None] * background
    return RenderResult(color=features, depth=depth, alpha=alpha, means2d=means2d, radii=radii)


def antialias_compensation(conics: torch.Tensor, eps2d: float) -> torch.Tensor:
    """Opacity factor [N] of the antialiased mode, sqrt(det(cov2d) / det(cov2d + eps2d I)), from the conics
    [N, 3] (a, b, c) of (cov2d + eps2d I)^-1: with A = cov2d + eps2d I, det(A - eps2d I) / det(A) =
    1 - eps2d tr(A^-1) + eps2d^2 det(A^-1), so no inverse is needed (and culled Gaussians, conic 0, get 1).

        >>> float(antialias_compensation(torch.tensor([[1 / 1.3, 0.0, 1 / 1.3]]), 0.3))  # cov2d = I
        0.769230...
    """
    a, b, c = conics.unbind(-1)
    ratio = 1 - eps2d * (a + c) + eps2d**2 * (a * c - b * b)
    return ratio.clamp_min(1e-12).sqrt()  # finite gradient for needle-thin Gaussians


def _rasterize_cpu(means, quats, scales, opacities, colors, camera_from_world, K, width, height, config):
    from recon4d.render.cpu import rasterize_tiles
    from recon4d.render.projection import project_gaussians

    projected = project_gaussians(means, quats, scales, opacities, camera_from_world, K, width, height, config)
    # Depth is composited as one more feature channel, then normalised by alpha (gsplat's "ED").
    features = torch.cat([colors, projected.depths[:, None].to(colors.dtype)], -1)
    if config.antialiased:
        opacities = opacities * antialias_compensation(projected.conics, config.eps2d)
    composite, alpha = rasterize_tiles(
        projected.means2d, projected.conics, features, opacities, projected.radii, projected.depths,
        width, height, config.tile_size,
    )
    depth = composite[..., -1] / alpha.clamp_min(1e-10)
    return composite[..., :-1], depth, alpha, projected.means2d - 0.5, projected.radii.amax(-1)
