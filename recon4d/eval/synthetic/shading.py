"""Appearance of the synthetic primitives: value-noise texture with a soft checker, Lambertian shading."""
from __future__ import annotations

import numpy as np

from recon4d.eval.synthetic.config import SyntheticConfig
from recon4d.eval.synthetic.raycast import local_normal
from recon4d.eval.synthetic.scene import Primitive, Scene


def _value_noise(points: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Smooth trilinear value noise in [0, 1] at [N, 3] points (lattice spacing 1, periodic in table size)."""
    size = table.shape[0]
    base = np.floor(points)
    frac = points - base
    frac = frac * frac * (3.0 - 2.0 * frac)  # smoothstep: C1 across lattice cells
    i0 = base.astype(np.int64) % size
    i1 = (i0 + 1) % size
    fx, fy, fz = frac[:, 0], frac[:, 1], frac[:, 2]
    out = np.zeros(len(points))
    for cx, wx in ((i0[:, 0], 1.0 - fx), (i1[:, 0], fx)):
        for cy, wy in ((i0[:, 1], 1.0 - fy), (i1[:, 1], fy)):
            for cz, wz in ((i0[:, 2], 1.0 - fz), (i1[:, 2], fz)):
                out += wx * wy * wz * table[cx, cy, cz]
    return out


def _albedo(prim: Primitive, local_points: np.ndarray, table: np.ndarray, octaves: int) -> np.ndarray:
    """[N, 3] albedo of local surface points: multi-octave value noise mixed with a soft checker."""
    q = local_points * prim.texture_frequency + prim.texture_offset
    total = np.zeros(len(q))
    norm = 0.0
    for octave in range(octaves):
        weight = 0.55**octave
        # Each octave is shifted and rotated-by-permutation so lattice axes don't line up across octaves.
        qo = q[:, [octave % 3, (octave + 1) % 3, (octave + 2) % 3]] * (2.0**octave) + 17.3 * octave
        total += weight * _value_noise(qo, table)
        norm += weight
    noise = total / norm
    noise = np.clip((noise - 0.5) * 2.2 + 0.5, 0.0, 1.0)  # stretch contrast: fbm bunches around 0.5
    checker_cells = np.floor(local_points * prim.checker_frequency).astype(np.int64).sum(axis=1)
    checker = 0.82 + 0.18 * (checker_cells % 2)
    mix = noise[:, None]
    return (prim.palette[0] * (1.0 - mix) + prim.palette[1] * mix) * checker[:, None]


def shade(
    scene: Scene,
    object_poses: list[tuple[np.ndarray, np.ndarray]],
    origin: np.ndarray,
    dirs: np.ndarray,
    param: np.ndarray,
    index: np.ndarray,
    config: SyntheticConfig,
) -> np.ndarray:
    """[N, 3] linear RGB in [0, 1] of the hits of rays ``dirs`` (Lambertian, one distant light)."""
    light = np.asarray(config.light_direction, dtype=np.float64)
    light = light / np.linalg.norm(light)
    colour = np.zeros((len(dirs), 3))
    for k, (prim, (rotation, centre)) in enumerate(zip(scene.primitives, object_poses)):
        sel = np.nonzero(index == k)[0]
        if len(sel) == 0:
            continue
        world_points = origin + param[sel, None] * dirs[sel]
        local_points = (world_points - centre) @ rotation
        normal = local_normal(prim.kind, prim.size, local_points) @ rotation.T
        # Face the viewer (planes are seen from one side only, but be safe).
        facing = np.einsum("ij,ij->i", normal, dirs[sel]) > 0
        normal[facing] = -normal[facing]
        lambert = np.clip(normal @ light, 0.0, None)
        albedo = _albedo(prim, local_points, scene.noise_table, config.texture_octaves)
        colour[sel] = albedo * (config.ambient + (1.0 - config.ambient) * lambert)[:, None]
    return colour
