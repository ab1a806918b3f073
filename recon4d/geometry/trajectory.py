"""Continuous trajectories in time: polynomial + Fourier series (Gaussian-Flow's dual-domain model).

An attribute of one Gaussian over normalised time tau in [0, 1] is

    value(tau) = c_0 + sum_{k=1..P} c_k tau^k + sum_{l=1..F} (s_l sin(2 pi l tau) + r_l cos(2 pi l tau)),

i.e. a coefficient vector [1 + P + 2F] per output channel against a fixed basis. The polynomial captures
the slow drift of a trajectory, the Fourier terms its oscillations (gait, waving). Everything here is a pure
function of tensors.

Example:
    >>> import torch
    >>> basis = time_basis(torch.linspace(0, 1, 20), poly_degree=2, fourier_terms=1)
    >>> basis.shape
    torch.Size([20, 5])
    >>> truth = torch.randn(7, 5, 3)                      # [N, B, D] coefficients of 7 trajectories
    >>> values = evaluate_trajectories(truth, basis)      # [T, N, D] samples
    >>> coeffs = fit_trajectories(values, basis, ridge=0.0)
    >>> torch.allclose(coeffs, truth, atol=1e-3)
    True
"""
from __future__ import annotations

import math

import torch


def basis_size(poly_degree: int, fourier_terms: int) -> int:
    """Number of basis functions: constant, P powers, F sine and F cosine terms."""
    return 1 + poly_degree + 2 * fourier_terms


def time_basis(tau: torch.Tensor, poly_degree: int, fourier_terms: int) -> torch.Tensor:
    """Basis functions at normalised times tau [T] -> [T, 1 + P + 2F] (constant, tau^1..P, sin/cos pairs)."""
    tau = tau.reshape(-1)
    columns = [torch.ones_like(tau)]
    columns += [tau**k for k in range(1, poly_degree + 1)]
    for frequency in range(1, fourier_terms + 1):
        angle = 2 * math.pi * frequency * tau
        columns += [torch.sin(angle), torch.cos(angle)]
    return torch.stack(columns, -1)


def window_basis(times: torch.Tensor, window: torch.Tensor, poly_degree: int, fourier_terms: int) -> torch.Tensor:
    """Basis of N trajectories that each live in their own time window: times [T] (frames), window [N, 2]
    (first and last frame of each trajectory's window) -> [T, N, B], with tau = (t - first) / (last - first)."""
    first, span = window[:, 0], (window[:, 1] - window[:, 0]).clamp_min(1.0)
    tau = (times.reshape(-1, 1).to(window.dtype) - first) / span  # [T, N]
    return time_basis(tau.reshape(-1), poly_degree, fourier_terms).reshape(*tau.shape, basis_size(poly_degree, fourier_terms))


def evaluate_trajectories(coeffs: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Values of N trajectories: coeffs [N, B, D], basis [T, B] -> [T, N, D] (or [N, D] for basis [B]); a
    per-trajectory basis [T, N, B] (`window_basis`) -> [T, N, D]."""
    if basis.dim() == 1:
        return torch.einsum("nbd,b->nd", coeffs, basis)
    if basis.dim() == 3:
        return torch.einsum("nbd,tnb->tnd", coeffs, basis)
    return torch.einsum("nbd,tb->tnd", coeffs, basis)


def fit_trajectories(values: torch.Tensor, basis: torch.Tensor, weights: torch.Tensor | None = None,
                     ridge: float = 1e-4) -> torch.Tensor:
    """Least-squares coefficients of N trajectories sampled at T times.

    Args:
        values: [T, N, D] samples.
        basis: [T, B] basis at the sample times (`time_basis`).
        weights: [T, N] per-sample weights (0 drops a sample, e.g. frames before a Gaussian exists).
        ridge: Tikhonov weight on the non-constant coefficients, relative to the number of samples; keeps
            trajectories with few samples (Gaussians born late) from oscillating wildly outside them.

    Returns:
        coeffs [N, B, D].
    """
    num_times, count, _ = values.shape
    out_dtype = values.dtype
    # Normal equations square the condition number of the basis: solve them in double precision.
    values, basis = values.double(), basis.double()
    if weights is None:
        weights = torch.ones(num_times, count, dtype=values.dtype, device=values.device)
    weights = weights.to(values.dtype)
    # Per trajectory normal equations: (B^T W B + ridge) c = B^T W y, solved in one batched call.
    normal = torch.einsum("tn,tb,tc->nbc", weights, basis, basis)
    penalty = torch.full((basis.shape[1],), ridge * num_times, dtype=values.dtype, device=values.device)
    penalty[0] = 1e-9 * num_times  # the constant term is never penalised, only kept solvable
    normal = normal + torch.diag(penalty)
    rhs = torch.einsum("tn,tb,tnd->nbd", weights, basis, values)
    return torch.linalg.solve(normal, rhs).to(out_dtype)
