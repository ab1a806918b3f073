"""Output folders that are safe to write: checked before heavy work, locked, replaced as a whole.

Three guarantees a user of `recon4d fit`/`refine` relies on:

1. The location is checked first: :func:`check_output_dir` fails in milliseconds (one line, exit 2) on a
   path under a regular file, an unwritable folder or a file where the folder should be, instead of after
   minutes of computing.
2. One writer per folder: :class:`OutputLock` holds an exclusive ``flock`` on ``OUT/.lock`` (with the
   holder's PID inside, for the message). The kernel drops the lock when the process dies, even by
   ``kill -9``, so a crashed run never blocks the next one.
3. A set of outputs is replaced as a whole or not at all: :class:`OutputSet` writes every file into
   ``OUT/.staging/``, then writes ``.staging/COMMIT`` (the list of files) and moves the files into ``OUT``
   one rename each. A process killed before ``COMMIT`` leaves the old set untouched (the staging folder is
   discarded by the next run); one killed during the renames leaves a ``COMMIT`` that the next run (or any
   reader, see :func:`recover_outputs`) rolls forward, so the set that readers see is the old one or the
   new one, never a mix. Stale ``.*.tmp`` files of interrupted atomic writes are swept under the lock.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from recon4d.errors import InputError
from recon4d.io.atomic import write_bytes_atomic

LOCK_NAME = ".lock"
STAGING_NAME = ".staging"
COMMIT_NAME = "COMMIT"


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Raise InputError (one line) unless `path` is, or can be created as, a writable folder.

    Creates nothing. Checks the nearest existing ancestor: it must be a folder (not a regular file) and
    writable, and `path` itself must not be an existing file.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is a file, not a folder", hint="choose a folder path")
    ancestor = path
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise InputError(f"{option} {path} is under {ancestor}, which is a file, not a folder",
                         hint="choose a folder path")
    if ancestor.exists() and not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: no permission to write in {ancestor}", hint="choose a writable folder")
    return path


class OutputLock:
    """Exclusive lock on an output folder for one process; a second holder gets a one-line InputError."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise InputError(f"{self.folder} is in use by another recon4d process (PID {holder})",
                                 hint="wait for it to finish or choose another --out") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def sweep_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove `.NAME.*.tmp` files left by interrupted atomic writes directly in `folder` (call under the lock)."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def recover_outputs(folder: str | os.PathLike) -> str:
    """Finish or discard an interrupted :class:`OutputSet` commit in `folder`.

    Returns 'rolled-forward', 'discarded' or 'clean'. Safe to call from readers: it does nothing while
    another process holds the folder's lock (that process commits or recovers itself).
    """
    folder = Path(folder)
    staging = folder / STAGING_NAME
    if not staging.exists():
        return "clean"
    lock = OutputLock(folder)
    try:
        lock.acquire()
    except InputError:
        return "clean"
    try:
        return _recover_locked(folder)
    finally:
        lock.release()


def _recover_locked(folder: Path) -> str:
    staging = folder / STAGING_NAME
    if not staging.exists():
        return "clean"
    commit = staging / COMMIT_NAME
    names = None
    if commit.is_file():
        try:
            names = json.loads(commit.read_text())["files"]
        except (ValueError, KeyError, TypeError):
            names = None  # a torn COMMIT was never complete: the staged set is incomplete too
    if names is None:
        shutil.rmtree(staging, ignore_errors=True)
        return "discarded"
    _move_into_place(staging, folder, names)
    return "rolled-forward"


def _move_into_place(staging: Path, folder: Path, names: list[str]) -> None:
    for name in names:
        staged = staging / name
        if staged.exists():  # already moved by an interrupted earlier attempt otherwise
            os.replace(staged, folder / name)
    shutil.rmtree(staging, ignore_errors=True)


class OutputSet:
    """Stage files, then switch them into the folder together (see the module docstring).

    Use under :class:`OutputLock`::

        outputs = OutputSet(out_dir)
        save_scene(scene, outputs.path("scene.r4d"))
        write_bytes_atomic(outputs.path("metrics.json"), data)
        outputs.commit()
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.staging = self.folder / STAGING_NAME
        _recover_locked(self.folder)
        self.staging.mkdir(parents=True, exist_ok=True)
        self._names: list[str] = []

    def path(self, name: str) -> Path:
        """Where to write output `name` (a plain file name) before the commit."""
        if "/" in name or name.startswith("."):
            raise ValueError(f"output names are plain file names, got {name!r}")
        self._names.append(name)
        return self.staging / name

    def commit(self) -> None:
        missing = [name for name in self._names if not (self.staging / name).is_file()]
        if missing:
            raise RuntimeError(f"staged outputs were not written: {', '.join(missing)}")
        write_bytes_atomic(self.staging / COMMIT_NAME, json.dumps({"files": self._names}).encode())
        _move_into_place(self.staging, self.folder, self._names)

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


@contextlib.contextmanager
def locked_output_dir(folder: str | os.PathLike) -> Iterator[Path]:
    """Lock `folder` for this process, finish an interrupted commit and sweep stale temp files first."""
    folder = Path(folder)
    with OutputLock(folder):
        _recover_locked(folder)
        sweep_temp_files(folder)
        yield folder
