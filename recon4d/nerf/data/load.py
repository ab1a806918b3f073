"""One entry point for every posed-image format: :func:`load_posed_images`."""
from __future__ import annotations

import os
from pathlib import Path

from recon4d.errors import InputError
from recon4d.nerf.data.colmap import find_model, read_colmap
from recon4d.nerf.data.fit import is_fit_dir, read_fit
from recon4d.nerf.data.posed import PosedImages
from recon4d.nerf.data.transforms import find_transforms, read_transforms

FORMATS = ("transforms", "colmap", "fit")


def detect_format(path: Path) -> str:
    """'fit' (scene.r4d), 'transforms' (transforms*.json: Blender, instant-ngp, nerfstudio, the gen corpus)
    or 'colmap' (cameras.txt/.bin in the folder, sparse/0 or sparse)."""
    if is_fit_dir(path):
        return "fit"
    if find_transforms(path) is not None:
        return "transforms"
    if path.is_dir() and find_model(path) is not None:
        return "colmap"
    if not path.exists():
        raise InputError(f"no such data set: {path}")
    raise InputError(f"{path} is not a posed image set",
                     hint="expected a transforms.json, a COLMAP model with images/, or a recon4d fit folder")


def load_posed_images(path: str | os.PathLike, short_side: int | None = None, background: float | None = None,
                      fmt: str | None = None) -> PosedImages:
    """Read any supported posed image set.

    Args:
        path: transforms JSON or its folder, COLMAP dataset folder, or recon4d fit folder / scene.r4d.
        short_side: resize images so the shorter side is this many pixels (intrinsics follow).
        background: grey level RGBA images are composited over (None: white for transforms.json, black for
            COLMAP).
        fmt: force one of FORMATS instead of detecting it.
    Example:
        >>> lego = load_posed_images("../shared/data/nerf-synthetic-lego", short_side=100)   # doctest: +SKIP
        >>> lego.images.shape, lego.near, lego.far                                           # doctest: +SKIP
        (torch.Size([34, 100, 100, 3]), 2.0..., 6.0...)
    """
    path = Path(path).expanduser()
    fmt = fmt or detect_format(path)
    if fmt == "transforms":
        return read_transforms(path, short_side=short_side, background=background)
    if fmt == "colmap":
        return read_colmap(path, short_side=short_side, background=0.0 if background is None else background)
    if fmt == "fit":
        return read_fit(path, short_side=short_side)
    raise InputError(f"unknown data format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
