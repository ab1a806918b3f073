"""BOSS (Bellman Optimal Step-size Straightening, Nguyen et al. 2023): the best K-step Euler schedule.

Along fine reference paths (N uniform Euler steps of the model, which give x_i and v(x_i, t_i) at every
fine time t_i), the cost of one coarse Euler step from fine index i to j is
    c[i][j] = E || x_i + (t_j - t_i) v(x_i, t_i) - x_j ||^2,
which needs no extra model evaluations. Dynamic programming over c picks the K steps 0 = k_0 < ... < k_K
= N with the least total cost. Schedules for several K are stored in MODEL_DIR/boss.json.

Optionally (their "straightening") a copy of the model is finetuned on the chosen K steps: each Euler step
from a reference state x_k must land on the reference state x_{k+1}. The finetuned weights go to
MODEL_DIR/boss_<kind>_k<K>.safetensors and `--solver boss --steps K` samples them when they are there.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from recon4d import distributed
from recon4d.errors import InputError
from recon4d.gen.flow import Velocity, euler, uniform_times
from recon4d.gen.latents import LatentStats, spatial_weight
from recon4d.gen.mmdit import MMDiT, ModelConfig
from recon4d.gen.train import TrainConfig
from recon4d.io.atomic import atomic_path
from recon4d.progress import track

BOSS_FILE = "boss.json"
BUDGETS = (1, 2, 4, 8, 16, 32)


@torch.no_grad()
def step_costs(velocity: Velocity, x0: torch.Tensor, fine_steps: int) -> torch.Tensor:
    """Cost matrix c [N + 1, N + 1] (upper triangle; inf elsewhere) from reference paths starting at x0 [B, G, C]."""
    times = uniform_times(fine_steps)
    states, velocities = [x0], []
    for t0, t1 in zip(times[:-1], times[1:]):
        v = velocity(states[-1], t0.expand(x0.shape[0]))
        velocities.append(v)
        states.append(states[-1] + (t1 - t0) * v)
    costs = torch.full((fine_steps + 1, fine_steps + 1), float("inf"))
    for i in range(fine_steps):
        for j in range(i + 1, fine_steps + 1):
            jump = states[i] + (times[j] - times[i]) * velocities[i]
            costs[i, j] = float((jump - states[j]).pow(2).mean())
    return costs


def optimal_path(costs: torch.Tensor, steps: int) -> list[int]:
    """Indices 0 = k_0 < ... < k_steps = N minimising sum c[k_m][k_m+1] (Bellman DP), for costs [N+1, N+1]."""
    n = costs.shape[0] - 1
    if not 1 <= steps <= n:
        raise ValueError(f"cannot take {steps} steps on a grid of {n}")
    best = torch.full((steps + 1, n + 1), float("inf"), dtype=torch.float64)
    parent = torch.zeros((steps + 1, n + 1), dtype=torch.long)
    best[0, 0] = 0.0
    c = costs.double()
    for m in range(1, steps + 1):
        for j in range(m, n + 1):
            candidates = best[m - 1, :j] + c[:j, j]
            value, arg = candidates.min(0)
            best[m, j], parent[m, j] = value, arg
    path = [n]
    for m in range(steps, 0, -1):
        path.append(int(parent[m, path[-1]]))
    return path[::-1]


def schedules(costs: torch.Tensor, budgets: tuple[int, ...] = BUDGETS) -> dict[str, list[float]]:
    """Time schedules (lists of K + 1 times in [0, 1]) for each step budget K that fits the fine grid."""
    n = costs.shape[0] - 1
    return {str(k): [i / n for i in optimal_path(costs, k)] for k in budgets if k <= n}


def save_schedules(model_dir: Path, kind: str, table: dict[str, list[float]], info: dict) -> Path:
    path = model_dir / BOSS_FILE
    data = json.loads(path.read_text()) if path.is_file() else {"format": "recon4d.gen.boss", "version": 1}
    data[kind] = {"schedules": table, **info}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return path


def load_schedule(model_dir: Path, steps: int, kind: str = "rf1") -> torch.Tensor:
    """The stored BOSS schedule [steps + 1] of a model; InputError when there is none for this budget."""
    path = model_dir / BOSS_FILE
    try:
        table = json.loads(path.read_text())[kind]["schedules"]
    except (OSError, KeyError, json.JSONDecodeError):
        raise InputError(f"{model_dir} has no BOSS schedules for the {kind} model",
                         hint="train with --stages including boss") from None
    if str(steps) not in table:
        raise InputError(f"no BOSS schedule for {steps} steps; stored: {', '.join(sorted(table, key=int))}")
    return torch.tensor(table[str(steps)])


# ---------------------------------------------------------------------------------------------------------
# Straightening: finetune v on the chosen K steps (BOSS section 4).


@dataclass
class FinetuneConfig:
    """BOSS finetuning of a velocity model on its K-step schedule (one finetuned model per budget K).

    Attributes:
        budgets: step budgets K; each needs a stored schedule (the boss stage) and gets its own weights,
            MODEL_DIR/boss_<kind>_k<K>.safetensors.
        paths: reference paths (noise + a training caption) the model is finetuned on; eval_paths: held-out
            paths (other noise) for the before/after numbers.
        steps, batch, lr, warmup, ema_decay, grad_clip: AdamW on (state, step) pairs of the reference paths
            (linear warm-up, cosine decay as in `train.learning_rate`); EMA weights are saved.
        checkpoint_every: steps between resumable checkpoints; seed: noise, captions and batches.
    """

    budgets: tuple[int, ...] = (2, 4)
    paths: int = 64
    eval_paths: int = 16
    steps: int = 300
    batch: int = 16
    lr: float = 1e-4
    warmup: int = 20
    ema_decay: float = 0.99
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    seed: int = 0

    def train_config(self) -> TrainConfig:
        """The schedule/EMA/checkpoint settings in the form the velocity trainer's helpers take."""
        return TrainConfig(steps=self.steps, batch=self.batch, lr=self.lr, warmup=self.warmup,
                           ema_decay=self.ema_decay, grad_clip=self.grad_clip, cfg_drop=0.0,
                           checkpoint_every=self.checkpoint_every, seed=self.seed)


