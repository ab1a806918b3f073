"""The input frames of a fitted scene, read again from its source: one definition for every command.

A scene stores where its frames came from (``config["source"]``, ``config["stride"]``) and which source frames
it used (``arrays["source_indices"]``); exports of cameras with images, track overlays, the viewer's input
frames and the neural renderers' real-data steps all need those pixels again.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from recon4d.errors import Recon4DError
from recon4d.io.scene import Scene4D
from recon4d.io.video import read_clip


def read_scene_frames(scene: Scene4D) -> np.ndarray | None:
    """The scene's input frames [T, H, W, 3] uint8 at the scene's size, or None when the source is gone,
    unreadable, or no longer decodes to the scene's frames (count, size, source frame indices)."""
    source = scene.config.get("source")
    if not source or not Path(source).exists():
        return None
    width, height = scene.cameras.width, scene.cameras.height
    try:
        # The fit's config tree (`input.stride`), or the flat key of a scene written by an earlier version.
        stride = (scene.config.get("input") or {}).get("stride") or scene.config.get("stride") or 1
        clip = read_clip(source, stride=int(stride), max_frames=scene.num_frames,
                         short_side=min(width, height))
    except Recon4DError:
        return None
    if clip.frames.shape != (scene.num_frames, height, width, 3):
        return None
    indices = scene.arrays.get("source_indices")
    if indices is not None and not np.array_equal(np.asarray(indices), clip.source_indices):
        return None
    return clip.frames
