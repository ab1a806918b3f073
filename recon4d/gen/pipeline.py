"""`recon4d gen train`: the training stages of a model directory, in order.

    rf1      rectified flow on the latents (MM-DiT + MiniLM, CFG dropout, EMA)         model.safetensors
             (model_flow.safetensors when a render stage follows)
    render   the 1-RF fine-tuned with the rendering loss (recon4d.gen.render_loss)     model.safetensors
    rf2      reflow on (noise, 1-RF sample) pairs, starting from the 1-RF weights       reflow.safetensors
    onestep  InstaFlow one-step student from the 2-RF model's pairs                     onestep.safetensors
    refiner  FlowTurbo velocity refiner on the 1-RF model's paths                       refiner.safetensors
    boss     BOSS schedules of the 1-RF and 2-RF models for NFE 1..32                   boss.json
    boss_finetune  those models finetuned on their K-step schedules (BOSS straightening)  boss_<kind>_k<K>.safetensors
Each stage reads what the earlier ones wrote, so stages can be run one at a time (`--stages rf2`).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from recon4d import distributed
from recon4d.errors import InputError
from recon4d.gen.boss import (FinetuneConfig, finetune_on_schedule, finetuned_file, load_schedule, reference_states,
                              save_finetuned, save_schedules, schedule_error, schedules, step_costs)
from recon4d.gen.data import FlowData, TextTable, load_flow_data, split_names, text_table
from recon4d.gen.flow import guided, straightness
from recon4d.gen.latents import channel_indices
from recon4d.gen.mmdit import MMDiT, ModelConfig
from recon4d.gen.model_io import KINDS, load_model_file
from recon4d.gen.reflow import PairConfig, make_pairs
from recon4d.gen.text import TextEncoder
from recon4d.gen.train import TrainConfig, train_velocity_model
from recon4d.gen.turbo import RefinerConfig, save_refiner, train_refiner
from recon4d.io.atomic import atomic_path

STAGES = ("rf1", "render", "rf2", "onestep", "refiner", "boss", "boss_finetune")
FLOW_FILE = "model_flow.safetensors"  # the 1-RF before the render stage fine-tuned it into model.safetensors
SUMMARY_FILE = "training.json"


@dataclass
class PipelineConfig:
    """Everything `recon4d gen train` runs.

    Attributes:
        stages: which stages to run, in STAGES order.
        model: denoiser size; rf1/rf2/onestep: their optimisation; pairs: reflow/distillation pairs.
        render: the render stage, a fine-tune of the 1-RF with the rendering loss (`recon4d.gen.render_loss`).
        default_cfg: guidance stored with the 1-RF model (its pairs for the 2-RF are made with it).
        reflow_cfg, reflow_guidance_channels: guidance stored with the 2-RF model, on those latent channels
            only (names from `latents.CHANNELS`; empty: all). The 2-RF learns the guided 1-RF's samples, so it
            needs none for shape; at few steps it loses colour, which guiding the colour channels alone
            restores (README, "Text-to-3D generator"). The student learns the guided 2-RF and samples with 1.0.
        boss_fine_steps, boss_samples: reference grid and paths of the BOSS cost matrix.
        boss_finetune: budgets and optimisation of the boss_finetune stage.
        refiner, refiner_steps, refiner_batch, refiner_paths: FlowTurbo refiner training.
        straightness_samples: noise draws for the straightness numbers.
        split: corpus split trained on (objects of other splits are left out); save_dtype: float32 | float16.
    """

    stages: tuple[str, ...] = ("rf1", "boss")
    model: ModelConfig = field(default_factory=ModelConfig)
    rf1: TrainConfig = field(default_factory=TrainConfig)
    render: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=800, lr=1e-4, warmup=20, render_weight=5.0, render_samples=16, render_size=48))
    rf2: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1000, cfg_drop=0.1, lr=2e-4, warmup=50))
    onestep: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1000, timestep_sampler="zero", cfg_drop=0.0,
                                                                     lr=2e-4, warmup=50))
    pairs: PairConfig = field(default_factory=PairConfig)
    default_cfg: float = 3.0
    reflow_cfg: float = 1.0
    reflow_guidance_channels: tuple[str, ...] = ()
    boss_fine_steps: int = 64
    boss_samples: int = 16
    boss_finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    refiner_steps: int = 800
    refiner_batch: int = 64
    refiner_paths: int = 64
    straightness_samples: int = 16
    split: str = "train"
    save_dtype: str = "float32"


def _load_stored(out: Path, kind: str, device: torch.device) -> tuple[MMDiT, dict]:
    """A stored velocity model on `device` (samplers keep their state on the CPU, see `flow.guided`) and its
    weights on the CPU (the start of a later stage)."""
    stored = load_model_file(out / KINDS[kind], kind)
    model = MMDiT(ModelConfig(**stored.config))
    model.load_state_dict(stored.state)
    return model.to(device).eval().requires_grad_(False), stored.state


def _noise_and_captions(data: FlowData, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    captions = torch.randint(len(data.captions) - 1, (count,), generator=generator)
    return torch.randn((count, *data.x1.shape[1:]), generator=generator), captions


def _guidance(config: PipelineConfig, kind: str) -> tuple[float, list[int] | None]:
    """(scale, guided channels or None for all) that model `kind` ("rf1" or "rf2") samples with."""
    if kind == "rf1":
        return config.default_cfg, None
    return config.reflow_cfg, channel_indices(config.reflow_guidance_channels) or None


def _velocity(model: MMDiT, text: TextTable, data: FlowData, captions: torch.Tensor, cfg: float,
              channels: list[int] | None = None):
    uncond = text.take(torch.full_like(captions, data.unconditional_index))
    return guided(model, text.take(captions), uncond, cfg, channels)


def _boss_finetune(out: Path, data: FlowData, text: TextTable, stats, config: PipelineConfig,  # noqa: ANN001
                   dtype: torch.dtype, device: torch.device) -> dict:
    """Finetune the 1-RF (and 2-RF) model on each budget's BOSS schedule; report the K-step path error
    against the fine reference on held-out noise before and after."""
    settings, report = config.boss_finetune, {}
    for kind in ("rf1", "rf2"):
        if not (out / KINDS[kind]).is_file():
            continue
        model, _ = _load_stored(out, kind, device)
        cfg, channels = _guidance(config, kind)
        x0, captions = _noise_and_captions(data, settings.paths, seed=settings.seed + 21)
        e_x0, e_captions = _noise_and_captions(data, settings.eval_paths, seed=settings.seed + 22)
        base = _velocity(model, text, data, e_captions, cfg, channels)
        reference = reference_states(base, e_x0, config.boss_fine_steps, [config.boss_fine_steps])[:, 0]
        uncond = text.take(torch.full_like(captions, data.unconditional_index))
        report[kind] = {}
        for steps in settings.budgets:
            schedule = load_schedule(out, steps, kind)
            finetuned, info = finetune_on_schedule(
                model, text.take(captions), uncond, cfg, x0, stats, schedule, config.boss_fine_steps, settings,
                checkpoint=out / f"checkpoint_boss_{kind}_k{steps}.safetensors", channels=channels)
            info.update(error_before=schedule_error(base, e_x0, schedule, reference),
                        error_after=schedule_error(_velocity(finetuned, text, data, e_captions, cfg, channels), e_x0, schedule,
                                                   reference),
                        schedule=schedule.tolist(), default_cfg=cfg, base=KINDS[kind])
            if distributed.is_rank0():
                save_finetuned(out, kind, steps, finetuned, stats, info, dtype)
            report[kind][str(steps)] = {**info, "file": finetuned_file(out, kind, steps).name}
    return report


def _render_finetune(out: Path, data: FlowData, text: TextTable, stats, config: PipelineConfig,  # noqa: ANN001
                     dtype: torch.dtype, device: torch.device) -> dict:
    """Fine-tune the 1-RF with the rendering loss (`config.render`): from MODEL_DIR/model_flow.safetensors (the
    flow-only 1-RF; a model.safetensors of an earlier `--stages rf1` run is renamed to it) into
    model.safetensors, which every later stage and the sampler use."""
    flow = out / FLOW_FILE
    if not flow.is_file():
        if not (out / KINDS["rf1"]).is_file():
            raise InputError(f"the render stage fine-tunes a 1-RF model, and {out} has none", hint="run the rf1 stage first")
        if distributed.is_rank0():
            (out / KINDS["rf1"]).rename(flow)
        distributed.barrier()
    _, summary = train_velocity_model(data, text, stats, config.model, config.render, out, stage="render", kind="rf1",
                                      init_state=load_model_file(flow, "rf1").state,
                                      info={"default_cfg": config.default_cfg}, save_dtype=dtype, device=device)
    return summary


def run_pipeline(latents_dir: Path, out: Path, config: PipelineConfig, device: torch.device | str = "cpu") -> dict:
    """Run the configured stages on `device`; returns (and writes, rank 0) MODEL_DIR/training.json.
    Under torchrun on CUDA each process takes its local rank's GPU."""
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown:
        raise InputError(f"unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}")
    if "boss_finetune" in config.stages:
        outside = [k for k in config.boss_finetune.budgets if not 1 <= k <= config.boss_fine_steps]
        if outside or not config.boss_finetune.budgets:
            raise InputError(f"BOSS finetune budgets must be between 1 and the {config.boss_fine_steps} fine steps, "
                             f"got {list(config.boss_finetune.budgets)}")
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a directory")
    dtype = {"float32": torch.float32, "float16": torch.float16}[config.save_dtype]
    device = distributed.init_from_env(device).device
    names = split_names(latents_dir, None, config.split)
    data, stats = load_flow_data(latents_dir, names, num_gaussians=config.model.num_gaussians)
    out.mkdir(parents=True, exist_ok=True)
    encoder = TextEncoder(out / "text_cache.safetensors")
    text = text_table(encoder, data.captions)
    if distributed.is_rank0():
        encoder.save_cache()
    summary_path = out / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary["objects"] = len(data)
    x0, captions = _noise_and_captions(data, config.straightness_samples, seed=99)
    for stage in (s for s in STAGES if s in config.stages):
        if stage == "rf1":
            fine_tuned_later = "render" in config.stages or (out / FLOW_FILE).is_file()
            model, summary["rf1"] = train_velocity_model(
                data, text, stats, config.model, config.rf1, out, stage="rf1", kind="rf1",
                info={"default_cfg": config.default_cfg}, save_dtype=dtype,
                file=FLOW_FILE if fine_tuned_later else None, device=device)
        elif stage == "render":
            summary["render"] = _render_finetune(out, data, text, stats, config, dtype, device)
        elif stage == "boss":
            summary["boss"] = {}
            for kind in ("rf1", "rf2"):
                if (out / KINDS[kind]).is_file():
                    model, _ = _load_stored(out, kind, device)
                    cfg, channels = _guidance(config, kind)
                    b_x0, b_captions = _noise_and_captions(data, config.boss_samples, seed=7)
                    costs = step_costs(_velocity(model, text, data, b_captions, cfg, channels), b_x0,
                                       config.boss_fine_steps)
                    table = schedules(costs)
                    if distributed.is_rank0():
                        save_schedules(out, kind, table, {"fine_steps": config.boss_fine_steps, "cfg": cfg})
                    summary["boss"][kind] = table
        elif stage == "boss_finetune":
            summary["boss_finetune"] = _boss_finetune(out, data, text, stats, config, dtype, device)
        elif stage == "rf2":
            teacher, teacher_state = _load_stored(out, "rf1", device)
            pairs = make_pairs(teacher, data, text, stats, dataclasses.replace(config.pairs, cfg=config.default_cfg))
            before = straightness(_velocity(teacher, text, data, captions, config.default_cfg), x0)
            reflow_cfg, reflow_channels = _guidance(config, "rf2")
            guidance = {"default_cfg": reflow_cfg, "guidance_channels": list(config.reflow_guidance_channels)}
            model, info = train_velocity_model(pairs, text, stats, config.model, config.rf2, out, stage="rf2",
                                               kind="rf2", init_state=teacher_state,
                                               info={**guidance, "pairs": len(pairs)}, save_dtype=dtype, device=device)
            after = straightness(_velocity(model, text, data, captions, reflow_cfg, reflow_channels), x0)
            summary["rf2"] = {**info, "straightness_rf1": before, "straightness_rf2": after}
        elif stage == "onestep":
            teacher, teacher_state = _load_stored(out, "rf2", device)
            reflow_cfg, reflow_channels = _guidance(config, "rf2")
            pairs = make_pairs(teacher, data, text, stats,
                               dataclasses.replace(config.pairs, cfg=reflow_cfg, seed=config.pairs.seed + 1),
                               reflow_channels)
            _, summary["onestep"] = train_velocity_model(
                pairs, text, stats, config.model, config.onestep, out, stage="onestep", kind="onestep",
                init_state=teacher_state, info={"default_cfg": 1.0, "pairs": len(pairs)}, save_dtype=dtype,
                device=device)
        elif stage == "refiner":
            teacher, _ = _load_stored(out, "rf1", device)
            r_x0, r_captions = _noise_and_captions(data, config.refiner_paths, seed=11)
            velocity = _velocity(teacher, text, data, r_captions, config.default_cfg)
            refiner_config = dataclasses.replace(config.refiner, patch=config.model.patch)
            refiner, loss = train_refiner(velocity, r_x0, refiner_config, config.refiner_steps, config.refiner_batch)
            parameters = sum(p.numel() for p in refiner.parameters())
            info = {"final_loss": loss, "parameters": parameters, "steps": config.refiner_steps,
                    "share_of_model": parameters / sum(p.numel() for p in teacher.parameters())}
            if distributed.is_rank0():
                save_refiner(out, refiner, stats, info)
            summary["refiner"] = info
    if distributed.is_rank0():
        with atomic_path(summary_path) as tmp:
            tmp.write_text(json.dumps(summary, indent=1, default=str))
    return summary
