"""Adam that leaves untouched the rows a step did not see (gsplat's "selective Adam" idea).

When each step fits one frame, most Gaussians and all but one or two cameras get an exactly zero gradient.
Plain Adam still moves them: its first moment decays slowly while the second stays large, so a parameter
keeps drifting for many steps after its last real gradient. Over a joint optimisation of many frames that
drift is a random walk of cameras and unseen Gaussians. Here a row (first index: one Gaussian, one camera)
whose gradient is zero in a step keeps its value and its moments.
"""
from __future__ import annotations

import torch


class SelectiveAdam(torch.optim.Adam):
    """torch.optim.Adam whose `step()` only changes rows with a non-zero gradient (parameters [N, ...])."""

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - same contract as Adam.step
        saved = []
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None or param.dim() == 0 or param.numel() == 0:
                    continue
                unseen = (param.grad.reshape(param.shape[0], -1) == 0).all(-1)
                if not bool(unseen.any()):
                    continue
                state = self.state.get(param, {})
                moments = {k: v[unseen].clone() for k, v in state.items() if torch.is_tensor(v) and v.shape == param.shape}
                saved.append((param, unseen, param[unseen].clone(), moments))
        loss = super().step(closure)
        for param, unseen, values, moments in saved:
            param[unseen] = values
            state = self.state[param]
            for name, value in moments.items():
                state[name][unseen] = value
        return loss


@torch.no_grad()
def replace_parameter(optimizer: torch.optim.Optimizer, old: torch.Tensor, new: torch.Tensor,
                      reset_rows: torch.Tensor | None = None) -> None:
    """Swap parameter `old` [N, ...] for `new` [N + M, ...] (rows appended) in an Adam-type optimizer.

    The moments of the first N rows carry over, appended rows start from zero moments, and rows listed in
    `reset_rows` (indices < N, e.g. Gaussians that were split in place) get their moments zeroed too.
    """
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if not state:
        return
    rows = old.shape[0]
    for name, value in state.items():
        if torch.is_tensor(value) and value.shape == old.shape:
            grown = torch.cat([value, value.new_zeros((new.shape[0] - rows, *value.shape[1:]))])
            if reset_rows is not None and reset_rows.numel():
                grown[reset_rows] = 0
            state[name] = grown
    optimizer.state[new] = state
