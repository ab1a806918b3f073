"""Building, saving, loading and running a student; the model folder format.

A model folder holds ``model.safetensors`` (weights and the ray-frame buffers) and ``model.json`` (kind,
architecture config, the fit it was distilled from, its state and working resolution). Nothing in it executes
code when loaded.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from recon4d.errors import InputError
from recon4d.geometry.camera import scale_camera_matrix
from recon4d.io.atomic import atomic_path, write_bytes_atomic
from recon4d.nerf.nelf.config import MODEL_NAMES, DistillConfig
from recon4d.nerf.nelf.encoding import RayFrame
from recon4d.nerf.nelf.nerdf import NeRDFStudent
from recon4d.nerf.nelf.r2l import R2LStudent
from recon4d.nerf.nelf.rays import batch_rays, check_resolution

MODEL_FORMAT = "recon4d.nelf"
WEIGHTS_FILE, INFO_FILE = "model.safetensors", "model.json"


@dataclass
class StudentInfo:
    """What model.json records besides the architecture.

    Attributes:
        fit_dir: the fit the student was distilled from; state: "static" or "time T";
        width, height: the fit's working resolution.
        probe_world_from_camera, probe_K: one held-out camera (4x4, 3x3 at width x height), which export checks
            render without the scene.
    """

    fit_dir: str
    state: str
    width: int
    height: int
    probe_world_from_camera: list[list[float]]
    probe_K: list[list[float]]


def probe_rays(model: nn.Module, info: StudentInfo, scale: int = 1) -> torch.Tensor:
    """Input rays [1, 6, h, w] of the probe camera at `scale` times the working resolution."""
    width, height = scale * info.width, scale * info.height
    K = scale_camera_matrix(torch.tensor(info.probe_K, dtype=torch.float64), scale, scale)
    pose = torch.tensor(info.probe_world_from_camera, dtype=torch.float64)
    return student_rays(model, pose[None], K[None].float(), width, height)


def build_student(config: DistillConfig, frame: RayFrame | None = None) -> nn.Module:
    """A freshly initialised student of config.model."""
    if config.model == "r2l":
        return R2LStudent(config.r2l, frame)
    if config.model == "nerdf":
        return NeRDFStudent(config.nerdf, frame)
    raise InputError(f"unknown light-field model {config.model!r}", hint=f"use {' or '.join(MODEL_NAMES)}")


def input_factor(model: nn.Module) -> int:
    """How much coarser than the output the ray grid of `model` is (its super-resolution factor, or 1)."""
    return model.config.sr_factor if isinstance(model, R2LStudent) else 1


def check_student_resolution(model: nn.Module, width: int, height: int) -> None:
    """InputError unless `model` can render width x height."""
    check_resolution(width, height, input_factor(model))


def student_rays(model: nn.Module, poses: torch.Tensor, Ks: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Input rays [B, 6, H/f, W/f] of `model` for cameras poses [B, 4, 4] and Ks [B, 3, 3] at width x height."""
    factor = input_factor(model)
    check_resolution(width, height, factor)
    low = scale_camera_matrix(Ks.double(), 1 / factor, 1 / factor)
    return batch_rays(poses, low, width // factor, height // factor)


def student_color(model: nn.Module, rays: torch.Tensor) -> torch.Tensor:
    """Run `model` on rays -> RGB [B, 3, H, W]."""
    out = model(rays)
    return out[0] if isinstance(out, tuple) else out


def save_student(model: nn.Module, info: StudentInfo, config: DistillConfig, folder: str | os.PathLike) -> Path:
    """Write model.safetensors and model.json into `folder` (atomically each)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": MODEL_FORMAT})
    meta = {"format": MODEL_FORMAT, "kind": config.model, "config": config.to_dict(), "info": asdict(info)}
    write_bytes_atomic(folder / INFO_FILE, json.dumps(meta, indent=2).encode())
    return folder


def load_student(folder: str | os.PathLike) -> tuple[nn.Module, StudentInfo, DistillConfig]:
    """Read a model folder -> (student in eval mode, info, config); InputError for a missing or foreign one."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / INFO_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise InputError(f"no light-field model in {folder}", hint="run `recon4d nerf distill FIT_DIR -o MODEL` first")
    try:
        meta = json.loads((folder / INFO_FILE).read_text())
        if meta.get("format") != MODEL_FORMAT:
            raise InputError(f"{folder / INFO_FILE} is not a recon4d light-field model")
        config = DistillConfig.from_dict(meta["config"])
        info = StudentInfo(**meta["info"])
        model = build_student(config)
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    except InputError:
        raise
    except Exception as exc:  # truncated JSON, missing keys, wrong shapes
        raise InputError(f"cannot read the light-field model in {folder}: {type(exc).__name__}") from exc
    return model.eval(), info, config
