"""`recon4d gen train`: the rectified-flow trainer (1-RF, and the same loop for reflow and distillation).

Data parallel under torchrun through `recon4d.distributed`. `TrainConfig.batch` is the GLOBAL batch:
with W processes each rank takes batch / W samples. Step k's global batch is positions
[k B, (k + 1) B) of the epoch's permutation (`torch.randperm(N)` seeded by seed + epoch, the permutation
`DistributedSampler` uses), and rank r takes the positions r, r + W, ... of it, which is exactly what
`DistributedSampler(shuffle=True, seed)` hands rank r. The step's noise, timesteps and caption dropout
are drawn for the whole global batch from a generator seeded by (seed, step), and rank r takes the same
rows r::W. The loss is a mean of per-sample losses, so DDP's gradient average over ranks equals the
single-process gradient of the whole batch: 1 process and W processes train the same model (up to
floating-point summation order). Checkpoints and logs are written by rank 0 only; a run resumes from
MODEL_DIR/checkpoint_<stage>.safetensors.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from recon4d import distributed
from recon4d.errors import InputError
from recon4d.gen.data import FlowData, TextTable
from recon4d.gen.flow import TIMESTEP_SAMPLERS, flow_loss, interpolate, sample_timesteps
from recon4d.gen.latents import LatentStats
from recon4d.gen.mmdit import MMDiT, ModelConfig, count_parameters
from recon4d.gen.model_io import save_model
from recon4d.gen.render_loss import random_cameras, rendering_loss
from recon4d.io.atomic import atomic_path
from recon4d.progress import track


@dataclass
class TrainConfig:
    """Optimisation of a velocity model.

    Attributes:
        steps: optimiser steps; batch: GLOBAL batch (split evenly over torchrun ranks).
        lr, warmup, weight_decay, grad_clip: AdamW with linear warm-up then cosine decay to lr_final_share lr.
        ema_decay: EMA of the weights (what is saved and sampled).
        cfg_drop: probability of training a sample unconditionally (classifier-free guidance).
        timestep_sampler: uniform | logit_normal | u_shaped (or "zero": always t = 0, one-step distillation);
        logit_mean, logit_std, u_shape: their parameters.
        loss: mse | pseudo_huber.
        render_weight: weight of the rendering loss (`recon4d.gen.render_loss`; 0: off); render_samples: rows
            of each GLOBAL batch rendered, each from one random camera; render_size: their size in pixels.
        checkpoint_every: steps between resumable checkpoints; log_every: steps between log lines.
        seed: seeds the model init, data order, noise, times and dropout.
    """

    steps: int = 2000
    batch: int = 32
    lr: float = 5e-4
    lr_final_share: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cfg_drop: float = 0.1
    timestep_sampler: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    u_shape: float = 4.0
    loss: str = "mse"
    render_weight: float = 0.0
    render_samples: int = 8
    render_size: int = 32
    checkpoint_every: int = 250
    log_every: int = 50
    seed: int = 0


def check_config(config: TrainConfig, world_size: int, data_size: int) -> None:
    if config.timestep_sampler not in (*TIMESTEP_SAMPLERS, "zero"):
        raise InputError(f"unknown timestep sampler {config.timestep_sampler!r}; choose from {TIMESTEP_SAMPLERS}")
    if config.steps < 1 or config.batch < 1:
        raise InputError("--steps and --batch must be positive")
    if config.batch % world_size:
        raise InputError(f"the global batch {config.batch} must be divisible by the {world_size} processes")
    if data_size < 1:
        raise InputError("no training data")
    if config.render_weight < 0 or config.render_samples < 0 or config.render_size < 8:
        raise InputError("the rendering loss needs render_weight >= 0, render_samples >= 0 and render_size >= 8")


def epoch_permutation(size: int, seed: int, epoch: int) -> torch.Tensor:
    """The order DistributedSampler(shuffle=True, seed) uses in `epoch` (same algorithm, any world size)."""
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(size, generator=generator)


def global_batch_indices(step: int, size: int, batch: int, seed: int) -> torch.Tensor:
    """Data indices [batch] of global step `step` (0-based); batches never straddle epochs; a dataset smaller
    than the batch is drawn with repetition (each epoch's permutation tiled)."""
    if size >= batch:
        per_epoch = size // batch
        epoch, position = divmod(step, per_epoch)
        return epoch_permutation(size, seed, epoch)[position * batch:(position + 1) * batch]
    repeats = math.ceil(batch / size)
    return torch.cat([epoch_permutation(size, seed, step * repeats + i) for i in range(repeats)])[:batch]


def step_draws(step: int, config: TrainConfig, shape: tuple[int, ...], need_noise: bool):
    """Noise [B, G, C] (or None), times [B] and caption-dropout mask [B] of global step `step`."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    noise = torch.randn(shape, generator=generator) if need_noise else None
    if config.timestep_sampler == "zero":
        t = torch.zeros(shape[0])
    else:
        t = sample_timesteps(config.timestep_sampler, shape[0], generator, logit_mean=config.logit_mean,
                             logit_std=config.logit_std, u_shape=config.u_shape)
    drop = torch.rand(shape[0], generator=generator) < config.cfg_drop
    return noise, t, drop


def render_term(step: int, config: TrainConfig, predicted: torch.Tensor, x_t: torch.Tensor, x1: torch.Tensor,
                t: torch.Tensor, stats: LatentStats, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of the rendering loss of global step `step`: the global rows 0 .. render_samples - 1
    are rendered (rank r holds rows r, r + W, ..., its local rows 0, 1, ...), each from a camera drawn for
    the whole global batch, and the sum is scaled so that DDP's mean over ranks is the mean over those rows."""
    count = min(config.render_samples, config.batch)
    generator = torch.Generator().manual_seed((config.seed + 1) * 7_000_003 + step)
    cameras, K = random_cameras(count, config.render_size, generator)
    greys = torch.rand(count, generator=generator)
    mine = torch.arange(rank, count, world_size)
    local = slice(0, len(mine))
    t = t[local]
    weights = torch.ones_like(t) if config.timestep_sampler == "zero" else t  # see recon4d.gen.render_loss
    total = rendering_loss(predicted[local], x_t[local], x1[local], t, weights, stats, cameras[mine], K, greys[mine],
                           config.render_size)
    return total * world_size / count


def learning_rate(step: int, config: TrainConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(config.steps - config.warmup, 1)
    share = config.lr_final_share + (1 - config.lr_final_share) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr * share


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    decay = min(decay, (1 + step) / (10 + step))  # short runs: the EMA must not remember the random init
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)


def optimizer_step(model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
                   lr: float, grad_clip: float, ema_decay: float, step: int) -> float:
    """One update of `model` from `loss` (gradients clipped to norm `grad_clip`) and of its EMA copy; returns
    the loss averaged over the ranks."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    update_ema(ema, model, ema_decay, step)
    return float(distributed.all_reduce_mean(loss.detach()))


def _checkpoint_path(out: Path, stage: str) -> Path:
    return out / f"checkpoint_{stage}.safetensors"


def save_checkpoint(path: Path, model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    step: int, meta: dict) -> None:
    from safetensors.torch import save_file

    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema/{k}": v for k, v in ema.state_dict().items()})
    steps = {}
    for index, param in enumerate(model.parameters()):
        state = optimizer.state.get(param, {})
        if state:
            tensors[f"optim/{index}/exp_avg"] = state["exp_avg"]
            tensors[f"optim/{index}/exp_avg_sq"] = state["exp_avg_sq"]
            steps[index] = float(state["step"])
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"format": "recon4d.gen.checkpoint", "step": str(step), "adam_steps": json.dumps(steps),
                "meta": json.dumps(meta)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_checkpoint(path: Path, model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    meta: dict) -> int:
    """Restore a checkpoint written with the same settings; returns its step (0 if there is none)."""
    from safetensors import safe_open

    if not path.is_file():
        return 0
    try:
        with safe_open(str(path), framework="pt") as reader:
            metadata = reader.metadata()
            if json.loads(metadata["meta"]) != meta:
                raise InputError(f"{path} was written with other settings",
                                 hint="use the same options to resume, or another output directory")
            tensors = {k: reader.get_tensor(k) for k in reader.keys()}
            steps = json.loads(metadata["adam_steps"])
            step = int(metadata["step"])
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot resume from {path}: it is truncated or corrupt", hint="delete it to restart") from exc
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema/")})
    for index, param in enumerate(model.parameters()):
        if str(index) in steps:
            optimizer.state[param] = {"step": torch.tensor(steps[str(index)]),
                                      "exp_avg": tensors[f"optim/{index}/exp_avg"].to(param.device),
                                      "exp_avg_sq": tensors[f"optim/{index}/exp_avg_sq"].to(param.device)}
    return step


def train_velocity_model(data: FlowData, text: TextTable, stats: LatentStats, model_config: ModelConfig,
                         config: TrainConfig, out: Path, *, stage: str = "rf1", kind: str = "rf1",
                         init_state: dict[str, torch.Tensor] | None = None, info: dict | None = None,
                         save_dtype: torch.dtype = torch.float32, file: str | None = None,
                         device: torch.device | str = "cpu") -> tuple[MMDiT, dict]:
    """Train v(x_t, t, text) on `data` and save its EMA weights as MODEL_DIR/<file or the kind's file>.

    init_state: start from these weights (reflow starts from 1-RF, distillation from 2-RF).
    device: where the model, the data and each step's draws live (under torchrun on CUDA: the local rank's
        GPU). Draws come from CPU generators, so a seed gives the same run on every device.
    Returns the EMA model (unwrapped) and a summary (steps, final loss, seconds, parameters).
    """
    from recon4d.gen.model_io import KINDS, load_model_file

    ctx = distributed.init_from_env(device)
    device = ctx.device
    check_config(config, ctx.world_size, len(data))
    torch.manual_seed(config.seed)
    model = MMDiT(model_config)
    if init_state is not None:
        model.load_state_dict(init_state)
    model.to(device)
    data, text = data.to(device), text.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.99))
    meta = {"stage": stage, "train": asdict(config), "model": model_config.to_json(), "data": len(data)}
    checkpoint = _checkpoint_path(out, stage)
    start = load_checkpoint(checkpoint, model, ema, optimizer, meta)
    finished = out / (file or KINDS[kind])
    if start >= config.steps and finished.is_file():
        # A finished stage is kept as it was saved: re-saving it would overwrite its measured summary
        # (final loss, seconds) with the numbers of an empty resume.
        stored = load_model_file(finished, kind)
        if stored.info.get("train") == asdict(config):
            return ema.eval(), {k: v for k, v in stored.info.items() if k != "train"}
    wrapped = distributed.wrap_model(model, ctx)
    shape = (config.batch, *data.x1.shape[1:])
    rows = slice(ctx.rank, None, ctx.world_size)
    log_path, losses, render_losses = out / f"train_{stage}.jsonl", [], []
    began, began_cpu = time.perf_counter(), time.process_time()
    if distributed.is_rank0():
        out.mkdir(parents=True, exist_ok=True)
    steps = range(start, config.steps)
    for step in track(steps, f"training {stage}", total=len(steps)) if distributed.is_rank0() else steps:
        index = global_batch_indices(step, len(data), config.batch, config.seed)[rows].to(device)
        noise, t, drop = step_draws(step, config, shape, data.x0 is None)
        x1 = data.x1[index]
        x0 = data.x0[index] if data.x0 is not None else noise[rows].to(device)
        t, drop = t[rows].to(device), drop[rows].to(device)
        captions = torch.where(drop, torch.full_like(index, data.unconditional_index), data.caption_index[index])
        x_t = interpolate(x0, x1, t)
        predicted = wrapped(x_t, t, *text.take(captions))
        loss = flow_loss(predicted, x1 - x0, data.weight[index], config.loss)
        if config.render_weight > 0 and config.render_samples > 0:
            rendered = render_term(step, config, predicted, x_t, x1, t, stats, ctx.rank, ctx.world_size)
            loss = loss + config.render_weight * rendered
            render_losses.append(float(distributed.all_reduce_mean(rendered.detach())))
        losses.append(optimizer_step(model, ema, optimizer, loss, learning_rate(step, config), config.grad_clip,
                                     config.ema_decay, step))
        done = step + 1
        if distributed.is_rank0() and (done % config.log_every == 0 or done == config.steps):
            recent, line = losses[-config.log_every:], {"step": done}
            line["loss"] = sum(recent) / len(recent)
            if render_losses:  # the unweighted rendering term, also included (weighted) in "loss"
                line["render_loss"] = sum(render_losses[-config.log_every:]) / len(render_losses[-config.log_every:])
            line["lr"] = learning_rate(step, config)
            with open(log_path, "a") as log:
                log.write(json.dumps(line) + "\n")
        if distributed.is_rank0() and (done % config.checkpoint_every == 0 or done == config.steps):
            save_checkpoint(checkpoint, model, ema, optimizer, done, meta)
    summary = {"stage": stage, "steps": config.steps, "resumed_from": start, "world_size": ctx.world_size,
               "final_loss": sum(losses[-config.log_every:]) / max(len(losses[-config.log_every:]), 1) if losses else None,
               "seconds": time.perf_counter() - began, "cpu_seconds": time.process_time() - began_cpu,
               "parameters": count_parameters(model), **(info or {})}
    if distributed.is_rank0():
        save_model(finished, ema.state_dict(), kind, model_config.to_json(), stats,
                   {"train": asdict(config), **summary}, dtype=save_dtype)
    distributed.barrier()
    return ema.eval(), summary
