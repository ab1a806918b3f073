"""Decode a video file or an image folder into a :class:`Clip` of RGB frames.

Videos go through PyAV (FFmpeg); image folders through OpenCV. Both paths:

- honour orientation metadata (the display matrix of a video stream, with the legacy ``rotate`` tag as a
  fallback; EXIF orientation of JPEG images, applied by OpenCV), so frames come out as a player shows them;
- resize each frame to the requested short side as soon as it is decoded, so a long high-resolution
  input never sits in memory at full size;
- stop decoding once ``max_frames`` frames are kept or ``end_s`` is passed, and seek to the key frame
  before ``start_s`` instead of decoding from the beginning.

Conventions: frames are ``[T, H, W, 3]`` uint8 RGB with rows top to bottom; timestamps are seconds from
the first frame of the source (the stream's start time is subtracted). Image folders carry no timing: they
are read as one frame per second (:data:`IMAGE_FOLDER_FPS`), so ``timestamps`` equal the file's index in
the sorted folder and ``fps`` is ``1 / stride``.

Every failure a user can cause raises :class:`recon4d.errors.VideoError` with a one-line message and a
hint.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np

from recon4d.errors import VideoError

# OpenCV prints its own warnings (e.g. for odd image files) on stderr; every failure of ours is raised as
# one VideoError line instead, so its log is silenced. PyAV (>= 13) keeps FFmpeg's log off by default.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

__all__ = [
    "Clip",
    "VideoInfo",
    "IMAGE_EXTENSIONS",
    "IMAGE_FOLDER_FPS",
    "natural_sort_key",
    "probe_video",
    "read_clip",
]

#: File name endings read from an image folder (case-insensitive). EXR is not read: it holds linear
#: floating-point radiance, and turning that into display RGB needs a tone curve this reader does not guess.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: Frame rate assumed for image folders, which carry no timing: one frame per second, so a frame's
#: timestamp in seconds equals its index in the sorted folder and ``start_s``/``end_s`` select by index.
IMAGE_FOLDER_FPS: float = 1.0

# Bumped whenever decoding changes what pixels come out for the same input and options, so caches keyed
# by ``Clip.source_hash`` (flow, depth) are invalidated.
_DECODER_VERSION = "recon4d.io.video/1"

#: Smallest short side (pixels) of a source that can be reconstructed: below it, flow and depth have
#: nothing to work with, and upscaling only invents pixels.
MIN_SOURCE_SIDE: int = 16

# Bytes read at a time while hashing a file.
_HASH_CHUNK_BYTES = 1 << 20

# A frame whose timestamp is within this many seconds before ``start_s`` still counts as "at start_s":
# container timestamps are rationals rounded to the time base, and users type decimal seconds.
_TIME_TOLERANCE_S = 1e-6


# Relative disagreement between the container's frame rate and the kept frames' timestamp steps above
# which the clip's fps comes from the timestamps (variable-rate or sparse streams).
_FPS_MISMATCH = 0.25


@dataclass
class Clip:
    """Decoded frames of one video or image folder.

    Attributes:
        frames: ``[T, H, W, 3]`` uint8 RGB, T >= 2, upright as a player would show them.
        fps: frames per second of this clip, i.e. the source frame rate divided by ``stride``; when the
            frames' timestamps disagree with that by more than 25 % (variable-rate files) it is
            1 / median timestamp step instead. Image folders have no timing and use
            :data:`IMAGE_FOLDER_FPS` (1 frame per second) as source rate.
        timestamps: ``[T]`` float64 seconds of each frame from the start of the source.
        source_indices: ``[T]`` int64 index of each frame in the source: the number of the decoded video
            frame counted from 0 (after a seek to ``start_s`` the count starts at the key frame's
            ``round(time * source_fps)``, exact for constant-rate video), or the position of the file in
            the naturally sorted folder.
        names: per frame, the image file name (folders) or ``f"frame_{index:06d}"`` (videos).
        source: absolute path of the video file or folder.
        source_hash: hex sha256 over the source bytes (the file, or every image of the folder in sorted
            order) and the decode options; equal hashes mean equal frames, so caches key on it.
    """

    frames: np.ndarray
    fps: float
    timestamps: np.ndarray
    source_indices: np.ndarray
    names: list[str]
    source: str
    source_hash: str

    @property
    def num_frames(self) -> int:
        """T, the number of frames."""
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        """H in pixels."""
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        """W in pixels."""
        return int(self.frames.shape[2])


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns about a source without decoding it all.

    Attributes:
        frames: number of frames; exact when ``frames_exact``, else ``round(duration * fps)``.
        frames_exact: whether the container stored the frame count (mp4/mov/avi/gif do, mkv/webm do not).
        fps: average source frame rate (frames per second); :data:`IMAGE_FOLDER_FPS` for folders.
        width: displayed width in pixels, after orientation metadata is applied.
        height: displayed height in pixels, after orientation metadata is applied.
        rotation: degrees counter-clockwise the coded picture is turned for display (0, 90, 180 or 270),
            applied before the mirror when ``mirrored``.
        mirrored: whether the picture is also mirrored left-right for display.
        duration: seconds (``frames / fps`` for folders).
        codec: FFmpeg codec name, or ``"images"`` for folders.
    """

    frames: int
    frames_exact: bool
    fps: float
    width: int
    height: int
    rotation: int
    mirrored: bool
    duration: float
    codec: str


