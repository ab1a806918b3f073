"""Gaussian splat files that common viewers and trainers read: the 3DGS PLY, SPZ and compressed PLY.

The 3DGS PLY (binary little endian, one ``vertex`` element) stores each Gaussian as the *pre-activation*
parameters of the original 3D Gaussian Splatting code:

==============  =====================================================
property        value
==============  =====================================================
x y z           mean (world units)
nx ny nz        0 (unused, kept because many readers expect them)
f_dc_0..2       (rgb - 0.5) / SH_C0, the degree-0 spherical harmonic
f_rest_0..44    0 (view-independent colour: SH degrees 1-3 are zero)
opacity         logit(opacity)
scale_0..2      log(scale)
rot_0..3        unit quaternion (w, x, y, z)
==============  =====================================================

Coordinates are recon4d's world frame unchanged (the cameras' OpenCV world). SPZ (Niantic) and the
PlayCanvas compressed PLY are written through gsply, which quantises (SPZ: positions to 2^-12 units,
colours and opacities to 8 bits; compressed PLY: 11/10/11-bit chunks).

Example:
    >>> from recon4d import load_scene                       # doctest: +SKIP
    >>> export_ply(load_scene("out"), "out/splats", frames=0)  # doctest: +SKIP
    [PosixPath('out/splats/frame_0000.ply')]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from recon4d.errors import BackendError, InputError, SceneError
from recon4d.io.atomic import atomic_path, write_bytes_atomic
from recon4d.io.frames import (FRAME_STEM, STILL_SCENE_STEM, FrameSelection, frame_file_name, frame_indices,
                               one_file_for_all)
from recon4d.io.scene import Gaussians, Scene4D

SH_C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi)); rgb = 0.5 + SH_C0 * f_dc
NUM_SH_REST = 45  # SH degrees 1..3: 15 coefficients x 3 colour channels, all zero here

SplatFormat = Literal["ply", "spz", "compressed_ply"]
_SUFFIX = {"ply": ".ply", "spz": ".spz", "compressed_ply": ".compressed.ply"}
PLY_PROPERTIES = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    + [f"f_rest_{i}" for i in range(NUM_SH_REST)]
    + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
)


@dataclass(frozen=True)
class PlyExportConfig:
    """Clamps that keep the logit/log transforms finite.

    Attributes:
        opacity_eps: opacities are clamped to [eps, 1 - eps] before the logit (1e-6 -> |logit| <= 13.8).
        min_scale: scales are clamped below before the log (world units).
    """

    opacity_eps: float = 1e-6
    min_scale: float = 1e-12


def to_ply_arrays(gaussians: Gaussians, config: PlyExportConfig | None = None) -> dict[str, np.ndarray]:
    """Activated Gaussians -> 3DGS pre-activation arrays (float32, computed in float64).

    Returns a dict with means [N, 3], sh0 [N, 3] (f_dc), opacities [N] (logit), scales [N, 3] (log),
    quats [N, 4] (unit w, x, y, z). Raises SceneError if colours are not RGB.
    """
    config = config or PlyExportConfig()
    if gaussians.colors.dim() != 2 or gaussians.colors.shape[1] != 3:
        raise SceneError(
            f"splat export needs RGB colours [N, 3], the scene has {tuple(gaussians.colors.shape)}",
            hint="this scene stores other features per Gaussian; render it instead",
        )

    def f64(tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().cpu().to(torch.float64).numpy()

    opacities = np.clip(f64(gaussians.opacities), config.opacity_eps, 1.0 - config.opacity_eps)
    quats = f64(gaussians.quats)
    norms = np.linalg.norm(quats, axis=-1, keepdims=True)
    # A zero quaternion is no rotation at all; export it as the identity rather than NaN.
    quats = np.where(norms > 0, quats / np.where(norms > 0, norms, 1.0), np.array([1.0, 0.0, 0.0, 0.0]))
    arrays = {
        "means": f64(gaussians.means),
        "sh0": (f64(gaussians.colors) - 0.5) / SH_C0,
        "opacities": np.log(opacities) - np.log1p(-opacities),
        "scales": np.log(np.maximum(f64(gaussians.scales), config.min_scale)),
        "quats": quats,
    }
    return {name: value.astype(np.float32) for name, value in arrays.items()}


def from_ply_arrays(means, sh0, opacities, scales, quats) -> Gaussians:
    """3DGS pre-activation arrays (see `to_ply_arrays`) -> activated Gaussians (float32, computed in float64)."""

    def f64(array) -> np.ndarray:
        return np.asarray(array, dtype=np.float64)

    quats = f64(quats)
    quats = quats / np.maximum(np.linalg.norm(quats, axis=-1, keepdims=True), 1e-30)
    activated = [
        f64(means),
        quats,
        np.exp(f64(scales)),
        1.0 / (1.0 + np.exp(-f64(opacities))),
        0.5 + SH_C0 * f64(sh0),
    ]
    return Gaussians(*(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in activated))


def write_3dgs_ply(gaussians: Gaussians, path: str | os.PathLike, config: PlyExportConfig | None = None) -> Path:
    """Write `gaussians` as a binary little-endian 3DGS PLY at `path` (atomically, with plyfile)."""
    from plyfile import PlyData, PlyElement

    arrays = to_ply_arrays(gaussians, config)
    n = arrays["means"].shape[0]
    vertex = np.zeros(n, dtype=[(name, "<f4") for name in PLY_PROPERTIES])
    columns = {
        "x": arrays["means"][:, 0],
        "y": arrays["means"][:, 1],
        "z": arrays["means"][:, 2],
        "opacity": arrays["opacities"],
    }
    columns.update({f"f_dc_{i}": arrays["sh0"][:, i] for i in range(3)})
    columns.update({f"scale_{i}": arrays["scales"][:, i] for i in range(3)})
    columns.update({f"rot_{i}": arrays["quats"][:, i] for i in range(4)})
    for name, column in columns.items():
        vertex[name] = column
    path = Path(path)
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(str(tmp))
    return path


def read_3dgs_ply(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS PLY (any byte order, extra properties ignored) -> activated Gaussians (float32).

    Raises InputError for a missing file or a PLY without the 3DGS properties.
    """
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no PLY file at {path}")
    try:
        vertex = PlyData.read(str(path))["vertex"]
    except Exception as exc:  # plyfile raises several types for malformed headers and truncated data
        raise InputError(f"cannot read {path} as a PLY file: {exc}") from exc
    names = set(vertex.data.dtype.names or ())
    required = ["x", "y", "z", "opacity"] + [f"f_dc_{i}" for i in range(3)]
    required += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    missing = [name for name in required if name not in names]
    if missing:
        raise InputError(f"{path} is not a 3DGS PLY: it lacks {', '.join(missing)}")

    def stack(*columns: str) -> np.ndarray:
        return np.stack([vertex[c] for c in columns], -1)

    return from_ply_arrays(
        means=stack("x", "y", "z"),
        sh0=stack("f_dc_0", "f_dc_1", "f_dc_2"),
        opacities=np.asarray(vertex["opacity"]),
        scales=stack("scale_0", "scale_1", "scale_2"),
        quats=stack("rot_0", "rot_1", "rot_2", "rot_3"),
    )


