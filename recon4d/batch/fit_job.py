"""One job of `recon4d fit-batch`: the `recon4d fit` command line run in this process (a Ray worker, or the
driver for serial runs), so each output folder is exactly what `recon4d fit` writes, checkpoint and resume
included. Its stdout and stderr go to a log file of the batch.

Exit codes map to the runner's failure classes: 2 (bad input) raises InputError, which is not retried; any
other failure raises RuntimeError, a system failure that the runner retries (the retry resumes from the
fit's checkpoint).
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

from recon4d.errors import InputError

#: Files a finished `recon4d fit` has written.
FIT_OUTPUTS = ("scene.r4d", "metrics.json")
#: Exit code of `recon4d` after Ctrl-C.
INTERRUPTED_EXIT = 130


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def fit_command(job: dict) -> list[str]:
    """The `recon4d` argv of a job: {"input", "out", "device", "flags"}."""
    return ["--device", job["device"], "fit", job["input"], "--out", job["out"], *job["flags"]]


def fit_summary(out: Path) -> dict | None:
    """PSNR and size of a finished fit from its metrics.json; None when the fit has not finished."""
    if not all((out / name).is_file() for name in FIT_OUTPUTS):
        return None
    try:
        metrics = json.loads((out / "metrics.json").read_text())
        return {"psnr": metrics["fitted"]["psnr"], "held_out_psnr": metrics["held_out"].get("psnr"),
                "frames": metrics["frames"], "gaussians": metrics["gaussians"],
                "fit_seconds": metrics.get("seconds_total")}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _last_error(log: Path, offset: int) -> str:
    """The one-line error `recon4d` printed during this attempt (the log from byte `offset` on)."""
    with open(log, "rb") as stream:
        stream.seek(offset)
        lines = stream.read().decode("utf-8", "replace").splitlines()
    errors = [line for line in lines if line.startswith("recon4d: ")]
    text = errors[-1] if errors else (lines[-1] if lines else "no output")
    for prefix in ("recon4d: error: ", "recon4d: "):
        text = text.removeprefix(prefix)
    return text


def run_fit(job: dict) -> dict:
    """Run one fit (see :func:`fit_command`), appending its output to ``job["log"]``; its summary on success.

    Raises:
        InputError: the fit exited with code 2 (bad input).
        KeyboardInterrupt: the fit was interrupted.
        RuntimeError: any other failure (retried by the runner).
    """
    from recon4d.cli import main

    argv = fit_command(job)
    log = Path(job["log"])
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as stream:
        offset = stream.tell()
        stream.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} host {platform.node()} pid {os.getpid()}: "
                     f"recon4d {' '.join(argv)}\n")
        stream.flush()
        with (_environment(RECON4D_NO_PROGRESS="1"), contextlib.redirect_stdout(stream),
              contextlib.redirect_stderr(stream)):
            code = main(argv)
    if code == 0:
        summary = fit_summary(Path(job["out"]))
        if summary is None:
            raise RuntimeError(f"recon4d fit exited 0 but {job['out']} lacks {' or '.join(FIT_OUTPUTS)}")
        return {**summary, "host": platform.node()}  # where the output was written (per-node disks)
    message = _last_error(log, offset)
    if code == 2:
        raise InputError(message)
    if code == INTERRUPTED_EXIT:
        raise KeyboardInterrupt
    raise RuntimeError(f"recon4d fit exited with code {code}: {message}")
