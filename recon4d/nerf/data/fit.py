"""A recon4d fit directory (``scene.r4d``) -> :class:`PosedImages` of its static part.

The frames are decoded again from the scene's source exactly as ``recon4d export --format cameras`` does
(same stride, frame count and short side); cameras come from the scene; pixels the fit labelled moving
(``arrays["moving_masks"]``, dilated by a few pixels to cover soft edges) are marked invalid, since the
generalizable model is static. Bounds come from the still Gaussians' depths.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from recon4d.errors import InputError
from recon4d.export.masks import MASKS_ARRAY
from recon4d.nerf.data.posed import (
    PosedImages,
    bounds_from_cameras,
    bounds_from_points,
    resize,
    resize_intrinsics,
    target_size,
)

SCENE_FILE = "scene.r4d"
#: Moving masks grow by this many pixels (at the fit's resolution) before they invalidate pixels.
MASK_DILATION_PX = 2
_MAX_BOUND_POINTS = 20000


def is_fit_dir(path: Path) -> bool:
    return (path / SCENE_FILE).is_file() or (path.is_file() and path.suffix == ".r4d")


def _valid_from_moving(moving: torch.Tensor) -> np.ndarray:
    """[T, H, W] moving masks (bool or soft) -> [T, H, W] bool valid = not (dilated) moving."""
    import cv2

    masks = (moving.float() >= 0.5).numpy().astype(np.uint8)
    kernel = np.ones((2 * MASK_DILATION_PX + 1,) * 2, np.uint8)
    return np.stack([cv2.dilate(m, kernel) == 0 for m in masks])


def read_fit(path: str | os.PathLike, short_side: int | None = None) -> PosedImages:
    """Read a fit directory (or its scene.r4d) -> the input frames with the recovered cameras."""
    from recon4d.io.scene import load_scene
    from recon4d.io.scene_frames import read_scene_frames

    scene = load_scene(path)
    cameras = scene.cameras
    frames = read_scene_frames(scene)
    if frames is None:
        raise InputError(f"cannot re-read the input frames of {path} from {scene.config.get('source')!r}",
                         hint="the fit's source video moved, changed or is not recorded")
    moving = scene.arrays.get(MASKS_ARRAY)
    valid = _valid_from_moving(moving) if moving is not None else np.ones(frames.shape[:3], bool)
    size = target_size(cameras.width, cameras.height, short_side)
    images = np.stack([resize(f.astype(np.float32) / 255.0, size) for f in frames])
    valid = np.stack([resize(v.astype(np.float32), size) >= 1.0 - 1e-6 for v in valid])
    poses = cameras.world_from_camera.detach().double().numpy()
    intrinsics = resize_intrinsics(cameras.intrinsics.detach().double().numpy(), (cameras.width, cameras.height), size)
    still = scene.gaussians.means[~scene.is_dynamic].detach().double().numpy()
    if len(still) > _MAX_BOUND_POINTS:
        still = still[np.linspace(0, len(still) - 1, _MAX_BOUND_POINTS).astype(int)]
    try:
        near, far = bounds_from_points(still, poses)
    except InputError:
        near, far = bounds_from_cameras(poses)
    return PosedImages(
        images=torch.from_numpy(images).float(), alphas=None, valid=torch.from_numpy(valid),
        world_from_camera=torch.from_numpy(poses).float(), intrinsics=torch.from_numpy(intrinsics).float(),
        names=list(cameras.frame_names), near=near, far=far, source=str(path),
    )
