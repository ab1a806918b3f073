"""Adam that leaves untouched the rows a step did not see (gsplat's "selective Adam" idea).

When each step fits one frame, most Gaussians and all but one or two cameras get an exactly zero gradient.
Plain Adam still moves them: its first moment decays slowly while the second stays large, so a parameter
keeps drifting for many steps after its last real gradient. Over a joint optimisation of many frames that
drift is a random walk of cameras and unseen Gaussians. Here a row (first index: one Gaussian, one camera)
whose gradient is zero in a step keeps its value and its moments.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

_KERNEL = Path(__file__).with_name("csrc") / "selective_adam.cpp"


class SelectiveAdam(torch.optim.Optimizer):
    """Adam (torch.optim.Adam's update, state `step`, `exp_avg`, `exp_avg_sq`; no weight decay, no AMSGrad)
    whose `step()` only changes rows [N, ...] with a non-zero gradient.

    On the CPU one fused C++ pass per parameter (`csrc/selective_adam.cpp`: 1.3 ms for 28k Gaussians' rows,
    where Adam followed by restoring the unseen rows took 22 ms); elsewhere the same update as tensor ops.

    Example:
        >>> param = torch.nn.Parameter(torch.ones(2, 3))
        >>> optimizer = SelectiveAdam([param], lr=0.1)
        >>> param[0].sum().backward(); optimizer.step()
        >>> [round(x, 6) for x in param.data[:, 0].tolist()]
        [0.9, 1.0]
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - same contract as Adam.step
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None or param.dim() == 0 or param.numel() == 0:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.contiguous_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.contiguous_format)
                state["step"] += 1
                _update_rows(param, param.grad, state["exp_avg"], state["exp_avg_sq"], group["lr"], beta1, beta2,
                             group["eps"], state["step"])
        return loss


def _update_rows(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, lr: float,
                 beta1: float, beta2: float, eps: float, step: int) -> None:
    """One selective Adam step of `param` [N, ...] in place (moments likewise)."""
    contiguous = param.is_contiguous() and grad.is_contiguous()
    if param.device.type == "cpu" and param.dtype == torch.float32 and contiguous:
        from recon4d.cpp import load_extension

        load_extension(_KERNEL).selective_adam_step(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, step)
        return
    seen = (grad.reshape(grad.shape[0], -1) != 0).any(-1).reshape(-1, *[1] * (param.dim() - 1))
    exp_avg.copy_(torch.where(seen, beta1 * exp_avg + (1 - beta1) * grad, exp_avg))
    exp_avg_sq.copy_(torch.where(seen, beta2 * exp_avg_sq + (1 - beta2) * grad * grad, exp_avg_sq))
    step_size = lr / (1 - beta1**step)
    denom = exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step) + eps
    param.sub_(torch.where(seen, step_size * exp_avg / denom, torch.zeros((), device=param.device)))


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