def _gsdata(gaussians: Gaussians, config: PlyExportConfig | None):
    try:
        import gsply
    except ImportError as exc:
        raise BackendError("SPZ and compressed PLY export need gsply", hint="pip install gsply") from exc
    arrays = to_ply_arrays(gaussians, config)
    n = arrays["means"].shape[0]
    return gsply, gsply.GSData(
        means=arrays["means"],
        scales=arrays["scales"],
        quats=arrays["quats"],
        opacities=arrays["opacities"],
        sh0=arrays["sh0"],
        shN=np.zeros((n, 0, 3), np.float32),
    )


def write_spz(gaussians: Gaussians, path: str | os.PathLike, config: PlyExportConfig | None = None) -> Path:
    """Write `gaussians` as a Niantic SPZ file (gzip container, version 3) through gsply, atomically."""
    gsply, data = _gsdata(gaussians, config)
    path = Path(path)
    with atomic_path(path) as tmp:
        gsply.write_spz(tmp, data, version=3)
    return path


def write_compressed_ply(gaussians: Gaussians, path: str | os.PathLike, config: PlyExportConfig | None = None) -> Path:
    """Write `gaussians` as a PlayCanvas/SuperSplat compressed PLY through gsply, atomically."""
    gsply, data = _gsdata(gaussians, config)
    # compress_to_bytes, not plywrite: plywrite renames a path that lacks the .compressed.ply suffix.
    write_bytes_atomic(path, gsply.compress_to_bytes(data))
    return Path(path)


_WRITERS = {"ply": write_3dgs_ply, "spz": write_spz, "compressed_ply": write_compressed_ply}


def export_ply(
    scene: Scene4D,
    out_dir: str | os.PathLike,
    frames: FrameSelection = "all",
    format: SplatFormat = "ply",
    config: PlyExportConfig | None = None,
) -> list[Path]:
    """Write the Gaussians of each selected frame (`scene.gaussians_at(t)`) as one splat file per frame; all
    frames of a still scene (`Scene4D.is_still`: the same Gaussians at every time, e.g. a walk-around) as one
    file, ``static.ply``, which replaces that folder's per-frame files of the format.

    Args:
        scene: the fitted scene.
        out_dir: folder for ``frame_0000.ply`` ... (``.spz``, ``.compressed.ply``) or ``static.ply``; created
            if needed.
        frames: "all", one frame index, or a list of indices.
        format: "ply" (standard 3DGS PLY), "spz" or "compressed_ply" (both through gsply).
        config: clamps of the logit/log transforms.
    Returns:
        The written paths, in frame order.
    """
    if format not in _WRITERS:
        raise InputError(f"unknown splat format {format!r}", hint=f"use one of {', '.join(_WRITERS)}")
    out_dir = Path(out_dir)
    if one_file_for_all(scene, frames):
        path = _WRITERS[format](scene.gaussians_at(0), out_dir / f"{STILL_SCENE_STEM}{_SUFFIX[format]}", config)
        for t in range(scene.num_frames):
            (out_dir / frame_file_name(FRAME_STEM, t, _SUFFIX[format])).unlink(missing_ok=True)
        return [path]
    paths = []
    for t in frame_indices(frames, scene.num_frames):
        path = out_dir / frame_file_name(FRAME_STEM, t, _SUFFIX[format])
        paths.append(_WRITERS[format](scene.gaussians_at(t), path, config))
    return paths
