"""Pure-PyTorch references of the CPU backend, autograd for gradients; for tests (and bench) only.

`rasterize_dense`: every Gaussian against every pixel. Memory is O(H * W * N): tiny sizes only. It is
written independently of the tile backend (its own projection with explicit 3x3 matrices and its own
compositing by cumulative products) and must agree with it to float precision.

`project_gaussians_reference`: the EWA projection of `recon4d.render.projection` op for op in PyTorch,
which the C++ kernel and its hand-written backward must reproduce (outputs and autograd gradients).
"""
from __future__ import annotations

import torch

from recon4d.geometry.quaternion import rotation_from_quaternion
from recon4d.render.config import RasterConfig
from recon4d.render.projection import ALPHA_THRESHOLD, FOV_CLAMP_MARGIN, MAX_EXTENT_SIGMA, ProjectedGaussians

_ALPHA_MIN = 1.0 / 255.0
_ALPHA_MAX = 0.999
_T_MIN = 1e-4


def rasterize_dense(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    features: torch.Tensor,
    camera_from_world: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    config: RasterConfig = RasterConfig(),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns features [H, W, D] without background, expected depth [H, W] and alpha [H, W]."""
    world_to_cam_rot, world_to_cam_t = camera_from_world[:3, :3], camera_from_world[:3, 3]
    p_cam = torch.einsum("ij,nj->ni", world_to_cam_rot, means) + world_to_cam_t
    z = p_cam[:, 2]
    keep = (z > config.near_plane) & (z < config.far_plane) & (opacities >= _ALPHA_MIN)
    p_cam, z = p_cam[keep], z[keep]
    rot = rotation_from_quaternion(quats[keep])
    sigma_world = torch.einsum("nij,nj,nkj->nik", rot, scales[keep] ** 2, rot)
    sigma_cam = torch.einsum("ij,njk,lk->nil", world_to_cam_rot, sigma_world, world_to_cam_rot)

    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    # Jacobian direction clamped to 1.3x the half field of view (gsplat); pixel centres at integers here.
    half_x, half_y = 0.5 * width / fx, 0.5 * height / fy
    u_dir = torch.clamp(p_cam[:, 0] / z, min=-((cx + 0.5) / fx + 0.3 * half_x), max=(width - cx - 0.5) / fx + 0.3 * half_x)
    v_dir = torch.clamp(p_cam[:, 1] / z, min=-((cy + 0.5) / fy + 0.3 * half_y), max=(height - cy - 0.5) / fy + 0.3 * half_y)
    jac = torch.zeros(z.shape[0], 2, 3, dtype=means.dtype)
    jac[:, 0, 0] = fx / z
    jac[:, 0, 2] = -fx * u_dir / z
    jac[:, 1, 1] = fy / z
    jac[:, 1, 2] = -fy * v_dir / z
    sigma_raw = jac @ sigma_cam @ jac.transpose(1, 2)
    sigma_2d = sigma_raw + config.eps2d * torch.eye(2, dtype=means.dtype)
    det = torch.linalg.det(sigma_2d)
    opac = opacities[keep]
    if config.antialiased:  # Mip-Splatting: the filter spreads a Gaussian's energy, it does not add to it
        opac = opac * torch.sqrt((torch.linalg.det(sigma_raw) / det).clamp_min(1e-12))
    ok = det > 0
    inv_2d = torch.linalg.inv(torch.where(ok[:, None, None], sigma_2d, torch.eye(2, dtype=means.dtype)))
    center = torch.stack([fx * p_cam[:, 0] / z + cx, fy * p_cam[:, 1] / z + cy], -1)

    order = torch.argsort(z.detach(), stable=True)
    center, inv_2d, z, ok = center[order], inv_2d[order], z[order], ok[order]
    opac = opac[order]
    feats = torch.cat([features[keep][order], z[:, None]], -1)

    v, u = torch.meshgrid(torch.arange(height, dtype=means.dtype), torch.arange(width, dtype=means.dtype), indexing="ij")
    pix = torch.stack([u, v], -1).reshape(-1, 1, 2)  # [P, 1, 2]
    d = center[None] - pix  # [P, N, 2]
    mahal = torch.einsum("pni,nij,pnj->pn", d, inv_2d, d)
    raw = opac * torch.exp(-0.5 * mahal)
    alpha = torch.clamp(raw, max=_ALPHA_MAX)
    alpha = torch.where((mahal >= 0) & (alpha >= _ALPHA_MIN) & ok, alpha, torch.zeros_like(alpha))
    trans_after = torch.cumprod(1 - alpha, dim=1)
    # A pixel stops before the first Gaussian that would take its transmittance to <= 1e-4.
    blend = trans_after > _T_MIN
    blend = torch.cumprod(blend.to(alpha.dtype), dim=1)
    alpha = alpha * blend
    trans_before = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), dim=1)
    weights = alpha * trans_before
    out = (weights @ feats if feats.shape[0] else torch.zeros(pix.shape[0], feats.shape[1], dtype=means.dtype))
    acc_alpha = weights.sum(1)
    out = out.reshape(height, width, -1)
    acc_alpha = acc_alpha.reshape(height, width)
    depth = out[..., -1] / acc_alpha.clamp_min(1e-10)
    return out[..., :-1], depth, acc_alpha


def project_gaussians_reference(
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
    """`recon4d.render.projection.project_gaussians` in differentiable PyTorch (same arguments and outputs)."""
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
    rs = rotation_from_quaternion(quats) * scales[:, None, :]
    cov_cam = rotation @ (rs @ rs.transpose(1, 2)) @ rotation.T
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
