"""Reflow (2-RF, Liu et al. 2022) and one-step distillation (InstaFlow, Liu et al. 2023).

Reflow: draw noise x0, solve the 1-RF model's ODE accurately to its sample x1 (torchdiffeq dopri5, or many
Euler steps), and train a new velocity model on the fixed pairs (x0, x1): the coupling is now
deterministic, so the learned paths are straighter and few-step sampling gets better. InstaFlow then
distils the 2-RF model into a student that maps noise + text to the sample in one evaluation; here the
student is the same network evaluated at t = 0, trained on (x0, 2-RF sample) pairs with target x1 - x0,
so its sample is x0 + v(x0, 0). (InstaFlow's LPIPS loss is unavailable offline; the loss is the
spatially weighted MSE in latent space.)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from recon4d.gen.data import FlowData, TextTable
from recon4d.gen.flow import euler, guided, uniform_times
from recon4d.gen.latents import LatentStats, spatial_weight


@dataclass
class PairConfig:
    """How (noise, sample) pairs are made.

    Attributes:
        per_caption: noise draws per training caption; solver: dopri5 (adaptive, torchdiffeq) or euler;
        euler_steps: steps of the Euler solver; rtol/atol: dopri5 tolerances; cfg: guidance of the teacher;
        batch: samples solved together; seed: seeds the noise.
    """

    per_caption: int = 4
    solver: str = "euler"
    euler_steps: int = 32
    rtol: float = 1e-3
    atol: float = 1e-3
    cfg: float = 3.0
    batch: int = 64
    seed: int = 1234


@torch.no_grad()
def solve(velocity, x0: torch.Tensor, config: PairConfig) -> torch.Tensor:  # noqa: ANN001
    """x1 = ODE solution from t = 0 to 1 of dx/dt = velocity(x, t) starting at x0 [B, G, C]."""
    if config.solver == "euler":
        return euler(velocity, x0, uniform_times(config.euler_steps))
    if config.solver == "dopri5":
        from torchdiffeq import odeint

        def rhs(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return velocity(x, t.expand(x.shape[0]))

        return odeint(rhs, x0, torch.tensor([0.0, 1.0]), method="dopri5", rtol=config.rtol, atol=config.atol)[-1]
    raise ValueError(f"unknown pair solver {config.solver!r}")


def make_pairs(model: torch.nn.Module, data: FlowData, text: TextTable, stats: LatentStats,
               config: PairConfig, channels: Sequence[int] | None = None) -> FlowData:
    """FlowData of (x0, teacher sample) pairs for every training caption, `per_caption` noises each.

    The teacher samples with guidance config.cfg on its guided `channels` (None: all; see `flow.guided`).
    Deterministic given config.seed (all noise is drawn at once, in pair order). The spatial weights are
    the samples' own opacities.
    """
    caption_index = torch.arange(len(data.captions) - 1).repeat_interleave(config.per_caption)
    generator = torch.Generator().manual_seed(config.seed)
    x0 = torch.randn((len(caption_index), *data.x1.shape[1:]), generator=generator)
    samples = []
    uncond_index = torch.tensor([data.unconditional_index])
    for start in range(0, len(caption_index), config.batch):
        index = caption_index[start:start + config.batch]
        cond = text.take(index)
        uncond = text.take(uncond_index.expand(len(index)))
        samples.append(solve(guided(model, cond, uncond, config.cfg, channels), x0[start:start + config.batch], config))
    x1 = torch.cat(samples)
    return FlowData(x1=x1, weight=spatial_weight(stats.destandardize(x1)), caption_index=caption_index,
                    captions=data.captions, x0=x0)
