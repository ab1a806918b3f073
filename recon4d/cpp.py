"""Build-once loader of recon4d's C++ kernels (one translation unit each, compiled on first use).

Each kernel is built with `torch.utils.cpp_extension` (ninja) into ``$RECON4D_CACHE_DIR/ext`` (default
``~/.cache/recon4d/ext``); the build key hashes the source, the torch version and install path and the
compiler flags, so a later process only loads the shared library. The build compiles a copy of the source
kept in its build directory, so that checkouts of the same code at other paths (git worktrees, an installed
copy beside an editable one) share one build instead of rebuilding each other's (ninja's build file names
the source path). Users: `recon4d.image` (SSIM's blur), `recon4d.render.cpu` (tile rasterizer, EWA
projection), `recon4d.fit.optim` (selective Adam), `recon4d.fit.model` and `recon4d.fit.rigidity` (the refinement's
frame state and rigidity).
"""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import torch

from recon4d.errors import BackendError

# -ffast-math lets gcc vectorise the kernels' float loops (min/max, reductions, glibc's vector maths); no inf/NaN.
# -mprefer-vector-width=512 (x86 only): on a CPU with AVX-512 gcc otherwise keeps to 256-bit vectors, two per 16-float
# row of the rasterizer's tiles; without AVX-512 it changes nothing. Forward 11.0 -> 8.1 ms, backward 19.9 -> 18.5 ms
# on a 24,000-Gaussian frame at 180x235 (README, "AVX-512 rows, tile rows of a fixed length, ...", stop 50).
_CFLAGS = ["-O3", "-march=native", *(["-mprefer-vector-width=512"] if platform.machine() in ("x86_64", "AMD64") else []),
           "-ffast-math", "-fopenmp"]
_extensions: dict = {}
STALE_LOCK_SECONDS = 900  # a kernel builds in under 10 s on 2 cores, 25 s with torch/extension.h
BUILD_LOCK_NAME = "recon4d-build.lock"  # our flock beside torch's `lock` file (`_build_lock`)
_lock = threading.Lock()


def cache_dir() -> Path:
    """Root of recon4d's on-disk caches."""
    return Path(os.environ.get("RECON4D_CACHE_DIR", Path.home() / ".cache" / "recon4d"))


def _build_key(source: Path) -> str:
    digest = hashlib.sha256(source.read_bytes())
    # The torch install's own path too: ninja's build file names its include directories, so two environments
    # (a CI virtualenv beside a developer's) sharing one build directory would rebuild each other's kernel.
    digest.update(" ".join([torch.__version__, str(Path(torch.__file__).parent), platform.machine(), *_CFLAGS,
                            "source-copy"]).encode())
    return digest.hexdigest()[:16]


def kernel_sources() -> list[Path]:
    """The package's C++ kernels: every ``csrc/*.cpp`` under recon4d/."""
    return sorted(Path(__file__).parent.glob("**/csrc/*.cpp"))


def _build_place(source: Path) -> tuple[str, Path]:
    """(module name, build directory) of the kernel compiled from `source` for this torch and these flags."""
    key = _build_key(source)
    return f"recon4d_{source.stem}_{key}", cache_dir() / "ext" / key


def _built_library(module: str, build_dir: Path) -> Path | None:
    """The shared library of `module` in `build_dir`, if built."""
    import importlib.machinery

    for suffix in importlib.machinery.EXTENSION_SUFFIXES + [".so"]:
        library = build_dir / f"{module}{suffix}"
        if library.is_file():
            return library
    return None


def is_built(source: Path) -> bool:
    """Whether the kernel compiled from `source` is built on this machine."""
    return _built_library(*_build_place(source)) is not None


