"""NeRDF student (Neural Radiance Distribution Field, Wu et al. 2023): one network pass per ray predicts the
weights of a trigonometric basis along the ray for density and colour; volume rendering on a few samples.

Along a ray, s in (0, 1) runs from near to far uniformly in inverse depth. The basis is
phi(s) = [1, cos(pi s), sin(pi s), ..., cos(F pi s), sin(F pi s)] (2F + 1 functions). The per-ray MLP outputs
a density coefficient and three colour coefficients per function; at the S sample centres
sigma_i = softplus(a . phi(s_i)), c_i = sigmoid(b . phi(s_i)), and the pixel is sum_i T_i alpha_i c_i with
alpha_i = 1 - exp(-sigma_i / S) and T_i = exp(-sum_{j<i} sigma_j / S) (bins of width 1/S in s).
"""
from __future__ import annotations

import torch
from torch import nn

from recon4d.nerf.nelf.config import NeRDFConfig
from recon4d.nerf.nelf.encoding import RayFrame, positional_encoding


def trig_basis(s: torch.Tensor, freqs: int) -> torch.Tensor:
    """s: [S] in (0, 1) -> basis [S, 2 freqs + 1]: 1, cos(pi k s), sin(pi k s) for k = 1..freqs."""
    k = torch.arange(1, freqs + 1, dtype=s.dtype, device=s.device) * torch.pi
    angles = s[:, None] * k[None]
    return torch.cat([torch.ones_like(s)[:, None], torch.cos(angles), torch.sin(angles)], 1)


def fit_basis_coefficients(values: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Least-squares coefficients [..., K] of profiles `values` [..., S] in `basis` [S, K]."""
    solution = torch.linalg.lstsq(basis.double(), values.double().reshape(-1, basis.shape[0]).T).solution
    return solution.T.reshape(*values.shape[:-1], basis.shape[1]).to(values.dtype)


def composite(sigma: torch.Tensor, colors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Volume rendering along dim 1.

    Args:
        sigma: [B, S, H, W] densities per unit of s; colors: [B, 3, S, H, W].
    Returns:
        rgb [B, 3, H, W], weights [B, S, H, W] (T_i alpha_i).
    """
    count = sigma.shape[1]
    optical = sigma / count
    before = torch.cumsum(optical, 1) - optical  # exclusive sum: the transmittance up to each sample
    weights = torch.exp(-before) * (1.0 - torch.exp(-optical))
    return (weights[:, None] * colors).sum(2), weights


class NeRDFStudent(nn.Module):
    """rays [B, 6, H, W] -> (RGB [B, 3, H, W] in [0, 1], weights along each ray [B, S, H, W])."""

    kind = "nerdf"

    def __init__(self, config: NeRDFConfig, frame: RayFrame | None = None) -> None:
        super().__init__()
        self.config = config
        self.frame = frame or RayFrame()
        functions = 2 * config.basis_freqs + 1
        self.register_buffer("basis", trig_basis(self.frame.sample_fractions(config.samples), config.basis_freqs))
        layers, channels = [], 6 * (1 + 2 * config.pe_freqs)
        for _ in range(config.layers):
            layers += [nn.Conv2d(channels, config.width, 1), nn.ReLU()]
            channels = config.width
        self.mlp = nn.Sequential(*layers)
        self.coefficients = nn.Conv2d(channels, 4 * functions, 1)

    def encode(self, rays: torch.Tensor) -> torch.Tensor:
        """rays [B, 6, H, W] -> encoded (normalised origin, unit direction) [B, 6 (1 + 2 F), H, W]."""
        origins = self.frame.normalise(rays[:, :3])
        directions = rays[:, 3:] / rays[:, 3:].norm(dim=1, keepdim=True)
        return positional_encoding(torch.cat([origins, directions], 1), self.config.pe_freqs)

    def profiles(self, rays: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rays -> densities [B, S, H, W] and colours [B, 3, S, H, W] at the sample centres."""
        coeffs = self.coefficients(self.mlp(self.encode(rays)))
        functions = self.basis.shape[1]
        b, _, h, w = coeffs.shape
        coeffs = coeffs.reshape(b, 4, functions, h, w)
        values = torch.einsum("bcfhw,sf->bcshw", coeffs, self.basis)
        return nn.functional.softplus(values[:, 0]), torch.sigmoid(values[:, 1:])

    def forward(self, rays: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return composite(*self.profiles(rays))
