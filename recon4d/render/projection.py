"""EWA projection of 3D Gaussians to screen-space conics, in differentiable PyTorch.

Follows gsplat's perspective projection (the Jacobian is evaluated at the camera-space mean with x/z and
y/z clamped to 1.3x the field of view, the 2D covariance gets `eps2d` on its diagonal, the footprint
radius is opacity-aware), so that the CPU backend and gsplat draw the same image. Gradients reach the
means, quaternions, scales, opacities, the pose and the intrinsics through autograd.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from recon4d.geometry.quaternion import rotation_from_quaternion
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


def covariance_3d(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """quats: [N, 4] wxyz (any norm); scales: [N, 3] linear -> covariances R S S^T R^T [N, 3, 3]."""
    rs = rotation_from_quaternion(quats) * scales[:, None, :]
    return rs @ rs.transpose(1, 2)


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
    """Project Gaussians; K [3, 3] is in OpenCV pixels (centre of pixel (i, j) at (u=j, v=i)).

    Args:
        means: [N, 3] world; quats: [N, 4] wxyz; scales: [N, 3]; opacities: [N];
        camera_from_world: [4, 4] OpenCV.
    """
    rotation = camera_from_world[:3, :3]
    means_cam = means @ rotation.T + camera_from_world[:3, 3]
    x, y, z = means_cam.unbind(-1)
    in_depth = (z > config.near_plane) & (z < config.far_plane)
    z = torch.where(in_depth, z, torch.ones_like(z))  # keeps culled rows finite; they are masked below

    fx, fy = K[0, 0], K[1, 1]
    cx, cy = K[0, 2] + 0.5, K[1, 2] + 0.5  # to gsplat's frame, where pixel centres sit at +0.5
    tan_fov_x, tan_fov_y = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + FOV_CLAMP_MARGIN * tan_fov_x
    lim_x_neg = cx / fx + FOV_CLAMP_MARGIN * tan_fov_x
    lim_y_pos = (height - cy) / fy + FOV_CLAMP_MARGIN * tan_fov_y
    lim_y_neg = cy / fy + FOV_CLAMP_MARGIN * tan_fov_y
    tx = z * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x / z))
    ty = z * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y / z))
    zeros = torch.zeros_like(z)
    jacobian = torch.stack(
        [torch.stack([fx / z, zeros, -fx * tx / z**2], -1), torch.stack([zeros, fy / z, -fy * ty / z**2], -1)], -2
    )  # [N, 2, 3]
    cov_cam = rotation @ covariance_3d(quats, scales) @ rotation.T
    cov2d = jacobian @ cov_cam @ jacobian.transpose(1, 2)
    a = cov2d[:, 0, 0] + config.eps2d
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + config.eps2d
    det = a * c - b * b
    valid = in_depth & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], -1)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)

    with torch.no_grad():
        opacity = opacities.detach()
        valid = valid & (opacity >= ALPHA_THRESHOLD)
        extent = torch.sqrt(2.0 * torch.log(opacity.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
        extent = extent.clamp(max=MAX_EXTENT_SIGMA)
        radius_x = torch.ceil(extent * torch.sqrt(a.detach().clamp_min(0)))
        radius_y = torch.ceil(extent * torch.sqrt(c.detach().clamp_min(0)))
        mx, my = means2d.detach().unbind(-1)
        on_screen = (mx + radius_x > 0) & (mx - radius_x < width) & (my + radius_y > 0) & (my - radius_y < height)
        valid = valid & on_screen & ((radius_x > 0) | (radius_y > 0))
        radii = torch.stack([radius_x, radius_y], -1).nan_to_num(0).to(torch.int32) * valid[:, None]
    return ProjectedGaussians(means2d=means2d, conics=conics, depths=means_cam[:, 2], radii=radii)
