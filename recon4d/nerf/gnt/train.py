"""Cross-scene training of GNT / GNT-MOVE (single process or torchrun data parallel).

One step = one target view of one scene (as GNT): its K source views are drawn from the 2K nearest
training views of the same scene, and `rays` target pixels are drawn in horizontally neighbouring pairs
(for the spatial-consistency loss), avoiding pixels a fit marked as moving. Every random number of a step
(scene, target, sources, pixels, stratified jitter, importance uniforms, gate noise) comes from a generator
seeded by (seed, step) for the GLOBAL batch; rank r of W then takes the r-th contiguous 1/W of the rays
(whole pairs). MSE is a per-rank mean that DDP averages (equal shards: the global mean); the MoE
statistics (importance, load) and the consistency sums are all-reduced with autograd before the nonlinear
losses, so 1 and W processes compute the same loss and gradients (up to float summation order).
Checkpoints (every eval_every steps, and at the end) and logs are written by rank 0 only.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from recon4d import distributed
from recon4d.errors import InputError
from recon4d.image import psnr
from recon4d.nerf.data.posed import PosedImages, holdout_split
from recon4d.nerf.gnt.checkpoint import (
    TRAIN_STATE,
    WEIGHTS,
    append_log,
    load_model,
    load_train_state,
    save_model,
    save_train_state,
)
from recon4d.nerf.gnt.config import GNTConfig, TrainConfig
from recon4d.nerf.gnt.model import GNT, RenderOutput
from recon4d.nerf.gnt.moe import consistency_terms, cv_squared
from recon4d.nerf.gnt.rays import nearest_views
from recon4d.nerf.gnt.render import render_view, target_rays
from recon4d.progress import track

_SEED_STRIDE = 1_000_003
_EVAL_SCENES = 3


@dataclass
class Split:
    """A training scene: the views used as targets and sources, and held-out views for the periodic PSNR."""

    train: PosedImages
    held: PosedImages | None


@dataclass
class Batch:
    """One step's global batch (one target view). Ray tensors are [R, ...] with pairs at (2i, 2i + 1)."""

    images: torch.Tensor
    valid: torch.Tensor | None
    world_from_camera: torch.Tensor
    intrinsics: torch.Tensor
    near: float
    far: float
    origins: torch.Tensor
    directions: torch.Tensor
    camera_directions: torch.Tensor
    target_rgb: torch.Tensor
    jitter: torch.Tensor
    uniforms: torch.Tensor
    noise: torch.Tensor | None
    target_depth: torch.Tensor | None = None

    def shard(self, rank: int, world_size: int) -> Batch:
        """The rank's contiguous share of the rays (whole pairs); source views are shared."""
        per_rank = self.origins.shape[0] // world_size
        part = slice(rank * per_rank, (rank + 1) * per_rank)
        pick = lambda t: None if t is None else t[part]
        return Batch(self.images, self.valid, self.world_from_camera, self.intrinsics, self.near, self.far,
                     self.origins[part], self.directions[part], self.camera_directions[part], self.target_rgb[part],
                     self.jitter[part], self.uniforms[part], pick(self.noise), pick(self.target_depth))


def split_scenes(scenes: list[PosedImages], holdout_every: int, min_views: int) -> list[Split]:
    splits = []
    for scene in scenes:
        if holdout_every > 1 and len(scene) >= max(holdout_every, min_views + 1):
            held, train = holdout_split(len(scene), holdout_every)
            splits.append(Split(scene.subset(train), scene.subset(held)))
        else:
            splits.append(Split(scene, None))
        if len(splits[-1].train) < 2:
            raise InputError(f"{scene.source} has {len(scene)} views; training needs at least 2")
    return splits