@dataclass(frozen=True)
class _Orientation:
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


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------


def read_clip(
    path: str | os.PathLike[str],
    *,
    stride: int = 1,
    max_frames: int | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
    short_side: int | None = None,
) -> Clip:
    """Decode a video file (mp4/mov/avi/webm/mkv/gif, anything FFmpeg reads) or an image folder.

    Args:
        path: video file, or folder of images (see :data:`IMAGE_EXTENSIONS`; sorted naturally, so
            ``frame2.png`` comes before ``frame10.png``; hidden files are ignored).
        stride: keep every ``stride``-th frame, counting from the first frame at or after ``start_s``.
        max_frames: keep at most this many frames (>= 2); decoding stops once they are kept.
        start_s: first time to keep, seconds from the start of the source (inclusive).
        end_s: time to stop at, seconds from the start of the source (exclusive).
        short_side: resize every frame so its shorter side is this many pixels, keeping the aspect ratio
            (the longer side is rounded to the nearest integer). Downscaling uses ``cv2.INTER_AREA``,
            upscaling ``cv2.INTER_LINEAR``. ``None`` keeps the source size.

    Returns:
        A :class:`Clip` with T >= 2 frames.

    Raises:
        VideoError: missing/empty/undecodable input, fewer than 2 frames in the selection, a folder without
            images or with images of different sizes, or invalid options.
    """
    _check_options(stride, max_frames, start_s, end_s, short_side)
    source = Path(path).expanduser()
    if not source.exists():
        raise VideoError(f"input not found: {source}", "check the path; pass a video file or an image folder")
    source = source.resolve()
    # Plain Python numbers: numpy scalars do not serialise, and 1 vs 1.0 must hash alike.
    options = {
        "stride": int(stride),
        "max_frames": None if max_frames is None else int(max_frames),
        "start_s": None if start_s is None else float(start_s),
        "end_s": None if end_s is None else float(end_s),
        "short_side": None if short_side is None else int(short_side),
    }
    if source.is_dir():
        return _read_image_folder(source, options)
    return _read_video_file(source, options)


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame count, rate, displayed size, orientation and duration of a video file or image folder.

    Decodes at most one frame (to read the orientation that FFmpeg attaches to decoded frames) or, for a
    folder, reads the first image.

    Raises:
        VideoError: the path is missing, empty, not a video, or a folder without images.
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise VideoError(f"input not found: {source}", "check the path; pass a video file or an image folder")
    source = source.resolve()
    if source.is_dir():
        files = _list_images(source)
        first = _decode_image(files[0], files[0].read_bytes())
        count = len(files)
        return VideoInfo(
            frames=count,
            frames_exact=True,
            fps=IMAGE_FOLDER_FPS,
            width=int(first.shape[1]),
            height=int(first.shape[0]),
            rotation=0,
            mirrored=False,
            duration=count / IMAGE_FOLDER_FPS,
            codec="images",
        )

    _check_file_not_empty(source)
    with _open_container(source) as container:
        stream = _video_stream(container, source)
        fps = _stream_fps(stream)
        duration = _stream_duration_s(stream, container)
        frames_exact = bool(stream.frames and stream.frames > 0)
        frames = int(stream.frames) if frames_exact else int(round(duration * fps))
        coded_w, coded_h = int(stream.codec_context.width), int(stream.codec_context.height)
        orientation = _stream_tag_orientation(stream)
        try:
            for frame in container.decode(stream):
                coded_w, coded_h = frame.width, frame.height
                orientation = _frame_orientation(frame) or orientation
                break
        except av.error.FFmpegError as exc:
            raise VideoError(
                f"cannot decode {source.name}: {_one_line(exc)}", "re-encode it, e.g. to H.264 mp4"
            ) from exc
        width, height = (coded_h, coded_w) if orientation.swaps_axes else (coded_w, coded_h)
        if duration <= 0 and fps > 0 and frames_exact:
            duration = frames / fps
        return VideoInfo(
            frames=frames,
            frames_exact=frames_exact,
            fps=fps,
            width=width,
            height=height,
            rotation=(90 * orientation.quarter_turns) % 360,
            mirrored=orientation.mirror,
            duration=duration,
            codec=stream.codec_context.name,
        )


