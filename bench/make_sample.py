"""Make the bundled sample clip ``data/cup.mp4`` from OpenCV's ``cup.mp4`` (BSD-3-Clause).

Takes every 2nd frame of the first 60 (30 frames, ~13.4 fps), downscales them to 320x240 with
``recon4d.io.video.read_clip`` (cv2.INTER_AREA) and encodes them with libx264 through PyAV (yuv420p, crf 20,
one thread so the bytes do not depend on the machine's core count).

Usage::

    python bench/make_sample.py [SOURCE] [OUTPUT]

SOURCE defaults to ``../shared/data/opencv-doc/cup.mp4`` (Debian package opencv-doc 4.6.0,
``/usr/share/doc/opencv-doc/examples/data/cup.mp4``), OUTPUT to ``data/cup.mp4``.
"""
from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing recon4d

from recon4d.io.video import read_clip  # noqa: E402

DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "opencv-doc" / "cup.mp4"
DEFAULT_OUTPUT = REPO / "data" / "cup.mp4"

STRIDE = 2  # every 2nd source frame
FRAMES = 30  # of the first STRIDE * FRAMES = 60
SHORT_SIDE = 240  # 640x480 -> 320x240
CRF = "20"  # x264 constant quality; visually near-lossless at this size


def make_sample(source: Path, output: Path) -> None:
    clip = read_clip(source, stride=STRIDE, max_frames=FRAMES, short_side=SHORT_SIDE)
    with av.open(str(source)) as container:
        source_rate = container.streams.video[0].average_rate  # 26777/1000 for cup.mp4
    rate = Fraction(source_rate) / STRIDE
    output.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(output), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": CRF, "preset": "slow", "threads": "1"})
        stream.width = clip.width
        stream.height = clip.height
        stream.pix_fmt = "yuv420p"
        for rgb in clip.frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    print(f"wrote {output}: {clip.num_frames} frames {clip.width}x{clip.height} at {float(rate):.4f} fps, "
          f"{output.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    source_arg = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE
    output_arg = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_OUTPUT
    make_sample(source_arg, output_arg)
