"""Video containers through PyAV (FFmpeg): open a file, read its stream's rate, duration, start time and
orientation metadata, and decode the frames a selection asks for.

Orientation: FFmpeg's display matrix attached to decoded frames, with the stream's legacy ``rotate`` tag as
a fallback, so frames come out as a player shows them. Times are seconds from the stream's start time.
PyAV (>= 13) keeps FFmpeg's log off by default; every failure here is raised as one
:class:`recon4d.errors.VideoError` line.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from recon4d.errors import VideoError
from recon4d.io.video_frames import (
    TIME_TOLERANCE_S,
    check_source_size,
    resize,
    target_size,
)


@dataclass(frozen=True)
class Orientation:
    """How to turn a coded picture into the displayed one: ``quarter_turns`` counter-clockwise quarter
    turns (``np.rot90``), then a left-right mirror when ``mirror``. These two cover all 8 orientations."""

    quarter_turns: int = 0
    mirror: bool = False

    def apply(self, image: np.ndarray) -> np.ndarray:
        """``[H, W, C]`` coded picture -> displayed picture (a view; H and W swap for odd turns)."""
        out = np.rot90(image, self.quarter_turns) if self.quarter_turns % 4 else image
        return out[:, ::-1] if self.mirror else out

    @property
    def swaps_axes(self) -> bool:
        return self.quarter_turns % 2 == 1


@dataclass
class VideoSelection:
    """Frames kept from one decoding pass, with their times (s) and source frame numbers."""

    frames: list[np.ndarray]
    timestamps: list[float]
    indices: list[int]
    source_fps: float


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (FFmpeg messages may span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


# ----------------------------------------------------------------------------------------------------
# Containers and streams
# ----------------------------------------------------------------------------------------------------


def open_container(source: Path) -> "av.container.InputContainer":
    try:
        try:
            # Broken tag bytes must not make a decodable video unreadable.
            return av.open(str(source), mode="r", metadata_errors="replace")
        except TypeError:  # PyAV >= 19 has no such option
            return av.open(str(source), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise VideoError(
            f"not a readable video: {source.name} ({one_line(exc)})",
            "pass an mp4/mov/avi/webm/mkv/gif file or a folder of images",
        ) from exc


def video_stream(container: "av.container.InputContainer", source: Path) -> "av.video.stream.VideoStream":
    if not container.streams.video:
        raise VideoError(f"no video stream in {source.name}", "pass a file that contains video, not only audio or data")
    return container.streams.video[0]


def stream_fps(stream: "av.video.stream.VideoStream") -> float:
    """Average frame rate; falls back to FFmpeg's guess. 0 when neither is known."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and float(rate) > 0:
            return float(rate)
    return 0.0


def stream_duration_s(stream: "av.video.stream.VideoStream", container: "av.container.InputContainer") -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def stream_start_s(stream: "av.video.stream.VideoStream") -> float:
    if stream.start_time is not None and stream.time_base is not None:
        return float(stream.start_time * stream.time_base)
    return 0.0


# ----------------------------------------------------------------------------------------------------
# Orientation metadata
# ----------------------------------------------------------------------------------------------------


def orientation_from_display_matrix(matrix: np.ndarray) -> Orientation:
    """Orientation for FFmpeg's 3x3 display matrix (9 int32, 16.16 fixed point, row major).

    Mirrors what the ``ffmpeg`` command does with ``-autorotate`` (fftools: ``get_rotation`` plus the
    transpose/hflip/vflip choice), snapping angles that are not a multiple of 90 degrees to the nearest.
    ``theta`` is the clockwise angle the picture is turned for display.
    """
    m = matrix.astype(np.float64)
    scale0 = math.hypot(m[0], m[3])
    scale1 = math.hypot(m[1], m[4])
    if scale0 == 0 or scale1 == 0:
        return Orientation()
    # av_display_rotation_get() returns -atan2(...) in degrees; fftools negates it again.
    theta = round(math.degrees(math.atan2(m[1] / scale1, m[0] / scale0)))
    quadrant = int(round((theta % 360) / 90.0)) % 4
    if quadrant == 1:  # transpose=cclock_flip (a plain transpose) or transpose=clock
        return Orientation(3, True) if m[3] > 0 else Orientation(3, False)
    if quadrant == 2:  # hflip when m[0] < 0, vflip when m[4] < 0; vflip == rot180 + hflip
        hflip, vflip = m[0] < 0, m[4] < 0
        if hflip and vflip:
            return Orientation(2, False)
        if hflip:
            return Orientation(0, True)
        if vflip:
            return Orientation(2, True)
        return Orientation()
    if quadrant == 3:  # transpose=clock_flip (anti-transpose) or transpose=cclock
        return Orientation(1, True) if m[3] < 0 else Orientation(1, False)
    return Orientation(2, True) if m[4] < 0 else Orientation()  # vflip or identity


