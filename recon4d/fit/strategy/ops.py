"""Edits of a Gaussian set during optimisation that keep the optimiser consistent (gsplat-style ops).

Every op works on

- ``params``: ``dict[str, torch.nn.Parameter]`` of raw per-Gaussian values, first dimension N: ``means``
  [N, 3], ``quats`` [N, 4] (wxyz), ``log_scales`` [N, 3], ``opacity_logits`` [N], colours [N, C] and any
  other per-Gaussian rows;
- ``optimizers``: ``dict[str, torch.optim.Adam]``, one Adam per parameter name with one param group;
- ``state``: ``dict[str, Tensor]`` of per-Gaussian statistics (gradient accumulators, counts), first
  dimension N; entries that are not [N, ...] tensors are left alone.

and replaces the parameters in place in the dicts (new ``nn.Parameter`` objects, re-registered in their
optimiser). Adam moments follow their rows: kept rows keep their ``exp_avg``/``exp_avg_sq``, new rows start
from zero moments (a fresh Gaussian has no gradient history), removed rows drop theirs. Where an op
rewrites an existing row (split: the parent becomes a child; relocate: a dead Gaussian becomes a copy),
that row's moments are reset to zero, as gsplat's ``relocate`` does, because its old history belongs to a
different Gaussian.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from recon4d.geometry.quaternion import rotation_from_quaternion

Params = dict[str, torch.nn.Parameter]
Optimizers = dict[str, torch.optim.Optimizer]
State = dict[str, torch.Tensor]

MIN_OPACITY = 1e-3  # clamp for relocated opacities: 1 - (1 - o)^(1/k) must stay a valid logit
_LOGIT_EPS = 1e-6


def _update(params: Params, optimizers: Optimizers, new_value: Callable[[str, torch.Tensor], torch.Tensor],
            new_moment: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    """Replace every parameter by `new_value(name, old)` and every Adam moment by `new_moment(key, old)`."""
    for name, old in list(params.items()):
        new = torch.nn.Parameter(new_value(name, old.detach()), requires_grad=old.requires_grad)
        optimizer = optimizers.get(name)
        if optimizer is not None:
            group = optimizer.param_groups[0]
            saved = optimizer.state.pop(old, {})
            group["params"] = [new if p is old else p for p in group["params"]]
            for key, moment in saved.items():
                if torch.is_tensor(moment) and moment.dim() > 0 and moment.shape[0] == old.shape[0]:
                    saved[key] = new_moment(key, moment)
            if saved:
                optimizer.state[new] = saved
        params[name] = new


def _update_state(state: State, rows: int, new_value: Callable[[torch.Tensor], torch.Tensor]) -> None:
    for key, value in list(state.items()):
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == rows:
            state[key] = new_value(value)


@torch.no_grad()
def duplicate(params: Params, optimizers: Optimizers, state: State, mask: torch.Tensor) -> None:
    """Append a copy of every Gaussian in `mask` [N] bool (3DGS clone). Copies get zero moments and zero stats."""
    index = mask.nonzero().squeeze(1)
    rows = mask.shape[0]
    _update(params, optimizers, lambda _, x: torch.cat([x, x[index]]),
            lambda _, m: torch.cat([m, m.new_zeros((len(index), *m.shape[1:]))]))
    _update_state(state, rows, lambda v: torch.cat([v, v.new_zeros((len(index), *v.shape[1:]))]))


@torch.no_grad()
def remove(params: Params, optimizers: Optimizers, state: State, mask: torch.Tensor) -> None:
    """Delete the Gaussians in `mask` [N] bool with their moments and statistics."""
    keep = ~mask
    rows = mask.shape[0]
    _update(params, optimizers, lambda _, x: x[keep], lambda _, m: m[keep])
    _update_state(state, rows, lambda v: v[keep])


@torch.no_grad()
def split(params: Params, optimizers: Optimizers, state: State, mask: torch.Tensor, *, children: int = 2,
          scale_factor: float = 1.6, generator: torch.Generator | None = None) -> None:
    """Replace every Gaussian in `mask` [N] bool by `children` samples drawn from it (3DGS split).

    A child's centre is drawn from the parent's Gaussian, its scales are the parent's divided by
    `scale_factor`; the other rows copy the parent. The parent's row becomes the first child (moments reset),
    the others are appended (zero moments, zero statistics).
    """
    index = mask.nonzero().squeeze(1)
    rows, count = mask.shape[0], len(index)
    means, quats, log_scales = params["means"].detach(), params["quats"].detach(), params["log_scales"].detach()
    rotation = rotation_from_quaternion(torch.nn.functional.normalize(quats[index], dim=-1))  # [M, 3, 3]
    noise = torch.randn((children, count, 3), generator=generator, dtype=means.dtype, device=means.device)
    offsets = torch.einsum("mij,kmj->kmi", rotation, noise * log_scales[index].exp())
    child_means = means[index] + offsets  # [children, M, 3]
    reset = torch.zeros(rows + (children - 1) * count, dtype=torch.bool, device=mask.device)
    reset[index] = True

    def value(name: str, x: torch.Tensor) -> torch.Tensor:
        extra = x[index].repeat(children - 1, *([1] * (x.dim() - 1)))
        out = torch.cat([x, extra])
        if name == "means":
            out[index] = child_means[0]
            out[rows:] = child_means[1:].reshape(-1, 3)
        elif name == "log_scales":
            shrunk = x[index] - torch.log(torch.tensor(scale_factor, dtype=x.dtype))
            out[index] = shrunk
            out[rows:] = shrunk.repeat(children - 1, 1)
        return out

    def moment(_: str, m: torch.Tensor) -> torch.Tensor:
        out = torch.cat([m, m.new_zeros(((children - 1) * count, *m.shape[1:]))])
        out[reset] = 0
        return out

    _update(params, optimizers, value, moment)
    _update_state(state, rows, lambda v: torch.cat([v, v.new_zeros(((children - 1) * count, *v.shape[1:]))]))


def compensated_opacity_scale(opacities: torch.Tensor, scales: torch.Tensor, copies: torch.Tensor,
                              max_copies: int = 51) -> tuple[torch.Tensor, torch.Tensor]:
    """Opacity and scales of each of `copies` [M] Gaussians that together render like the original.

    3DGS-MCMC (Kheradmand et al. 2024, eq. 9): o' = 1 - (1 - o)^(1/k), and the scale is corrected so that
    the summed footprint of k overlapping copies keeps the original's peak contribution.
    opacities [M], scales [M, 3] (linear) -> ([M], [M, 3]).
    """
    copies = copies.clamp(1, max_copies)
    new_opacity = 1 - (1 - opacities.clamp(0, 1 - MIN_OPACITY)) ** (1.0 / copies)
    denominator = torch.zeros_like(opacities)
    for i in range(1, int(copies.max()) + 1):
        for k in range(i):
            term = math.comb(i - 1, k) * (-1) ** k / math.sqrt(k + 1) * new_opacity ** (k + 1)
            denominator = denominator + torch.where(copies >= i, term, torch.zeros_like(term))
    new_scale = (opacities / denominator.clamp_min(1e-12))[:, None] * scales
    return new_opacity.clamp(MIN_OPACITY, 1 - MIN_OPACITY), new_scale


@torch.no_grad()
def relocate(params: Params, optimizers: Optimizers, state: State, dead_mask: torch.Tensor, *,
             generator: torch.Generator | None = None) -> int:
    """Move dead Gaussians (`dead_mask` [N] bool) onto live ones sampled in proportion to their opacity.

    3DGS-MCMC's relocation: each chosen live Gaussian and the dead ones moved onto it share its place; their
    opacity and scales are recomputed (`compensated_opacity_scale`) so the image barely changes, and the
    optimiser then pulls them apart. The number of Gaussians stays N. The rows of the sampled sources and
    the dead rows get zero moments; statistics of those rows are zeroed. Returns how many moved.
    """
    dead = dead_mask.nonzero().squeeze(1)
    live = (~dead_mask).nonzero().squeeze(1)
    if len(dead) == 0 or len(live) == 0:
        return 0
    opacity = torch.sigmoid(params["opacity_logits"].detach())
    probability = opacity[live].clamp_min(1e-8)
    sources = live[torch.multinomial(probability, len(dead), replacement=True, generator=generator)]
    copies = torch.bincount(sources, minlength=dead_mask.shape[0])[sources].to(opacity.dtype) + 1
    new_opacity, new_scale = compensated_opacity_scale(opacity[sources], params["log_scales"].detach()[sources].exp(),
                                                       copies)
    touched = torch.zeros_like(dead_mask)
    touched[dead] = True
    touched[sources] = True

    def value(name: str, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        if name == "opacity_logits":
            logits = torch.log(new_opacity / (1 - new_opacity)).clamp(-1 / _LOGIT_EPS, 1 / _LOGIT_EPS)
            out[sources] = logits
            out[dead] = logits
        elif name == "log_scales":
            out[sources] = new_scale.log()
            out[dead] = new_scale.log()
        else:
            out[dead] = x[sources]
        return out

    def moment(_: str, m: torch.Tensor) -> torch.Tensor:
        out = m.clone()
        out[touched] = 0
        return out

    _update(params, optimizers, value, moment)
    _update_state(state, dead_mask.shape[0], lambda v: torch.where(
        touched.reshape(-1, *([1] * (v.dim() - 1))), torch.zeros_like(v), v))
    return len(dead)
