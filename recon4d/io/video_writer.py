"""Writing frames to an H.264 mp4 with PyAV, atomically."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from recon4d.io.atomic import atomic_path

DEFAULT_CRF = 18
# Frame rates are stored as the nearest fraction with at most this denominator: a clip decoded at NTSC
# 30000/1001 fps (29.97002997...) keeps exactly that rate, 29.97 -> 2997/100, 12.5 -> 25/2. Rounding to an
# integer made 29.97 fps clips play 0.1% fast and drift from their audio and timestamps.
MAX_FPS_DENOMINATOR = 1001


def frame_rate(fps: float) -> Fraction:
    """fps (> 0) -> the nearest fraction with a denominator <= MAX_FPS_DENOMINATOR (30000/1001 stays 30000/1001)."""
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return Fraction(fps).limit_denominator(MAX_FPS_DENOMINATOR)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = DEFAULT_CRF,
                pix_fmt: str = "yuv420p", threads: int | None = None) -> Path:
    """frames: [T, H, W, 3] uint8 RGB -> mp4 at `path`, at `fps` exactly as a fraction (see `frame_rate`).

    yuv420p (the default, what every player decodes) needs even sizes: odd ones are padded by repeating the
    last row/column. Pass pix_fmt="yuv444p" to keep odd sizes as they are. `threads`: x264's encoder threads
    (default: its own choice). With several, the encoded frames differ more from run to run on a busy
    machine. Even `threads=1` does not repeat exactly (stop 39: three encodes of the same 450 frames decoded
    to three different frame sets), so inputs that benchmarks compare are encoded once and reused.
    """
    frames = np.asarray(frames)
    if pix_fmt == "yuv420p":
        height, width = frames.shape[1:3]
        pad_h, pad_w = height % 2, width % 2
        if pad_h or pad_w:
            frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=frame_rate(fps))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = pix_fmt
            stream.options = {"crf": str(crf), **({} if threads is None else {"threads": str(threads)})}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path
