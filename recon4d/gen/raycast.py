"""Exact renderer of the procedural objects: sphere tracing of their SDFs with Lambert + Blinn-Phong shading.

This is the corpus's ground truth, independent of the Gaussian rasterizer that the encoder fits with.
Images are supersampled (`supersample`^2 rays per pixel) so silhouettes carry fractional alpha.
Output colours are straight (not premultiplied) RGB with an alpha channel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from recon4d.gen.shapes import Part, bounding_radius, object_sdf, part_local_points


@dataclass(frozen=True)
class ShadingConfig:
    """Lighting of the corpus renders (fixed in the world, so only glossy highlights depend on the view).

    Attributes:
        light: direction towards the key light (world, z up).
        ambient, diffuse: Lambert terms; specular, shininess: Blinn-Phong of glossy parts.
        max_steps, hit_epsilon: sphere tracing limits (scene units).
        supersample: rays per pixel along each axis.
    """

    light: tuple[float, float, float] = (0.45, -0.35, 0.82)
    ambient: float = 0.38
    diffuse: float = 0.62
    specular: float = 0.55
    shininess: float = 40.0
    max_steps: int = 96
    hit_epsilon: float = 2e-4
    supersample: int = 2


def camera_rays(world_from_camera: torch.Tensor, K: torch.Tensor, width: int, height: int,
                supersample: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins and unit directions [H*s, W*s, 3] of an OpenCV camera, s sub-pixel rays per pixel axis."""
    offsets = (torch.arange(supersample, dtype=torch.float32) + 0.5) / supersample - 0.5
    u = (torch.arange(width, dtype=torch.float32)[:, None] + offsets[None]).reshape(-1)
    v = (torch.arange(height, dtype=torch.float32)[:, None] + offsets[None]).reshape(-1)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    directions = torch.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], torch.ones_like(uu)], -1)
    directions = directions @ world_from_camera[:3, :3].T
    directions = directions / directions.norm(dim=-1, keepdim=True)
    return world_from_camera[:3, 3].expand_as(directions), directions


def sphere_trace(parts: list[Part], origins: torch.Tensor, directions: torch.Tensor,
                 config: ShadingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray hits [M] bool and hit points [M, 3] for rays [M, 3] against the object's SDF."""
    radius = bounding_radius(parts) + 1e-3
    # start on the bounding sphere: t0 = -b - sqrt(b^2 - c) with b = o.d, c = |o|^2 - r^2
    b = (origins * directions).sum(-1)
    disc = b * b - ((origins * origins).sum(-1) - radius**2)
    candidate = disc > 0
    t = (-b - disc.clamp_min(0).sqrt()).clamp_min(0)
    t_far = -b + disc.clamp_min(0).sqrt()
    hit = torch.zeros_like(candidate)
    active = candidate.nonzero().squeeze(1)
    for _ in range(config.max_steps):
        if active.numel() == 0:
            break
        points = origins[active] + t[active, None] * directions[active]
        distance, _ = object_sdf(parts, points)
        t[active] += distance
        done = distance < config.hit_epsilon
        hit[active[done]] = True
        escaped = t[active] > t_far[active]
        active = active[~done & ~escaped]
    return hit, origins + t[:, None] * directions


def _albedo(part: Part, local: torch.Tensor) -> torch.Tensor:
    """Pattern colour [M, 3] of a part at local points [M, 3]."""
    base = torch.tensor(part.color, dtype=local.dtype).expand(local.shape[0], 3)
    if part.pattern == "plain":
        return base
    phase = torch.sin(local * part.frequency * torch.pi)  # one stripe per 1/frequency
    if part.pattern == "striped":
        first = phase[:, 2] > 0
    else:  # checkered
        first = (phase > 0).sum(-1) % 2 == 0
    return torch.where(first[:, None], base, torch.tensor(part.secondary, dtype=local.dtype))


def shade(parts: list[Part], points: torch.Tensor, view_directions: torch.Tensor, config: ShadingConfig) -> torch.Tensor:
    """RGB [M, 3] at surface points [M, 3] seen along view_directions [M, 3] (camera to point)."""
    eps = 1e-3
    offsets = torch.eye(3) * eps
    gradient = torch.stack([object_sdf(parts, points + o)[0] - object_sdf(parts, points - o)[0] for o in offsets], -1)
    normals = gradient / gradient.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    _, owner = object_sdf(parts, points)
    light = torch.tensor(config.light)
    light = light / light.norm()
    lambert = (normals @ light).clamp_min(0)
    halfway = light - view_directions
    halfway = halfway / halfway.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    highlight = (normals * halfway).sum(-1).clamp_min(0) ** config.shininess
    color = torch.zeros_like(points)
    for index, part in enumerate(parts):
        mine = owner == index
        if not bool(mine.any()):
            continue
        albedo = _albedo(part, part_local_points(part, points[mine]))
        value = albedo * (config.ambient + config.diffuse * lambert[mine, None])
        if part.finish == "glossy":
            value = value + config.specular * highlight[mine, None]
        color[mine] = value
    return color.clamp(0, 1)


def render_rgba(parts: list[Part], world_from_camera: torch.Tensor, K: torch.Tensor, width: int, height: int,
                config: ShadingConfig = ShadingConfig()) -> torch.Tensor:
    """RGBA image [H, W, 4] in [0, 1] of an object (straight alpha)."""
    s = config.supersample
    origins, directions = camera_rays(world_from_camera, K, width, height, s)
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
    hit, points = sphere_trace(parts, origins, directions, config)
    rgb = torch.zeros_like(points)
    if bool(hit.any()):
        rgb[hit] = shade(parts, points[hit], directions[hit], config)
    alpha = hit.float()
    premultiplied = torch.cat([rgb * alpha[:, None], alpha[:, None]], -1).reshape(height, s, width, s, 4).mean((1, 3))
    alpha = premultiplied[..., 3:]
    color = torch.where(alpha > 0, premultiplied[..., :3] / alpha.clamp_min(1e-8), torch.zeros_like(premultiplied[..., :3]))
    return torch.cat([color, alpha], -1)
