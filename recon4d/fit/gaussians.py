"""Trainable Gaussians: raw parameters with activations, growth, and per-group Adam optimisers."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from recon4d.io.scene import Gaussians

_EPS = 1e-4


def logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(_EPS, 1 - _EPS)
    return torch.log(p / (1 - p))


@dataclass
class TrainableGaussians:
    """Raw (unconstrained) parameters of N Gaussians and their labels.

    Attributes:
        means: [N, 3] world; quats: [N, 4] wxyz; log_scales: [N, 3]; opacity_logits: [N];
        color_logits: [N, 3] (sigmoid -> RGB); is_dynamic: [N] bool; birth_frame: [N] int32.
    """

    means: torch.Tensor
    quats: torch.Tensor
    log_scales: torch.Tensor
    opacity_logits: torch.Tensor
    color_logits: torch.Tensor
    is_dynamic: torch.Tensor
    birth_frame: torch.Tensor

    PARAMETERS = ("means", "quats", "log_scales", "opacity_logits", "color_logits")

    @staticmethod
    def create(means, scales, colors, opacity: float, is_dynamic, birth_frame: int) -> "TrainableGaussians":
        """means [N, 3], scales [N] (isotropic), colors [N, 3] in [0, 1], is_dynamic [N] bool."""
        n = means.shape[0]
        quats = torch.zeros(n, 4, dtype=means.dtype, device=means.device)
        quats[:, 0] = 1
        return TrainableGaussians(
            means=means.detach().clone(), quats=quats,
            log_scales=torch.log(scales.detach())[:, None].repeat(1, 3),
            opacity_logits=logit(torch.full((n,), opacity, dtype=means.dtype, device=means.device)),
            color_logits=logit(colors.detach()),
            is_dynamic=is_dynamic.clone(),
            birth_frame=torch.full((n,), birth_frame, dtype=torch.int32, device=means.device),
        )

    def __len__(self) -> int:
        return self.means.shape[0]

    def requires_grad_(self, flag: bool) -> "TrainableGaussians":
        for name in self.PARAMETERS:
            getattr(self, name).requires_grad_(flag)
        return self

    def append(self, other: "TrainableGaussians") -> None:
        for name in (*self.PARAMETERS, "is_dynamic", "birth_frame"):
            merged = torch.cat([getattr(self, name).detach(), getattr(other, name).detach()])
            setattr(self, name, merged)

    def activated(self) -> Gaussians:
        return Gaussians(
            means=self.means, quats=self.quats, scales=torch.exp(self.log_scales),
            opacities=torch.sigmoid(self.opacity_logits), colors=torch.sigmoid(self.color_logits),
        )

    def optimizer(self, lrs: dict[str, float]) -> torch.optim.Adam:
        """Adam over the parameters named in `lrs` (name -> learning rate); others stay fixed."""
        groups = []
        for name in self.PARAMETERS:
            tensor = getattr(self, name)
            tensor.requires_grad_(name in lrs)
            if name in lrs:
                groups.append({"params": [tensor], "lr": lrs[name], "name": name})
        return torch.optim.Adam(groups, eps=1e-15)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).detach().clone() for name in (*self.PARAMETERS, "is_dynamic", "birth_frame")}

    @staticmethod
    def from_state_dict(state: dict[str, torch.Tensor]) -> "TrainableGaussians":
        return TrainableGaussians(**{k: v.clone() for k, v in state.items()})