def frame_orientation(frame: "av.VideoFrame") -> Orientation | None:
    """Orientation from the display matrix FFmpeg attaches to decoded frames; None when there is none."""
    try:
        side_data_list = list(frame.side_data)
    except ValueError:
        # PyAV 18 cannot list side data whose type its enum lacks (e.g. JPEG frames carry type 31). Its
        # own reader of the matrix still works but gives the angle only, not a mirror.
        counter_clockwise = int(frame.rotation or 0)
        return Orientation(int(round(counter_clockwise / 90.0)) % 4, False) if counter_clockwise else None
    for side_data in side_data_list:
        if side_data.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            matrix = np.frombuffer(memoryview(side_data), dtype="<i4")
            if matrix.size >= 9:
                return orientation_from_display_matrix(matrix[:9])
    return None


def stream_tag_orientation(stream: "av.video.stream.VideoStream") -> Orientation:
    """Orientation from the legacy ``rotate`` tag (clockwise degrees), used when frames carry no matrix."""
    value = stream.metadata.get("rotate") if stream.metadata else None
    try:
        clockwise = int(round(float(value))) if value is not None else 0
    except ValueError:
        return Orientation()
    return Orientation((-int(round(clockwise / 90.0))) % 4, False)


# ----------------------------------------------------------------------------------------------------
# Decoding a selection
# ----------------------------------------------------------------------------------------------------


def decode_selection(
    container: "av.container.InputContainer",
    stream: "av.video.stream.VideoStream",
    source: Path,
    options: dict[str, object],
    seeked: bool,
) -> VideoSelection | None:
    """Decode the frames ``options`` select from where ``container`` stands.

    seeked: the container was moved to the key frame before ``start_s``; the frame numbers are then
    counted from the first decoded frame's time. Returns None when that frame lies after ``start_s`` (the
    seek overshot; the caller decodes again from the start).
    """
    stride = int(options["stride"])  # type: ignore[arg-type]
    max_frames = options["max_frames"]
    start_s = options["start_s"]
    end_s = options["end_s"]
    short_side = options["short_side"]

    source_fps = stream_fps(stream)
    start_of_stream_s = stream_start_s(stream)
    tag_orientation = stream_tag_orientation(stream)

    selection = VideoSelection([], [], [], source_fps)
    orientation: Orientation | None = None
    size: tuple[int, int] | None = None
    kept_in_range = 0  # frames at/after start_s seen so far; stride counts these
    first_index = 0
    for decoded, frame in enumerate(decode_frames(container, stream, source)):
        if decoded == 0 and seeked:
            # After a seek the frame number is unknown: estimate it for the first frame decoded (a key
            # frame) from its time, then count. Exact for constant-rate video.
            first_time_s = frame_time_s(frame, start_of_stream_s, 0, source_fps)
            if first_time_s > float(start_s) + TIME_TOLERANCE_S:  # type: ignore[arg-type]
                return None
            first_index = max(0, int(round(first_time_s * source_fps)))
        counted_index = first_index + decoded
        time_s = frame_time_s(frame, start_of_stream_s, counted_index, source_fps)
        if start_s is not None and time_s < float(start_s) - TIME_TOLERANCE_S:  # type: ignore[arg-type]
            continue
        if end_s is not None and time_s >= float(end_s) - TIME_TOLERANCE_S:  # type: ignore[arg-type]
            break
        in_range_position = kept_in_range
        kept_in_range += 1
        if in_range_position % stride:
            continue  # decoded (later frames depend on it) but never converted to RGB
        if orientation is None:
            orientation = frame_orientation(frame) or tag_orientation
            check_source_size(frame.width, frame.height, short_side, "the video")  # type: ignore[arg-type]
            display_size = target_size(
                *((frame.height, frame.width) if orientation.swaps_axes else (frame.width, frame.height)),
                short_side,  # type: ignore[arg-type]
            )
            # Resize in the coded frame's axes, then orient: both commute, and turning the small picture
            # is cheaper. Every later frame is resized to this size too, so a stream that changes
            # resolution midway still stacks.
            size = (display_size[1], display_size[0]) if orientation.swaps_axes else display_size
        rgb = resize(frame.to_ndarray(format="rgb24"), size)  # type: ignore[arg-type]
        selection.frames.append(np.ascontiguousarray(orientation.apply(rgb)))
        selection.timestamps.append(time_s)
        selection.indices.append(counted_index)
        if max_frames is not None and len(selection.frames) >= int(max_frames):  # type: ignore[arg-type]
            break
    return selection


def decode_frames(
    container: "av.container.InputContainer", stream: "av.video.stream.VideoStream", source: Path
) -> Iterator["av.VideoFrame"]:
    """Yield decoded frames in presentation order; decode errors become VideoError."""
    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as exc:
        raise VideoError(
            f"cannot decode {source.name}: {one_line(exc)}", "the file may be truncated or corrupt; re-encode it"
        ) from exc


def frame_time_s(frame: "av.VideoFrame", stream_start: float, counted_index: int, source_fps: float) -> float:
    """Seconds from the start of the source; from the frame count when the frame has no timestamp."""
    if frame.time is not None:
        return float(frame.time) - stream_start
    return counted_index / source_fps if source_fps > 0 else float(counted_index)
