"""CUDA backend: gsplat's fused rasterizer (install with `pip install recon4d[cuda]`)."""
from __future__ import annotations

import torch

from recon4d.errors import BackendError
from recon4d.render.config import RasterConfig


def _gsplat():
    try:
        import gsplat
    except ImportError as exc:
        raise BackendError(
            "CUDA tensors need gsplat, which is not installed", hint="pip install 'recon4d[cuda]'"
        ) from exc
    return gsplat


def rasterize_gsplat(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    features: torch.Tensor,
    camera_from_world: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    config: RasterConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns features [H, W, D] and expected depth [H, W] (no background), alpha [H, W], means2d [N, 2]
    in OpenCV pixels and radii [N] (0 = culled). Only ever called with CUDA tensors: gsplat given CPU
    tensors tries to compile CUDA code and fails."""
    if not means.is_cuda:
        raise BackendError("the gsplat backend needs CUDA tensors", hint="use device='cpu' for the CPU backend")
    gsplat = _gsplat()
    # gsplat puts pixel centres at +0.5; recon4d (like OpenCV) at integers.
    shift = torch.zeros_like(K)
    shift[0, 2] = shift[1, 2] = 0.5
    render, alpha, meta = gsplat.rasterization(
        means, quats, scales, opacities, features,
        viewmats=camera_from_world[None], Ks=(K + shift)[None], width=width, height=height,
        near_plane=config.near_plane, far_plane=config.far_plane, eps2d=config.eps2d,
        render_mode="RGB+ED", packed=False, rasterize_mode="antialiased" if config.antialiased else "classic",
    )
    means2d = meta["means2d"][0] - 0.5
    radii = meta["radii"][0]
    radii = radii.amax(-1) if radii.dim() == 2 else radii
    return render[0, ..., :-1], render[0, ..., -1], alpha[0, ..., 0], means2d, radii
