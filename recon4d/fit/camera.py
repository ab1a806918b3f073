"""Pose optimisation of one camera with the scene frozen: the sequential camera step and held-out frames.

Both refine a starting pose by Adam on its 6-DoF delta (`recon4d.fit.model.CameraParams`) against a loss of the
rendered view; they differ in the loss, the learning-rate schedule, early stopping and whether the best or the
last iterate is kept. The joint refinement optimises all cameras together with the Gaussians instead.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from recon4d.fit.model import CameraParams


class Plateau:
    """Stops a stage once its loss has not improved by `tolerance` (relative) for `patience` steps."""

    def __init__(self, patience: int, tolerance: float) -> None:
        self.patience, self.tolerance = patience, tolerance
        self.best = math.inf
        self.since_best = 0

    def step(self, loss: float) -> bool:
        if loss < self.best * (1 - self.tolerance):
            self.best, self.since_best = loss, 0
        else:
            self.since_best += 1
        return self.since_best >= self.patience


def optimize_camera(cameras: CameraParams, k: int, loss_of: Callable[[torch.Tensor], torch.Tensor], iterations: int,
                    lr: float, lr_decay: float = 1.0, plateau: Plateau | None = None,
                    keep_best: bool = False) -> tuple[torch.Tensor, dict]:
    """Optimise camera k of `cameras` (its delta only) to minimise `loss_of(camera_from_world [4, 4])`.

    lr: Adam rate of the delta (radians; translation in `cameras.unit`); lr_decay: factor by which it shrinks
    over `iterations` (so that Adam settles instead of hovering one step around the optimum); plateau: early
    stop; keep_best: return the pose of the lowest loss seen (each loss is evaluated before its step) instead
    of the last iterate. Returns (camera_from_world [4, 4] detached, {"iterations", "loss"}).
    """
    optimizer = torch.optim.Adam([{"params": [cameras.deltas], "lr": lr}], fused=True)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=lr_decay ** (1 / max(iterations, 1)))
    best_loss, best_delta = math.inf, cameras.deltas[k].detach().clone()
    last_loss, done = math.inf, 0
    for done in range(1, iterations + 1):
        loss = loss_of(cameras.camera_from_world(k))
        last_loss = loss.item()
        if keep_best and last_loss < best_loss:
            best_loss, best_delta = last_loss, cameras.deltas[k].detach().clone()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if plateau is not None and plateau.step(last_loss):
            break
    with torch.no_grad():
        delta = best_delta if keep_best else cameras.deltas[k].detach()
        pose = cameras.camera_from_world(k, delta=delta)
    return pose.detach(), {"iterations": done, "loss": best_loss if keep_best else last_loss}