def _pair_pixels(valid: torch.Tensor | None, width: int, height: int, pairs: int, g: torch.Generator) -> torch.Tensor:
    """[2 * pairs, 2] pixels: anchors (u, v) and their right neighbours (u + 1, v), both valid."""
    ok = torch.ones(height, width - 1, dtype=torch.bool)
    if valid is not None:
        ok = valid[:, :-1] & valid[:, 1:]
    if not ok.any():
        raise InputError("a training view has no valid pixel pairs (everything is masked as moving)")
    flat = torch.multinomial(ok.flatten().float(), pairs, replacement=True, generator=g)
    anchor = torch.stack([flat % (width - 1), flat // (width - 1)], -1).float()
    return torch.stack([anchor, anchor + torch.tensor([1.0, 0.0])], 1).reshape(-1, 2)


def sample_batch(splits: list[Split], model_config: GNTConfig, config: TrainConfig, moe_layers: int,
                 step: int) -> Batch:
    """The global batch of `step` (identical on every rank)."""
    g = torch.Generator().manual_seed(config.seed * _SEED_STRIDE + step)
    scene = splits[int(torch.randint(len(splits), (1,), generator=g))].train
    target = int(torch.randint(len(scene), (1,), generator=g))
    pool = nearest_views(scene.world_from_camera[target], scene.world_from_camera, 2 * model_config.source_views)
    pool = pool[pool != target]
    fewest = min(config.min_source_views or model_config.source_views, model_config.source_views)
    count = min(int(torch.randint(fewest, model_config.source_views + 1, (1,), generator=g)), len(pool))
    sources = pool[torch.randperm(len(pool), generator=g)[:count]]
    valid = None if scene.valid is None else scene.valid[target]
    pixels = _pair_pixels(valid, scene.width, scene.height, config.rays // 2, g)
    origins, directions, camera_directions = target_rays(scene.world_from_camera[target], scene.intrinsics[target], pixels)
    rgb = scene.images[target][pixels[:, 1].long(), pixels[:, 0].long()]
    depth = None if scene.depths is None else scene.depths[target][pixels[:, 1].long(), pixels[:, 0].long()]
    samples = model_config.coarse_samples + model_config.fine_samples
    jitter = torch.rand(config.rays, model_config.coarse_samples, generator=g)
    uniforms = torch.rand(config.rays, model_config.fine_samples, generator=g)
    noise = torch.randn(config.rays, samples, moe_layers, model_config.experts, generator=g) if moe_layers else None
    return Batch(scene.images[sources], None if scene.valid is None else scene.valid[sources],
                 scene.world_from_camera[sources], scene.intrinsics[sources], scene.near, scene.far,
                 origins, directions, camera_directions, rgb, jitter, uniforms, noise, depth)


def depth_loss(depth: torch.Tensor, target: torch.Tensor, near: float, far: float) -> torch.Tensor:
    """Mean L1 [] between the readout depth [R] and the true z-depth [R] on rays that hit a surface inside
    [near, far] (inf elsewhere), in units of the depth range; 0 when no ray does."""
    hit = torch.isfinite(target) & (target > near) & (target < far)
    error = torch.where(hit, (depth - torch.where(hit, target, torch.zeros_like(target))).abs(), torch.zeros_like(depth))
    return _global_sum(error.sum()) / _global_sum(hit.sum().to(depth)).clamp_min(1.0) / (far - near)


def _global_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum over ranks with gradient (torch.distributed.nn), the value itself in one process."""
    if not distributed.is_distributed():
        return value
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(value)


def moe_losses(out: RenderOutput, near: float, far: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(load balance summed over MoE layers, spatial consistency summed over MoE layers), from global sums."""
    zero = out.rgb.new_zeros(())
    balance, consistency = zero, zero
    rays, samples = out.points.shape[:2]
    pairs = out.points.reshape(rays // 2, 2, samples, 3)
    scale = (far - near) / samples  # one sample spacing: neighbours closer than that should agree
    for routing in out.routings:
        experts = routing.gates.shape[-1]
        importance = _global_sum(routing.gates.reshape(-1, experts).sum(0))
        balance = balance + cv_squared(importance) + cv_squared(_global_sum(routing.load))
        numerator, denominator = consistency_terms(pairs, routing.probabilities.reshape(rays // 2, 2, samples, experts), scale)
        consistency = consistency + _global_sum(numerator) / _global_sum(denominator).clamp(min=1e-10)
    return balance, consistency


def _learning_rate(config: TrainConfig, step: int) -> float:
    progress = step / max(config.steps - 1, 1)
    return config.lr * (config.lr_final_fraction + (1 - config.lr_final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def held_out_psnr(model: GNT, splits: list[Split]) -> float | None:
    """Mean PSNR of the first held-out view of up to _EVAL_SCENES scenes, rendered from their training views."""
    values = []
    device = next(model.parameters()).device  # the splits stay on the CPU; one view at a time goes to the model
    for split in [s for s in splits if s.held is not None][:_EVAL_SCENES]:
        held = split.held.to(device)
        rgb, _ = render_view(model, split.train.to(device), held.world_from_camera[0], held.intrinsics[0],
                             held.width, held.height)
        values.append(psnr(rgb, held.images[0]))
    return sum(values) / len(values) if values else None


def train(scenes: list[PosedImages], out_dir: str | os.PathLike, model_config: GNTConfig, config: TrainConfig,
          device: str = "cpu", resume: bool = True, extra: dict | None = None) -> dict:
    """Train (or resume) into `out_dir`; returns the final record (step, loss, held-out PSNR, seconds)."""
    out_dir = Path(out_dir)
    ctx = distributed.init_from_env(device)
    if config.rays // 2 % ctx.world_size:
        raise InputError(f"{config.rays // 2} ray pairs do not split evenly over {ctx.world_size} processes")
    torch.manual_seed(config.seed)
    splits = split_scenes(scenes, config.holdout_every, model_config.source_views)
    model = GNT(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    start = 0
    if resume and (out_dir / WEIGHTS).is_file() and (out_dir / TRAIN_STATE).is_file():
        loaded, content = load_model(out_dir)
        if content["model"] != model_config.to_json():
            raise InputError(f"{out_dir} holds a model with another architecture", hint="use another -o or the same options")
        model.load_state_dict(loaded.state_dict())
        start = load_train_state(optimizer, out_dir)
    model.to(ctx.device).train()
    wrapped = distributed.wrap_model(model, ctx)
    record: dict = {"step": start}
    started = time.perf_counter()
    for step in track(range(start, config.steps), "training GNT", total=config.steps - start):
        batch = sample_batch(splits, model_config, config, model.moe_layers, step).shard(ctx.rank, ctx.world_size)
        to = lambda t: None if t is None else t.to(ctx.device)
        out = wrapped(to(batch.images), to(batch.world_from_camera), to(batch.intrinsics), batch.near, batch.far,
                      to(batch.origins), to(batch.directions), to(batch.camera_directions), to(batch.jitter),
                      to(batch.uniforms), to(batch.noise), to(batch.valid))
        mse = torch.mean((out.rgb - batch.target_rgb.to(ctx.device)) ** 2)
        balance, consistency = moe_losses(out, batch.near, batch.far)
        loss = mse + config.balance_weight * balance + config.consistency_weight * consistency
        if config.depth_weight > 0 and batch.target_depth is not None:
            loss = loss + config.depth_weight * depth_loss(out.depth, batch.target_depth.to(ctx.device), batch.near,
                                                           batch.far)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = step + 1
        if done % config.eval_every == 0 or done == config.steps:
            record = {"step": done, "mse": float(distributed.all_reduce_mean(mse.detach())),
                      "balance": float(balance.detach()), "consistency": float(consistency.detach()),
                      "seconds": round(time.perf_counter() - started, 1)}
            if distributed.is_rank0():
                model.eval()
                record["held_out_psnr"] = held_out_psnr(model, splits)
                model.train()
                save_model(model, out_dir, {"step": done, "train": config.__dict__, **(extra or {}), "last": record})
                save_train_state(optimizer, done, out_dir)
                append_log(out_dir, record)
            distributed.barrier()
    distributed.shutdown()
    return record