def finetuned_file(model_dir: Path, kind: str, steps: int) -> Path:
    return Path(model_dir) / f"boss_{kind}_k{steps}.safetensors"


@torch.no_grad()
def reference_states(velocity: Velocity, x0: torch.Tensor, fine_steps: int, indices: list[int]) -> torch.Tensor:
    """States [B, len(indices), G, C] at fine-grid indices of N-step Euler reference paths from x0 [B, G, C]
    (the paths the cost matrix is measured on; index N is the reference sample)."""
    times = uniform_times(fine_steps)
    keep, x = {}, x0
    for i in range(fine_steps + 1):
        if i in indices:
            keep[i] = x
        if i < fine_steps:
            x = x + (times[i + 1] - times[i]) * velocity(x, times[i].expand(x.shape[0]))
    return torch.stack([keep[i] for i in indices], 1)


def schedule_error(velocity: Velocity, x0: torch.Tensor, times: torch.Tensor, reference: torch.Tensor) -> float:
    """Path error of a K-step schedule: mean squared difference between its Euler sample from x0 [B, G, C] and
    the reference sample [B, G, C] from the same noise."""
    return float((euler(velocity, x0, times) - reference).pow(2).mean())


def finetune_on_schedule(model: MMDiT, cond: tuple, uncond: tuple, cfg: float, x0: torch.Tensor,
                         stats: LatentStats, schedule: torch.Tensor, fine_steps: int, config: FinetuneConfig,
                         checkpoint: Path | None = None, channels: list[int] | None = None) -> tuple[MMDiT, dict]:
    """Finetune a copy of `model` so that each of its K guided Euler steps lands on the reference path.

    Reference paths start at x0 [P, G, C] with text cond/uncond ((tokens, mask, pooled), P rows) and guidance
    `cfg` on its guided `channels` (None: all); `schedule` [K + 1] holds times on the fine grid of `fine_steps` (from the boss stage). A training
    pair is a reference state x_k at t_k and the reference jump x_{k+1} - x_k to t_{k+1}; the loss is the
    opacity-weighted (`latents.spatial_weight` of the reference sample) squared error of the model's jump (t_{k+1} - t_k) v(x_k, t_k): the
    per-step cost c[k][k+1] the schedule was chosen by. Guidance stays in the loop, so the finetuned model
    samples with the same scale. Data parallel under torchrun (each rank takes rows r::W of the global
    batch). Returns the EMA model and a summary (final loss, steps).
    """
    import copy

    from recon4d.gen.flow import flow_loss, guided, module_device
    from recon4d.gen.train import learning_rate, load_checkpoint, optimizer_step, save_checkpoint

    indices = [round(float(t) * fine_steps) for t in schedule]
    frozen = guided(model, cond, uncond, cfg, channels)
    states = reference_states(frozen, x0, fine_steps, indices)  # [P, K + 1, G, C]
    weight = spatial_weight(stats.destandardize(states[:, -1]))
    device = module_device(model)  # the training pairs live with the model
    states, weight, schedule = states.to(device), weight.to(device), schedule.to(device)
    cond, uncond = tuple(c.to(device) for c in cond), tuple(u.to(device) for u in uncond)
    steps_k = len(indices) - 1
    train = config.train_config()
    ctx = distributed.init_from_env()
    if config.batch % ctx.world_size:
        raise InputError(f"the BOSS finetune batch {config.batch} must be divisible by the {ctx.world_size} processes")
    student = copy.deepcopy(model).train().requires_grad_(True)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, betas=(0.9, 0.99))
    settings = {k: v for k, v in asdict(config).items() if k not in ("budgets", "eval_paths")}  # not this run's
    meta = json.loads(json.dumps({"stage": "boss_finetune", "schedule": [float(t) for t in schedule],
                                  "config": settings, "cfg": cfg, "paths": x0.shape[0]}))  # as stored
    start = load_checkpoint(checkpoint, student, ema, optimizer, meta) if checkpoint is not None else 0
    wrapped = distributed.wrap_model(student, ctx)
    rows = slice(ctx.rank, None, ctx.world_size)
    losses = []
    steps = range(start, config.steps)
    for step in track(steps, f"BOSS finetune K={steps_k}", total=len(steps)) if distributed.is_rank0() else steps:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        path = torch.randint(x0.shape[0], (config.batch,), generator=generator)[rows].to(device)
        k = torch.randint(steps_k, (config.batch,), generator=generator)[rows].to(device)
        x, after = states[path, k], states[path, k + 1]
        t, h = schedule[k], (schedule[k + 1] - schedule[k]).reshape(-1, 1, 1)
        velocity = guided(wrapped, tuple(c[path] for c in cond), tuple(u[path] for u in uncond), cfg, channels)
        loss = flow_loss(h * velocity(x, t), after - x, weight[path])
        losses.append(optimizer_step(student, ema, optimizer, loss, learning_rate(step, train), config.grad_clip,
                                     config.ema_decay, step))
        done = step + 1
        if checkpoint is not None and distributed.is_rank0() and (done % config.checkpoint_every == 0
                                                                   or done == config.steps):
            save_checkpoint(checkpoint, student, ema, optimizer, done, meta)
    tail = losses[-25:]
    return ema.eval(), {"steps": config.steps, "resumed_from": start,
                        "final_loss": sum(tail) / len(tail) if tail else None}


def save_finetuned(model_dir: Path, kind: str, steps: int, model: MMDiT, stats, info: dict,  # noqa: ANN001
                   dtype: torch.dtype = torch.float32) -> Path:
    from recon4d.gen.model_io import save_model

    return save_model(finetuned_file(model_dir, kind, steps), model.state_dict(), f"boss_{kind}",
                      model.config.to_json(), stats, info, dtype=dtype)


def load_finetuned(model_dir: Path, kind: str, steps: int) -> MMDiT | None:
    """The BOSS-finetuned velocity model of a budget (what `--solver boss --steps K` samples), or None."""
    from recon4d.gen.model_io import load_model_file

    path = finetuned_file(model_dir, kind, steps)
    if not path.is_file():
        return None
    stored = load_model_file(path, f"boss_{kind}")
    model = MMDiT(ModelConfig(**stored.config))
    model.load_state_dict(stored.state)
    return model.eval().requires_grad_(False)
