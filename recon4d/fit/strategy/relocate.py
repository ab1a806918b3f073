"""A fixed-size densification strategy: exactly G Gaussians throughout, near-transparent ones relocated.

This is the growth policy of 3DGS-MCMC (Kheradmand et al. 2024) without its noise term: instead of
cloning and pruning (which changes N), every `every` steps the Gaussians whose opacity fell below
`min_opacity` are moved onto live Gaussians sampled by opacity (`ops.relocate`). A fixed G is what the
scene-latent encoder of `recon4d.gen` needs: every object becomes a [G, C] tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from recon4d.fit.strategy.ops import Optimizers, Params, State, relocate


@dataclass
class RelocateStrategy:
    """Keep len(params["means"]) fixed; relocate dead Gaussians every `every` steps in [start, stop).

    Attributes:
        min_opacity: a Gaussian below this opacity counts as dead.
        every: relocation period in steps.
        start, stop: steps where relocation runs (stop excluded; late relocations leave no time to settle).
        seed: seeds the opacity-proportional sampling of destinations.
    """

    min_opacity: float = 0.005
    every: int = 50
    start: int = 50
    stop: int = 10**9
    seed: int = 0

    def __post_init__(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)

    def initialize_state(self) -> State:
        """Per-Gaussian statistics this strategy keeps: none besides the relocation count."""
        return {}

    def step_pre_backward(self, params: Params, optimizers: Optimizers, state: State, step: int,
                          info: dict[str, Any]) -> None:
        """Nothing to record before the backward pass (relocation needs only opacities)."""

    @torch.no_grad()
    def step_post_backward(self, params: Params, optimizers: Optimizers, state: State, step: int,
                           info: dict[str, Any]) -> int:
        """After `optimizer.step()` of step `step`: relocate dead Gaussians when due; returns how many moved."""
        if not (self.start <= step < self.stop and step % self.every == 0):
            return 0
        dead = torch.sigmoid(params["opacity_logits"].detach()) < self.min_opacity
        moved = relocate(params, optimizers, state, dead, generator=self._generator)
        info["relocated"] = info.get("relocated", 0) + moved
        return moved