def natural_sort_key(name: str) -> tuple[object, ...]:
    """Sort key that orders digit runs by value: ``frame2`` < ``frame10``; case-insensitive.

    ``re.split`` with a capture group alternates text and digit runs starting with text, so keys compare
    str with str and int with int position by position. The name itself breaks ties (``a01`` vs ``a1``).
    """
    parts = re.split(r"(\d+)", name.lower())
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name)


# ----------------------------------------------------------------------------------------------------
# Options, sizes, hashing
# ----------------------------------------------------------------------------------------------------


def _check_options(
    stride: int,
    max_frames: int | None,
    start_s: float | None,
    end_s: float | None,
    short_side: int | None,
) -> None:
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise VideoError(f"stride must be an integer >= 1, got {stride!r}", "use --stride 1 to keep every frame")
    if max_frames is not None and (
        isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 2
    ):
        raise VideoError(
            f"max_frames must be an integer >= 2, got {max_frames!r}", "a reconstruction needs at least 2 frames"
        )
    for label, value in (("start_s", start_s), ("end_s", end_s)):
        is_number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        if value is not None and (not is_number or not math.isfinite(float(value)) or float(value) < 0):
            raise VideoError(
                f"{label} must be a finite number of seconds >= 0, got {value!r}",
                "times count from the start of the video",
            )
    if start_s is not None and end_s is not None and float(start_s) >= float(end_s):
        raise VideoError(f"start_s ({start_s}) must be before end_s ({end_s})", "swap them or widen the range")
    if short_side is not None and (
        isinstance(short_side, bool) or not isinstance(short_side, (int, np.integer)) or short_side < 2
    ):
        raise VideoError(
            f"short_side must be an integer >= 2 pixels, got {short_side!r}",
            "e.g. 480, or omit it to keep the source size",
        )


def _check_source_size(width: int, height: int, short_side: int | None, name: str) -> None:
    """Refuse sources too small to reconstruct; say so (one stderr line) when frames are upscaled."""
    if min(width, height) < MIN_SOURCE_SIDE:
        raise VideoError(f"{name} is only {width}x{height} pixels",
                         f"recon4d needs at least {MIN_SOURCE_SIDE} pixels on the short side")
    if short_side is not None and short_side > min(width, height):
        import sys

        print(f"recon4d: warning: upscaling {width}x{height} frames to a short side of {short_side} px "
              "adds no detail; a smaller --short-side fits faster", file=sys.stderr)


