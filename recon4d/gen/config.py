"""Generator training configuration from a YAML preset (configs/gen*.yaml) and command-line overrides."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from recon4d.errors import InputError
from recon4d.gen.boss import FinetuneConfig
from recon4d.gen.latents import channel_indices
from recon4d.gen.mmdit import ModelConfig
from recon4d.gen.pipeline import PipelineConfig
from recon4d.gen.reflow import PairConfig
from recon4d.gen.train import TrainConfig
from recon4d.gen.turbo import RefinerConfig

_NESTED = {"model": ModelConfig, "rf1": TrainConfig, "render": TrainConfig, "rf2": TrainConfig, "onestep": TrainConfig,
           "pairs": PairConfig, "refiner": RefinerConfig,
           "boss_finetune": FinetuneConfig}


def _build(cls, values: dict, base, where: str):  # noqa: ANN001
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(f"{where}: unknown setting {unknown[0]!r}")
    return dataclasses.replace(base, **values)


def load_preset(path: Path | None) -> PipelineConfig:
    """A PipelineConfig from a YAML file (top-level PipelineConfig fields; nested sections for the parts)."""
    config = PipelineConfig()
    if path is None:
        return config
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read preset {path} ({exc})") from exc
    if not isinstance(values, dict):
        raise InputError(f"preset {path} must be a mapping")
    nested = {}
    for name, cls in _NESTED.items():
        if name in values:
            nested[name] = _build(cls, values.pop(name) or {}, getattr(config, name), f"{path}: {name}")
    if "stages" in values:
        values["stages"] = tuple(values["stages"])
    if "reflow_guidance_channels" in values:
        values["reflow_guidance_channels"] = tuple(values["reflow_guidance_channels"] or ())
        try:
            channel_indices(values["reflow_guidance_channels"])
        except InputError as exc:
            raise InputError(f"{path}: reflow_guidance_channels: {exc}") from exc
    return _build(PipelineConfig, {**values, **nested}, config, str(path))


def pipeline_config(path: Path | None, flags: dict[str, Any]) -> PipelineConfig:
    """The preset with command-line flags applied (flag names as in `recon4d gen train --help`)."""
    config = load_preset(path)
    rf1 = {k: v for k, v in {"steps": flags.get("steps"), "batch": flags.get("batch"), "lr": flags.get("lr"),
                             "timestep_sampler": flags.get("sampler"), "loss": flags.get("loss"),
                             "seed": flags.get("seed")}.items() if v is not None}
    updates: dict[str, Any] = {"rf1": dataclasses.replace(config.rf1, **rf1)}
    if "batch" in flags:
        updates["rf2"] = dataclasses.replace(config.rf2, batch=flags["batch"])
        updates["onestep"] = dataclasses.replace(config.onestep, batch=flags["batch"])
    if "reflow_steps" in flags:
        updates["rf2"] = dataclasses.replace(updates.get("rf2", config.rf2), steps=flags["reflow_steps"])
    if "render_steps" in flags:
        updates["render"] = dataclasses.replace(config.render, steps=flags["render_steps"])
    if "distill_steps" in flags:
        updates["onestep"] = dataclasses.replace(updates.get("onestep", config.onestep), steps=flags["distill_steps"])
    if "refiner_steps" in flags:
        updates["refiner_steps"] = flags["refiner_steps"]
    if "stages" in flags:
        updates["stages"] = tuple(s.strip() for s in flags["stages"].split(",") if s.strip())
    if flags.get("size") == "gpu":
        updates["model"] = ModelConfig.gpu(config.model.num_gaussians)
    return dataclasses.replace(config, **updates)
