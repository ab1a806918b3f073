"""The fit's depth loss: its medians on the CPU equal `nanmedian`'s, and the loss is scale-invariant."""
from __future__ import annotations

import pytest
import torch

from recon4d.fit.losses import MIN_DEPTH_PIXELS, _lower_medians, depth_loss


def _nanmedian(maps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return maps.where(valid, torch.nan).flatten(1).nanmedian(dim=1).values


@pytest.mark.parametrize("share", [0.0, 0.001, 0.5, 1.0])
def test_cpu_medians_equal_nanmedian(share):
    """Odd and even counts (the lower middle value), repeated values, no valid pixel, NaNs among valid ones."""
    generator = torch.Generator().manual_seed(int(share * 1000))
    maps = torch.rand(3, 31, 40, generator=generator)
    maps[1] = torch.round(maps[1] * 4) / 4  # many ties
    maps[2, :5] = torch.nan  # skipped, as nanmedian skips them
    for forced in (0, 1):  # two valid counts of different parity
        valid = torch.rand(31, 40, generator=generator) < share
        valid.view(-1)[:forced] = True
        expected = _nanmedian(maps, valid)
        got = _lower_medians(maps, valid)
        assert torch.equal(got.isnan(), expected.isnan())
        assert torch.equal(got.nan_to_num(-1.0), expected.nan_to_num(-1.0))


def test_depth_loss_is_scale_invariant_and_needs_enough_pixels():
    generator = torch.Generator().manual_seed(0)
    rendered = (torch.rand(24, 32, generator=generator) + 0.5).requires_grad_(True)
    prior = rendered.detach() * (1 + 0.1 * torch.randn(24, 32, generator=generator))
    weight = (torch.rand(24, 32, generator=generator) > 0.3).float()
    loss = depth_loss(rendered, prior, weight)
    assert float(loss.detach()) > 0
    assert float(depth_loss(rendered, 3.0 * prior, weight).detach()) == pytest.approx(float(loss.detach()), rel=1e-5)
    assert float(depth_loss(rendered, rendered.detach(), weight).detach()) == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert rendered.grad is not None and rendered.grad.abs().sum() > 0
    few = torch.zeros(24, 32)
    few.view(-1)[: MIN_DEPTH_PIXELS - 1] = 1.0
    assert float(depth_loss(rendered, prior, few).detach()) == 0.0
