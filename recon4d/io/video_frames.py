"""Rules both clip readers (video files in :mod:`recon4d.io.video_decode`, image folders in
:mod:`recon4d.io.image_folder`) apply to the frames they keep: refuse sources too small to reconstruct,
resize every frame to the requested short side, compare times with a tolerance, and require 2 frames.

Sizes are ``(width, height)`` in pixels; images are ``[H, W, 3]`` uint8 RGB.
"""
from __future__ import annotations

import math
import sys

import cv2
import numpy as np

from recon4d.errors import VideoError

#: Smallest short side (pixels) of a source that can be reconstructed: below it, flow and depth have
#: nothing to work with, and upscaling only invents pixels.
MIN_SOURCE_SIDE: int = 16

#: A frame whose timestamp is within this many seconds before ``start_s`` still counts as "at start_s":
#: container timestamps are rationals rounded to the time base, and users type decimal seconds.
TIME_TOLERANCE_S = 1e-6


def check_source_size(width: int, height: int, short_side: int | None, name: str) -> None:
    """Refuse sources too small to reconstruct; say so (one stderr line) when frames are upscaled."""
    if min(width, height) < MIN_SOURCE_SIDE:
        raise VideoError(f"{name} is only {width}x{height} pixels",
                         f"recon4d needs at least {MIN_SOURCE_SIDE} pixels on the short side")
    if short_side is not None and short_side > min(width, height):
        print(f"recon4d: warning: upscaling {width}x{height} frames to a short side of {short_side} px "
              "adds no detail; a smaller --short-side fits faster", file=sys.stderr)


def target_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) after scaling so that min(width, height) == short_side; round half up."""
    if short_side is None:
        return width, height
    scale = short_side / min(width, height)
    if width <= height:
        return short_side, max(1, int(math.floor(height * scale + 0.5)))
    return max(1, int(math.floor(width * scale + 0.5))), short_side


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``[H, W, 3]`` to ``size`` = (width, height); INTER_AREA to shrink, INTER_LINEAR to grow."""
    height, width = image.shape[:2]
    if (width, height) == size:
        return image
    shrinking = size[0] * size[1] < width * height
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def check_frame_count(count: int, name: str, start_s: object, end_s: object) -> None:
    """Refuse a selection of fewer than 2 frames, saying whether the time range or the source is to blame."""
    if count == 0:
        if start_s is not None or end_s is not None:
            raise VideoError(
                f"no frames of {name} between start_s={start_s} and end_s={end_s}",
                "check the time range against the video's duration (recon4d probe)",
            )
        raise VideoError(f"no decodable frames in {name}", "the file may be corrupt; re-encode it, e.g. to H.264 mp4")
    if count == 1:
        raise VideoError(
            f"only 1 frame selected from {name}; need at least 2",
            "use a longer video or time range, a smaller stride, or a folder with several images",
        )
