"""Per-frame checkpoint of the sequential fit: safetensors tensors + a JSON header, never pickle.

``OUT/.checkpoint/state.safetensors`` holds the trainable Gaussians, one camera per fitted frame and the
dynamic states; its metadata holds the run key (which clip and settings it belongs to), the seconds spent
so far and the per-frame statistics. Loading it cannot execute code. A file that is truncated, foreign or
does not match the expected schema is reported as :class:`DamagedCheckpoint`, and the fit starts over
instead of failing on every rerun.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from recon4d.fit.model import GaussianParams
from recon4d.fit.sequential import FitState
from recon4d.io.atomic import atomic_path

CHECKPOINT_NAME = "state.safetensors"
LEGACY_NAMES = ("state.pt",)  # pickled checkpoints of recon4d < 0.1.1: never loaded, removed on sight
FORMAT_NAME = "recon4d.fit-checkpoint"
FORMAT_VERSION = 2  # 2: death frames and retired Gaussians of temporal windows

_GAUSSIAN_DTYPES = {"means": torch.float32, "quats": torch.float32, "log_scales": torch.float32,
                    "opacity_logits": torch.float32, "color_logits": torch.float32, "is_dynamic": torch.bool,
                    "birth_frame": torch.int32, "death_frame": torch.int32}


class DamagedCheckpoint(Exception):
    """The checkpoint file cannot be used; the message says why in one line."""


@dataclass
class Checkpoint:
    key: str
    state: FitState
    seconds: dict[str, float]


def save_checkpoint(path: str | Path, key: str, state: FitState, seconds: dict[str, float]) -> None:
    """Write the fit state after a frame, atomically."""
    from safetensors.torch import save_file

    tensors = {f"gaussians/{name}": value for name, value in state.gaussians.state_dict().items()}
    if state.retired is not None:
        tensors.update({f"retired/{name}": value for name, value in state.retired.state_dict().items()})
    for k, pose in enumerate(state.camera_from_world):
        tensors[f"camera_from_world/{k}"] = pose
    for k, (ids, means, quats) in enumerate(state.dynamic_states):
        tensors.update({f"dynamic/{k}/ids": ids, f"dynamic/{k}/means": means, f"dynamic/{k}/quats": quats})
    tensors = {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
    header = {"key": key, "seconds": seconds, "frame_stats": state.frame_stats,
              "frames": len(state.camera_from_world), "dynamic_states": len(state.dynamic_states),
              "window_start": state.window_start}
    metadata = {"format": FORMAT_NAME, "version": str(FORMAT_VERSION), "header": json.dumps(header)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_checkpoint(path: str | Path, device: torch.device) -> Checkpoint:
    """Read a checkpoint; raises DamagedCheckpoint for anything but a complete file of this format."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as reader:
            metadata = reader.metadata() or {}
            if metadata.get("format") != FORMAT_NAME or metadata.get("version") != str(FORMAT_VERSION):
                raise DamagedCheckpoint("not a checkpoint of this recon4d version")
            header = json.loads(metadata["header"])
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}
    except DamagedCheckpoint:
        raise
    except Exception as exc:  # safetensors/JSON errors of truncated or garbage files
        raise DamagedCheckpoint(f"unreadable ({type(exc).__name__})") from exc
    try:
        return _parse(header, tensors, device)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DamagedCheckpoint(f"unexpected contents ({type(exc).__name__}: {exc})") from exc


def _parse(header: dict, tensors: dict[str, torch.Tensor], device: torch.device) -> Checkpoint:
    if not isinstance(header, dict) or not isinstance(header["key"], str):
        raise ValueError("header is not an object with a key")
    frames, num_dynamic = int(header["frames"]), int(header["dynamic_states"])
    gaussians = _gaussian_rows(tensors, "gaussians", device)
    retired = _gaussian_rows(tensors, "retired", device) if "retired/means" in tensors else None
    window_start = int(header.get("window_start", 0))
    if not 0 <= window_start <= max(frames - 1, 0):
        raise ValueError(f"window start {window_start} is outside the {frames} frames")
    cameras = [tensors[f"camera_from_world/{k}"].to(device) for k in range(frames)]
    if any(tuple(p.shape) != (4, 4) for p in cameras):
        raise ValueError("a camera is not 4x4")
    dynamic = [tuple(tensors[f"dynamic/{k}/{part}"].to(device) for part in ("ids", "means", "quats"))
               for k in range(num_dynamic)]
    stats = header["frame_stats"]
    if not isinstance(stats, list) or len(stats) != frames:
        raise ValueError("frame statistics do not match the frames")
    seconds = {str(k): float(v) for k, v in dict(header.get("seconds", {})).items()}
    state = FitState(gaussians=GaussianParams(**gaussians), camera_from_world=cameras,
                     dynamic_states=dynamic, frame_stats=list(stats),
                     retired=None if retired is None else GaussianParams(**retired), window_start=window_start)
    return Checkpoint(key=header["key"], state=state, seconds=seconds)


def _gaussian_rows(tensors: dict[str, torch.Tensor], prefix: str, device: torch.device) -> dict[str, torch.Tensor]:
    """The Gaussian rows stored under `prefix/` with their expected dtypes, all of one length."""
    rows = {}
    for name, dtype in _GAUSSIAN_DTYPES.items():
        value = tensors[f"{prefix}/{name}"]
        if value.dtype != dtype:
            raise ValueError(f"{prefix}/{name} has dtype {value.dtype}")
        rows[name] = value.to(device)
    count = rows["means"].shape[0]
    if any(v.shape[0] != count for v in rows.values()):
        raise ValueError(f"{prefix} fields differ in length")
    return rows