def build_in_background(sources: Iterable[Path] | None = None) -> list[str]:
    """Start building the kernels among `sources` (by default all, `kernel_sources`) that are not built on this
    machine yet, each in a process of its own and all at once; returns their names (empty when all are built).

    A kernel takes 6-8 s of one core to build, mostly in parsing torch's headers (the kernels include ATen's
    tensor and the operators they call, not <torch/extension.h>, which took 17-25 s), and a first fit used to
    build its five one after another as it reached them. Started when a fit starts, the builds run beside the
    decoding and the priors on every core. A `load_extension` of a kernel still being
    built waits for it on the build lock and then loads it; a build that fails here is tried again there,
    which reports the error. The processes are not waited for: a fit that ends first leaves them to finish.
    """
    started = []
    for source in kernel_sources() if sources is None else sources:
        if source.stem in _extensions or is_built(source):
            continue
        try:
            subprocess.Popen([sys.executable, "-m", "recon4d.cpp", str(source)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:  # no interpreter to start: the kernel builds on first use, as without this call
            continue
        started.append(source.stem)
    return started


def load_extension(source: Path):
    """Load (building on first use on this machine) the extension compiled from the one C++ file `source`."""
    name = source.stem
    if name not in _extensions:
        with _lock:
            if name not in _extensions:
                from torch.utils.cpp_extension import load

                module, build_dir = _build_place(source)
                build_dir.mkdir(parents=True, exist_ok=True)
                copy = build_dir / source.name
                if not copy.is_file() or copy.read_bytes() != source.read_bytes():
                    staged = build_dir / f".{source.name}.{os.getpid()}"
                    staged.write_bytes(source.read_bytes())
                    staged.replace(copy)  # atomic: a concurrent build never reads half a file
                built = _import_built(module, build_dir)
                if built is not None:
                    _extensions[name] = built
                    return built
                with _build_lock(build_dir):
                    built = _import_built(module, build_dir)  # built by the process we waited for
                    if built is not None:
                        _extensions[name] = built
                        return built
                    try:
                        _extensions[name] = load(
                            name=module,
                            sources=[str(copy)],
                            extra_cflags=_CFLAGS,
                            extra_ldflags=["-fopenmp"],
                            build_directory=str(build_dir),
                            verbose=False,
                        )
                    except Exception as exc:  # compiler missing, headers missing, ...
                        raise BackendError(
                            f"could not build the C++ kernel {source.name}: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                            hint="install a C++ compiler (g++) and the Python headers, then retry",
                        ) from exc
    return _extensions[name]


@contextmanager
def _build_lock(build_dir: Path):
    """Hold an exclusive lock on `build_dir` for one build, then clear torch's own build lock there.

    torch's lock is a plain file that the building process removes when it is done; a process killed while
    building (a fit-batch worker, Ctrl-C) leaves it behind, and every later load waits on it forever. This
    lock is an flock, which the system drops when its holder dies: once we hold it, no live recon4d process
    is building here, so a torch lock file left in the folder is stale. Without fcntl (not POSIX) the torch
    lock is removed only when older than STALE_LOCK_SECONDS."""
    try:
        import fcntl
    except ImportError:
        _remove_stale_lock(build_dir)
        yield
        return
    with open(build_dir / BUILD_LOCK_NAME, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            (build_dir / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _import_built(module: str, build_dir: Path):
    """The extension `module` if its library is already built in `build_dir` (the key names one source and one set
    of flags), else None. Loading it directly skips torch's build check, which takes a lock file that a process
    killed at that moment leaves behind, and which every later load would wait on forever."""
    import importlib.util

    library = _built_library(module, build_dir)
    if library is None:
        return None
    try:
        spec = importlib.util.spec_from_file_location(module, library)
        extension = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(extension)
        return extension
    except ImportError:  # a library cut short by a killed build: build it again
        return None


def _remove_stale_lock(build_dir: Path) -> None:
    """Remove torch's build lock in `build_dir` when it is older than any build takes (left by a killed process)."""
    lock = build_dir / "lock"
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink()
    except FileNotFoundError:
        pass


if __name__ == "__main__":  # `build_in_background`'s worker: build (or wait for) one kernel
    load_extension(Path(sys.argv[1]))
