"""`recon4d.device`: `in_background` (work on a daemon thread whose result or error reaches the caller),
`thread_pool` (a pool that drops its queued work when the caller stops, and whose running work ends at its next
`raise_if_cancelled`) and `ordered_map` (in order, a few items ahead)."""
from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from recon4d.device import Cancelled, cpu_workers, in_background, ordered_map, raise_if_cancelled, thread_pool
from recon4d.errors import PriorError


def test_result_and_concurrency():
    started, release = threading.Event(), threading.Event()

    def work() -> int:
        started.set()
        release.wait(5)  # runs while the caller goes on
        return 7

    wait = in_background(work)
    assert started.wait(5)
    workers = [t for t in threading.enumerate() if t.name == "recon4d-background"]
    # A daemon thread: an interrupted command does not wait for it at exit.
    assert workers and all(t.daemon for t in workers)
    release.set()
    assert wait() == 7


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own nice value is Linux's")
def test_low_priority_work_and_the_threads_it_starts_run_niced_the_caller_does_not():
    def nice_of_this_thread() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def work() -> tuple[int, int]:
        with thread_pool(1) as pool:  # a pool the work starts: its thread inherits the nice value
            return nice_of_this_thread(), pool.submit(nice_of_this_thread).result()

    caller = nice_of_this_thread()
    expected = min(caller + 5, 19)
    assert in_background(work, nice=5)() == (expected, expected)
    assert nice_of_this_thread() == caller and in_background(work)() == (caller, caller)


def test_error_is_raised_in_the_caller():
    def work() -> None:
        raise PriorError("no flow", "compute it first")

    wait = in_background(work)
    with pytest.raises(PriorError, match="no flow"):
        wait()


def test_thread_pool_drops_queued_work_when_the_caller_stops():
    """A task's error (or Ctrl-C) reaches the caller, and the tasks not yet started never run: a plain
    ThreadPoolExecutor would run all 20 (a second of work) before the error got out of its block."""
    ran = []

    def task(index: int) -> int:
        if index == 0:
            raise PriorError("first task failed", "")
        ran.append(index)
        time.sleep(0.05)
        return index

    started = time.perf_counter()
    with pytest.raises(PriorError, match="first task failed"), thread_pool(1) as pool:
        list(pool.map(task, range(20)))
    assert len(ran) <= 3 and time.perf_counter() - started < 0.5
    assert cpu_workers(0) >= 1 and cpu_workers(3) == 3


def test_running_work_ends_at_its_next_check_when_the_caller_stops():
    """A long item (a refinement window) started beside a failing one, or before a Ctrl-C, ends at its next
    `raise_if_cancelled` instead of running on while the caller waits for it: here 10,000 steps of 5 ms (50 s).
    A pool that a worker starts stops with that worker's pool; the caller's own thread is never stopped."""
    started = threading.Event()
    steps, ends = [], []

    def task(index: int) -> str:
        if index == 0:
            started.wait(5)
            raise PriorError("first task failed", "")
        started.set()
        try:
            with thread_pool(1) as nested:  # work of a pool's worker, in a pool of its own
                return nested.submit(steps_until_cancelled).result()
        except Cancelled:
            ends.append("outer")
            raise

    def steps_until_cancelled() -> str:
        try:
            for step in range(10_000):
                raise_if_cancelled()
                steps.append(step)
                time.sleep(0.005)
        except Cancelled:
            ends.append("nested")
            raise
        return "ran to the end"

    begun = time.perf_counter()
    with pytest.raises(PriorError, match="first task failed"), thread_pool(2) as pool:
        list(pool.map(task, range(2)))
    assert time.perf_counter() - begun < 5 and len(steps) < 1000 and ends == ["nested", "outer"]
    raise_if_cancelled()  # the caller is not a pool's worker: nothing to stop


def test_ordered_map_keeps_order_and_holds_few_items():
    """Results come in item order although later items finish first, and no more than `ahead` items are
    submitted and not yet taken (pool.map would submit all 12 at once)."""
    lock, outstanding, most = threading.Lock(), [0], [0]

    def task(index: int) -> int:
        with lock:
            outstanding[0] += 1
            most[0] = max(most[0], outstanding[0])
        time.sleep(0.02 * (index % 3 == 0))
        return index * index

    results = []
    with thread_pool(4) as pool:
        for value in ordered_map(pool, task, range(12), ahead=3):
            results.append(value)
            with lock:
                outstanding[0] -= 1
    assert results == [i * i for i in range(12)]
    assert most[0] <= 3
