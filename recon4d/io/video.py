"""Decode a video file or an image folder into a :class:`Clip` of RGB frames.

Videos go through PyAV (FFmpeg, :mod:`recon4d.io.video_decode`); image folders through OpenCV
(:mod:`recon4d.io.image_folder`). Both paths:

- honour orientation metadata (the display matrix of a video stream, with the legacy ``rotate`` tag as a
  fallback; EXIF orientation of JPEG images, applied by OpenCV), so frames come out as a player shows them;
- resize each frame to the requested short side as soon as it is decoded, so a long high-resolution
  input never sits in memory at full size (:mod:`recon4d.io.video_frames`);
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
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from recon4d.errors import VideoError
from recon4d.io.image_folder import (
    IMAGE_EXTENSIONS,
    IMAGE_FOLDER_FPS,
    decode_image,
    list_images,
    natural_sort_key,
    read_image_folder,
)
from recon4d.io.video_decode import (
    decode_selection,
    frame_orientation,
    one_line,
    open_container,
    stream_duration_s,
    stream_fps,
    stream_start_s,
    stream_tag_orientation,
    video_stream,
)
from recon4d.io.video_frames import check_frame_count

__all__ = [
    "Clip",
    "VideoInfo",
    "IMAGE_EXTENSIONS",
    "IMAGE_FOLDER_FPS",
    "natural_sort_key",
    "probe_video",
    "read_clip",
]

# Bumped whenever decoding changes what pixels come out for the same input and options, so caches keyed
# by ``Clip.source_hash`` (flow, depth) are invalidated.
_DECODER_VERSION = "recon4d.io.video/1"

# Bytes read at a time while hashing a file.
_HASH_CHUNK_BYTES = 1 << 20

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
        files = list_images(source)
        first = decode_image(files[0], files[0].read_bytes())
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
    with open_container(source) as container:
        stream = video_stream(container, source)
        fps = stream_fps(stream)
        duration = stream_duration_s(stream, container)
        frames_exact = bool(stream.frames and stream.frames > 0)
        frames = int(stream.frames) if frames_exact else int(round(duration * fps))
        coded_w, coded_h = int(stream.codec_context.width), int(stream.codec_context.height)
        orientation = stream_tag_orientation(stream)
        try:
            for frame in container.decode(stream):
                coded_w, coded_h = frame.width, frame.height
                orientation = frame_orientation(frame) or orientation
                break
        except av.error.FFmpegError as exc:
            raise VideoError(
                f"cannot decode {source.name}: {one_line(exc)}", "re-encode it, e.g. to H.264 mp4"
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


# ----------------------------------------------------------------------------------------------------
# Options and hashing
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


def _options_bytes(options: dict[str, object]) -> bytes:
    return json.dumps({"decoder": _DECODER_VERSION, **options}, sort_keys=True).encode()


def _hash_file(path: Path, digest: "hashlib._Hash") -> None:
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)


# ----------------------------------------------------------------------------------------------------
# Video files and image folders as clips
# ----------------------------------------------------------------------------------------------------


def _check_file_not_empty(source: Path) -> None:
    if not source.is_file():
        raise VideoError(f"not a file or folder: {source}", "pass a video file or an image folder")
    if source.stat().st_size == 0:
        raise VideoError(f"empty file: {source}", "the file has 0 bytes; re-export or re-download it")


def _read_video_file(source: Path, options: dict[str, object]) -> Clip:
    _check_file_not_empty(source)
    digest = hashlib.sha256()
    _hash_file(source, digest)
    digest.update(_options_bytes(options))

    start_s = options["start_s"]
    selection = None
    # Seek first; if the seek lands after start_s (formats without an accurate index), decode from the start
    # (decode_selection returns None for an overshot seek).
    for allow_seek in (start_s is not None and float(start_s) > 0, False):  # type: ignore[arg-type]
        with open_container(source) as container:
            stream = video_stream(container, source)
            seeked = allow_seek and stream_fps(stream) > 0 and _seek_before(
                container, stream, stream_start_s(stream) + float(start_s)  # type: ignore[arg-type]
            )
            selection = decode_selection(container, stream, source, options, seeked)
        if selection is not None:
            break
    assert selection is not None  # the pass without a seek always returns a selection

    check_frame_count(len(selection.frames), source.name, start_s, options["end_s"])
    return Clip(
        frames=np.stack(selection.frames),
        fps=_clip_fps(selection.source_fps / int(options["stride"]), selection.timestamps),  # type: ignore[arg-type]
        timestamps=np.asarray(selection.timestamps, dtype=np.float64),
        source_indices=np.asarray(selection.indices, dtype=np.int64),
        names=[f"frame_{index:06d}" for index in selection.indices],
        source=str(source),
        source_hash=digest.hexdigest(),
    )


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


def _read_image_folder(folder: Path, options: dict[str, object]) -> Clip:
    digest = hashlib.sha256()
    selection = read_image_folder(folder, options, digest)
    digest.update(_options_bytes(options))
    return Clip(
        frames=selection.frames,
        fps=IMAGE_FOLDER_FPS / int(options["stride"]),  # type: ignore[arg-type]
        timestamps=selection.indices.astype(np.float64) / IMAGE_FOLDER_FPS,
        source_indices=selection.indices,
        names=selection.names,
        source=str(folder),
        source_hash=digest.hexdigest(),
    )
