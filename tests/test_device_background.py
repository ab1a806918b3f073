"""`recon4d.device.in_background`: work on a daemon thread whose result or error reaches the caller."""
from __future__ import annotations

import threading

import pytest

from recon4d.device import in_background
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


def test_error_is_raised_in_the_caller():
    def work() -> None:
        raise PriorError("no flow", "compute it first")

    wait = in_background(work)
    with pytest.raises(PriorError, match="no flow"):
        wait()
