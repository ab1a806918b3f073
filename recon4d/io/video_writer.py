"""Writing frames to an H.264 mp4 with PyAV, atomically."""
from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np

from recon4d.io.atomic import atomic_path

DEFAULT_CRF = 18


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = DEFAULT_CRF) -> Path:
    """frames: [T, H, W, 3] uint8 RGB -> mp4 at `path` (sizes padded to even numbers for yuv420p)."""
    frames = np.asarray(frames)
    height, width = frames.shape[1:3]
    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=max(1, round(fps)))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path