def _target_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) after scaling so that min(width, height) == short_side; round half up."""
    if short_side is None:
        return width, height
    scale = short_side / min(width, height)
    if width <= height:
        return short_side, max(1, int(math.floor(height * scale + 0.5)))
    return max(1, int(math.floor(width * scale + 0.5))), short_side


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``[H, W, 3]`` to ``size`` = (width, height); INTER_AREA to shrink, INTER_LINEAR to grow."""
    height, width = image.shape[:2]
    if (width, height) == size:
        return image
    shrinking = size[0] * size[1] < width * height
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _options_bytes(options: dict[str, object]) -> bytes:
    return json.dumps({"decoder": _DECODER_VERSION, **options}, sort_keys=True).encode()


def _hash_file(path: Path, digest: "hashlib._Hash") -> None:
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ----------------------------------------------------------------------------------------------------
# Video files (PyAV)
# ----------------------------------------------------------------------------------------------------


def _check_file_not_empty(source: Path) -> None:
    if not source.is_file():
        raise VideoError(f"not a file or folder: {source}", "pass a video file or an image folder")
    if source.stat().st_size == 0:
        raise VideoError(f"empty file: {source}", "the file has 0 bytes; re-export or re-download it")


def _open_container(source: Path) -> "av.container.InputContainer":
    try:
        # Broken tag bytes must not make a decodable video unreadable.
        return av.open(str(source), mode="r", metadata_errors="replace")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise VideoError(
            f"not a readable video: {source.name} ({_one_line(exc)})",
            "pass an mp4/mov/avi/webm/mkv/gif file or a folder of images",
        ) from exc


def _video_stream(container: "av.container.InputContainer", source: Path) -> "av.video.stream.VideoStream":
    if not container.streams.video:
        raise VideoError(f"no video stream in {source.name}", "pass a file that contains video, not only audio or data")
    return container.streams.video[0]


