"""Choosing the compute device once, at the top of a command; running independent work side by side on the CPU."""
from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

from recon4d.errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")
Item = TypeVar("Item")
Result = TypeVar("Result")


def gsplat_available() -> bool:
    """True when gsplat can be imported (it is only useful with CUDA)."""
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when a GPU and gsplat are present, else cpu; 'cuda' without either is an input error."""
    if name not in DEVICE_CHOICES:
        raise InputError(f"unknown device {name!r}", hint=f"choose one of {', '.join(DEVICE_CHOICES)}")
    cuda_ready = torch.cuda.is_available() and gsplat_available()
    if name == "auto":
        return torch.device("cuda" if cuda_ready else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda but no CUDA GPU is visible to torch", hint="use --device cpu")
    if name == "cuda" and not gsplat_available():
        raise InputError("--device cuda needs gsplat", hint="pip install 'recon4d[cuda]'")
    return torch.device(name)


def cpu_workers(requested: int = 0) -> int:
    """Threads of a CPU pool: `requested`, or one per core when it is 0 (at least one).

        >>> cpu_workers(3), cpu_workers(0) == max(1, os.cpu_count() or 1)
        (3, True)
    """
    return requested if requested > 0 else max(1, os.cpu_count() or 1)


class Cancelled(Exception):
    """Raised by `raise_if_cancelled` in a pool's worker whose caller has stopped waiting for it."""


# The stop events of the pools that run the current thread's work, innermost last (`thread_pool`).
_POOL_STOPS = threading.local()


def raise_if_cancelled() -> None:
    """Raise `Cancelled` when the caller of the `thread_pool` (or `side_by_side`) running this work has left it
    by an exception (Ctrl-C, or another item's error re-raised there); elsewhere nothing.

    For long items to call once per step: the pool waits for the items it has started before the caller's
    exception goes on, and a long clip's refinement window runs for minutes (backpack's 450 frames: 8 windows
    of about 160 s each on 2 cores), all the while after a Ctrl-C that the command seems not to have heard.
    """
    for stop in getattr(_POOL_STOPS, "events", ()):
        if stop.is_set():
            raise Cancelled


def _enter_pool(events: tuple[threading.Event, ...]) -> None:
    _POOL_STOPS.events = events


@contextmanager
def thread_pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A ThreadPoolExecutor of `workers` threads whose work not yet started is dropped, not run to the end, when
    the block is left by an exception (Ctrl-C in the caller's thread, or a task's error re-raised there); work
    already running ends at its next `raise_if_cancelled`.

        >>> with thread_pool(2) as pool:
        ...     list(pool.map(abs, [-1, 2]))
        [1, 2]
    """
    stop = threading.Event()
    # A pool started by another pool's worker stops with that one's too.
    events = (*getattr(_POOL_STOPS, "events", ()), stop)
    pool = ThreadPoolExecutor(max_workers=workers, initializer=_enter_pool, initargs=(events,))
    try:
        yield pool
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        release_freed_memory()


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only
    except (OSError, TypeError):  # no C library to open by that name (Windows)
        return None


_MALLOC_TRIM = _find_malloc_trim()


def release_freed_memory() -> None:
    """Give memory that the program has freed but the C allocator still holds back to the system (glibc's
    `malloc_trim`; nothing elsewhere). Called when a `thread_pool` ends, and by a long clip's refinement as each
    of its windows ends.

    glibc keeps freed blocks for reuse, in the arena of the thread that allocated them. Worker threads build
    many mid-sized arrays (the priors' chained flows, the depth prior's triangulated pairs: 0.6 GB each at 450
    frames), and once those were dropped the memory stayed resident for the rest of the fit: backpack's 450
    frames left the priors' stage holding 2.18 GB, 0.86 GB of it freed. A trim takes up to about 0.1 s (93 ms
    on a 2.6 GB heap that gave back 1.2 GB).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def ordered_map(pool: ThreadPoolExecutor, work: Callable[[Item], Result], items: Iterable[Item],
                ahead: int) -> Iterator[Result]:
    """pool.map(work, items), in order, with at most `ahead` (>= 1) items submitted and not yet taken: for
    results too large to hold all at once (pool.map submits every item up front).

        >>> with thread_pool(2) as pool:
        ...     list(ordered_map(pool, abs, [-1, 2, -3], ahead=2))
        [1, 2, 3]
    """
    pending: deque = deque()
    for item in items:
        if len(pending) >= max(1, ahead):
            yield pending.popleft().result()
        pending.append(pool.submit(work, item))
    while pending:
        yield pending.popleft().result()


def side_by_side(work: Callable[[Item], Result], items: Iterable[Item], device: torch.device,
                 max_workers: int | None = None) -> list[Result]:
    """[work(item) for item in items]; on the CPU the items run side by side, one per torch thread (at most
    `max_workers` at once), each on one thread (torch.set_num_threads(1) for the duration).

    For independent chains of small steps (a camera search, one temporal window's refinement), which keep
    only part of a second core busy when each step gets all threads. recon4d's kernels release the GIL, and a
    single-threaded kernel gives the same numbers as a multi-threaded one (`tests/test_render_threads.py`),
    so the results do not depend on the thread count as long as `work` draws from its own generators.

        >>> side_by_side(lambda x: x * x, range(4), torch.device("cpu"))
        [0, 1, 4, 9]
    """
    items = list(items)
    workers = min(torch.get_num_threads(), len(items), max_workers or len(items))
    if device.type != "cpu" or workers <= 1:
        return [work(item) for item in items]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with thread_pool(workers) as pool:  # Ctrl-C drops the items not yet started, ends the running ones' steps
            return list(pool.map(work, items))
    finally:
        torch.set_num_threads(threads)


def in_background(work: Callable[[], Result], nice: int = 0) -> Callable[[], Result]:
    """Start work() on a daemon thread and return a function that waits for its result (re-raising its error).

    For one long, independent piece of CPU work beside the caller's own. Unlike a ThreadPoolExecutor, whose
    threads the interpreter joins before it exits, a daemon thread does not hold up Ctrl-C: an interrupted
    command exits at once instead of waiting for the work to finish. `nice` > 0 runs it that much lower in priority
    (Linux: added to the thread's nice value, at most 19, which the threads it starts inherit; elsewhere
    ignored), so that it takes the cores' idle time rather than time from the caller.

        >>> wait = in_background(lambda: 6 * 7)
        >>> wait()
        42
    """
    outcome: dict = {}

    def run() -> None:
        try:
            if nice > 0 and sys.platform.startswith("linux"):  # elsewhere the call would take the id for a process's
                try:
                    thread_id = threading.get_native_id()
                    lowered = min(os.getpriority(os.PRIO_PROCESS, thread_id) + nice, 19)
                    os.setpriority(os.PRIO_PROCESS, thread_id, lowered)
                except OSError:  # a sandbox that forbids it: run at the caller's priority
                    pass
            outcome["result"] = work()
        except BaseException as exc:  # handed to the waiting caller
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True, name="recon4d-background")
    thread.start()

    def wait() -> Result:
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    return wait
