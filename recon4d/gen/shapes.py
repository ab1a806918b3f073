"""Signed distance functions of the corpus primitives and of objects made of them.

An object is a list of parts; each part is one primitive with its own pose, colour, pattern and finish.
Coordinates: world z is up; a primitive is centred at its local origin with its axis along local z.
The SDFs are exact (sphere, box, cylinder, cone, torus, capsule) or a lower bound of the distance
(pyramid: max of its face planes), so sphere tracing converges onto the exact surface either way.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

PRIMITIVES = ("cube", "sphere", "cylinder", "cone", "torus", "pyramid", "capsule")
PATTERNS = ("plain", "striped", "checkered")
FINISHES = ("matte", "glossy")


@dataclass
class Part:
    """One primitive of an object.

    Attributes:
        primitive: one of PRIMITIVES.
        size: primitive parameters (cube: half extents x, y, z; sphere: radius; cylinder/cone/capsule/pyramid:
            radius or half base, half height; torus: major radius, minor radius).
        position: [3] centre in the object frame.
        rotation: [3, 3] row-major object_from_part rotation.
        color: [3] RGB in [0, 1]; secondary: [3] the other colour of stripes/checks.
        pattern, finish: one of PATTERNS, FINISHES.
        frequency: stripes/checks per unit length.
    """

    primitive: str
    size: list[float]
    position: list[float]
    color: list[float]
    pattern: str = "plain"
    finish: str = "matte"
    rotation: list[list[float]] = field(default_factory=lambda: [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    secondary: list[float] = field(default_factory=lambda: [0.95, 0.95, 0.95])
    frequency: float = 6.0

    def to_json(self) -> dict:
        return asdict(self)


def _length(x: torch.Tensor) -> torch.Tensor:
    return x.norm(dim=-1)


def sdf_primitive(primitive: str, size: list[float], p: torch.Tensor) -> torch.Tensor:
    """Signed distance [M] of local points p [M, 3] to a primitive (negative inside)."""
    x, y, z = p.unbind(-1)
    if primitive == "sphere":
        return _length(p) - size[0]
    if primitive == "cube":
        q = p.abs() - torch.tensor(size[:3], dtype=p.dtype)
        return _length(q.clamp_min(0)) + q.amax(-1).clamp_max(0)
    radial = torch.stack([x, y], -1).norm(dim=-1)
    if primitive == "cylinder":
        d = torch.stack([radial - size[0], z.abs() - size[1]], -1)
        return d.amax(-1).clamp_max(0) + _length(d.clamp_min(0))
    if primitive == "capsule":
        return _length(p - torch.stack([torch.zeros_like(z), torch.zeros_like(z), z.clamp(-size[1], size[1])], -1)) - size[0]
    if primitive == "torus":
        return _length(torch.stack([radial - size[0], z], -1)) - size[1]
    if primitive == "cone":
        return _capped_cone(radial, z, size[1], size[0], 0.0)
    if primitive == "pyramid":
        half_base, half_height = size
        # side planes through the base edges and the apex: normal (2h, 0, b) / |.|, offset at the base edge
        norm = (4 * half_height**2 + half_base**2) ** 0.5
        sides = torch.stack([x, -x, y, -y], -1) * (2 * half_height) + (z + half_height)[:, None] * half_base
        sides = (sides - 2 * half_height * half_base) / norm
        return torch.cat([sides, (-z - half_height)[:, None]], -1).amax(-1)
    raise ValueError(f"unknown primitive {primitive!r}")


def _capped_cone(q_x: torch.Tensor, q_y: torch.Tensor, h: float, r1: float, r2: float) -> torch.Tensor:
    """Exact distance to a capped cone of half height h, radius r1 at -h and r2 at +h (Quilez's formula)."""
    k1 = torch.tensor([r2, h], dtype=q_x.dtype)
    k2 = torch.tensor([r2 - r1, 2 * h], dtype=q_x.dtype)
    q = torch.stack([q_x, q_y], -1)
    ca = torch.stack([q_x - torch.minimum(q_x, torch.where(q_y < 0, r1, r2)), q_y.abs() - h], -1)
    along = ((k1 - q) @ k2 / (k2 @ k2)).clamp(0, 1)
    cb = q - k1 + k2 * along[:, None]
    sign = torch.where((cb[:, 0] < 0) & (ca[:, 1] < 0), -1.0, 1.0)
    return sign * torch.minimum((ca * ca).sum(-1), (cb * cb).sum(-1)).sqrt()


def part_local_points(part: Part, points: torch.Tensor) -> torch.Tensor:
    """Object-frame points [M, 3] -> the part's local frame [M, 3]."""
    rotation = torch.tensor(part.rotation, dtype=points.dtype)
    return (points - torch.tensor(part.position, dtype=points.dtype)) @ rotation


def object_sdf(parts: list[Part], points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Union SDF [M] of the parts at object-frame points [M, 3], and the index [M] of the nearest part."""
    distances = torch.stack([sdf_primitive(p.primitive, p.size, part_local_points(p, points)) for p in parts], -1)
    value, index = distances.min(-1)
    return value, index


def bounding_radius(parts: list[Part]) -> float:
    """A radius about the object origin that contains every part (for ray bounds)."""
    radius = 0.0
    for part in parts:
        extent = (sum(s * s for s in part.size[:3]) ** 0.5) if part.primitive == "cube" else 1.5 * sum(part.size[:2])
        radius = max(radius, sum(c * c for c in part.position) ** 0.5 + extent)
    return radius
