"""write_video: exact fractional frame rates, even-size padding, odd sizes kept with yuv444p."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from recon4d.io.video import read_clip
from recon4d.io.video_writer import frame_rate, write_video


def _frames(count: int, height: int, width: int) -> np.ndarray:
    ramp = np.linspace(0, 255, count).astype(np.uint8)
    return np.broadcast_to(ramp[:, None, None, None], (count, height, width, 3)).copy()


def _stream_rate(path: Path) -> tuple[Fraction, int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return Fraction(stream.average_rate), frames, stream.codec_context.width


@pytest.mark.parametrize("fps, expected", [(30000 / 1001, Fraction(30000, 1001)), (24000 / 1001, Fraction(24000, 1001)),
                                           (29.97, Fraction(2997, 100)), (12.5, Fraction(25, 2)), (30.0, Fraction(30))])
def test_frame_rate_keeps_ntsc_and_fractional_rates(fps: float, expected: Fraction) -> None:
    assert frame_rate(fps) == expected


@pytest.mark.parametrize("fps", [29.97, 30000 / 1001])
def test_29_97_fps_is_written_and_read_back_as_29_97(tmp_path: Path, fps: float) -> None:
    path = write_video(tmp_path / "ntsc.mp4", _frames(12, 32, 48), fps=fps)
    rate, count, width = _stream_rate(path)
    assert count == 12 and width == 48
    assert abs(float(rate) - fps) < 1e-6  # was exactly 30 when the rate was rounded to an integer
    assert abs(read_clip(path).fps - fps) < 1e-6


def test_odd_sizes_are_padded_for_yuv420p_and_kept_for_yuv444p(tmp_path: Path) -> None:
    frames = _frames(3, 31, 45)
    padded = read_clip(write_video(tmp_path / "420.mp4", frames, fps=10))
    assert padded.frames.shape == (3, 32, 46, 3)
    kept = read_clip(write_video(tmp_path / "444.mp4", frames, fps=10, pix_fmt="yuv444p"))
    assert kept.frames.shape == (3, 31, 45, 3)
    assert np.abs(kept.frames.astype(int) - frames.astype(int)).max() <= 3
