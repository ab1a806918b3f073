"""Procedural multi-view scenes rendered by an exact ray caster: training and test data we may redistribute.

A scene is a few textured primitives (spheres and rotated boxes) around the origin, Lambertian-shaded by
a fixed world light (so colours are view-independent, as the static model assumes), seen by cameras on
an upper hemisphere looking at the origin (the NeRF-synthetic layout). Half the scenes have a white
background with an alpha mask (like Blender renders), half a textured backdrop sphere. Every pixel is the
exact first hit of its ray, so held-out views are ground truth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recon4d.geometry import look_at
from recon4d.nerf.data.posed import PosedImages
from recon4d.nerf.gnt.rays import image_pixels, pixel_rays


@dataclass(frozen=True)
class SceneSpec:
    """Size and layout of the generated views."""

    views: int = 16
    size: int = 48
    fov: float = 0.69  # radians, NeRF-synthetic's camera_angle_x
    radius: float = 4.0
    near: float = 2.0
    far: float = 6.0
    backdrop_radius: float = 5.5


_LIGHT = F.normalize(torch.tensor([0.4, -0.8, 0.45]), dim=0)  # OpenCV-ish world: -y is up
_AMBIENT = 0.45
_UP = torch.tensor([0.0, -1.0, 0.0])


def _texture(points: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Albedo [N, 3] at points [N, 3] from 12 texture parameters: two colours, frequencies, a pattern mix."""
    a, b, freq, phase, mix = params[0:3], params[3:6], params[6:9] * 6 + 1, params[9:12] * 6.28, params[11]
    wave = torch.sin(points * freq + phase)
    stripes = 0.5 + 0.5 * torch.sign(wave[:, 0] * wave[:, 1] * wave[:, 2])  # checker-like
    smooth = 0.5 + 0.5 * torch.sin(points @ freq + phase.sum())
    t = (mix * stripes + (1 - mix) * smooth)[:, None]
    return a * t + b * (1 - t)


def _sphere_hits(origins, directions, centre, radius):
    """Nearest positive ray parameter of a sphere, inf where missed; directions need not be unit."""
    oc = origins - centre
    a = (directions * directions).sum(-1)
    b = (oc * directions).sum(-1)
    c = (oc * oc).sum(-1) - radius**2
    disc = b * b - a * c
    root = torch.sqrt(disc.clamp(min=0))
    t0, t1 = (-b - root) / a, (-b + root) / a
    t = torch.where(t0 > 1e-4, t0, torch.where(t1 > 1e-4, t1, torch.full_like(t0, math.inf)))
    return torch.where(disc >= 0, t, torch.full_like(t, math.inf))


def _box_hits(origins, directions, centre, half, rotation):
    """(t, local normal index, sign) of the slab test of a box with axes `rotation` [3, 3] (columns)."""
    o = (origins - centre) @ rotation
    d = directions @ rotation
    d = torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t1, t2 = (-half - o) / d, (half - o) / d
    t_near, t_far = torch.minimum(t1, t2), torch.maximum(t1, t2)
    enter, axis = t_near.max(-1)
    leave = t_far.min(-1).values
    hit = (enter <= leave) & (enter > 1e-4)
    sign = -torch.sign(d.gather(-1, axis[:, None])[:, 0])
    return torch.where(hit, enter, torch.full_like(enter, math.inf)), axis, sign


def _random_rotation(g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    return q * torch.sign(torch.linalg.det(q))


def render_scene(seed: int, spec: SceneSpec = SceneSpec()) -> PosedImages:
    """Scene number `seed`: its views as PosedImages (RGB over white + alpha, or RGB with a backdrop) with the
    objects' true z-depth (inf on the white background and on the backdrop)."""
    g = torch.Generator().manual_seed(seed)
    with_backdrop = seed % 2 == 1
    objects = []
    for _ in range(int(torch.randint(2, 5, (1,), generator=g))):
        kind = "sphere" if torch.rand(1, generator=g) < 0.5 else "box"
        centre = (torch.rand(3, generator=g) - 0.5) * torch.tensor([1.2, 0.6, 1.2])
        size = 0.5 + 0.6 * torch.rand(3, generator=g)
        objects.append((kind, centre, size, _random_rotation(g), torch.rand(12, generator=g)))
    backdrop_params = torch.rand(12, generator=g)
    poses = []
    for i in range(spec.views):
        azimuth = 2 * math.pi * (i + 0.5 * torch.rand(1, generator=g).item()) / spec.views
        elevation = 0.15 + 0.9 * torch.rand(1, generator=g).item()
        eye = spec.radius * torch.tensor([math.cos(elevation) * math.cos(azimuth), -math.sin(elevation),
                                          math.cos(elevation) * math.sin(azimuth)])
        poses.append(look_at(eye, torch.zeros(3), _UP))
    poses = torch.stack(poses).float()
    focal = 0.5 * spec.size / math.tan(0.5 * spec.fov)
    intrinsics = torch.tensor([focal, focal, (spec.size - 1) / 2, (spec.size - 1) / 2]).expand(spec.views, 4).clone()
    pixels = image_pixels(spec.size, spec.size)
    images, alphas, depths = [], [], []
    for pose, K in zip(poses, intrinsics):
        origins, directions = pixel_rays(pose, K, pixels)
        best = torch.full((len(pixels),), math.inf)
        albedo = torch.ones(len(pixels), 3)
        normal = torch.zeros(len(pixels), 3)
        for kind, centre, size, rotation, params in objects:
            if kind == "sphere":
                t = _sphere_hits(origins, directions, centre, size[0])
                points = origins + t.clamp(max=1e3)[:, None] * directions
                n = F.normalize(points - centre, dim=-1)
            else:
                t, axis, sign = _box_hits(origins, directions, centre, size / 2, rotation)
                points = origins + t.clamp(max=1e3)[:, None] * directions
                n = rotation.T[axis] * sign[:, None]
            closer = t < best
            best = torch.where(closer, t, best)
            albedo = torch.where(closer[:, None], _texture(points - centre, params), albedo)
            normal = torch.where(closer[:, None], n, normal)
        hit = torch.isfinite(best)
        shade = _AMBIENT + (1 - _AMBIENT) * (normal @ -_LIGHT).clamp(min=0)
        colour = albedo * shade[:, None]
        if with_backdrop:
            t = _sphere_hits(origins, directions, torch.zeros(3), spec.backdrop_radius)
            points = origins + t[:, None] * directions
            colour = torch.where(hit[:, None], colour, 0.8 * _texture(points / spec.backdrop_radius * 2, backdrop_params))
            alpha = torch.ones(len(pixels))
        else:
            colour = torch.where(hit[:, None], colour, torch.ones_like(colour))
            alpha = hit.float()
        images.append(colour.clamp(0, 1).reshape(spec.size, spec.size, 3))
        alphas.append(alpha.reshape(spec.size, spec.size))
        depths.append(best.reshape(spec.size, spec.size))  # rays have unit z: t is the z-depth
    return PosedImages(torch.stack(images), None if with_backdrop else torch.stack(alphas), None, poses, intrinsics,
                       [f"view_{i:03d}.png" for i in range(spec.views)], spec.near, spec.far, source=f"procedural:{seed}",
                       depths=torch.stack(depths))