def _stream_fps(stream: "av.video.stream.VideoStream") -> float:
    """Average frame rate; falls back to FFmpeg's guess. 0 when neither is known."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and float(rate) > 0:
            return float(rate)
    return 0.0


def _stream_duration_s(stream: "av.video.stream.VideoStream", container: "av.container.InputContainer") -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _stream_start_s(stream: "av.video.stream.VideoStream") -> float:
    if stream.start_time is not None and stream.time_base is not None:
        return float(stream.start_time * stream.time_base)
    return 0.0


def _orientation_from_display_matrix(matrix: np.ndarray) -> _Orientation:
    """Orientation for FFmpeg's 3x3 display matrix (9 int32, 16.16 fixed point, row major).

    Mirrors what the ``ffmpeg`` command does with ``-autorotate`` (fftools: ``get_rotation`` plus the
    transpose/hflip/vflip choice), snapping angles that are not a multiple of 90 degrees to the nearest.
    ``theta`` is the clockwise angle the picture is turned for display.
    """
    m = matrix.astype(np.float64)
    scale0 = math.hypot(m[0], m[3])
    scale1 = math.hypot(m[1], m[4])
    if scale0 == 0 or scale1 == 0:
        return _Orientation()
    # av_display_rotation_get() returns -atan2(...) in degrees; fftools negates it again.
    theta = round(math.degrees(math.atan2(m[1] / scale1, m[0] / scale0)))
    quadrant = int(round((theta % 360) / 90.0)) % 4
    if quadrant == 1:  # transpose=cclock_flip (a plain transpose) or transpose=clock
        return _Orientation(3, True) if m[3] > 0 else _Orientation(3, False)
    if quadrant == 2:  # hflip when m[0] < 0, vflip when m[4] < 0; vflip == rot180 + hflip
        hflip, vflip = m[0] < 0, m[4] < 0
        if hflip and vflip:
            return _Orientation(2, False)
        if hflip:
            return _Orientation(0, True)
        if vflip:
            return _Orientation(2, True)
        return _Orientation()
    if quadrant == 3:  # transpose=clock_flip (anti-transpose) or transpose=cclock
        return _Orientation(1, True) if m[3] < 0 else _Orientation(1, False)
    return _Orientation(2, True) if m[4] < 0 else _Orientation()  # vflip or identity


def _frame_orientation(frame: "av.VideoFrame") -> _Orientation | None:
    """Orientation from the display matrix FFmpeg attaches to decoded frames; None when there is none."""
    try:
        side_data_list = list(frame.side_data)
    except ValueError:
        # PyAV 18 cannot list side data whose type its enum lacks (e.g. JPEG frames carry type 31). Its
        # own reader of the matrix still works but gives the angle only, not a mirror.
        counter_clockwise = int(frame.rotation or 0)
        return _Orientation(int(round(counter_clockwise / 90.0)) % 4, False) if counter_clockwise else None
    for side_data in side_data_list:
        if side_data.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            matrix = np.frombuffer(memoryview(side_data), dtype="<i4")
            if matrix.size >= 9:
                return _orientation_from_display_matrix(matrix[:9])
    return None


def _stream_tag_orientation(stream: "av.video.stream.VideoStream") -> _Orientation:
    """Orientation from the legacy ``rotate`` tag (clockwise degrees), used when frames carry no matrix."""
    value = stream.metadata.get("rotate") if stream.metadata else None
    try:
        clockwise = int(round(float(value))) if value is not None else 0
    except ValueError:
        return _Orientation()
    return _Orientation((-int(round(clockwise / 90.0))) % 4, False)


def _read_video_file(source: Path, options: dict[str, object]) -> Clip:
    _check_file_not_empty(source)
    digest = hashlib.sha256()
    _hash_file(source, digest)
    digest.update(_options_bytes(options))

    start_s = options["start_s"]
    selection: _Selection | None = None
    # Seek first; if the seek lands after start_s (formats without an accurate index), decode from the start.
    for allow_seek in (start_s is not None and float(start_s) > 0, False):  # type: ignore[arg-type]
        with _open_container(source) as container:
            selection = _decode_selection(container, _video_stream(container, source), source, options, allow_seek)
        if selection is not None:
            break
    assert selection is not None  # the pass without a seek always returns a selection

    _check_frame_count(len(selection.frames), source.name, start_s, options["end_s"])
    return Clip(
        frames=np.stack(selection.frames),
        fps=_clip_fps(selection.source_fps / int(options["stride"]), selection.timestamps),  # type: ignore[arg-type]
        timestamps=np.asarray(selection.timestamps, dtype=np.float64),
        source_indices=np.asarray(selection.indices, dtype=np.int64),
        names=[f"frame_{index:06d}" for index in selection.indices],
        source=str(source),
        source_hash=digest.hexdigest(),
    )


@dataclass
class _Selection:
    """Frames kept from one decoding pass, with their times (s) and source frame numbers."""

    frames: list[np.ndarray]
    timestamps: list[float]
    indices: list[int]
    source_fps: float


def _decode_selection(
    container: "av.container.InputContainer",
    stream: "av.video.stream.VideoStream",
    source: Path,
    options: dict[str, object],
    allow_seek: bool,
) -> _Selection | None:
    """Decode the frames ``options`` select; None when a seek overshot ``start_s`` (caller retries)."""
    stride = int(options["stride"])  # type: ignore[arg-type]
    max_frames = options["max_frames"]
    start_s = options["start_s"]
    end_s = options["end_s"]
    short_side = options["short_side"]

    source_fps = _stream_fps(stream)
    stream_start_s = _stream_start_s(stream)
    tag_orientation = _stream_tag_orientation(stream)
    seeked = False
    if allow_seek and source_fps > 0:
        seeked = _seek_before(container, stream, stream_start_s + float(start_s))  # type: ignore[arg-type]

    selection = _Selection([], [], [], source_fps)
    orientation: _Orientation | None = None
    size: tuple[int, int] | None = None
    kept_in_range = 0  # frames at/after start_s seen so far; stride counts these
    first_index = 0
    for decoded, frame in enumerate(_decode_frames(container, stream, source)):
        if decoded == 0 and seeked:
            # After a seek the frame number is unknown: estimate it for the first frame decoded (a key
            # frame) from its time, then count. Exact for constant-rate video.
            first_time_s = _frame_time_s(frame, stream_start_s, 0, source_fps)
            if first_time_s > float(start_s) + _TIME_TOLERANCE_S:  # type: ignore[arg-type]
                return None
            first_index = max(0, int(round(first_time_s * source_fps)))
        counted_index = first_index + decoded
        time_s = _frame_time_s(frame, stream_start_s, counted_index, source_fps)
        if start_s is not None and time_s < float(start_s) - _TIME_TOLERANCE_S:  # type: ignore[arg-type]
            continue
        if end_s is not None and time_s >= float(end_s) - _TIME_TOLERANCE_S:  # type: ignore[arg-type]
            break
        in_range_position = kept_in_range
        kept_in_range += 1
        if in_range_position % stride:
            continue  # decoded (later frames depend on it) but never converted to RGB
        if orientation is None:
            orientation = _frame_orientation(frame) or tag_orientation
            _check_source_size(frame.width, frame.height, short_side, "the video")  # type: ignore[arg-type]
            display_size = _target_size(
                *((frame.height, frame.width) if orientation.swaps_axes else (frame.width, frame.height)),
                short_side,  # type: ignore[arg-type]
            )
            # Resize in the coded frame's axes, then orient: both commute, and turning the small picture
            # is cheaper. Every later frame is resized to this size too, so a stream that changes
            # resolution midway still stacks.
            size = (display_size[1], display_size[0]) if orientation.swaps_axes else display_size
        rgb = _resize(frame.to_ndarray(format="rgb24"), size)  # type: ignore[arg-type]
        selection.frames.append(np.ascontiguousarray(orientation.apply(rgb)))
        selection.timestamps.append(time_s)
        selection.indices.append(counted_index)
        if max_frames is not None and len(selection.frames) >= int(max_frames):  # type: ignore[arg-type]
            break
    return selection


def _seek_before(
    container: "av.container.InputContainer", stream: "av.video.stream.VideoStream", time_s: float
) -> bool:
    """Seek to the key frame at or before ``time_s`` (absolute stream seconds); False if unsupported."""
    if stream.time_base is None:
        return False
    target = int(math.floor(Fraction(time_s).limit_denominator(1_000_000) / stream.time_base))
    try:
        container.seek(target, stream=stream, backward=True, any_frame=False)
    except av.error.FFmpegError:
        return False  # some formats (raw streams) cannot seek: the reader stays at the start
    return True


def _decode_frames(
    container: "av.container.InputContainer", stream: "av.video.stream.VideoStream", source: Path
) -> Iterator["av.VideoFrame"]:
    """Yield decoded frames in presentation order; decode errors become VideoError."""
    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as exc:
        raise VideoError(
            f"cannot decode {source.name}: {_one_line(exc)}", "the file may be truncated or corrupt; re-encode it"
        ) from exc


def _frame_time_s(frame: "av.VideoFrame", stream_start_s: float, counted_index: int, source_fps: float) -> float:
    """Seconds from the start of the source; from the frame count when the frame has no timestamp."""
    if frame.time is not None:
        return float(frame.time) - stream_start_s
    return counted_index / source_fps if source_fps > 0 else float(counted_index)


def _clip_fps(nominal_fps: float, timestamps: list[float]) -> float:
    """Frames per second of the kept frames: ``nominal_fps`` (source rate / stride) unless the frames'
    timestamps disagree with it by more than :data:`_FPS_MISMATCH`, as in variable-rate files whose
    container rate counts frames that were never stored; then 1 / median timestamp step."""
    steps = np.diff(np.asarray(timestamps, dtype=np.float64))
    steps = steps[steps > 0]
    if steps.size == 0:
        return nominal_fps if nominal_fps > 0 else IMAGE_FOLDER_FPS
    measured_fps = float(1.0 / np.median(steps))
    if nominal_fps > 0 and abs(measured_fps / nominal_fps - 1.0) <= _FPS_MISMATCH:
        return nominal_fps
    return measured_fps


def _check_frame_count(count: int, name: str, start_s: object, end_s: object) -> None:
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


# ----------------------------------------------------------------------------------------------------
# Image folders (OpenCV)
# ----------------------------------------------------------------------------------------------------


def _list_images(folder: Path) -> list[Path]:
    files = [
        entry
        for entry in folder.iterdir()
        if entry.is_file() and not entry.name.startswith(".") and entry.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not files:
        raise VideoError(
            f"no images in folder {folder}",
            f"put frames with one of the endings {' '.join(IMAGE_EXTENSIONS)} in it, or pass a video file",
        )
    return sorted(files, key=lambda entry: natural_sort_key(entry.name))


def _decode_image(path: Path, data: bytes) -> np.ndarray:
    """Encoded image bytes -> ``[H, W, 3]`` uint8 RGB, EXIF orientation applied, 16-bit scaled to 8-bit."""
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR) if data else None
    except cv2.error:
        raise VideoError(f"cannot decode image {path.name}: its header claims a size OpenCV refuses "
                         "(more than 2^30 pixels) or the data is corrupt", "remove or re-save it") from None
    if image is None:
        raise VideoError(
            f"cannot read image {path.name}", "the file is empty, truncated or not an image; remove or re-save it"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_image_folder(folder: Path, options: dict[str, object]) -> Clip:
    files = _list_images(folder)
    stride = int(options["stride"])  # type: ignore[arg-type]
    max_frames = options["max_frames"]
    start_s = options["start_s"]
    end_s = options["end_s"]
    short_side = options["short_side"]

    # Folders have no timing: file i sits at i / IMAGE_FOLDER_FPS seconds.
    first = 0 if start_s is None else math.ceil(float(start_s) * IMAGE_FOLDER_FPS - _TIME_TOLERANCE_S)
    stop = len(files)
    if end_s is not None:
        stop = min(stop, math.ceil(float(end_s) * IMAGE_FOLDER_FPS - _TIME_TOLERANCE_S))
    selected = list(range(first, stop, stride))
    if max_frames is not None:
        selected = selected[: int(max_frames)]  # type: ignore[arg-type]
    _check_frame_count(len(selected), folder.name, start_s, end_s)

    digest = hashlib.sha256()
    wanted = set(selected)
    frames: list[np.ndarray] = []
    source_size: tuple[int, int] | None = None
    for index, path in enumerate(files):
        data = path.read_bytes()
        # Length prefix: concatenated bytes alone would not tell file boundaries apart.
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
        if index not in wanted:
            continue
        image = _decode_image(path, data)
        size = (int(image.shape[1]), int(image.shape[0]))
        if source_size is None:
            source_size = size
            _check_source_size(*size, short_side, path.name)  # type: ignore[arg-type]
        elif size != source_size:
            raise VideoError(
                f"images differ in size: {files[selected[0]].name} is {source_size[0]}x{source_size[1]}, "
                f"{path.name} is {size[0]}x{size[1]}",
                "all frames of a folder must have the same width and height",
            )
        frames.append(_resize(image, _target_size(*size, short_side)))  # type: ignore[arg-type]
    digest.update(_options_bytes(options))

    indices = np.asarray(selected, dtype=np.int64)
    return Clip(
        frames=np.stack(frames),
        fps=IMAGE_FOLDER_FPS / stride,
        timestamps=indices.astype(np.float64) / IMAGE_FOLDER_FPS,
        source_indices=indices,
        names=[files[i].name for i in selected],
        source=str(folder),
        source_hash=digest.hexdigest(),
    )
