"""Configuration of `recon4d fit`: one dataclass, YAML presets in `configs/`, CLI overrides.

Every tunable number of the fit lives here with its unit; the resolved config is stored in the scene.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from recon4d.errors import InputError

PRESET_NAMES = ("fast", "default", "quality")


@dataclass
class FitConfig:
    """Settings of the sequential (GFlow) fit.

    Input:
        short_side: working resolution, pixels of the short image side (GFlow: 480).
        max_frames / stride: which frames of the source to use.
        fov_x_deg: horizontal field of view assumed when the intrinsics are not given.
        holdout_every: withhold every K-th frame from the fit and report it as a held-out view (0 = off).
    Initialisation (frame 0 and new content):
        num_gaussians: Gaussians sampled on frame 0 (GFlow: 50k).
        gradient_floor: sampling weight of a flat pixel relative to the mean image-gradient magnitude.
        init_opacity: opacity of new Gaussians.
        init_scale: footprint of a new Gaussian in sampling distances.
    Losses (weights):
        lambda_photo, lambda_ssim (share of 1 - SSIM inside the photometric term), lambda_depth,
        lambda_flow (flow error in pixels, Gaussian step), lambda_flow_camera (the same in the camera step,
        where the flow of still pixels is the strongest evidence of the camera motion), lambda_iso (spread of log scales of one Gaussian).
    Replay:
        replay_every: in the Gaussian step, every k-th iteration also fits a random earlier frame (0 = off),
        weighted by lambda_replay; keeps shared attributes consistent with the whole sequence.
    Optimisation:
        frame0_iters, camera_iters, gaussian_iters: iteration caps; a stage stops earlier when its loss
        has improved by less than `plateau_tolerance` (relative) over `plateau_patience` iterations.
        camera_lr_decay: factor by which the camera learning rates shrink over a camera step.
        lr_*: Adam learning rates; lr_means and lr_camera_translation are in units of the scene's median
        depth per step, lr_camera_rotation in radians.
    Densification:
        new_content_alpha: pixels rendered with less alpha than this get new Gaussians after the camera step.
        error_threshold: mean absolute colour error above which a pixel gets a new Gaussian.
        densify_every: Gaussian-step iterations between error-driven densifications.
        max_new_per_frame: cap on Gaussians added per frame; max_gaussians: overall cap.
        motion_dilation: pixels by which moving masks are grown before excluding them from the camera step.
    Continuous-time refinement (`recon4d.fit.refine`, after the sequential pass):
        refine: run it; refine_iters: optimisation steps, one random fitted frame each.
        refine_poly_degree, refine_fourier_terms: trajectory basis (Gaussian-Flow: about 3 and 3).
        refine_min_period_frames: shortest Fourier period in frames; short clips get fewer Fourier terms
            (with fewer frames per period the terms fit each frame and oscillate between them).
        refine_ridge: least-squares regularisation of the initial trajectory fit (relative).
        refine_dynamic_color: let the colour of dynamic Gaussians vary in time (same basis).
        refine_lambda_flow: flow end-point error (pixels) between consecutive fitted frames, all pixels.
        refine_lambda_smooth: acceleration of dynamic trajectories over one frame, in depth units.
        refine_lambda_rigid, refine_rigid_neighbours: change of distances to the k nearest dynamic
            neighbours between consecutive frames, in depth units.
        refine_lr_scale: factor on the sequential learning rates of the Gaussians and trajectories;
        refine_lr_camera: Adam rate of the camera deltas (radians; translation in depth units);
        refine_lr_decay: factor by which all refinement learning rates shrink over the stage.
        refine_lambda_still_motion: weight of the group-lasso penalty (depth units) on the residual motion that
            still Gaussians may take in the refinement (0 = still ones stay still). Catches motion the prior
            missed (slow, sub-pixel); refine_keep_motion_px: residual motion (pixels, at some frame) from which
            a still Gaussian keeps it as a trajectory at the end (it is then dynamic, but not labelled
            moving: masks and highlights show only what the prior saw move); refine_still_motion_from: fraction of the
            steps after which residual motion is allowed (first the cameras settle on a still scene, then
            residual motion cannot stand in for camera error).
        refine_densify_every: steps between densifications in the refinement (0 = off); they stop after
            `refine_densify_until` (a fraction of refine_iters) so that the last steps settle the new ones.
        refine_densify_fraction: Gaussians added per densification, as a share of the current count (those
            with the largest mean screen-space position gradient), within `max_gaussians`.
        refine_split_px: footprint radius (largest scale, pixels) above which a chosen Gaussian is split in two
            instead of cloned; refine_split_scale: factor by which a split shrinks its scales (3DGS: 1.6).
    Held-out evaluation:
        holdout_refine_iters: pose iterations (Gaussians frozen) for a held-out frame's interpolated camera.
    Outputs:
        moving_mask_threshold: share of a pixel's rendered colour from dynamic Gaussians above which the
            stored moving mask marks it (masks rendered from the fitted scene at every frame).
    """

    preset: str = "default"
    seed: int = 0
    short_side: int = 90
    max_frames: int | None = None
    stride: int = 1
    fov_x_deg: float = 60.0
    holdout_every: int = 0

    num_gaussians: int = 8000
    gradient_floor: float = 0.3
    init_opacity: float = 0.95
    init_scale: float = 0.8

    lambda_photo: float = 1.0
    lambda_ssim: float = 0.2
    lambda_depth: float = 0.1
    lambda_flow: float = 0.01
    lambda_flow_camera: float = 1.0
    lambda_iso: float = 0.05

    replay_every: int = 2
    lambda_replay: float = 1.0

    frame0_iters: int = 300
    camera_iters: int = 60
    gaussian_iters: int = 120
    plateau_patience: int = 25
    plateau_tolerance: float = 2e-3

    lr_camera_rotation: float = 1e-3
    lr_camera_translation: float = 1e-3
    camera_lr_decay: float = 0.1
    lr_means: float = 4e-4
    lr_colors: float = 2e-2
    lr_opacities: float = 5e-2
    lr_scales: float = 1e-2
    lr_quats: float = 5e-3

    new_content_alpha: float = 0.7
    error_threshold: float = 0.08
    densify_every: int = 40
    max_new_per_frame: int = 1500
    max_gaussians: int = 40000
    motion_dilation: int = 2

    holdout_refine_iters: int = 30
    moving_mask_threshold: float = 0.5
    refine: bool = False
    refine_iters: int = 600
    refine_poly_degree: int = 3
    refine_fourier_terms: int = 3
    refine_min_period_frames: int = 10
    refine_ridge: float = 1e-3
    refine_dynamic_color: bool = True
    refine_lambda_flow: float = 0.02
    refine_lambda_smooth: float = 1.0
    refine_lambda_rigid: float = 1.0
    refine_rigid_neighbours: int = 8
    refine_lr_scale: float = 0.5
    refine_lr_camera: float = 2e-4
    refine_lr_decay: float = 0.1
    refine_lambda_still_motion: float = 1.0
    refine_keep_motion_px: float = 0.5
    refine_still_motion_from: float = 0.5
    refine_densify_every: int = 100
    refine_densify_until: float = 0.5
    refine_densify_fraction: float = 0.05
    refine_split_px: float = 0.5
    refine_split_scale: float = 1.6

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "FitConfig":
        """Raise InputError (one line) for a value of the wrong type or outside its range."""
        validate_fields(self)
        return self


# Ranges beyond the defaults of `validate_fields` (ints and floats >= 0, finite): (low, high, low_open).
_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "short_side": (16, 4096, False),
    "max_frames": (2, None, False),
    "stride": (1, None, False),
    "fov_x_deg": (0, 180, True),
    "holdout_every": (0, None, False),
    "num_gaussians": (1, 10_000_000, False),
    "max_gaussians": (1, 50_000_000, False),
    "init_opacity": (0, 1, True),
    "init_scale": (0, None, True),
    "lambda_ssim": (0, 1, False),
    "new_content_alpha": (0, 1, False),
    "moving_mask_threshold": (0, 1, False),
    "camera_lr_decay": (0, 1, True),
    "plateau_patience": (1, None, False),
    "densify_every": (1, None, False),
    "refine_poly_degree": (1, 8, False),
    "refine_min_period_frames": (1, None, False),
    "refine_still_motion_from": (0, 1, False),
    "refine_densify_every": (1, None, False),
    "refine_densify_until": (0, 1, False),
    "refine_densify_fraction": (0, 1, False),
    "refine_split_scale": (1, None, True),
    "refine_rigid_neighbours": (1, 64, False),
}
_POSITIVE_PREFIXES = ("lr_", "refine_lr_")  # learning rates must move something


def _type_name(annotation: str) -> str:
    return annotation.replace("| None", "or null").replace("None |", "null or").strip()


def validate_fields(config: Any) -> None:
    """Check every field of a config dataclass against its annotation and range (see `_RANGES`)."""
    import math

    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        annotation = str(f.type)
        if value is None:
            if "None" not in annotation:
                raise InputError(f"config field {f.name} must not be empty (null)")
            continue
        if annotation.startswith("bool"):
            ok = isinstance(value, bool)
        elif annotation.startswith("int"):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif annotation.startswith("float"):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif annotation.startswith("str"):
            ok = isinstance(value, str)
        else:
            ok = True
        if not ok:
            raise InputError(f"config field {f.name} must be {_type_name(annotation)}, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, high, low_open = _RANGES.get(f.name, (0, None, f.name.startswith(_POSITIVE_PREFIXES)))
        if low is not None and (value < low or (low_open and value == low)):
            bound = f"> {low}" if low_open else f">= {low}"
            raise InputError(f"config field {f.name} must be {bound}, got {value!r}")
        if high is not None and value > high:
            raise InputError(f"config field {f.name} must be <= {high}, got {value!r}")


def presets_dir() -> Path:
    """configs/ beside the package (source checkout) or inside it (installed wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "configs", here.parent / "configs"):
        if candidate.is_dir():
            return candidate
    raise InputError("recon4d's configs/ folder with the presets is missing", hint="reinstall recon4d")


def load_config(preset: str = "default", overrides: dict[str, Any] | None = None) -> FitConfig:
    """Preset YAML (`configs/<preset>.yaml`) on top of the dataclass defaults, then `overrides` (not None)."""
    path = Path(preset)
    if not path.suffix:
        if preset not in PRESET_NAMES:
            raise InputError(f"unknown preset {preset!r}", hint=f"choose one of {', '.join(PRESET_NAMES)} or a YAML file")
        path = presets_dir() / f"{preset}.yaml"
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot parse config {path}: {str(exc).splitlines()[0]}") from exc
    except OSError as exc:
        raise InputError(f"cannot read config {path}: {exc.strerror}") from exc
    if not isinstance(values, dict):
        raise InputError(f"config {path} must be a mapping of field: value, not a {type(values).__name__}")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in dataclasses.fields(FitConfig)}
    unknown = sorted(str(k) for k in set(values) - known)
    if unknown:
        raise InputError(f"unknown config field(s) {', '.join(unknown)} in {path}")
    values.setdefault("preset", path.stem)
    return FitConfig(**values).validate()
