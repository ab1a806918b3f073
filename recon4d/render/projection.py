"""EWA projection of 3D Gaussians to screen-space conics: a C++ kernel with a hand-written backward pass.

Follows gsplat's perspective projection (the Jacobian is evaluated at the camera-space mean with x/z and
y/z clamped to 1.3x the field of view, the 2D covariance gets `eps2d` on its diagonal, the footprint
radius is opacity-aware), so that the CPU backend and gsplat draw the same image. Gradients reach the
means, quaternions (through their normalisation), scales, the pose and the intrinsics; opacities only
shape the (non-differentiable) radii. The kernel (csrc/projection.cpp) runs over Gaussians on
`torch.get_num_threads()` OpenMP threads with results bit-identical for any thread count;
`recon4d.render.reference.project_gaussians_reference` is the autograd version the tests compare it with.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from recon4d.geometry.quaternion import NORM_EPS
from recon4d.render.config import RasterConfig

ALPHA_THRESHOLD = 1.0 / 255.0
# Footprint half-extent in standard deviations for a fully opaque Gaussian: exp(-0.5 * 3.33^2) ~ 1/255.
MAX_EXTENT_SIGMA = 3.33
# Off-screen Gaussians keep their Jacobian from the clamped direction 30% of the half-FOV outside the view.
FOV_CLAMP_MARGIN = 0.3


@dataclass
class ProjectedGaussians:
    """Screen-space Gaussians in gsplat's pixel frame (pixel centres at x + 0.5, y + 0.5).

    Attributes:
        means2d: [N, 2] pixels.
        conics: [N, 3] (a, b, c) of the inverse covariance.
        depths: [N] camera z.
        radii: [N, 2] int32 footprint half-extents in pixels; (0, 0) = culled.
    """

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor


class _ProjectGaussians(torch.autograd.Function):
    """Differentiable in means, quats, scales, camera_from_world and K (all of one dtype, on the CPU)."""

    @staticmethod
    def forward(ctx, means, quats, scales, camera_from_world, K, opacities, width, height, config):
        from recon4d.render.cpu import projection_extension

        inputs = [x.detach().contiguous() for x in (means, quats, scales, camera_from_world, K)]
        means2d, conics, depths, radii = projection_extension().project_forward(
            *inputs[:3], opacities.detach().contiguous(), *inputs[3:], width, height, config.near_plane,
            config.far_plane, config.eps2d, FOV_CLAMP_MARGIN, ALPHA_THRESHOLD, MAX_EXTENT_SIGMA, NORM_EPS,
        )
        ctx.save_for_backward(*inputs)
        ctx.settings = (width, height, config.near_plane, config.far_plane, config.eps2d, FOV_CLAMP_MARGIN, NORM_EPS)
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, _v_radii):
        from recon4d.render.cpu import projection_extension

        means = ctx.saved_tensors[0]
        upstream = [torch.zeros(shape, dtype=means.dtype) if v is None else v.to(means.dtype).contiguous()
                    for v, shape in ((v_means2d, (len(means), 2)), (v_conics, (len(means), 3)),
                                     (v_depths, (len(means),)))]
        grads = projection_extension().project_backward(*ctx.saved_tensors, *ctx.settings, *upstream)
        return (*grads, None, None, None, None)


def project_gaussians(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    camera_from_world: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    config: RasterConfig,
) -> ProjectedGaussians:
    """Project Gaussians on the CPU; K [3, 3] is in OpenCV pixels (centre of pixel (i, j) at (u=j, v=i)).

    Args:
        means: [N, 3] world; quats: [N, 4] wxyz (any norm); scales: [N, 3] linear; opacities: [N];
        camera_from_world: [4, 4] OpenCV.
    Computes in float64 when `means` is float64, else in float32.
    """
    dtype = torch.float64 if means.dtype == torch.float64 else torch.float32
    means2d, conics, depths, radii = _ProjectGaussians.apply(
        *(x.to(dtype) for x in (means, quats, scales, camera_from_world, K, opacities)), width, height, config
    )
    return ProjectedGaussians(means2d=means2d, conics=conics, depths=depths, radii=radii)
