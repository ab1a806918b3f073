"""Densification of the refinement: clone or split the Gaussians with the largest screen-space gradient.

3DGS grows where the image wants detail: a Gaussian whose projected position keeps receiving a large
gradient sits on an edge it cannot fit alone. This strategy ranks Gaussians by their mean screen-space
position gradient (loss per pixel of motion) over the steps since the last growth, and every `grow_every`
steps adds a budget of `grow_fraction` of the current count (3DGS uses a gradient threshold instead; a
threshold on a loss averaged over pixels depends on the resolution, a budget does not). A chosen Gaussian with
a footprint radius above `split_px` is split: it and its copy move to two samples of its own distribution and
shrink by `split_scale`; a smaller one is cloned in place. Dynamic ones carry their whole trajectory.

Optimiser state: appended rows start with zero Adam moments and split rows have theirs reset (a new or moved
Gaussian has no gradient history of its own), while every other row keeps its moments — the same choice as
the sequential pass's spawn, where it was measured against rebuilding Adam (`recon4d.fit.sequential`).

Hooks, in the order the trainer calls them each step: `step_pre_backward` (whether to keep the means'
gradient), `step_post_backward` (statistics, before the optimiser step moves what they were taken at),
`step_post_optimizer` (the edit).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from recon4d.fit.config import DensifyConfig
from recon4d.fit.model import SceneModel
from recon4d.fit.optim import replace_parameter
from recon4d.geometry.quaternion import rotation_from_quaternion


@dataclass
class GrowStrategy:
    """Clone/split by screen-space gradient over `total_steps` steps of a `SceneModel`, within `max_gaussians`.

    `on_grow(model)` runs after each growth that added dynamic Gaussians (e.g. to rebuild neighbour lists).
    """

    config: DensifyConfig
    total_steps: int
    added: int = 0
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    def initialize_state(self, model: SceneModel) -> None:
        n = model.num_gaussians
        self.state = {name: torch.zeros(n, device=model.device) for name in ("grad_px_sum", "footprint_px_sum", "seen_count")}

    def active(self, step: int) -> bool:
        """Whether a growth is still ahead at `step` (statistics are gathered only then)."""
        cfg = self.config
        return cfg.grow_every > 0 and step < cfg.grow_until * self.total_steps

    def due(self, step: int) -> bool:
        """Whether to grow after `step` steps."""
        cfg = self.config
        return cfg.grow_every > 0 and step > 0 and step % cfg.grow_every == 0 and step <= cfg.grow_until * self.total_steps

    def step_pre_backward(self, model: SceneModel, step: int, info: dict[str, Any]) -> None:
        """Ask the trainer to keep the gradient of the means it renders (`info["track_means"]`)."""
        info["track_means"] = self.active(step)

    @torch.no_grad()
    def step_post_backward(self, model: SceneModel, step: int, info: dict[str, Any]) -> None:
        """Add one step's screen-space position gradient and footprint radius (pixels) of every Gaussian that
        got a gradient. info: "rows" [A] the Gaussians drawn, "means" [A, 3] their positions and "means_grad"
        [A, 3] the gradient there, "camera_from_world" [4, 4], "focal" (pixels)."""
        if not info.get("track_means") or info.get("means_grad") is None:
            return
        rows, means, grad, cfw, focal = info["rows"], info["means"], info["means_grad"], info["camera_from_world"], info["focal"]
        depth = means @ cfw[2, :3] + cfw[2, 3]
        seen = (grad.abs().sum(-1) > 0) & (depth > 1e-6)
        depth = depth.clamp_min(1e-6)
        self.state["grad_px_sum"].index_add_(0, rows, torch.where(seen, grad.norm(dim=-1) * depth / focal, 0.0))
        footprint = torch.exp(model.log_scales[rows]).amax(-1) * focal / depth
        self.state["footprint_px_sum"].index_add_(0, rows, torch.where(seen, footprint, 0.0))
        self.state["seen_count"].index_add_(0, rows, seen.float())

    @torch.no_grad()
    def step_post_optimizer(self, model: SceneModel, optimizer: torch.optim.Optimizer, step: int,
                            info: dict[str, Any], generator: torch.Generator) -> int:
        """Grow when due after `step` steps; returns how many Gaussians were added."""
        if not self.due(step):
            return 0
        added = self.grow(model, optimizer, generator)
        info["grown"] = added
        return added

    @torch.no_grad()
    def grow(self, model: SceneModel, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> int:
        """Clone or split the highest-ranked Gaussians (see the module docstring); returns how many."""
        cfg, device = self.config, model.device
        count = model.num_gaussians
        seen_count, grad_sum = self.state["seen_count"], self.state["grad_px_sum"]
        # The budget holds per temporal window: a long clip's windows each have their own Gaussians.
        budget = min(int(cfg.grow_fraction * count), cfg.max_gaussians * model.num_windows - count)
        seen = seen_count > 0
        score = torch.where(seen, grad_sum / seen_count.clamp_min(1), 0.0)
        budget = min(budget, int((score > 0).sum()))
        if budget <= 0:
            self.initialize_state(model)
            return 0
        chosen = score.topk(budget).indices.sort().values
        split = (self.state["footprint_px_sum"][chosen] / seen_count[chosen]) > cfg.split_px
        is_dynamic = torch.zeros(count, dtype=torch.bool, device=device)
        is_dynamic[model.dynamic] = True
        row_of = torch.full((count,), -1, dtype=torch.long, device=device)  # row in still_means / trajectories
        row_of[model.still] = torch.arange(model.still.numel(), device=device)
        row_of[model.dynamic] = torch.arange(model.dynamic.numel(), device=device)

        # Two samples of each split Gaussian's distribution (local axes scaled, then rotated to world).
        scales = torch.exp(model.log_scales[chosen])
        rotations = rotation_from_quaternion(model.reference_rotations()[chosen])
        noise = torch.randn(2, chosen.numel(), 3, generator=generator).to(device)
        offsets = torch.einsum("nij,knj->kni", rotations, noise * scales) * split[None, :, None]
        shrink = math.log(cfg.split_scale) * split.float()[:, None]

        chosen_still, chosen_dynamic = ~is_dynamic[chosen], is_dynamic[chosen]
        new_ids = torch.arange(count, count + chosen.numel(), device=device)
        still_rows, dynamic_rows = row_of[chosen[chosen_still]], row_of[chosen[chosen_dynamic]]

        # A split Gaussian moves to the first sample, its copy to the second; dynamic ones shift their
        # whole trajectory (the constant coefficient).
        still_means = model.still_means.detach().clone()
        still_means[still_rows] += offsets[0][chosen_still]
        added_still = model.still_means.detach()[still_rows] + offsets[1][chosen_still]
        position = model.position.detach().clone()
        position[dynamic_rows, 0] += offsets[0][chosen_dynamic]
        added_position = model.position.detach()[dynamic_rows].clone()
        added_position[:, 0] += offsets[1][chosen_dynamic]
        log_scales = model.log_scales.detach().clone()
        log_scales[chosen] -= shrink
        updates = {
            "still_means": (torch.cat([still_means, added_still]), still_rows[split[chosen_still]]),
            "position": (torch.cat([position, added_position]), dynamic_rows[split[chosen_dynamic]]),
            "still_motion": (torch.cat([model.still_motion.detach(), model.still_motion.detach()[still_rows]]), None),
            "rotation": (torch.cat([model.rotation.detach(), model.rotation.detach()[dynamic_rows]]), None),
            "color_offsets": (torch.cat([model.color_offsets.detach(), model.color_offsets.detach()[dynamic_rows]]), None),
            "quats": (torch.cat([model.quats.detach(), model.quats.detach()[chosen]]), None),
            "log_scales": (torch.cat([log_scales, log_scales[chosen]]), chosen[split]),
            "opacity_logits": (torch.cat([model.opacity_logits.detach(), model.opacity_logits.detach()[chosen]]), None),
            "color_logits": (torch.cat([model.color_logits.detach(), model.color_logits.detach()[chosen]]), None),
        }
        for name, (value, reset_rows) in updates.items():
            old = getattr(model, name)
            new = value.contiguous().requires_grad_(True)
            replace_parameter(optimizer, old, new, reset_rows)
            setattr(model, name, new)
        model.still = torch.cat([model.still, new_ids[chosen_still]])
        model.dynamic = torch.cat([model.dynamic, new_ids[chosen_dynamic]])
        model.birth = torch.cat([model.birth, model.birth[chosen]])
        model.death = torch.cat([model.death, model.death[chosen]])
        model.window = torch.cat([model.window, model.window[chosen]])
        model.is_moving = torch.cat([model.is_moving, model.is_moving[chosen]])
        self.initialize_state(model)
        self.added += chosen.numel()
        return chosen.numel()
