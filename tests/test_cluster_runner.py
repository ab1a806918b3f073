"""recon4d.cluster.run_jobs: serial in-process semantics, and real local Ray tasks (2 workers) with input
errors not retried, exceptions and killed workers retried, bad addresses and resources refused."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from recon4d.cluster import JobResult, JobSkipped, run_jobs
from recon4d.errors import InputError

os.environ.setdefault("RECON4D_NO_PROGRESS", "1")


def attempt(job: dict) -> int:
    """Record this attempt in job["log"] (one line per attempt, with the worker's pid); the attempt number."""
    log = Path(job["log"])
    with open(log, "a") as stream:
        stream.write(f"{os.getpid()}\n")
    return len(log.read_text().splitlines())


def work(job: dict) -> dict:
    """A job whose behaviour the test chooses: ok, bad input, skip, raise or die on early attempts."""
    n = attempt(job)
    kind = job["kind"]
    if kind == "bad":
        raise InputError(f"{job['key']} is unreadable")
    if kind == "skip":
        raise JobSkipped("already done")
    if kind == "raise" and n <= job.get("fail_times", 1):
        raise RuntimeError(f"flaky attempt {n}\nsecond line")
    if kind == "die" and n <= job.get("fail_times", 1):
        os.kill(os.getpid(), signal.SIGKILL)
    return {"square": job["x"] ** 2, "pid": os.getpid(), "attempt": n}


def make_jobs(tmp_path: Path, specs: list[tuple[str, str, dict]]) -> list[dict]:
    return [{"key": key, "kind": kind, "x": i, "log": str(tmp_path / f"{key}.log"), **extra}
            for i, (key, kind, extra) in enumerate(specs)]


def attempts(job: dict) -> int:
    path = Path(job["log"])
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_serial_statuses_retries_and_callback(tmp_path):
    jobs = make_jobs(tmp_path, [("a", "ok", {}), ("b", "bad", {}), ("c", "skip", {}), ("d", "raise", {}),
                                ("e", "raise", {"fail_times": 5})])
    seen: list[JobResult] = []
    results = run_jobs(work, jobs, max_retries=2, on_result=seen.append)
    assert [r.key for r in results] == ["a", "b", "c", "d", "e"] == [r.key for r in seen]
    assert [r.status for r in results] == ["ok", "failed", "skipped", "ok", "failed"]
    assert results[0].value["square"] == 0 and results[3].value["square"] == 9
    assert results[0].value["pid"] == os.getpid()  # serial: in this process
    assert results[1].error == "b is unreadable" and attempts(jobs[1]) == 1  # input errors: never retried
    assert results[2].error == "already done"
    assert results[3].value["attempt"] == 2  # the flaky one succeeded on its retry
    assert attempts(jobs[4]) == 3 and results[4].error == "RuntimeError: flaky attempt 3 (after 3 attempts)"


def test_refuses_bad_requests_before_running(tmp_path):
    jobs = make_jobs(tmp_path, [("a", "ok", {})])
    for kwargs, text in [({"address": "not an address"}, "not a Ray address"),
                         ({"address": "127.0.0.1:1"}, "cannot reach the Ray head"),
                         ({"num_cpus_per_job": 0}, "CPUs per job must be positive"),
                         ({"num_gpus_per_job": -1}, "GPUs per job"),
                         ({"workers": -2}, "workers must be")]:
        with pytest.raises(InputError, match=text):
            run_jobs(work, jobs, **kwargs)
    with pytest.raises(InputError, match="two jobs are named 'a'"):
        run_jobs(work, jobs + jobs)
    assert attempts(jobs[0]) == 0
    assert run_jobs(work, []) == []


@pytest.fixture(scope="module")
def local_ray():
    """One real local Ray with 2 CPUs for the module (run_jobs joins it instead of starting its own)."""
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_tasks_isolate_retry_and_survive_killed_workers(local_ray, tmp_path):
    jobs = make_jobs(tmp_path, [("ok1", "ok", {}), ("ok2", "ok", {}), ("bad", "bad", {}),
                                ("flaky", "raise", {}), ("killed", "die", {}), ("doomed", "die", {"fail_times": 9})])
    seen: list[str] = []
    results = {r.key: r for r in run_jobs(work, jobs, workers=2, max_retries=2, description="test",
                                          on_result=lambda r: seen.append(r.key))}
    assert sorted(seen) == sorted(results)
    assert {k: r.status for k, r in results.items()} == {"ok1": "ok", "ok2": "ok", "bad": "failed", "flaky": "ok",
                                                        "killed": "ok", "doomed": "failed"}
    assert all(r.value["pid"] != os.getpid() for r in results.values() if r.status == "ok")  # in Ray workers
    assert results["ok2"].value["square"] == 1
    assert results["bad"].error == "bad is unreadable" and attempts(jobs[2]) == 1
    assert results["flaky"].value["attempt"] == 2
    # The killed worker's task ran again in a new process and completed.
    killed_pids = Path(jobs[4]["log"]).read_text().split()
    assert results["killed"].value["attempt"] == 2 and killed_pids[0] != killed_pids[1]
    assert attempts(jobs[5]) == 3 and "worker died 3 times" in results["doomed"].error


def test_address_forms():
    from recon4d.cluster import check_address

    for good in ("auto", "10.0.0.5:6379", "head-node.example.org:6379", "ray://head:10001", " auto "):
        assert check_address(good) == good.strip()
    for bad in ("", "head", "http://head:8265", "ray://head", "head:port", "a b:1", "ray://:10001"):
        with pytest.raises(InputError, match="is not a Ray address"):
            check_address(bad)
