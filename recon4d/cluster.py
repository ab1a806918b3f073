"""Run many independent jobs: serially in this process, or as Ray core tasks on a local or remote cluster.

The one runner behind `recon4d fit-batch`, `recon4d gen encode` and `recon4d gen corpus`. A job is a
dict handed to a module-level function ``fn(job) -> value``; each job ends as a :class:`JobResult`.

- ``address=None`` and ``workers <= 1``: jobs run one after the other in this process (no Ray).
- otherwise each job is one Ray task with its own resource request (CPUs, GPUs). Without an address a
  local Ray is started on demand, sized to ``workers`` jobs at a time; ``address`` joins an existing
  cluster: ``auto`` (the cluster this machine belongs to), ``HOST:PORT`` (the head's GCS address, for a
  driver that runs on a cluster node) or ``ray://HOST:PORT`` (Ray Client, needs ``pip install "ray[client]"``).

Failures are isolated. ``fn`` raising :class:`recon4d.errors.InputError` (bad input: retrying cannot help)
gives a ``failed`` result with its one-line message and is not retried; :class:`JobSkipped` gives a
``skipped`` result. Any other exception, and a worker that dies (killed, out of memory, node lost), is a
system failure: Ray runs the task again, up to ``max_retries`` more times, before it is reported as
``failed``. Ctrl-C cancels the outstanding tasks (their workers are killed) and re-raises
``KeyboardInterrupt`` after ``on_result`` has seen every finished job, so a caller's manifest stays exact.

Example:
    >>> def square(job):
    ...     return job["x"] ** 2
    >>> [r.value for r in run_jobs(square, [{"key": "a", "x": 2}, {"key": "b", "x": 3}])]
    [4, 9]
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Self

from recon4d.errors import InputError

Status = Literal["ok", "failed", "skipped"]

#: How often the driver wakes up while tasks run (seconds), to refresh the display and notice Ctrl-C.
POLL_SECONDS = 0.5
#: Seconds to wait for the head node to accept a TCP connection before giving up (Ray itself waits minutes).
CONNECT_TIMEOUT_S = 5.0
#: On a cluster without a ``workers`` cap, tasks kept queued per free job slot, so Ray always has the next
#: task at hand while a Ctrl-C cancels few.
QUEUE_PER_SLOT = 2
_ADDRESS = re.compile(r"^(auto|ray://[A-Za-z0-9._-]+:\d{1,5}|[A-Za-z0-9._-]+:\d{1,5})$")


@dataclass
class JobResult:
    """The outcome of one job. ``value`` is what ``fn`` returned (None unless ``ok``); ``error`` is a
    one-line reason for ``failed`` (and optionally for ``skipped``); ``seconds`` is the wall time of the
    last attempt as the job saw it (for a worker that died: since submission, as the driver saw it)."""

    key: str
    status: Status
    value: Any = None
    error: str | None = None
    seconds: float = 0.0


class JobSkipped(Exception):
    """Raised by a job function when there is nothing to do (e.g. its output already exists)."""


def job_key(job: dict, index: int) -> str:
    """The name a job is reported under: its ``key`` entry, else its position in the list."""
    return str(job.get("key", index))


def check_address(address: str) -> str:
    """`address` if it has one of the accepted forms (see the module docstring), else InputError."""
    address = address.strip()
    if not _ADDRESS.match(address):
        raise InputError(f"--address {address!r} is not a Ray address",
                         hint="use auto, HOST:PORT of the head node, or ray://HOST:PORT")
    return address


def check_reachable(address: str) -> None:
    """InputError unless HOST:PORT of `address` accepts a TCP connection (``auto`` is left to Ray, which
    finds a local cluster or fails at once)."""
    if address == "auto":
        return
    host, port = address.removeprefix("ray://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise InputError(f"cannot reach the Ray head at {address}: {exc.strerror or exc}",
                         hint="start it with `ray start --head` and check host, port and firewall") from None


def check_resources(workers: int, num_cpus_per_job: float, num_gpus_per_job: float, max_retries: int) -> None:
    """InputError for resource requests no scheduler can honour."""
    if not num_cpus_per_job > 0:
        raise InputError(f"CPUs per job must be positive, got {num_cpus_per_job}")
    if not num_gpus_per_job >= 0:
        raise InputError(f"GPUs per job must be zero or positive, got {num_gpus_per_job}")
    if workers < 0:
        raise InputError(f"workers must be zero (as many as the cluster holds) or positive, got {workers}")
    if max_retries < 0:
        raise InputError(f"max_retries must be zero or positive, got {max_retries}")


def run_jobs(fn: Callable[[dict], Any], jobs: list[dict], *, address: str | None = None, workers: int = 1,
             num_cpus_per_job: float = 1, num_gpus_per_job: float = 0, max_retries: int = 2,
             description: str = "", on_result: Callable[[JobResult], None] | None = None) -> list[JobResult]:
    """Run ``fn(job)`` for every job; results in the order of `jobs`.

    Args:
        fn: a module-level function (Ray workers import it by name).
        jobs: one dict per job; ``job["key"]`` names it in results and the display (default: its index).
        address: None (this machine) or a Ray address, see :func:`check_address`.
        workers: jobs at a time. With ``address=None``, 0 or 1 runs them serially in this process, N > 1
            starts a local Ray with N job slots; with an address, 0 means as many as the cluster holds.
        num_cpus_per_job, num_gpus_per_job: Ray resource request of each task (the task's torch threads
            are set to its CPUs, and GPUs are visible to it through ``CUDA_VISIBLE_DEVICES``).
        max_retries: extra attempts after a system failure (worker died, unexpected exception).
        description: label of the progress display.
        on_result: called in this process with each result as soon as it is known (any order).

    Raises:
        InputError: bad address or resources, a cluster that cannot be reached or cannot hold one job,
            duplicate job keys. Raised before any job starts.
        KeyboardInterrupt: Ctrl-C; outstanding tasks are cancelled first.
    """
    check_resources(workers, num_cpus_per_job, num_gpus_per_job, max_retries)
    if address is not None:
        address = check_address(address)
    keys = [job_key(job, i) for i, job in enumerate(jobs)]
    duplicates = sorted(k for k, n in Counter(keys).items() if n > 1)
    if duplicates:
        raise InputError(f"two jobs are named {duplicates[0]!r}", hint="every job needs its own key")
    if not jobs:
        return []
    report = on_result or (lambda result: None)
    if address is None and workers <= 1:
        return _run_serial(fn, jobs, keys, max_retries, description, report)
    with ray_session(address, workers, num_cpus_per_job, num_gpus_per_job) as slots:
        in_flight = workers if workers > 0 else QUEUE_PER_SLOT * slots
        return _run_ray(fn, jobs, keys, in_flight, num_cpus_per_job, num_gpus_per_job, max_retries, description,
                        report)


def execute(fn: Callable[[dict], Any], job: dict, key: str) -> JobResult:
    """One attempt of one job in this process. InputError and JobSkipped become results; any other
    exception propagates (a system failure, for the caller to retry)."""
    start = time.perf_counter()
    try:
        value = fn(job)
    except JobSkipped as exc:
        return JobResult(key, "skipped", None, str(exc) or None, time.perf_counter() - start)
    except InputError as exc:
        return JobResult(key, "failed", None, exc.one_line(), time.perf_counter() - start)
    return JobResult(key, "ok", value, None, time.perf_counter() - start)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _run_serial(fn, jobs, keys, max_retries, description, report) -> list[JobResult]:
    results = []
    with JobDisplay(description, len(jobs)) as display:
        for job, key in zip(jobs, keys):
            display.running(1)
            start = time.perf_counter()
            for attempt in range(max_retries + 1):
                try:
                    result = execute(fn, job, key)
                    break
                except Exception as exc:  # noqa: BLE001 - any failure of fn is a system failure: retry, then report
                    result = JobResult(key, "failed", None, f"{_one_line(exc)} (after {attempt + 1} attempts)",
                                       time.perf_counter() - start)
            results.append(result)
            display.finished(result)
            report(result)
    return results


# ----------------------------------------------------------------------------------------------------------
# Ray


def _task(fn: Callable[[dict], Any], job: dict, key: str, num_cpus: float) -> JobResult:
    """What a Ray worker runs: one attempt, with torch limited to the CPUs the task asked for (Ray sets
    OMP_NUM_THREADS for fresh workers only; a reused worker keeps the threads of its previous task)."""
    threads = max(1, math.floor(num_cpus))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return execute(fn, job, key)


@contextlib.contextmanager
def ray_session(address: str | None, workers: int, num_cpus_per_job: float,
                num_gpus_per_job: float) -> Iterator[int]:
    """Connect to Ray (a local instance with `workers` job slots when `address` is None) and yield how many
    jobs fit on the cluster at once; disconnect (stopping a local instance) afterwards. Reuses a Ray this
    process already joined."""
    try:
        import ray
    except ImportError:
        raise InputError("running on Ray needs the `ray` package", hint='pip install "recon4d[cluster]"') from None
    started = not ray.is_initialized()
    if started:
        options = {"log_to_driver": False, "logging_level": "ERROR", "include_dashboard": False}
        if address is None:
            options["num_cpus"] = max(1, math.ceil(max(workers, 1) * num_cpus_per_job))
        else:
            check_reachable(address)
            options = {"address": address, "log_to_driver": False, "logging_level": "ERROR"}
        try:
            ray.init(**options)
        except Exception as exc:  # noqa: BLE001 - ConnectionError, gRPC errors, no ray[client]: one line for the user
            raise InputError(f"cannot connect to Ray at {address or 'a local instance'}: {_one_line(exc)}",
                             hint="start a cluster with `ray start --head` or fix --address") from None
    try:
        resources = ray.cluster_resources()
        slots = math.floor(resources.get("CPU", 0) / num_cpus_per_job)
        if num_gpus_per_job > 0:
            slots = min(slots, math.floor(resources.get("GPU", 0) / num_gpus_per_job))
        if slots < 1:
            raise InputError(f"the Ray cluster ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs) "
                             f"cannot hold one job of {num_cpus_per_job:g} CPUs and {num_gpus_per_job:g} GPUs",
                             hint="lower the per-job request or add nodes")
        yield slots
    finally:
        if started:
            ray.shutdown()


def _run_ray(fn, jobs, keys, in_flight, num_cpus, num_gpus, max_retries, description,
             report) -> list[JobResult]:
    import ray
    from ray.exceptions import RayTaskError

    remote = ray.remote(_task).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries,
                                       retry_exceptions=True, name=f"recon4d {description or 'job'}")
    results: list[JobResult | None] = [None] * len(jobs)
    pending: dict = {}  # ObjectRef -> (job index, submission time)
    next_job = 0
    with JobDisplay(description, len(jobs)) as display:
        try:
            while next_job < len(jobs) or pending:
                while next_job < len(jobs) and len(pending) < in_flight:
                    ref = remote.remote(fn, jobs[next_job], keys[next_job], num_cpus)
                    pending[ref] = (next_job, time.perf_counter())
                    next_job += 1
                display.running(len(pending))
                done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
                for ref in done:
                    index, submitted = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except RayTaskError as exc:  # fn raised on every attempt
                        cause = exc.cause if exc.cause is not None else exc
                        result = JobResult(keys[index], "failed", None,
                                           f"{_one_line(cause)} (after {max_retries + 1} attempts)",
                                           time.perf_counter() - submitted)
                    except ray.exceptions.RayError as exc:  # the worker died on every attempt, or was cancelled
                        result = JobResult(keys[index], "failed", None,
                                           f"{type(exc).__name__}: the worker died {max_retries + 1} times "
                                           "(killed, out of memory or node lost)", time.perf_counter() - submitted)
                    results[index] = result
                    display.finished(result)
                    report(result)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    return results


# ----------------------------------------------------------------------------------------------------------
# Display


class JobDisplay:
    """A live progress bar across jobs (done/total, ok/failed/skipped counts, jobs running, ETA) with one
    line per finished job printed above it; silent when progress is disabled (RECON4D_NO_PROGRESS)."""

    def __init__(self, description: str, total: int) -> None:
        from recon4d.progress import progress_enabled

        self.description = description or "jobs"
        self.total = total
        self.counts: Counter = Counter()
        self.in_flight = 0
        self.progress = None
        if progress_enabled():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            # Bound to the real stderr now: jobs that run in this process may redirect sys.stderr.
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[state]}"), TimeElapsedColumn(), TextColumn("eta"),
                                     TimeRemainingColumn(), console=Console(file=sys.stderr),
                                     redirect_stdout=False, redirect_stderr=False)
            self.task = self.progress.add_task(self.description, total=total, state="")

    def __enter__(self) -> Self:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.progress is not None:
            self.progress.stop()

    def _state(self) -> str:
        parts = [f"{self.counts[s]} {s}" for s in ("ok", "failed", "skipped") if self.counts[s]]
        return ", ".join(parts + [f"{self.in_flight} running"])

    def running(self, count: int) -> None:
        self.in_flight = count
        if self.progress is not None:
            self.progress.update(self.task, state=self._state())

    def finished(self, result: JobResult) -> None:
        self.counts[result.status] += 1
        self.in_flight = max(0, self.in_flight - 1)
        if self.progress is not None:
            mark = {"ok": "[green]ok[/]", "failed": "[red]failed[/]", "skipped": "[dim]skipped[/]"}[result.status]
            from rich.markup import escape

            reason = f": {escape(result.error)}" if result.error else ""
            self.progress.console.print(f"{mark} {escape(result.key)} ({result.seconds:.1f} s){reason}", markup=True,
                                        highlight=False)
            self.progress.update(self.task, advance=1, state=self._state())
