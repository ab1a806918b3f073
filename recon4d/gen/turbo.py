"""FlowTurbo-style sampling (Zhao et al. 2024): Heun steps, pseudo-corrector steps, and a velocity refiner.

Rectified-flow velocities change slowly late in sampling, so:
- Heun steps (2 model evaluations) start the path where the velocity still changes fast;
- pseudo-corrector steps are Heun steps whose first velocity is the one evaluated at the end of the
  previous step (1 model evaluation each);
- refiner steps replace the model by a small network r that predicts the change of velocity from the
  previous step: v_i = v_{i-1} + r(x_i, t_i, v_{i-1}) (about 5 % of the model's parameters).
The refiner is trained after the main model, on states of the model's own sampling paths.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from recon4d.gen.flow import Velocity, uniform_times
from recon4d.gen.latents import NUM_CHANNELS
from recon4d.gen.mmdit import timestep_features


@dataclass
class RefinerConfig:
    """patch: Gaussians per token (as the main model); hidden: MLP width; frequency_dim: time features."""

    patch: int = 8
    hidden: int = 192
    frequency_dim: int = 64

    def to_json(self) -> dict:
        return asdict(self)


class VelocityRefiner(nn.Module):
    """r(x_t, t, v_prev) -> velocity change [B, G, C]; a token-wise MLP over patches of Gaussians."""

    def __init__(self, config: RefinerConfig) -> None:
        super().__init__()
        self.config = config
        width = config.patch * NUM_CHANNELS
        self.net = nn.Sequential(nn.Linear(2 * width + config.frequency_dim, config.hidden), nn.SiLU(),
                                 nn.Linear(config.hidden, config.hidden), nn.SiLU(), nn.Linear(config.hidden, width))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, v_prev: torch.Tensor) -> torch.Tensor:
        b, g, c = x.shape
        p = self.config.patch
        features = timestep_features(t, self.config.frequency_dim)[:, None].expand(b, g // p, -1)
        h = torch.cat([x.reshape(b, g // p, p * c), v_prev.reshape(b, g // p, p * c), features], -1)
        return self.net(h).reshape(b, g, c)


def split_budget(nfe: int, refine_steps: int = 2) -> tuple[int, int, int]:
    """(Heun steps, pseudo-corrector steps, refiner steps) for a budget of `nfe` model evaluations.

    A quarter of the budget (at least one step when nfe >= 3) goes to Heun steps; the rest to
    pseudo-corrector steps, each 1 NFE, after the first velocity; refiner steps are extra and cheap.
    """
    if nfe <= 1:
        return 0, 0, refine_steps  # one evaluation: an Euler start, then refiner steps
    heun = max(1, nfe // 4) if nfe >= 3 else 0
    return heun, nfe - 2 * heun - (0 if heun else 1), refine_steps


@torch.no_grad()
def turbo_sample(velocity: Velocity, refiner: VelocityRefiner, x0: torch.Tensor, nfe: int,
                 refine_steps: int = 2) -> torch.Tensor:
    """Integrate 0 -> 1 with at most `nfe` model evaluations plus `refine_steps` refiner evaluations."""
    heun_steps, corrector_steps, refine_steps = split_budget(nfe, refine_steps)
    times = uniform_times(heun_steps + corrector_steps + refine_steps + (1 if heun_steps + corrector_steps == 0 else 0))
    x, step = x0, 0
    b = x0.shape[0]
    v = None
    for _ in range(heun_steps):
        t0, t1 = times[step], times[step + 1]
        v0 = velocity(x, t0.expand(b))
        guess = x + (t1 - t0) * v0
        v = velocity(guess, t1.expand(b))
        x = x + (t1 - t0) * 0.5 * (v0 + v)
        step += 1
    if v is None:  # no Heun step: the first velocity costs one evaluation
        v = velocity(x, times[0].expand(b))
        if corrector_steps == 0:
            x = x + (times[1] - times[0]) * v
            step += 1
    for _ in range(corrector_steps):
        t0, t1 = times[step], times[step + 1]
        guess = x + (t1 - t0) * v
        v_next = velocity(guess, t1.expand(b))
        x = x + (t1 - t0) * 0.5 * (v + v_next)
        v = v_next
        step += 1
    while step < len(times) - 1:
        t0, t1 = times[step], times[step + 1]
        v = v + refiner(x, t0.expand(b), v)
        x = x + (t1 - t0) * v
        step += 1
    return x


def refiner_training_pairs(velocity: Velocity, x0: torch.Tensor, steps: int) -> tuple[torch.Tensor, ...]:
    """States along `steps`-step Euler paths: x_i [M, G, C], t_i [M], v_{i-1} [M, G, C], v_i target [M, G, C]."""
    times = uniform_times(steps)
    xs, ts, previous, targets = [], [], [], []
    x = x0
    with torch.no_grad():
        v_prev = velocity(x, times[0].expand(x.shape[0]))
        for t0, t1 in zip(times[:-1], times[1:]):
            x = x + (t1 - t0) * v_prev
            v = velocity(x, t1.expand(x.shape[0]))
            xs.append(x)
            ts.append(t1.expand(x.shape[0]))
            previous.append(v_prev)
            targets.append(v)
            v_prev = v
    return torch.cat(xs), torch.cat(ts), torch.cat(previous), torch.cat(targets)


def train_refiner(velocity: Velocity, x0: torch.Tensor, config: RefinerConfig, steps: int, batch: int,
                  path_steps: int = 16, lr: float = 1e-3, seed: int = 0) -> tuple[VelocityRefiner, float]:
    """Fit r to v_i - v_{i-1} on the late half of the model's own paths (where refiner steps are used)."""
    x, t, v_prev, v = refiner_training_pairs(velocity, x0, path_steps)
    late = t >= 0.5
    x, t, v_prev, v = x[late], t[late], v_prev[late], v[late]
    torch.manual_seed(seed)
    refiner = VelocityRefiner(config)
    optimizer = torch.optim.Adam(refiner.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    loss = torch.zeros(())
    for _ in range(steps):
        index = torch.randint(x.shape[0], (batch,), generator=generator)
        loss = (refiner(x[index], t[index], v_prev[index]) - (v[index] - v_prev[index])).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return refiner.eval().requires_grad_(False), float(loss.detach())


def save_refiner(model_dir: Path, refiner: VelocityRefiner, stats, info: dict) -> Path:  # noqa: ANN001
    from recon4d.gen.model_io import KINDS, save_model

    return save_model(model_dir / KINDS["refiner"], refiner.state_dict(), "refiner", refiner.config.to_json(), stats, info)


def load_refiner(model_dir: Path) -> VelocityRefiner:
    from recon4d.gen.model_io import KINDS, load_model_file

    stored = load_model_file(model_dir / KINDS["refiner"], "refiner")
    refiner = VelocityRefiner(RefinerConfig(**stored.config))
    refiner.load_state_dict(stored.state)
    return refiner.eval().requires_grad_(False)
