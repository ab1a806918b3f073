"""Frames of a scene as outputs see them: which ones an output covers ("all", one index, or a list of
indices), how their files are named, and the frame rate of the input they came from.

Shared by every output (export, render_views, viewer), so it lives below them in io."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Union

import numpy as np

from recon4d.errors import InputError
from recon4d.io.scene import Scene4D

FrameSelection = Union[Literal["all"], int, Sequence[int]]


def frame_indices(frames: FrameSelection, num_frames: int) -> list[int]:
    """frames: "all", an index or a list of indices (negative counts from the end) -> sorted unique indices.

    Raises InputError for an index outside the scene or an unknown keyword.
    """
    if isinstance(frames, str):
        if frames != "all":
            raise InputError(f"unknown frame selection {frames!r}", hint='use "all" or a frame index')
        return list(range(num_frames))
    wanted = [frames] if isinstance(frames, int) else list(frames)
    result = set()
    for index in wanted:
        if not isinstance(index, int) or not -num_frames <= index < num_frames:
            raise InputError(
                f"frame {index!r} is outside the scene (0..{num_frames - 1})",
                hint="`recon4d info SCENE` shows the number of frames",
            )
        result.add(index % num_frames)
    return sorted(result)


STILL_SCENE_STEM = "static"  # an export's one file for every frame of a still scene (`Scene4D.is_still`)
FRAME_STEM = "frame"  # an export's file per frame: frame_0000.ply, frame_0000.png ... (`frame_file_name`)


def one_file_for_all(scene: Scene4D, frames: FrameSelection) -> bool:
    """Whether an export of `frames` writes one file (`STILL_SCENE_STEM`) instead of one per frame: all frames
    of a still scene (`Scene4D.is_still`) show the same Gaussians."""
    return isinstance(frames, str) and frames == "all" and scene.num_frames > 1 and scene.is_still


def frame_file_name(prefix: str, index: int, suffix: str) -> str:
    """'frame', 3, '.ply' -> 'frame_0003.ply' (four digits, more when the index needs them)."""
    return f"{prefix}_{index:04d}{suffix}"


def scene_fps(scene: Scene4D, default: float = 30.0) -> float:
    """Frame rate of the input frames: 1 / median timestamp step (default when timestamps are missing/flat)."""
    steps = np.diff(scene.cameras.timestamps.double().numpy())
    steps = steps[np.isfinite(steps) & (steps > 0)]
    return float(1.0 / np.median(steps)) if steps.size else default
