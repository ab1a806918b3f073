"""Rectified flow (Liu et al. 2022) on standardised latents: interpolation, timestep samplers, losses, ODE
solvers and classifier-free guidance.

Convention: x_t = (1 - t) x0 + t x1 with x0 ~ N(0, I) (t = 0) and x1 a latent (t = 1); the velocity
target is v = x1 - x0, and sampling integrates dx/dt = v(x, t) from t = 0 to t = 1.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [B, G, C], t [B]) -> v [B, G, C]
TIMESTEP_SAMPLERS = ("uniform", "logit_normal", "u_shaped")
LOSSES = ("mse", "pseudo_huber")


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t [B, ...] for times t [B]."""
    t = t.reshape(-1, *([1] * (x0.dim() - 1)))
    return (1 - t) * x0 + t * x1


def sample_timesteps(kind: str, count: int, generator: torch.Generator, *, logit_mean: float = 0.0,
                     logit_std: float = 1.0, u_shape: float = 4.0) -> torch.Tensor:
    """Training times [count] in (0, 1).

    uniform; logit_normal: t = sigmoid(N(m, s)) (SD3, concentrates on the middle); u_shaped: density
    proportional to cosh(a (t - 1/2)) (rfpp, concentrates on both ends), drawn by inverting its CDF
    F(t) = (sinh(a (t - 1/2)) + sinh(a / 2)) / (2 sinh(a / 2)).
    """
    if kind == "uniform":
        return torch.rand(count, generator=generator)
    if kind == "logit_normal":
        return torch.sigmoid(logit_mean + logit_std * torch.randn(count, generator=generator))
    if kind == "u_shaped":
        u = torch.rand(count, generator=generator)
        half = math.sinh(u_shape / 2)
        return (0.5 + torch.asinh(u * 2 * half - half) / u_shape).clamp(1e-5, 1 - 1e-5)
    raise ValueError(f"unknown timestep sampler {kind!r}; choose from {TIMESTEP_SAMPLERS}")


def flow_loss(predicted: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Per-Gaussian weighted loss. predicted/target [B, G, C], weight [B, G] (the latents' spatial weight).

    mse: mean squared error over channels; pseudo_huber (rfpp): sqrt(|d|^2 + c^2) - c per Gaussian with
    c = 0.00054 sqrt(C), quadratic for small errors and linear for large ones. Each sample is normalised by
    its own weight sum and samples are averaged, so the mean over ranks of a split batch is the loss of the
    whole batch.
    """
    difference = predicted - target
    if kind == "mse":
        per_gaussian = difference.pow(2).mean(-1)
    elif kind == "pseudo_huber":
        c = 0.00054 * math.sqrt(difference.shape[-1])
        per_gaussian = (difference.pow(2).sum(-1) + c * c).sqrt() - c
    else:
        raise ValueError(f"unknown loss {kind!r}; choose from {LOSSES}")
    per_sample = (per_gaussian * weight).sum(-1) / weight.sum(-1).clamp_min(1e-8)
    return per_sample.mean()


def uniform_times(steps: int) -> torch.Tensor:
    """[steps + 1] equally spaced times 0 .. 1."""
    return torch.linspace(0, 1, steps + 1)


@torch.no_grad()
def euler(velocity: Velocity, x0: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Integrate from times[0] to times[-1] with Euler steps (one velocity evaluation per step)."""
    x = x0
    for t0, t1 in zip(times[:-1], times[1:]):
        x = x + (t1 - t0) * velocity(x, t0.expand(x.shape[0]))
    return x


@torch.no_grad()
def heun(velocity: Velocity, x0: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Heun's second-order method: an Euler guess, then the mean of the velocities at both ends
    (two evaluations per step)."""
    x = x0
    for t0, t1 in zip(times[:-1], times[1:]):
        dt = t1 - t0
        v0 = velocity(x, t0.expand(x.shape[0]))
        guess = x + dt * v0
        x = x + dt * 0.5 * (v0 + velocity(guess, t1.expand(x.shape[0])))
    return x


def module_device(model: object) -> torch.device | None:
    """The device of a module's first parameter; None for a plain function or a module without parameters."""
    parameters = getattr(model, "parameters", None)
    first = next(parameters(), None) if callable(parameters) else None
    return None if first is None else first.device


def guided(model_velocity: Callable[..., torch.Tensor], cond: tuple, uncond: tuple, scale: float,
           channels: Sequence[int] | None = None) -> Velocity:
    """Classifier-free guidance: v = v_u + scale (v_c - v_u), conditional and unconditional in one batch.

    cond/uncond: (text_tokens [B, L, D], mask [B, L], pooled [B, D]) with the same L.
    channels: latent channels (indices into the last axis of x [B, G, C]) that are guided; the others take
        the conditional velocity (scale 1). None guides all of them.
    A module on another device than x (a GPU) evaluates there; the velocity comes back on x's device, so
    every solver keeps its state where it began.

    Example (a toy model whose velocity is x plus its text input; guidance 3 on channel 2 only):
        >>> velocity = guided(lambda x, t, text: x + text[:, None], (torch.ones(1, 1),), (torch.zeros(1, 1),), 3.0, [2])
        >>> velocity(torch.zeros(1, 1, 3), torch.zeros(1)).tolist()
        [[[1.0, 1.0, 3.0]]]
    """
    device = module_device(model_velocity)
    if device is not None:  # a model on a GPU: text moved once, each evaluation's state there and back
        cond, uncond = tuple(c.to(device) for c in cond), tuple(u.to(device) for u in uncond)
        model_at = model_velocity

        def model_velocity(x: torch.Tensor, t: torch.Tensor, *text: torch.Tensor) -> torch.Tensor:
            return model_at(x.to(device), t.to(device), *text).to(x.device)
    if scale == 1.0:
        return lambda x, t: model_velocity(x, t, *cond)
    both = tuple(torch.cat([c, u]) for c, u in zip(cond, uncond))

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = model_velocity(torch.cat([x, x]), torch.cat([t, t]), *both)
        v_cond, v_uncond = v.chunk(2)
        if channels is None:
            return v_uncond + scale * (v_cond - v_uncond)
        weights = torch.ones(x.shape[-1], dtype=v.dtype, device=v.device)
        weights[list(channels)] = scale
        return v_uncond + weights * (v_cond - v_uncond)

    return velocity


@torch.no_grad()
def straightness(velocity: Velocity, x0: torch.Tensor, steps: int = 32) -> float:
    """Straightness of a flow (Liu et al.): S = E_t || (Z_1 - Z_0) - v(Z_t, t) ||^2 along the flow's own
    paths Z from x0 [B, G, C] (solved with `steps` Euler steps; mean over elements and times).

    Zero when every path is a straight line, i.e. when one Euler step is exact."""
    times = uniform_times(steps)
    x, velocities = x0, []
    for t0, t1 in zip(times[:-1], times[1:]):
        velocities.append(velocity(x, t0.expand(x.shape[0])))
        x = x + (t1 - t0) * velocities[-1]
    chord = x - x0
    return sum(float((chord - v).pow(2).mean()) for v in velocities) / len(velocities)
