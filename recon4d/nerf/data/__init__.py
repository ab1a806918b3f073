"""Posed image sets for the `recon4d nerf` renderers.

`load_posed_images(path, short_side=None)` reads Blender / instant-ngp / nerfstudio ``transforms.json``
(also the procedural corpus of `recon4d gen`), COLMAP models (text or binary) and recon4d fit folders into
one :class:`PosedImages` in recon4d's camera conventions (OpenCV axes, ``world_from_camera``, intrinsics
fx fy cx cy with pixel centres at integers). Conversions live in :mod:`recon4d.nerf.data.conventions`.
"""
from recon4d.nerf.data.load import FORMATS, detect_format, load_posed_images
from recon4d.nerf.data.posed import PosedImages, holdout_split
from recon4d.nerf.data.transforms import write_transforms

__all__ = ["FORMATS", "PosedImages", "detect_format", "holdout_split", "load_posed_images", "write_transforms"]
