"""`recon4d fit-batch INPUTS... -o OUT_ROOT`: one `recon4d fit` per input, as Ray tasks (recon4d.cluster).

Each input is fitted into OUT_ROOT/<name>/ exactly as `recon4d fit INPUT --out OUT_ROOT/<name>` would (the
job runs that command line), its output goes to OUT_ROOT/batch_logs/<name>.log, and OUT_ROOT/batch.json
records every input's outcome. Re-running the same command skips fits that finished with the same input and
flags, and resumes interrupted ones from their checkpoints. One batch writes to an OUT_ROOT at a time
(OUT_ROOT/.lock). Exit code: 0 when every input is fitted, 1 when some failed (listed in batch.json), 2 for
bad arguments (before any work), 130 after Ctrl-C.
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

from recon4d.batch.fit_job import fit_summary, run_fit
from recon4d.batch.inputs import BatchInput, expand_inputs
from recon4d.batch.manifest import (
    MANIFEST_NAME,
    fingerprint,
    is_finished,
    new_entry,
    read_manifest,
    utc_now,
    write_manifest,
)
from recon4d.cluster import JobResult, check_address, run_jobs
from recon4d.errors import InputError
from recon4d.io.outputs import OutputLock

#: Folder of OUT_ROOT with one log per input.
LOG_DIR = "batch_logs"
#: Defaults of the resource flags: one CPU thread per fit is the most fits per core-hour on CPU.
DEFAULT_CPUS_PER_FIT = 1.0
DEFAULT_GPUS_PER_FIT = 0.0
DEFAULT_MAX_RETRIES = 2
#: Rows of the final table printed to the terminal; larger batches get counts only (batch.json has all).
MAX_TABLE_ROWS = 40


def register(commands: argparse._SubParsersAction) -> None:
    """Add `fit-batch`, with every option of `fit` (except its input and --out) passed through to the fits."""
    parser = commands.add_parser(
        "fit-batch", help="fit many videos, one Ray task each, into OUT_ROOT/<name>/ plus OUT_ROOT/batch.json",
        description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                        help="video, image folder, folder of videos/image folders, or .txt/.csv list of them")
    parser.add_argument("--out", "-o", type=Path, required=True, help="OUT_ROOT: one folder per input, batch.json")
    parser.add_argument("--address", default=None,
                        help="Ray cluster: auto | HOST:PORT of the head | ray://HOST:PORT (default: this machine, "
                             "a local Ray started on demand)")
    parser.add_argument("--workers", type=int, default=None,
                        help="fits at a time (default: CPUs / --cpus-per-fit here, as many as the cluster holds "
                             "with --address); 1 runs them one after another in this process, without Ray")
    parser.add_argument("--cpus-per-fit", type=float, default=DEFAULT_CPUS_PER_FIT,
                        help="CPUs Ray reserves for each fit, also its torch threads "
                             f"(default: {DEFAULT_CPUS_PER_FIT:g})")
    parser.add_argument("--gpus-per-fit", type=float, default=DEFAULT_GPUS_PER_FIT,
                        help="GPUs Ray reserves for each fit (fractions share a GPU); > 0 fits on cuda "
                             f"(default: {DEFAULT_GPUS_PER_FIT:g}, CPU)")
    parser.add_argument("--max-retries", type=int, default=DEFAULT_MAX_RETRIES,
                        help="extra attempts after a system failure such as a killed worker; bad inputs are "
                             f"never retried (default: {DEFAULT_MAX_RETRIES})")
    group = parser.add_argument_group("fit options", "passed to every `recon4d fit` (see `recon4d fit --help`)")
    fit_actions = [a for a in commands.choices["fit"]._actions if a.option_strings and a.dest not in ("help", "out")]
    for action in fit_actions:
        group._add_action(action)
    parser.set_defaults(handler=_cmd_fit_batch, fit_batch_actions=fit_actions)


def _absolute_if_file(value: object) -> object:
    """Paths (and file-like option values, e.g. a preset YAML) made absolute: workers run elsewhere."""
    if isinstance(value, Path) or (isinstance(value, str) and Path(value).suffix and Path(value).exists()):
        return Path(value).expanduser().resolve()
    return value


def fit_flags(args: argparse.Namespace, actions: list[argparse.Action]) -> list[str]:
    """The fit options the user gave, as `recon4d fit` flags (only those that differ from fit's defaults)."""
    flags: list[str] = []
    for action in actions:
        value = getattr(args, action.dest)
        if value == action.default:
            continue
        option = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            flags.append(option if value else f"--no-{option.removeprefix('--')}")
        elif action.nargs == 0:
            flags.append(option)
        else:
            flags += [option, str(_absolute_if_file(value))]
    return flags


def writable_root(path: Path) -> Path:
    """`path` made absolute, created, and proven writable; InputError otherwise."""
    root = path.expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        raise InputError(f"cannot write to OUT_ROOT {root}: {exc.strerror or exc}") from None
    return root


def _device(args: argparse.Namespace) -> str:
    if args.gpus_per_fit > 0:
        return "cuda"
    if args.device == "cuda":
        raise InputError("--device cuda needs --gpus-per-fit G > 0", hint="so that Ray gives each fit a GPU")
    return "cpu"


def _workers(args: argparse.Namespace, jobs: int) -> int:
    if args.address:
        return args.workers or 0  # 0: the cluster's resources decide
    workers = args.workers or math.floor((os.cpu_count() or 1) / args.cpus_per_fit)
    return max(1, min(jobs, workers))  # one job runs in this process, without starting Ray


def _check_flags(args: argparse.Namespace) -> None:
    if not args.cpus_per_fit > 0:
        raise InputError(f"--cpus-per-fit must be positive, got {args.cpus_per_fit:g}")
    if not args.gpus_per_fit >= 0:
        raise InputError(f"--gpus-per-fit must be zero or positive, got {args.gpus_per_fit:g}")
    if args.workers is not None and args.workers < 0:
        raise InputError(f"--workers must be zero or positive, got {args.workers}")
    if args.max_retries < 0:
        raise InputError(f"--max-retries must be zero or positive, got {args.max_retries}")


def _cmd_fit_batch(args: argparse.Namespace) -> int:
    _check_flags(args)
    address = check_address(args.address) if args.address is not None else None
    device = _device(args)
    if args.preset is not None:
        from recon4d.fit.config import load_config

        load_config(str(_absolute_if_file(args.preset)))  # a bad preset fails here, not once per input
    inputs = expand_inputs(args.inputs)
    out_root = writable_root(args.out)
    with OutputLock(out_root):  # one batch per OUT_ROOT at a time: batch.json has one writer
        return _run_batch(args, inputs, out_root, address, device)


def _run_batch(args: argparse.Namespace, inputs: list[BatchInput], out_root: Path, address: str | None,
               device: str) -> int:
    flags = fit_flags(args, args.fit_batch_actions)
    previous = read_manifest(out_root)
    entries: dict[str, dict] = {}
    jobs = []
    for item in inputs:
        out, log = out_root / item.name, out_root / LOG_DIR / f"{item.name}.log"
        current = fingerprint(item, flags, device)
        old = previous.get(item.name)
        if not args.restart and is_finished(old, current, out):
            entries[item.name] = {**old, **(fit_summary(out) or {}), "status": "skipped"}
            continue
        entries[item.name] = new_entry(item, out, log, current)
        jobs.append({"key": item.name, "input": str(item.path), "out": str(out), "log": str(log),
                     "device": device, "flags": flags})
    others = [entry for name, entry in previous.items() if name not in entries]  # earlier batches into OUT_ROOT

    def save() -> None:
        write_manifest(out_root, list(entries.values()) + others, flags)

    def record(result: JobResult) -> None:
        entry = entries[result.key]
        entry.update(status=result.status, seconds=round(result.seconds, 3), error=result.error, finished=utc_now())
        if result.status == "ok":
            entry.update(result.value)
        save()

    skipped = len(inputs) - len(jobs)
    if skipped:
        print(f"fit-batch: {skipped} of {len(inputs)} inputs already fitted with these flags; skipping them")
    start = time.perf_counter()
    try:
        run_jobs(run_fit, jobs, address=address, workers=_workers(args, len(jobs)), num_cpus_per_job=args.cpus_per_fit,
                 num_gpus_per_job=args.gpus_per_fit, max_retries=args.max_retries, description="fit-batch",
                 on_result=record)
    except KeyboardInterrupt:
        for entry in entries.values():
            if entry["status"] == "pending":
                # a fit can finish its files before the interrupt reaches it: record it as finished, so the
                # manifest matches the disk and a rerun skips it instead of refusing its existing output
                summary = fit_summary(Path(entry["output"]))
                if summary is None:
                    entry["status"] = "interrupted"
                else:
                    entry.update(summary, status="ok", finished=utc_now())
        save()
        raise
    save()  # also when every fit was skipped (no results came)
    _print_summary(list(entries.values()), out_root, time.perf_counter() - start)
    return 1 if any(entry["status"] == "failed" for entry in entries.values()) else 0


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _print_summary(entries: list[dict], out_root: Path, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if len(entries) <= MAX_TABLE_ROWS:
        table = Table("input", "status", "seconds", "PSNR", "held-out PSNR", "output / error")
        for entry in entries:
            detail = entry["error"] if entry["status"] == "failed" else entry["output"]
            table.add_row(entry["name"], entry["status"], _number(entry["seconds"]), _number(entry["psnr"]),
                          _number(entry["held_out_psnr"]), detail)
        console.print(table)
    counts = {s: sum(e["status"] == s for e in entries) for s in ("ok", "skipped", "failed")}
    console.print(f"fit-batch: {counts['ok']} fitted, {counts['skipped']} skipped, {counts['failed']} failed "
                  f"in {seconds:.1f} s; manifest {out_root / MANIFEST_NAME}", markup=False, soft_wrap=True)
