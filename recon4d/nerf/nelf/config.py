"""Settings of the light-field students and of their distillation from a fitted Gaussian scene.

Two presets: ``cpu`` (trains in minutes on a laptop CPU, the default) and ``paper`` (the published sizes:
MobileR2L's depth-60 / width-256 residual body with an x8 super-resolution tail, a NeRDF-sized MLP; meant for
a GPU). Every field can be overridden from the CLI or in code with `dataclasses.replace`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from recon4d.errors import InputError

MODEL_NAMES = ("r2l", "nerdf")
PRESET_NAMES = ("cpu", "paper")


@dataclass(frozen=True)
class R2LConfig:
    """MobileR2L-style student: points on each ray of a low-resolution grid -> 1x1-conv residual body ->
    transposed-conv super-resolution tail.

    Attributes:
        num_points: points sampled per ray (uniform in inverse depth between the scene's near and far).
        pe_freqs: positional-encoding octaves per coordinate (sin and cos of 2^k pi x, k < pe_freqs).
        width: channels of the residual body.
        blocks: residual blocks (two 1x1 convs each; body depth = 2 * blocks + 2).
        sr_factor: upsampling of the tail (a power of two); image sides must be divisible by it.
        sr_width: channels after the first transposed conv (halved by each later stage, at least 16).
    """

    num_points: int = 8
    pe_freqs: int = 6
    width: int = 64
    blocks: int = 6
    sr_factor: int = 4
    sr_width: int = 32


@dataclass(frozen=True)
class NeRDFConfig:
    """NeRDF student: one MLP pass per ray predicts weights of a trigonometric basis along the ray for density
    and colour; volume rendering on `samples` points.

    Attributes:
        pe_freqs: positional-encoding octaves of the ray (origin and direction, 6 numbers).
        width, layers: the per-ray MLP (1x1 convs, so it also runs on whole images).
        basis_freqs: F; the basis along the ray is [1, cos(pi k s), sin(pi k s)] for k = 1..F (2F + 1 functions).
        samples: points per ray for volume rendering (and bins of the teacher's density profile).
        profile_weight: weight of the MSE between normalised density profiles (NeRDF's 0.1).
    """

    pe_freqs: int = 6
    width: int = 64
    layers: int = 4
    basis_freqs: int = 6
    samples: int = 16
    profile_weight: float = 0.1


@dataclass(frozen=True)
class PseudoDataConfig:
    """Teacher pseudo-views sampled around the recovered camera path.

    Attributes:
        views: training cameras rendered by the teacher (the input cameras are added to them).
        held_out_views: cameras drawn the same way but from another random stream, only for evaluation.
        rotation_jitter_deg: standard deviation of the random rotation added to an interpolated camera.
        position_jitter: standard deviation of the random offset of an interpolated camera, as a share of the
            median scene depth (a still camera still gets some parallax).
        near_percentile, far_percentile: percentiles of the teacher's depth at the input cameras that bound
            the ray samples; `bound_margin` widens them (near / margin, far * margin).
        bound_margin: see above.
        coverage_threshold: teacher alpha above which a pixel counts as covered when measuring depth bounds.
    """

    views: int = 160
    held_out_views: int = 8
    rotation_jitter_deg: float = 2.0
    position_jitter: float = 0.03
    near_percentile: float = 1.0
    far_percentile: float = 99.0
    bound_margin: float = 1.25
    coverage_threshold: float = 0.5


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of the student.

    Attributes:
        steps: steps on teacher pseudo-views.
        finetune_steps: then steps on the real input frames (R2L's real-data step), each with one pseudo batch
            as well so that views far from the input cameras are not forgotten.
        batch_views: images per step of R2L (whole images: the super-resolution tail needs neighbourhoods).
        rays_per_step: rays per step of NeRDF (drawn over all pixels of all views).
        lr, final_lr_share: Adam learning rate, cosine-decayed to lr * final_lr_share.
        finetune_lr_share: learning rate of the finetune as a share of `lr`.
        checkpoint_every: steps between resumable checkpoints.
        seed: seeds camera sampling, initialisation and batch order.
        timing_repeats: timed frames per measurement of ms per frame (median).
    """

    steps: int = 1500
    finetune_steps: int = 150
    batch_views: int = 4
    rays_per_step: int = 4096
    lr: float = 2e-3
    final_lr_share: float = 0.05
    finetune_lr_share: float = 0.1
    checkpoint_every: int = 100
    seed: int = 0
    timing_repeats: int = 10


@dataclass(frozen=True)
class DistillConfig:
    """Everything `recon4d nerf distill` needs besides the scene."""

    model: str = "r2l"
    preset: str = "cpu"
    r2l: R2LConfig = field(default_factory=R2LConfig)
    nerdf: NeRDFConfig = field(default_factory=NeRDFConfig)
    data: PseudoDataConfig = field(default_factory=PseudoDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "DistillConfig":
        return DistillConfig(
            model=data["model"], preset=data["preset"], r2l=R2LConfig(**data["r2l"]),
            nerdf=NeRDFConfig(**data["nerdf"]), data=PseudoDataConfig(**data["data"]),
            train=TrainConfig(**data["train"]),
        )


def preset_config(model: str, preset: str = "cpu") -> DistillConfig:
    """The config of a preset for `model`; raises InputError for an unknown model or preset."""
    if model not in MODEL_NAMES:
        raise InputError(f"unknown light-field model {model!r}", hint=f"use {' or '.join(MODEL_NAMES)}")
    if preset not in PRESET_NAMES:
        raise InputError(f"unknown preset {preset!r}", hint=f"use {' or '.join(PRESET_NAMES)}")
    if preset == "cpu":
        # A NeRDF step (4096 rays) costs about a quarter of an R2L step (4 images); on carphone 4000 steps
        # gave +1.8 dB over 1500 (bench/nelf.py).
        train = TrainConfig(steps=4000) if model == "nerdf" else TrainConfig()
        return DistillConfig(model=model, preset=preset, train=train)
    # MobileR2L: 8 points, depth 60 x width 256, x8 transposed-conv tail; NeRDF: an 8 x 256 MLP.
    return DistillConfig(
        model=model, preset=preset,
        r2l=R2LConfig(num_points=8, pe_freqs=10, width=256, blocks=29, sr_factor=8, sr_width=64),
        nerdf=NeRDFConfig(pe_freqs=10, width=256, layers=8, basis_freqs=8),
        data=PseudoDataConfig(views=1000),
        train=TrainConfig(steps=20000, finetune_steps=2000, batch_views=8, rays_per_step=16384, lr=5e-4),
    )


def with_overrides(config: DistillConfig, steps: int | None = None, finetune_steps: int | None = None,
                   views: int | None = None, seed: int | None = None) -> DistillConfig:
    """Apply CLI overrides (None keeps the preset's value); raises InputError for non-positive counts."""
    train, data = config.train, config.data
    for name, value in (("--steps", steps), ("--views", views)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if finetune_steps is not None and finetune_steps < 0:
        raise InputError(f"--finetune-steps must be >= 0, got {finetune_steps}")
    train = dataclasses.replace(train, **{k: v for k, v in (("steps", steps), ("finetune_steps", finetune_steps),
                                                            ("seed", seed)) if v is not None})
    if views is not None:
        data = dataclasses.replace(data, views=views)
    return dataclasses.replace(config, train=train, data=data)
