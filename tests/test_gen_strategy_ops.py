"""Densification ops over parameter/optimizer dicts: shapes, values and Adam moments follow their rows."""
from __future__ import annotations

import math

import pytest
import torch

from recon4d.fit.strategy.ops import compensated_opacity_scale, duplicate, relocate, remove, split
from recon4d.fit.strategy.relocate import RelocateStrategy

N = 6


def _setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    raw = {"means": torch.randn(N, 3, generator=g), "quats": torch.randn(N, 4, generator=g),
           "log_scales": torch.randn(N, 3, generator=g) - 2, "opacity_logits": torch.randn(N, generator=g),
           "color_logits": torch.randn(N, 3, generator=g)}
    params = {k: torch.nn.Parameter(v) for k, v in raw.items()}
    optimizers = {k: torch.optim.Adam([p], lr=0.01) for k, p in params.items()}
    loss = sum((p * torch.randn(p.shape, generator=g)).sum() for p in params.values())
    loss.backward()
    for opt in optimizers.values():
        opt.step()
    state = {"grad2d": torch.arange(N, dtype=torch.float32) + 1, "count": torch.ones(N)}
    return params, optimizers, state


def _moments(optimizers, params, name):
    s = optimizers[name].state[params[name]]
    return s["exp_avg"], s["exp_avg_sq"]


def _registered(optimizers, params):
    for name, p in params.items():
        assert optimizers[name].param_groups[0]["params"][0] is p
        assert p in optimizers[name].state


def test_duplicate_appends_copies_with_zero_moments():
    params, optimizers, state = _setup()
    before = {k: v.detach().clone() for k, v in params.items()}
    old_moments = _moments(optimizers, params, "means")[0].clone()
    mask = torch.tensor([True, False, True, False, False, False])
    duplicate(params, optimizers, state, mask)
    assert params["means"].shape == (N + 2, 3) and params["opacity_logits"].shape == (N + 2,)
    assert torch.equal(params["means"][N:], before["means"][mask])
    exp_avg, exp_avg_sq = _moments(optimizers, params, "means")
    assert torch.equal(exp_avg[:N], old_moments) and exp_avg[N:].abs().sum() == 0 and exp_avg_sq[N:].abs().sum() == 0
    assert state["grad2d"].shape == (N + 2,) and state["grad2d"][N:].sum() == 0
    _registered(optimizers, params)
    params["means"].sum().backward()
    optimizers["means"].step()  # the optimiser accepts the grown parameter


def test_remove_drops_rows_and_their_moments():
    params, optimizers, state = _setup()
    exp_avg = _moments(optimizers, params, "color_logits")[0].clone()
    colors = params["color_logits"].detach().clone()
    mask = torch.tensor([False, True, True, False, False, True])
    remove(params, optimizers, state, mask)
    assert params["color_logits"].shape == (3, 3)
    assert torch.equal(params["color_logits"], colors[~mask])
    assert torch.equal(_moments(optimizers, params, "color_logits")[0], exp_avg[~mask])
    assert torch.equal(state["grad2d"], torch.tensor([1.0, 4.0, 5.0]))
    _registered(optimizers, params)


def test_split_makes_smaller_children_and_resets_the_parent():
    params, optimizers, state = _setup()
    log_scales = params["log_scales"].detach().clone()
    exp_avg = _moments(optimizers, params, "log_scales")[0].clone()
    mask = torch.tensor([False, False, False, True, False, True])
    split(params, optimizers, state, mask, children=3, scale_factor=1.6, generator=torch.Generator().manual_seed(1))
    assert params["means"].shape == (N + 4, 3)
    shrunk = log_scales[mask] - math.log(1.6)
    assert torch.allclose(params["log_scales"][[3, 5]], shrunk)
    assert torch.allclose(params["log_scales"][N:], shrunk.repeat(2, 1))
    moments = _moments(optimizers, params, "log_scales")[0]
    assert moments[[3, 5]].abs().sum() == 0 and moments[N:].abs().sum() == 0
    assert torch.equal(moments[[0, 1, 2, 4]], exp_avg[[0, 1, 2, 4]])
    assert not torch.equal(params["means"][3], params["means"][N])  # children are drawn apart


def test_compensated_opacity_keeps_the_total_opacity():
    opacity = torch.tensor([0.3, 0.8, 0.95])
    copies = torch.tensor([1.0, 2.0, 4.0])
    new_opacity, new_scale = compensated_opacity_scale(opacity, torch.ones(3, 3), copies)
    assert torch.allclose(1 - (1 - new_opacity) ** copies, opacity, atol=1e-5)
    assert torch.allclose(new_scale[0], torch.ones(3), atol=1e-5)  # one copy: unchanged


def test_relocate_moves_dead_onto_live_and_keeps_the_count():
    params, optimizers, state = _setup()
    with torch.no_grad():
        params["opacity_logits"][:] = torch.tensor([-9.0, 2.0, -9.0, 1.0, 3.0, -9.0])
    colors = params["color_logits"].detach().clone()
    exp_avg = _moments(optimizers, params, "color_logits")[0].clone()
    dead = torch.sigmoid(params["opacity_logits"].detach()) < 0.01
    moved = relocate(params, optimizers, state, dead, generator=torch.Generator().manual_seed(0))
    assert moved == 3 and params["means"].shape == (N, 3)
    live_colors = colors[~dead]
    for row in dead.nonzero().squeeze(1):
        assert any(torch.equal(params["color_logits"][row], c) for c in live_colors)
        assert torch.sigmoid(params["opacity_logits"][row]) > 0.01
    moments = _moments(optimizers, params, "color_logits")[0]
    assert moments[dead].abs().sum() == 0
    untouched = ~dead & (params["means"].detach()[:, None] != params["means"].detach()[dead][None]).any(-1).all(-1)
    assert torch.equal(moments[untouched], exp_avg[untouched])


@pytest.mark.parametrize("step, expected", [(10, 0), (20, 2)])
def test_relocate_strategy_runs_when_due(step, expected):
    params, optimizers, state = _setup()
    with torch.no_grad():
        params["opacity_logits"][:2] = -12.0
    strategy = RelocateStrategy(min_opacity=0.005, every=20, start=20)
    info: dict = {}
    assert strategy.step_post_backward(params, optimizers, state, step, info) == expected
    assert params["means"].shape == (N, 3)
