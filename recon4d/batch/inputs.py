"""What `recon4d fit-batch` fits: INPUTS (videos, image folders, folders of them, text/CSV lists) expanded to
named inputs, one output folder each.

Rules:
    - a video file (any file that is not a list) is one input, named by its stem;
    - a folder with images directly inside is one image-folder input, named by the folder;
    - any other folder holds inputs: its video files and its sub-folders that contain images, in natural order;
    - a ``.txt``/``.lst`` file lists one path per line (``#`` starts a comment); a ``.csv`` file takes the
      column named ``path``, ``input`` or ``video`` (else the first); relative paths are relative to the list.
      Listed paths that do not exist stay in the batch and are reported as failed inputs (the rest go on);
      paths given on the command line must exist.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from recon4d.errors import InputError
from recon4d.io.image_folder import IMAGE_EXTENSIONS, natural_sort_key

#: File endings read as lists of inputs.
LIST_EXTENSIONS = (".txt", ".lst", ".csv")
#: File endings taken as videos when scanning a folder of inputs (FFmpeg reads them).
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".webm", ".mkv", ".gif", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
#: CSV column names that hold the input path, in order of preference.
CSV_PATH_COLUMNS = ("path", "input", "video")
#: Names inside OUT_ROOT that belong to the batch itself, so no input may take them.
RESERVED_NAMES = ("batch_logs",)


@dataclass(frozen=True)
class BatchInput:
    """One fit of the batch: `path` (absolute) is fitted into OUT_ROOT/`name`/."""

    name: str
    path: Path


def _visible(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: natural_sort_key(p.name))


def has_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in _visible(folder))


def _scan_folder(folder: Path) -> list[Path]:
    """The inputs a folder stands for: itself when it holds images, else its videos and image sub-folders."""
    if has_images(folder):
        return [folder]
    found = [p for p in _visible(folder)
             if (p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS) or (p.is_dir() and has_images(p))]
    if not found:
        raise InputError(f"{folder} holds no videos ({', '.join(VIDEO_EXTENSIONS[:4])}, ...) and no image folders")
    return found


def _read_list(path: Path) -> list[Path]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the input list {path}: {exc}") from None
    if path.suffix.lower() == ".csv":
        rows = [row for row in csv.reader(text.splitlines()) if row and row[0].strip()]
        header = [cell.strip().lower() for cell in rows[0]] if rows else []
        column = next((header.index(name) for name in CSV_PATH_COLUMNS if name in header), None)
        if column is not None:
            rows = rows[1:]
        entries = [row[column or 0].strip() for row in rows if len(row) > (column or 0)]
    else:
        entries = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    entries = [e for e in entries if e and not e.startswith("#")]
    if not entries:
        raise InputError(f"the input list {path} names no inputs")
    return [(path.parent / Path(e).expanduser()).resolve() for e in entries]


def expand_inputs(paths: list[Path]) -> list[BatchInput]:
    """Named inputs of `paths` (see the module docstring), without repeats, in the order given.

    Raises:
        InputError: a command-line path that does not exist, an empty folder or list, two inputs with the
            same name, or an input named like a file of the batch.
    """
    found: list[Path] = []
    for path in paths:
        path = path.expanduser()
        if not path.exists():
            raise InputError(f"input not found: {path}")
        if path.is_dir():
            found += [p.resolve() for p in _scan_folder(path)]
        elif path.suffix.lower() in LIST_EXTENSIONS:
            found += _read_list(path.resolve())
        else:
            found.append(path.resolve())
    unique = list(dict.fromkeys(found))
    inputs = [BatchInput(p.stem if p.suffix.lower() in VIDEO_EXTENSIONS or p.is_file() else p.name, p)
              for p in unique]
    by_name: dict[str, Path] = {}
    for item in inputs:
        if item.name in RESERVED_NAMES:
            raise InputError(f"input {item.path} would be written to {item.name}/, which the batch uses for its logs",
                             hint="rename it")
        if item.name in by_name:
            raise InputError(f"inputs {by_name[item.name]} and {item.path} would both be written to {item.name}/",
                             hint="rename one of them or run them in separate batches")
        by_name[item.name] = item.path
    return inputs


def fingerprint_source(path: Path) -> list:
    """What identifies the content of an input without reading it: size and modification time of the file,
    or of every image of a folder. [] for a path that does not exist."""
    if path.is_file():
        stat = path.stat()
        return [stat.st_size, stat.st_mtime_ns]
    if path.is_dir():
        return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in _visible(path)
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return []
