"""Image folders as clips, read through OpenCV: which files count as frames, in what order, and decoding the
selected ones (EXIF orientation applied by OpenCV, 16-bit images scaled to 8-bit).

Folders carry no timing: they are read as one frame per second (:data:`IMAGE_FOLDER_FPS`), so a frame's
timestamp in seconds equals the file's index in the naturally sorted folder.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from recon4d.errors import VideoError
from recon4d.io.video_frames import (
    TIME_TOLERANCE_S,
    check_frame_count,
    check_source_size,
    resize,
    target_size,
)

# OpenCV prints its own warnings (e.g. for odd image files) on stderr; every failure of ours is raised as
# one VideoError line instead, so its log is silenced.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

#: File name endings read from an image folder (case-insensitive). EXR is not read: it holds linear
#: floating-point radiance, and turning that into display RGB needs a tone curve this reader does not guess.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: Frame rate assumed for image folders, which carry no timing: one frame per second, so a frame's
#: timestamp in seconds equals its index in the sorted folder and ``start_s``/``end_s`` select by index.
IMAGE_FOLDER_FPS: float = 1.0


@dataclass
class FolderSelection:
    """Images kept from a folder.

    Attributes:
        frames: ``[T, H, W, 3]`` uint8 RGB, resized to the requested short side.
        indices: ``[T]`` int64 position of each image in the naturally sorted folder.
        names: file name of each image.
    """

    frames: np.ndarray
    indices: np.ndarray
    names: list[str]


def natural_sort_key(name: str) -> tuple[object, ...]:
    """Sort key that orders digit runs by value: ``frame2`` < ``frame10``; case-insensitive.

    ``re.split`` with a capture group alternates text and digit runs starting with text, so keys compare
    str with str and int with int position by position. The name itself breaks ties (``a01`` vs ``a1``).
    """
    parts = re.split(r"(\d+)", name.lower())
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name)


def list_images(folder: Path) -> list[Path]:
    """The visible image files of `folder` (see :data:`IMAGE_EXTENSIONS`), naturally sorted; none -> VideoError."""
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


def decode_image(path: Path, data: bytes) -> np.ndarray:
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


def read_image_folder(folder: Path, options: dict[str, object], digest: "hashlib._Hash") -> FolderSelection:
    """Decode the images ``options`` select (the keyword options of ``read_clip``).

    digest: updated with the bytes of every image of the folder (selected or not), each prefixed by its
    length, in sorted order, so it identifies the folder's content.
    """
    files = list_images(folder)
    stride = int(options["stride"])  # type: ignore[arg-type]
    max_frames = options["max_frames"]
    start_s = options["start_s"]
    end_s = options["end_s"]
    short_side = options["short_side"]

    # Folders have no timing: file i sits at i / IMAGE_FOLDER_FPS seconds.
    first = 0 if start_s is None else math.ceil(float(start_s) * IMAGE_FOLDER_FPS - TIME_TOLERANCE_S)
    stop = len(files)
    if end_s is not None:
        stop = min(stop, math.ceil(float(end_s) * IMAGE_FOLDER_FPS - TIME_TOLERANCE_S))
    selected = list(range(first, stop, stride))
    if max_frames is not None:
        selected = selected[: int(max_frames)]  # type: ignore[arg-type]
    check_frame_count(len(selected), folder.name, start_s, end_s)

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
        image = decode_image(path, data)
        size = (int(image.shape[1]), int(image.shape[0]))
        if source_size is None:
            source_size = size
            check_source_size(*size, short_side, path.name)  # type: ignore[arg-type]
        elif size != source_size:
            raise VideoError(
                f"images differ in size: {files[selected[0]].name} is {source_size[0]}x{source_size[1]}, "
                f"{path.name} is {size[0]}x{size[1]}",
                "all frames of a folder must have the same width and height",
            )
        frames.append(resize(image, target_size(*size, short_side)))  # type: ignore[arg-type]

    return FolderSelection(
        frames=np.stack(frames),
        indices=np.asarray(selected, dtype=np.int64),
        names=[files[i].name for i in selected],
    )
