"""Target rays, samples along them, and their projections into source views (pure tensor functions).

Rays are parametrised by depth along the target camera's optical axis: ``point = origin + t * direction``
with ``direction`` the camera-frame vector (x, y, 1) rotated to the world, so `t` is z-depth and the data's
near/far bounds apply directly. OpenCV conventions throughout (pixel centres at integers).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recon4d.geometry.camera import intrinsics_matrices, project_to_pixels

# Views whose projected point is within this many pixels outside the image still count (bilinear border).
_INSIDE_MARGIN_PX = 0.5
_PDF_EPS = 1e-5
_MIN_DEPTH = 1e-6  # points nearer than this to a source camera's plane are not seen by it


def pixel_rays(world_from_camera: torch.Tensor, intrinsics: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """world_from_camera [4, 4], intrinsics [4], pixels [R, 2] (u, v) -> origins [R, 3], directions [R, 3] (z-depth 1)."""
    fx, fy, cx, cy = intrinsics.unbind(-1)
    local = torch.stack([(pixels[:, 0] - cx) / fx, (pixels[:, 1] - cy) / fy, torch.ones_like(pixels[:, 0])], -1)
    directions = local @ world_from_camera[:3, :3].T
    return world_from_camera[:3, 3].expand_as(directions), directions


def image_pixels(width: int, height: int) -> torch.Tensor:
    """[H * W, 2] (u, v) of every pixel, row-major."""
    v, u = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")  # on the CPU: callers move them
    return torch.stack([u.reshape(-1), v.reshape(-1)], -1).float()


def uniform_depths(near: float, far: float, count: int, samples: int, jitter: torch.Tensor | None = None) -> torch.Tensor:
    """[count, samples] depths: bin centres of `samples` equal bins in [near, far], or stratified with
    `jitter` [count, samples] uniform in [0, 1) (training)."""
    device = None if jitter is None else jitter.device
    edges = torch.linspace(near, far, samples + 1, device=device)
    lower, width = edges[:-1], edges[1:] - edges[:-1]
    offset = torch.full((count, samples), 0.5, device=device) if jitter is None else jitter
    return lower + width * offset


def importance_depths(depths: torch.Tensor, weights: torch.Tensor, samples: int,
                      uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse-transform sampling of `samples` depths per ray from piecewise-constant weights.

    depths: [R, S] sorted sample depths, weights: [R, S] non-negative (each sample owns the interval between
    the midpoints around it), uniforms: [R, samples] in [0, 1) or None for evenly spaced quantiles.
    Returns [R, samples] depths (not sorted, no gradient).
    """
    depths, weights = depths.detach(), weights.detach() + _PDF_EPS
    mids = 0.5 * (depths[:, 1:] + depths[:, :-1])
    edges = torch.cat([depths[:, :1], mids, depths[:, -1:]], -1)  # [R, S + 1]
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), pdf.cumsum(-1)], -1).clamp(max=1.0)
    if uniforms is None:
        uniforms = ((torch.arange(samples, device=depths.device) + 0.5) / samples).expand(depths.shape[0], samples)
    index = torch.searchsorted(cdf.contiguous(), uniforms.contiguous(), right=True).clamp(1, edges.shape[-1] - 1)
    cdf_low, cdf_high = cdf.gather(-1, index - 1), cdf.gather(-1, index)
    edge_low, edge_high = edges.gather(-1, index - 1), edges.gather(-1, index)
    fraction = (uniforms - cdf_low) / (cdf_high - cdf_low).clamp(min=_PDF_EPS)
    return edge_low + fraction.clamp(0, 1) * (edge_high - edge_low)


def project_points(points: torch.Tensor, world_from_camera: torch.Tensor, intrinsics: torch.Tensor,
                   width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """points [..., 3] into V cameras ([V, 4, 4], [V, 4]) -> pixels [V, ..., 2], visible [V, ...] bool
    (in front of the camera and inside the image). Points behind a camera get pixels that are finite but
    meaningless (see `project_to_pixels`); only `visible` ones may be trusted."""
    camera_from_world = torch.linalg.inv(world_from_camera)  # general inverse: data poses need not be exactly rigid
    pixels, z = project_to_pixels(points.reshape(-1, 3), camera_from_world, intrinsics_matrices(intrinsics),
                                  min_depth=_MIN_DEPTH)
    u, v = pixels.unbind(-1)
    m = _INSIDE_MARGIN_PX
    visible = (z > _MIN_DEPTH) & (u > -m) & (u < width - 1 + m) & (v > -m) & (v < height - 1 + m)
    shape = (world_from_camera.shape[0], *points.shape[:-1])
    return pixels.reshape(*shape, 2), visible.reshape(shape)


def sample_maps(maps: torch.Tensor, pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bilinear lookup. maps [V, C, h, w] covering an image of width x height pixels (any h, w: a map at
    half resolution covers the same image), pixels [V, ..., 2] (u, v) of that image -> [V, ..., C]
    (border values outside)."""
    grid = torch.stack([(pixels[..., 0] + 0.5) / width, (pixels[..., 1] + 0.5) / height], -1) * 2 - 1
    flat = grid.reshape(grid.shape[0], 1, -1, 2)
    values = F.grid_sample(maps, flat, mode="bilinear", padding_mode="border", align_corners=False)  # [V, C, 1, N]
    return values[:, :, 0].permute(0, 2, 1).reshape(*pixels.shape[:-1], maps.shape[1])


def direction_difference(points: torch.Tensor, target_origin: torch.Tensor, source_centres: torch.Tensor) -> torch.Tensor:
    """IBRNet's relative viewing direction: points [R, S, 3], target_origin [R, 3], source_centres [V, 3]
    -> [R, S, V, 4] (unit direction of (to target - to source), cosine between the two)."""
    to_target = F.normalize(target_origin[:, None] - points, dim=-1)[:, :, None]  # [R, S, 1, 3]
    to_source = F.normalize(source_centres[None, None] - points[:, :, None], dim=-1)  # [R, S, V, 3]
    difference = to_target - to_source
    return torch.cat([F.normalize(difference, dim=-1, eps=1e-6), (to_target * to_source).sum(-1, keepdim=True)], -1)


def nearest_views(target: torch.Tensor, sources: torch.Tensor, count: int, exclude_same: bool = True) -> torch.Tensor:
    """Indices [min(count, V)] of the source cameras ([V, 4, 4]) closest to the target camera ([4, 4]).

    Distance = angle between optical axes (radians) + centre distance / mean centre distance to the
    target, so both orbiting and forward-facing captures rank sensibly. With `exclude_same`, a source at
    the target's exact pose (the target itself) is skipped.
    """
    axes = F.normalize(sources[:, :3, 2], dim=-1)
    angle = torch.acos((axes @ F.normalize(target[:3, 2], dim=0)).clamp(-1, 1))
    distance = (sources[:, :3, 3] - target[:3, 3]).norm(dim=-1)
    score = angle + distance / distance.mean().clamp(min=1e-9)
    if exclude_same:
        same = (distance < 1e-6) & (angle < 1e-4)
        score = torch.where(same, torch.full_like(score, float("inf")), score)
    order = torch.argsort(score)
    keep = int(torch.isfinite(score).sum())
    return order[: min(count, keep)]
