"""Generator model directories: weights as safetensors with a JSON config, never pickles.

    MODEL_DIR/model.safetensors     the 1-RF velocity model (EMA weights; after the render stage, if any)
    MODEL_DIR/reflow.safetensors    the 2-RF model trained on the 1-RF model's (noise, sample) pairs
    MODEL_DIR/onestep.safetensors   the one-step student distilled from the 2-RF model
    MODEL_DIR/refiner.safetensors   FlowTurbo's small velocity refiner
    MODEL_DIR/boss.json             BOSS step schedules per step budget
    MODEL_DIR/text_cache.safetensors  MiniLM embeddings of the training captions
Each weights file carries metadata: format, version, kind, the model config, the latent statistics and
training info (steps, losses, recipe).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from recon4d.errors import InputError
from recon4d.gen.latents import LatentStats
from recon4d.io.atomic import atomic_path

MODEL_FORMAT = "recon4d.gen.model"
MODEL_VERSION = 1
KINDS = {"rf1": "model.safetensors", "rf2": "reflow.safetensors", "onestep": "onestep.safetensors",
         "refiner": "refiner.safetensors"}
SHIPPED_DIR = Path(__file__).parent / "models" / "text2splat"


@dataclass
class StoredModel:
    """Weights and what describes them."""

    state: dict[str, torch.Tensor]
    config: dict
    stats: LatentStats
    info: dict


def save_model(path: Path, state: dict[str, torch.Tensor], kind: str, config: dict, stats: LatentStats, info: dict,
               dtype: torch.dtype = torch.float32) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}
    metadata = {"format": MODEL_FORMAT, "version": str(MODEL_VERSION), "kind": kind, "config": json.dumps(config),
                "stats": json.dumps(stats.to_json()), "info": json.dumps(info)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_model_file(path: Path, kind: str | None = None) -> StoredModel:
    """Read a weights file; InputError for a missing, corrupt, foreign or newer file."""
    from safetensors import safe_open

    if not path.is_file():
        raise InputError(f"no generator model at {path}", hint="train one with `recon4d gen train LATENTS -o MODEL_DIR`")
    try:
        with safe_open(str(path), framework="pt") as reader:
            metadata = reader.metadata() or {}
            if metadata.get("format") != MODEL_FORMAT:
                raise InputError(f"{path} is not a recon4d generator model")
            if int(metadata.get("version", "0")) > MODEL_VERSION:
                raise InputError(f"{path} needs a newer recon4d (model format {metadata['version']})",
                                 hint="pip install -U recon4d")
            if kind is not None and metadata.get("kind") != kind:
                raise InputError(f"{path} holds a {metadata.get('kind')!r} model, expected {kind!r}")
            state = {name: reader.get_tensor(name).float() for name in reader.keys()}
            config, info = json.loads(metadata["config"]), json.loads(metadata["info"])
            stats = LatentStats.from_json(json.loads(metadata["stats"]), str(path))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read generator model {path}: it is truncated or corrupt") from exc
    return StoredModel(state, config, stats, info)


def resolve_model_dir(model_dir: Path | None) -> Path:
    """The model directory to sample from: the given one, else the model shipped with the package."""
    chosen = SHIPPED_DIR if model_dir is None else Path(model_dir)
    if not (chosen / KINDS["rf1"]).is_file():
        where = "no model was given and none ships with this install" if model_dir is None else f"no model in {chosen}"
        raise InputError(f"{where}", hint="train one with `recon4d gen train LATENTS -o MODEL_DIR`, then pass --model")
    return chosen


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path} ({exc})") from exc
