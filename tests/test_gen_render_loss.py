"""The generator's rendering loss: zero for the true velocity, a usable gradient, and the same value on 1 or 2 ranks."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from recon4d.gen.latents import compute_stats, pack
from recon4d.gen.render_loss import random_cameras, rendering_loss
from recon4d.gen.train import TrainConfig, render_term

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 24


def _ball(seed: int, count: int = 64) -> torch.Tensor:
    """A canonical latent [count, 14]: mostly opaque Gaussians on a sphere of radius 0.6, one random colour."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=-1)
    color = torch.rand(3, generator=generator).expand(count, 3)
    log_scales = -2.2 + 0.3 * torch.randn(count, 1, generator=generator).expand(count, 3)
    return pack(0.6 * directions, torch.tensor([[1.0, 0, 0, 0]]).expand(count, 4), log_scales,
                1.0 + 4.0 * torch.rand(count, generator=generator), color)


@pytest.fixture(scope="module")
def batch():
    latents = [_ball(seed) for seed in range(4)]
    stats = compute_stats(latents)
    x1 = stats.standardize(torch.stack(latents))
    x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(9))
    t = torch.tensor([0.3, 0.5, 0.7, 0.9])
    x_t = (1 - t.reshape(-1, 1, 1)) * x0 + t.reshape(-1, 1, 1) * x1
    return stats, x0, x1, x_t, t


def test_the_true_velocity_costs_nothing_and_a_wrong_one_is_pulled_back(batch):
    stats, x0, x1, x_t, t = batch
    cameras, K = random_cameras(4, SIZE, torch.Generator().manual_seed(0))
    greys = torch.full((4,), 0.5)
    exact = rendering_loss(x1 - x0, x_t, x1, t, t, stats, cameras, K, greys, SIZE)
    assert float(exact) < 1e-5
    # velocities whose implied clean latents have every Gaussian twice as large and far more transparent;
    # descending the loss on the (standardised) error of the implied latent must undo most of it
    offset = torch.zeros(14)
    offset[3:6], offset[10] = 0.7, -4.0
    error = (offset / stats.std).expand(x1.shape).clone().requires_grad_(True)

    def loss() -> torch.Tensor:
        return rendering_loss(x1 - x0 + error / (1 - t).reshape(-1, 1, 1), x_t, x1, t, t, stats, cameras, K, greys, SIZE)

    start = float(loss().detach())
    assert start > 0.05
    optimizer = torch.optim.Adam([error], lr=0.1)
    for _ in range(40):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    end = float(loss().detach())
    assert end < 0.3 * start, (start, end)


def test_two_ranks_average_to_the_single_process_loss(batch):
    stats, x0, x1, x_t, t = batch
    predicted = x1 - x0 + 0.3 * torch.randn(x1.shape, generator=torch.Generator().manual_seed(2))
    config = dataclasses.replace(TrainConfig(), batch=4, render_weight=1.0, render_samples=3, render_size=SIZE)
    single = render_term(5, config, predicted, x_t, x1, t, stats, rank=0, world_size=1)
    ranks = [render_term(5, config, predicted[r::2], x_t[r::2], x1[r::2], t[r::2], stats, rank=r, world_size=2)
             for r in range(2)]
    assert float(single) > 0.01
    assert float(sum(ranks) / 2) == pytest.approx(float(single), rel=1e-5)
