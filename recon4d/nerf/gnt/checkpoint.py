"""GNT models and training state on disk: safetensors + JSON, nothing that executes code when loaded.

A model is either a folder written by `recon4d nerf train` (``model.safetensors``, ``config.json``,
``train_state.safetensors`` with the optimiser moments, ``log.jsonl``) or a pair ``NAME.safetensors`` +
``NAME.json`` (the models shipped in ``recon4d/nerf/models``). Writes are atomic.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from recon4d.errors import InputError
from recon4d.io.atomic import atomic_path, write_bytes_atomic
from recon4d.nerf.gnt.config import GNTConfig
from recon4d.nerf.gnt.model import GNT

FORMAT = "recon4d.gnt"
VERSION = 1
WEIGHTS, CONFIG, TRAIN_STATE, LOG = "model.safetensors", "config.json", "train_state.safetensors", "log.jsonl"
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "models"
SHIPPED = {"moe": SHIPPED_DIR / "gnt_move.safetensors", "dense": SHIPPED_DIR / "gnt_dense.safetensors"}


def _paths(path: Path) -> tuple[Path, Path]:
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    return path / WEIGHTS, path / CONFIG


def save_model(model: GNT, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write weights + JSON (format, version, model config, and `extra` such as step, metrics, recipe)."""
    from safetensors.torch import save_file

    weights, config = _paths(Path(path))
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": str(VERSION)})
    content = {"format": FORMAT, "version": VERSION, "model": model.config.to_json(), **(extra or {})}
    write_bytes_atomic(config, (json.dumps(content, indent=1) + "\n").encode())
    return weights


def read_model_json(path: str | os.PathLike) -> dict:
    """The JSON beside a model (raises InputError for a missing or foreign one)."""
    _, config = _paths(Path(path))
    try:
        content = json.loads(config.read_text())
    except FileNotFoundError as exc:
        raise InputError(f"no GNT model at {path}", hint=f"expected {config.name} there") from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"{config} is not a GNT model description: {exc}") from exc
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise InputError(f"{path} is not a recon4d GNT model")
    if int(content.get("version", 0)) > VERSION:
        raise InputError(f"{path} was written by a newer recon4d (model format {content['version']})")
    return content


def load_model(path: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> tuple[GNT, dict]:
    """(model in eval mode, its JSON). None loads the shipped GNT-MOVE model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path) if path is not None else SHIPPED["moe"]
    content = read_model_json(path)
    weights, _ = _paths(path)
    try:
        state = load_file(str(weights), device=str(device))
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise InputError(f"cannot read the GNT weights {weights}: {exc}") from exc
    model = GNT(GNTConfig.from_json(content["model"])).to(device)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensor shapes of another architecture (e.g. an older recon4d's model)
        raise InputError(f"{weights} does not match this version's GNT architecture (tensor shapes differ)") from exc
    if missing or unexpected:
        raise InputError(f"{weights} does not match its config ({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    return model.eval(), content


def save_train_state(optimizer: torch.optim.Optimizer, step: int, path: Path) -> None:
    """Adam moments and the step count, as flat tensors."""
    from safetensors.torch import save_file

    tensors = {"step": torch.tensor(step)}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    with atomic_path(path / TRAIN_STATE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})


def load_train_state(optimizer: torch.optim.Optimizer, path: Path) -> int:
    """Restore what save_train_state wrote; returns the step to continue from."""
    from safetensors.torch import load_file

    tensors = load_file(str(path / TRAIN_STATE))
    state = optimizer.state_dict()
    per_param: dict[int, dict] = {}
    for name, value in tensors.items():
        if name == "step":
            continue
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = value
    state["state"] = per_param
    optimizer.load_state_dict(state)
    return int(tensors["step"])


def append_log(path: Path, record: dict) -> None:
    with open(path / LOG, "a") as handle:
        handle.write(json.dumps(record) + "\n")
