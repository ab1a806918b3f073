"""Per-frame moving-object masks as 8-bit PNGs (255 = moving, 0 = still), e.g. for compositing or training."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from recon4d.errors import InputError, SceneError
from recon4d.io.atomic import write_bytes_atomic
from recon4d.io.frames import FrameSelection, frame_file_name, frame_indices
from recon4d.io.scene import Scene4D

MASKS_ARRAY = "moving_masks"


def export_masks(scene: Scene4D, out_dir: str | os.PathLike, frames: FrameSelection = "all") -> list[Path]:
    """Write ``arrays["moving_masks"]`` [T, H, W] as ``out_dir/mask_0000.png`` ... (single channel, 0/255).

    Any non-bool mask is thresholded at 0.5 (a soft mask in [0, 1]). Raises SceneError if the scene has no
    moving masks or they do not have one [H, W] mask per frame.
    """
    import cv2

    masks = scene.arrays.get(MASKS_ARRAY)
    if masks is None:
        raise SceneError("the scene has no moving masks", hint="fit it with motion segmentation enabled")
    if masks.dim() != 3 or masks.shape[0] != scene.num_frames:
        raise SceneError(f"moving masks have shape {tuple(masks.shape)}, expected [{scene.num_frames}, H, W]")
    masks = masks.detach().cpu()
    moving = masks if masks.dtype == torch.bool else masks.float() >= 0.5
    paths = []
    for t in frame_indices(frames, scene.num_frames):
        ok, encoded = cv2.imencode(".png", moving[t].numpy().astype(np.uint8) * 255)
        if not ok:
            raise InputError(f"could not encode the mask of frame {t} as PNG")
        path = Path(out_dir) / frame_file_name("mask", t, ".png")
        write_bytes_atomic(path, encoded.tobytes())
        paths.append(path)
    return paths
