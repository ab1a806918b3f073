"""OUT_ROOT/batch.json: one entry per input of `recon4d fit-batch`, rewritten atomically after every fit.

Entry fields: name, input, status (ok | failed | skipped | pending | interrupted), seconds (wall time of the
last attempt), psnr and held_out_psnr (from the fit's metrics.json), frames, gaussians, fit_seconds (the
fit's own total), host (the node that wrote the output), output, log, error (one line, for failures),
fingerprint (input size/mtime + fit flags: a finished fit is skipped on a re-run only while it matches),
finished (UTC time).

Example:
    {"format": "recon4d.batch/1", "updated": "2026-12-03T07:00:00Z", "fit_flags": ["--preset", "fast"],
     "counts": {"ok": 2, "failed": 1},
     "inputs": [{"name": "cup", "status": "ok", "psnr": 38.3, "output": "/data/out/cup", ...}, ...]}
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

from recon4d.batch.fit_job import fit_summary
from recon4d.batch.inputs import BatchInput, fingerprint_source
from recon4d.errors import InputError
from recon4d.io.atomic import write_bytes_atomic

MANIFEST_NAME = "batch.json"
MANIFEST_FORMAT = "recon4d.batch/1"
#: Statuses of a fit whose output is complete.
DONE = ("ok", "skipped")


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def fingerprint(item: BatchInput, flags: list[str], device: str) -> str:
    """A hash of what decides a fit's result: the input's path, size and mtime, the fit flags, the device."""
    key = json.dumps([str(item.path), fingerprint_source(item.path), flags, device])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def read_manifest(out_root: Path) -> dict[str, dict]:
    """Entries of an existing manifest by input name; {} when there is none."""
    path = out_root / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path} is not readable JSON: {exc}", hint="move it away to start a new batch") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{path} is not a {MANIFEST_FORMAT} manifest", hint="choose another OUT_ROOT")
    return {entry["name"]: entry for entry in data.get("inputs", [])}


def is_finished(entry: dict | None, fingerprint_now: str, out: Path) -> bool:
    """True when a previous run finished this fit with the same input and flags and its files are there."""
    return (entry is not None and entry.get("status") in DONE and entry.get("fingerprint") == fingerprint_now
            and fit_summary(out) is not None)


def new_entry(item: BatchInput, out: Path, log: Path, fingerprint_now: str) -> dict:
    return {"name": item.name, "input": str(item.path), "status": "pending", "seconds": None, "psnr": None,
            "held_out_psnr": None, "frames": None, "gaussians": None, "fit_seconds": None, "host": None,
            "output": str(out), "log": str(log), "error": None, "fingerprint": fingerprint_now, "finished": None}


def write_manifest(out_root: Path, entries: list[dict], flags: list[str]) -> None:
    counts = Counter(entry["status"] for entry in entries)
    data = {"format": MANIFEST_FORMAT, "updated": utc_now(), "fit_flags": flags, "counts": dict(counts),
            "inputs": entries}
    write_bytes_atomic(out_root / MANIFEST_NAME, json.dumps(data, indent=1).encode())
