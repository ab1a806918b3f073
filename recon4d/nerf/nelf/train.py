"""The distillation loop: teacher pseudo-views, then a short finetune on the real frames; resumable.

Losses: MSE of RGB weighted per pixel; for NeRDF plus `profile_weight` x MSE between the normalised density
profiles of student (its volume-rendering weights) and teacher (its per-bin blending weights), on the rays the
teacher covers. R2L trains on whole images (its super-resolution tail needs neighbourhoods); NeRDF on random
rays pooled over all views (it is per ray).

Checkpoint: ``MODEL/.checkpoint/state.safetensors`` (model, Adam moments, batch-sampler state) and
``state.json`` (step, config); rerunning the same command resumes from it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from recon4d.errors import InputError
from recon4d.io.atomic import atomic_path, write_bytes_atomic
from recon4d.nerf.nelf.config import DistillConfig
from recon4d.nerf.nelf.nerdf import NeRDFStudent
from recon4d.nerf.nelf.student import student_color
from recon4d.nerf.nelf.views import ViewSet
from recon4d.progress import track

CHECKPOINT_DIR = ".checkpoint"


@dataclass
class Batch:
    """rays [B, 6, h, w], colors [B, 3, H, W], weights [B, 1, H, W], profiles [B, S, H, W] or None."""

    rays: torch.Tensor
    colors: torch.Tensor
    weights: torch.Tensor
    profiles: torch.Tensor | None

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(None if x is None else x.to(device) for x in (self.rays, self.colors, self.weights,
                                                                       self.profiles)))


def image_batch(views: ViewSet, count: int, generator: torch.Generator) -> Batch:
    """`count` whole views drawn at random."""
    index = torch.randint(len(views), (count,), generator=generator)
    profiles = None if views.profiles is None else views.profiles[index]
    return Batch(views.rays[index], views.colors[index], views.weights[index], profiles)


def ray_batch(views: ViewSet, count: int, generator: torch.Generator) -> Batch:
    """`count` rays drawn at random over all pixels of all views, shaped as one 1 x count image."""
    v, _, h, w = views.colors.shape
    pick = torch.randint(v * h * w, (count,), generator=generator)
    view, pixel = pick // (h * w), pick % (h * w)

    def gather(x: torch.Tensor) -> torch.Tensor:  # [V, C, H, W] -> [1, C, 1, count]
        return x.flatten(2)[view, :, pixel].T[None, :, None]

    profiles = None if views.profiles is None else gather(views.profiles)
    return Batch(gather(views.rays), gather(views.colors), gather(views.weights), profiles)


def normalised(profile: torch.Tensor) -> torch.Tensor:
    """[B, S, H, W] weights -> the same divided by their sum along S (a distribution along each ray)."""
    return profile / profile.sum(1, keepdim=True).clamp_min(1e-6)


def distillation_loss(model: nn.Module, batch: Batch, profile_weight: float) -> torch.Tensor:
    """Weighted RGB MSE (+ profile_weight x MSE of normalised density profiles for NeRDF with profiles)."""
    out = model(batch.rays)
    color = out[0] if isinstance(out, tuple) else out
    weights = batch.weights.expand_as(color)
    loss = (weights * (color - batch.colors) ** 2).sum() / weights.sum().clamp_min(1.0)
    if isinstance(out, tuple) and batch.profiles is not None:
        covered = (batch.profiles.sum(1, keepdim=True) > 0.5).float()
        diff = (normalised(out[1]) - normalised(batch.profiles)) ** 2 * covered
        loss = loss + profile_weight * diff.sum() / (covered.sum() * diff.shape[1]).clamp_min(1.0)
    return loss


def learning_rate(step: int, config: DistillConfig) -> float:
    """Cosine decay over the pseudo-view steps, then a constant lower rate for the finetune."""
    train = config.train
    if step >= train.steps:
        return train.lr * train.finetune_lr_share
    progress = step / max(train.steps, 1)
    share = train.final_lr_share + (1 - train.final_lr_share) * 0.5 * (1 + math.cos(math.pi * progress))
    return train.lr * share


# ----------------------------------------------------------------------------------------------------------
# Checkpoints


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    state = optimizer.state_dict()["state"]
    return {f"adam/{index}/{key}": torch.as_tensor(value).detach().cpu().clone() for index, entry in state.items()
            for key, value in entry.items()}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state_dict = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("adam/"):
            _, index, key = name.split("/")
            state.setdefault(int(index), {})[key] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)


def save_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                    step: int, config: DistillConfig, fingerprint: str) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update(_optimizer_tensors(optimizer))
    tensors["sampler"] = generator.get_state()
    with atomic_path(folder / "state.safetensors") as tmp:
        save_file(tensors, str(tmp))
    meta = {"step": step, "config": config.to_dict(), "fingerprint": fingerprint}
    write_bytes_atomic(folder / "state.json", json.dumps(meta).encode())


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                    config: DistillConfig, fingerprint: str) -> int:
    """Restore a checkpoint of the same config and fit into the objects -> its step (0 when there is none)."""
    from safetensors.torch import load_file

    if not (folder / "state.json").is_file() or not (folder / "state.safetensors").is_file():
        return 0
    meta = json.loads((folder / "state.json").read_text())
    if meta.get("config") != config.to_dict() or meta.get("fingerprint") != fingerprint:
        raise InputError(f"{folder} holds a distillation with other settings or another fit",
                         hint="pass --restart to start over, or another -o")
    tensors = load_file(str(folder / "state.safetensors"))
    model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
    _restore_optimizer(optimizer, tensors)
    generator.set_state(tensors["sampler"])
    return int(meta["step"])


# ----------------------------------------------------------------------------------------------------------
# The loop


def train_student(model: nn.Module, pseudo: ViewSet, real: ViewSet | None, config: DistillConfig,
                  checkpoint_dir: Path, fingerprint: str,
                  device: torch.device = torch.device("cpu")) -> dict[str, float]:
    """Optimise `model` in place: config.train.steps on `pseudo`, then finetune_steps on `real` + `pseudo`
    (skipped when `real` is None). Resumes from `checkpoint_dir`. Batches are drawn on the CPU and moved to
    `device`; the model ends on the CPU. Returns the last losses."""
    train = config.train
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=train.lr)
    generator = torch.Generator().manual_seed(train.seed + 1)
    start = load_checkpoint(checkpoint_dir, model, optimizer, generator, config, fingerprint)
    per_ray = isinstance(model, NeRDFStudent)
    draw = ray_batch if per_ray else image_batch
    size = train.rays_per_step if per_ray else train.batch_views
    total = train.steps + (train.finetune_steps if real is not None else 0)
    profile_weight = config.nerdf.profile_weight
    losses = {"pseudo": float("nan"), "real": float("nan")}
    model.train()
    for step in track(range(start, total), f"distilling {config.model}", total=total - start):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        loss = distillation_loss(model, draw(pseudo, size, generator).to(device), profile_weight)
        losses["pseudo"] = loss.item()
        if step >= train.steps:
            real_loss = distillation_loss(model, draw(real, size, generator).to(device), profile_weight)
            losses["real"] = real_loss.item()
            loss = loss + real_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = step + 1
        if done % train.checkpoint_every == 0 or done == total:  # the last one lets a rerun skip training
            save_checkpoint(checkpoint_dir, model, optimizer, generator, done, config, fingerprint)
    model.cpu().eval()
    return losses


def predict(model: nn.Module, rays: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """RGB [V, 3, H, W] of the student for rays [V, 6, h, w], a few views at a time."""
    with torch.no_grad():
        return torch.cat([student_color(model, rays[i:i + chunk]).clamp(0, 1) for i in range(0, len(rays), chunk)])
