"""Configuration of `recon4d fit`: a tree of dataclasses, YAML presets in `configs/`, CLI overrides.

    FitConfig
    ├── input       which frames, at what resolution, with which intrinsics; held-out frames
    ├── priors      flow / depth backends and their options (`recon4d.priors.pipeline.PriorSettings`)
    ├── keyframes   fit only keyframes of a long clip (`recon4d.fit.keyframes`)
    ├── init        Gaussians of frame 0 and of new content
    ├── losses      weights of the loss terms shared by both passes
    ├── sequential  the per-frame (GFlow) pass: iterations, learning rates, camera step
    ├── bundle      keyframe bundle adjustment and loop closure during the sequential pass
    ├── matching    wide-baseline start of the camera step: feature matches, essential matrix
    ├── sfm         global camera prior from structure-from-motion (COLMAP), off by default
    ├── densify     both densification strategies: spawn (sequential) and grow by gradient (refine)
    ├── refine      the continuous-time refinement (Gaussian-Flow trajectories, joint bundle adjustment)
    └── eval        held-out camera refinement, moving-mask threshold

Each stage reads its sections; the sequential pass's sections (input, priors, keyframes, init, losses, bundle, matching,
sequential and the spawn part of densify) make the checkpoint key. Every tunable number lives here with its unit, and the
resolved tree is stored in the scene. Presets are nested YAML; the flat keys of earlier versions
(`short_side`, `refine_iters`, `lambda_ssim`, ...) are mapped onto the tree (`FLAT_KEYS`), so old presets,
stored scenes and the CLI's flat overrides keep working.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recon4d.errors import InputError
from recon4d.priors.pipeline import PriorSettings
from recon4d.priors.sfm import SfmConfig

PRESET_NAMES = ("fast", "thumbnail", "default", "quality", "walkaround")


@dataclass
class InputConfig:
    """short_side: working resolution, pixels of the short image side (GFlow: 480).
    max_frames / stride: which frames of the source to use.
    fov_x_deg: horizontal field of view assumed when `intrinsics` is not given.
    intrinsics: fx, fy, cx, cy in pixels at the working resolution, or None (from fov_x_deg).
    holdout_every: withhold every K-th frame from the fit and report it as a held-out view (0 = off).
    static_scene: nothing in the scene moves (a walk-around or photo set of a still object): the moving masks
        are empty (the still/moving split is not computed, and the depth prior reads empty masks), so every
        Gaussian is still, and `with_static_scene` turns off what only moving content needs. The flow-based
        masks cannot tell a wide camera step from motion: on lego's 34 views they made 47,000 of 68,000
        Gaussians dynamic."""

    short_side: int = 90
    max_frames: int | None = None
    stride: int = 1
    fov_x_deg: float = 60.0
    intrinsics: list[float] | None = None
    holdout_every: int = 0
    static_scene: bool = False


@dataclass
class InitConfig:
    """num_gaussians: Gaussians sampled on frame 0 (GFlow: 50k).
    gradient_floor: sampling weight of a flat pixel relative to the mean image-gradient magnitude.
    opacity: opacity of new Gaussians; scale: footprint of a new Gaussian in sampling distances."""

    num_gaussians: int = 8000
    gradient_floor: float = 0.3
    opacity: float = 0.95
    scale: float = 0.8


@dataclass
class LossConfig:
    """Weights. photo: L1 + SSIM term; ssim: share of 1 - SSIM inside it; depth: scale-invariant depth;
    flow: flow error in pixels (Gaussian step); flow_camera: the same in the camera step, where the flow of
    still pixels is the strongest evidence of the camera motion; iso: spread of a Gaussian's log scales;
    replay: photometric loss of a replayed earlier frame (sequential pass)."""

    photo: float = 1.0
    ssim: float = 0.2
    depth: float = 0.1
    flow: float = 0.01
    flow_camera: float = 1.0
    iso: float = 0.05
    replay: float = 1.0


@dataclass
class SequentialConfig:
    """frame0_iters, camera_iters, gaussian_iters: iteration caps; a stage stops earlier when its loss has
    improved by less than `plateau_tolerance` (relative) over `plateau_patience` iterations.
    replay_every: in the Gaussian step every k-th iteration also fits a random earlier frame (0 = off); keeps
    shared attributes consistent with the whole sequence.
    camera_lr_decay: factor by which the camera learning rates shrink over a camera step.
    lr_*: Adam learning rates; lr_means and lr_camera_translation are in units of the scene's median depth per
    step, lr_camera_rotation in radians. The refinement scales the Gaussian rates by `refine.lr_scale`.
    motion_dilation: pixels by which moving masks are grown before excluding them from the camera step.
    slow_mover_share, slow_mover_min_frames: after the pass, a still Gaussian whose centre lies on the prior's
    moving masks in at least this share of the fitted frames where it is in view and not occluded (and in at
    least `slow_mover_min_frames` of them) becomes dynamic and moving: the masks of a slow mover appear only
    once its motion has accumulated (`recon4d.priors.motion` judges motion over a window), usually after the
    Gaussians on it were born still; the refinement then gives them trajectories (0 = off).
    pyramid_levels, coarse_share: coarse-to-fine (`recon4d.fit.pyramid`): the first `coarse_share` of each
    camera and Gaussian step's iterations run on images downsampled 2x per level (coarsest first), the rest at
    the working resolution; 1 level = off. New content is spawned only at the working resolution.
    window_frames: most fitted frames per temporal window (0 = the whole clip is one window); the windows of a
    pass are made as equal as the count allows, and an even number when there are several (the refinement runs
    them in pairs; `recon4d.fit.sequential.window_boundaries`). Every shared attribute
    (colour, opacity, scale, still position) is refitted at each frame, so over a long clip the early frames
    are forgotten and the Gaussian budget is spent on clutter (dynamic Gaussians carried behind occluders,
    surfaces long out of view). When a window is full, its Gaussians are retired (they exist until its last
    frame) and the next window starts from copies of those its last frame sees; that frame belongs to both
    (its own camera, the new copies render it). Replay and the refinement's trajectories stay in the window.
    prior_residual_trusted, prior_residual_ignored: how far dynamic Gaussians carried to the next frame follow
    the depth prior's change rather than camera motion alone (`SequentialFitter.move_dynamic`): fully while the
    prior, scaled to the scene, is off the rendered still surfaces of both frames by at most the first (median
    relative residual), not at all from the second on, linearly between. Measured residuals: bear 0.006,
    apple 0.03, backpack 0.05-0.06, cup 0.24-0.41 (a static camera; README, "Dynamic depth from a prior that
    agrees with the scene")."""

    frame0_iters: int = 300
    camera_iters: int = 60
    gaussian_iters: int = 120
    plateau_patience: int = 25
    plateau_tolerance: float = 2e-3
    replay_every: int = 2
    camera_lr_decay: float = 0.1
    lr_camera_rotation: float = 1e-3
    lr_camera_translation: float = 1e-3
    lr_means: float = 4e-4
    lr_colors: float = 2e-2
    lr_opacities: float = 5e-2
    lr_scales: float = 1e-2
    lr_quats: float = 5e-3
    motion_dilation: int = 2
    slow_mover_share: float = 0.3
    slow_mover_min_frames: int = 3
    pyramid_levels: int = 1
    coarse_share: float = 0.0
    window_frames: int = 0
    prior_residual_trusted: float = 0.1
    prior_residual_ignored: float = 0.2


@dataclass
class BundleConfig:
    """Keyframe bundle adjustment during the sequential pass (`recon4d.fit.bundle`) with loop closure
    (`recon4d.fit.loop`). Every fitted frame is a keyframe of the pass (`keyframes` picks them beforehand).

    every: after every k-th fitted frame, a joint optimisation of the cameras of the last `window` fitted
        frames and the still Gaussians' means and colours against those frames' images, depth and flow
        (0 = off).
    window: fitted frames in a window (frames), the latest included; the oldest one's camera stays fixed and
        holds the gauge unless a revisited frame joins (then that one's does). Frame 0 never moves.
    iters: optimisation steps of one window; every step renders every frame of the window.
    lr_camera: Adam rate of the window cameras' 6-DoF deltas (radians; translation in depth units);
        lr_gaussians: factor on the sequential pass's rates of means and colours (`sequential.lr_*`).
    loop_closure: look for a revisit at each window: an earlier fitted frame at least `loop_min_gap` frames
        before the window whose global descriptor (`recon4d.fit.loop.frame_descriptors`) has a cosine
        similarity of at least `loop_min_similarity` (0..1) with the latest frame's, while the frames between
        them departed from it (similarity to it fell by at least `loop_min_departure`, 0..1). That frame joins
        the window with its camera fixed, which pulls the drifted cameras and Gaussians back onto it.
    Off by default. Measured (README, "Camera accuracy: keyframe bundle adjustment and loop closure"), every 3
    frames: syn-translate ATE 0.88 -> 0.41 % of the path at equal CPU; bear -0.34 dB held-out for +17 % CPU
    (320x180 keyframes) and -0.71 dB for +14 % (160x90); the lego walk-around is not recovered either way, with
    the flow start or the feature start (`matching`; README, "Wide-baseline start of the camera step")."""

    every: int = 0
    window: int = 5
    iters: int = 20
    lr_camera: float = 5e-4
    lr_gaussians: float = 1.0
    loop_closure: bool = True
    loop_min_gap: int = 8
    loop_min_similarity: float = 0.9
    loop_min_departure: float = 0.1


@dataclass
class MatchingConfig:
    """Wide-baseline start of the camera step (`recon4d.fit.matching`): features of frame t matched to the
    previous fitted frame, the essential matrix of the matches (rotation, direction of travel), the step's
    length from the previous frame's rendered depth; used instead of the flow start when it explains more of
    the matches. No weights (OpenCV).

    enabled: compute the feature start and let it compete with the flow start.
    detector: "sift" or "orb"; max_features: keypoints per frame; sift_contrast: SIFT's contrast threshold
        (OpenCV's default 0.04 finds few keypoints in small frames).
    detect_short_side_px: frames with a shorter short side are upsampled by an integer factor to reach it
        before detection (pixels).
    ratio: Lowe's ratio test (best / second-best descriptor distance), applied both ways.
    inlier_px: epipolar (Sampson) error, in working-resolution pixels, of a RANSAC inlier and of a match a
        start explains.
    ransac_iterations: most RANSAC (MAGSAC++) hypotheses of the essential matrix.
    min_alpha: rendered opacity above which the previous frame's rendered depth may set the step's length.
    min_inliers: matches the feature start must explain to be used; prefer_ratio: and this many times as many
        as the flow start explains.
    search_frames: when neither start explains `min_inliers` matches with frame t-1, match the fitted frames
        up to this many before t (frames) and start from the one whose essential matrix explains the most
        matches, at least `search_min_inliers` (0 = t-1 only).
    min_parallax_px: median distance (working-resolution pixels) by which the start's inlier matches must
        differ from a rotation alone (a static or only rotating camera has no baseline to triangulate).
    check_loss: keep the feature start only where the camera step's loss (still pixels) is lower than at the
        flow start; on cup it rejected every feature start, on lego most (README, "Long clips in temporal
        windows").
    depth_refine: refine the feature start by PnP (RANSAC, then Levenberg-Marquardt) on the matches lifted by the
        rendered depth. Off: it helps only where that depth is right in shape; on the lego walk-around it
        made steps worse (README, "Wide-baseline start of the camera step")."""

    enabled: bool = True
    detector: str = "sift"
    max_features: int = 2000
    sift_contrast: float = 0.01
    detect_short_side_px: int = 180
    ratio: float = 0.9
    inlier_px: float = 1.0
    ransac_iterations: int = 500
    min_alpha: float = 0.9
    min_inliers: int = 15
    prefer_ratio: float = 1.2
    search_frames: int = 32
    search_min_inliers: int = 30
    min_parallax_px: float = 1.0
    check_loss: bool = True
    depth_refine: bool = False


@dataclass
class DensifyConfig:
    """max_gaussians: overall cap of both strategies.
    Spawn (`recon4d.fit.strategy.spawn`, sequential pass): pixels rendered with less alpha than
    `spawn_alpha` get new Gaussians after the camera step; every `spawn_every` Gaussian-step iterations, pixels
    whose mean absolute colour error exceeds `spawn_error` get new ones; at most `spawn_max_per_frame` per frame.
    Grow (`recon4d.fit.strategy.grow`, refinement): every `grow_every` steps until `grow_until` (a fraction of
    the refinement's steps) the `grow_fraction` (share of the current count) with the largest mean
    screen-space position gradient are cloned, or split in two when their footprint radius exceeds
    `split_px` pixels (the halves shrink by `split_scale`; 3DGS: 1.6)."""

    max_gaussians: int = 40000
    spawn_alpha: float = 0.7
    spawn_error: float = 0.08
    spawn_every: int = 40
    spawn_max_per_frame: int = 1500
    grow_every: int = 100
    grow_until: float = 0.5
    grow_fraction: float = 0.05
    split_px: float = 0.5
    split_scale: float = 1.6


@dataclass
class RefineConfig:
    """Continuous-time refinement (`recon4d.fit.refine`, after the sequential pass).

    enabled: run it; iters: optimisation steps, one random fitted frame each; min_visits: at least this many
        steps per fitted frame (a long clip's refinement takes max(iters, min_visits x fitted frames) steps).
    poly_degree, fourier_terms: trajectory basis (Gaussian-Flow: about 3 and 3); min_period_frames: shortest
        Fourier period in frames (with fewer frames per period the terms fit each frame and oscillate).
    ridge: least-squares regularisation of the initial trajectory fit (relative).
    dynamic_color: let the colour of dynamic Gaussians vary in time (same basis).
    lambda_flow: flow end-point error (pixels) between consecutive fitted frames, all pixels.
    lambda_smooth: acceleration of dynamic trajectories over one frame, in depth units.
    lambda_rigid, rigid_neighbours: change of distances to the k nearest dynamic neighbours between
        consecutive frames, in depth units.
    lr_scale: factor on the sequential learning rates of the Gaussians and trajectories; lr_camera: Adam rate
        of the camera deltas (radians; translation in depth units); lr_decay: factor by which all rates
        shrink over the stage.
    lambda_still_motion: weight of the group-lasso penalty (depth units) on the residual motion still
        Gaussians may take (0 = still ones stay still); catches motion the prior missed. keep_motion_px:
        residual motion (pixels, at some frame) from which a still Gaussian keeps it as a trajectory;
        still_motion_from: fraction of the steps after which residual motion is allowed (first the cameras
        settle on a still scene).
    regularise_every: the motion regularisers (smoothness, rigidity, the still motion's group lasso) run every
        this many steps, weighted by it (lazy regularisation, as StyleGAN2's lazy R1: the same expected
        gradient). They cost about an eighth of a long clip's step (README, "Lazy motion regularisers", stop 58).
    pyramid_levels, coarse_share: coarse-to-fine (`recon4d.fit.pyramid`): the first `coarse_share` of the steps
        fit images downsampled 2x per level (coarsest first, equal parts), the rest the working resolution;
        1 level = off. Levels whose short side would fall under 32 px are skipped. Measured (README, "Coarse-to-fine
        pyramids in the fit"): a coarse step is cheaper but worth less than a full one, so a pyramid pays only
        together with fewer steps."""

    enabled: bool = False
    iters: int = 600
    min_visits: int = 0
    poly_degree: int = 3
    fourier_terms: int = 3
    min_period_frames: int = 10
    ridge: float = 1e-3
    dynamic_color: bool = True
    lambda_flow: float = 0.02
    lambda_smooth: float = 1.0
    lambda_rigid: float = 1.0
    rigid_neighbours: int = 8
    lr_scale: float = 0.5
    lr_camera: float = 2e-4
    lr_decay: float = 0.1
    lambda_still_motion: float = 1.0
    keep_motion_px: float = 0.5
    still_motion_from: float = 0.5
    regularise_every: int = 1
    pyramid_levels: int = 1
    coarse_share: float = 0.0


@dataclass
class EvalConfig:
    """holdout_refine_iters: pose iterations (Gaussians frozen) for the interpolated camera of a held-out
    frame, or of a frame skipped between keyframes.
    holdout_refine_ssim: share of 1 - SSIM in that search's photometric loss (the rest is L1). Measured on the
    7 held-out frames of bear at 320x180: L1 alone finds poses as good as the fit's 0.2 (28.09 vs 27.99 dB at
    30 iterations) for 28 % less CPU, and 20 of its iterations 27.96 dB for 47 % less.
    holdout_refine_lr_decay: factor by which that search's rate shrinks over its iterations; the pose of the
    lowest loss seen is kept. On the 32 skipped frames of cup's first 60 (320x240): 15 iterations at 0.1
    reach 34.10 dB, 30 at a constant rate 34.18 dB, 15 at a constant rate about 33.9 dB.
    holdout_refine_coarse_share: share of that search's iterations run first on the frame and the scene at
        half the working resolution (a render there costs about a third), the rest at the working resolution.
        Off in every preset: at 0.5 the search took 12.5 instead of 29.5 s on cup's 30 frames (240x180), but
        its held-out frames fell from 41.54 to 40.13 dB (a still camera at 40+ dB needs sub-pixel poses);
        bear's stayed at 29.68 dB.
    before_refine: also score the sequential pass before the refinement (metrics.json `sequential`): one more
        camera search of every held-out and skipped frame, 357 of the 3031 s of a 450-frame fit (stop 16).
    moving_mask_threshold: share of a pixel's rendered colour from moving Gaussians above which the stored
    moving mask marks it (masks rendered from the fitted scene at every frame)."""

    holdout_refine_iters: int = 20
    holdout_refine_ssim: float = 0.0
    holdout_refine_lr_decay: float = 0.1
    holdout_refine_coarse_share: float = 0.0
    before_refine: bool = False
    moving_mask_threshold: float = 0.5


@dataclass
class KeyframeConfig:
    """Keyframes of a long clip (`recon4d.fit.keyframes`): with `enabled`, only keyframes are fitted; the frames
    between them get interpolated cameras and states, a photometric camera refinement, and their own PSNR.

    flow_short_side_px: frames are downscaled (area averaging) to this short side, in pixels, before the
        selection's flow; smaller frames are used as they are.
    flow_estimator: `recon4d.priors.flow.make_flow_estimator` name of that flow ("dis": no weights).
    motion_percentile: percentile (0..100) of the per-pixel flow magnitude that stands for a pair's motion:
        50 = the median (camera motion of a mostly still scene); 90 also sees a moving object covering a
        tenth of the image.
    motion_budget_px: most motion accumulated between consecutive keyframes, in pixels at the working
        resolution. Measured at 180 px short side (90th percentile, max gap 6), 18 px keeps 0.30 of the frames
        of ../shared/data's clips on average: bear 0.18 (slow pan), apple 0.36, backpack 0.32, pillow 0.60
        (hands squeezing), cup 0.18 (static camera), carphone 0.17 (bench/timings.py).
    max_gap_frames: consecutive keyframes are at most this many frames apart, however still the clip.
    max_share: most keyframes as a share of the clip's frames (1 = no cap); a selection over it scales the
        budget and the gap up together until it fits (`select_keyframes`).
    sequential_budget_px: with the refinement on, the sequential pass fits only the keyframes this motion
        budget picks among them (`sequential_keyframes`; pixels as motion_budget_px, the gap grows with it);
        the refinement then fits every keyframe, starting the others from interpolated cameras and states.
        A keyframe costs the sequential pass about three times what it costs the refinement. 0 = off.
    sequential_min_keyframes: the subset is taken only when there are more keyframes than this: a short
        clip's few keyframes are what its sequential pass needs (bear's 30 frames, 4 of 6 keyframes in the
        pass and a replay every 4th step: 1.46 dB less held-out).
    sequential_max_keyframes: most keyframes the sequential pass fits (0 = no cap): a subset over it is picked
        again with the budget and the gap scaled up until it fits (`sequential_keyframes`). With every frame
        refined (`dense_refine_frames`) this bounds the pass, the stage that costs most per frame, while the
        refinement's cost grows with the clip.
    dense_refine_frames: with the refinement on, a clip with at most this many frames outside the held-out set
        is refined on every one of them: the sequential pass fits the keyframes, the refinement every frame
        (priors of each, a learnable camera for each) and nothing is skipped. Between keyframes a trajectory
        then follows what the frames show instead of an interpolation (cup's 30 frames: held-out 41.65 ->
        43.95 dB; backpack's 87: 23.99 -> 25.54 dB; pillow's 147: 19.75 -> 20.78 dB; cup's 217: 27.24 -> 32.90
        dB; backpack's 450: 24.13 -> 25.14 dB; README "Short clips refined on every frame", "Long clips refined
        on every frame"). The cost grows with the frames: the priors of each and `refine.min_visits`
        refinement steps per frame. Many keyframes are still thinned for the sequential pass
        (`sequential_budget_px`, `sequential_max_keyframes`). 0 = off: the refinement fits the keyframes.
    long_clip: settings of other sections, as dotted keys (`sequential.camera_iters: 25`), that apply when the
        sequential pass takes its subset (a long clip: more than `sequential_min_keyframes` keyframes, the
        refinement on; `with_long_clip`). A long clip's per-frame work is what its minutes are made of, while
        a short clip's quality is what users look at; empty = the same settings for both. Not allowed: the
        sections that decide what is long (input, priors, keyframes)."""

    enabled: bool = False
    flow_short_side_px: int = 64
    flow_estimator: str = "dis"
    motion_percentile: float = 90.0
    motion_budget_px: float = 18.0
    max_gap_frames: int = 6
    max_share: float = 1.0
    sequential_budget_px: float = 0.0
    sequential_min_keyframes: int = 0
    sequential_max_keyframes: int = 0
    dense_refine_frames: int = 0
    long_clip: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """InputError (one line) for a setting out of range."""
        validate_fields(self, prefix="keyframes.")


LONG_CLIP_FIXED = ("input", "priors", "keyframes")


def with_long_clip(config: "FitConfig") -> "FitConfig":
    """`config` with `keyframes.long_clip` applied: the settings of a clip whose sequential pass fits a subset
    of its keyframes (`recon4d.fit.pipeline.prepare` decides; the run key stays that of `config`), with an empty
    `keyframes.long_clip` of its own.

        >>> config = FitConfig.from_dict({"keyframes": {"long_clip": {"sequential.camera_iters": 25}}})
        >>> config.sequential.camera_iters, with_long_clip(config).sequential.camera_iters
        (60, 25)
    """
    overrides = config.keyframes.long_clip
    fixed = [key for key in overrides if str(key).split(".", 1)[0] in LONG_CLIP_FIXED or "." not in str(key)]
    if fixed:
        raise InputError(f"config field keyframes.long_clip takes dotted keys of the fit's stages, not {fixed[0]!r}",
                         hint=f"e.g. sequential.camera_iters; not {', '.join(LONG_CLIP_FIXED)}")
    if not overrides:
        return config
    # The result holds the settings in force; its own long_clip is spent (and validating it ends here).
    return config.replace(**overrides, **{"keyframes.long_clip": {}}).validate()


def with_static_scene(config: "FitConfig") -> "FitConfig":
    """`config` with residual motion of still Gaussians in the refinement turned off
    (`refine.lambda_still_motion` 0) when `input.static_scene` is set; unchanged otherwise. Temporal windows
    stay: on lego's 34 views one window instead of two spent the 40,000-Gaussian budget by view 16 (refined
    views 16.41 against 16.44 dB).

        >>> with_static_scene(FitConfig.from_dict({"input": {"static_scene": True}})).refine.lambda_still_motion
        0.0
    """
    if not config.input.static_scene:
        return config
    return config.replace(**{"refine.lambda_still_motion": 0.0})


SECTIONS: dict[str, type] = {
    "input": InputConfig, "priors": PriorSettings, "keyframes": KeyframeConfig, "init": InitConfig,
    "losses": LossConfig, "sequential": SequentialConfig, "bundle": BundleConfig, "matching": MatchingConfig,
    "sfm": SfmConfig, "densify": DensifyConfig, "refine": RefineConfig,
    "eval": EvalConfig,
}

# Flat keys of earlier versions (and of the CLI's overrides) -> (section, field).
_RENAMED = {
    "init_opacity": ("init", "opacity"), "init_scale": ("init", "scale"),
    "lambda_photo": ("losses", "photo"), "lambda_ssim": ("losses", "ssim"), "lambda_depth": ("losses", "depth"),
    "lambda_flow": ("losses", "flow"), "lambda_flow_camera": ("losses", "flow_camera"),
    "lambda_iso": ("losses", "iso"), "lambda_replay": ("losses", "replay"),
    "new_content_alpha": ("densify", "spawn_alpha"), "error_threshold": ("densify", "spawn_error"),
    "densify_every": ("densify", "spawn_every"), "max_new_per_frame": ("densify", "spawn_max_per_frame"),
    "refine_densify_every": ("densify", "grow_every"), "refine_densify_until": ("densify", "grow_until"),
    "refine_densify_fraction": ("densify", "grow_fraction"), "refine_split_px": ("densify", "split_px"),
    "refine_split_scale": ("densify", "split_scale"), "refine": ("refine", "enabled"),
}


def _flat_keys() -> dict[str, tuple[str, str]]:
    keys = dict(_RENAMED)
    for section in ("input", "init", "sequential", "densify", "eval"):
        for f in dataclasses.fields(SECTIONS[section]):
            keys.setdefault(f.name, (section, f.name))
    for f in dataclasses.fields(RefineConfig):
        if f.name != "enabled":
            keys.setdefault(f"refine_{f.name}", ("refine", f.name))
    return keys


FLAT_KEYS: dict[str, tuple[str, str]] = _flat_keys()
_FLAT_NAME_OF = {f"{section}.{name}": flat for flat, (section, name) in FLAT_KEYS.items() if flat != name}


@dataclass
class FitConfig:
    """The whole configuration of a fit (see the module docstring for the tree).

    Example:
        >>> config = FitConfig.from_dict({"short_side": 120, "refine": {"iters": 50}})
        >>> config.input.short_side, config.refine.iters, config.replace(refine_iters=80).refine.iters
        (120, 50, 80)
    """

    preset: str = "default"
    seed: int = 0
    input: InputConfig = field(default_factory=InputConfig)
    priors: PriorSettings = field(default_factory=PriorSettings)
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    init: InitConfig = field(default_factory=InitConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    sequential: SequentialConfig = field(default_factory=SequentialConfig)
    bundle: BundleConfig = field(default_factory=BundleConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    sfm: SfmConfig = field(default_factory=SfmConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __getattr__(self, name: str) -> Any:
        """Read access by a flat key of earlier versions (`config.short_side`); code uses the sections."""
        if name in FLAT_KEYS:
            section, key = FLAT_KEYS[name]
            return getattr(object.__getattribute__(self, section), key)
        raise AttributeError(f"FitConfig has no field {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (JSON/YAML-able); `PriorSettings.use_cache` is a run option, not a setting."""
        values = dataclasses.asdict(self)
        values["priors"] = self.priors.to_dict()
        return values

    @staticmethod
    def from_dict(values: dict[str, Any], where: str = "config") -> "FitConfig":
        """Config from nested sections, flat keys of earlier versions or dotted keys (`refine.iters`), on top
        of the defaults; unknown keys raise InputError naming `where`. Not validated (see `validate`)."""
        return FitConfig()._replaced(values, where)

    def replace(self, **values: Any) -> "FitConfig":
        """A copy with `values` (flat, dotted or nested section dicts) applied."""
        return self._replaced(values, "the overrides")

    def _replaced(self, values: dict[Any, Any], where: str) -> "FitConfig":
        config = copy.deepcopy(self)
        unknown = []
        for key, value in values.items():
            key = str(key)
            if key in ("preset", "seed"):
                setattr(config, key, value)
            elif key in SECTIONS and (isinstance(value, dict) or dataclasses.is_dataclass(value)):
                _apply_section(config, key, value, where, unknown)
            elif key in FLAT_KEYS:
                section, name = FLAT_KEYS[key]
                setattr(getattr(config, section), name, value)
            elif "." in key and key.split(".", 1)[0] in SECTIONS:
                _apply_section(config, key.split(".", 1)[0], {key.split(".", 1)[1]: value}, where, unknown)
            else:
                unknown.append(key)
        if unknown:
            raise InputError(f"unknown config field(s) {', '.join(sorted(unknown))} in {where}")
        return config

    def sequential_key(self) -> dict[str, Any]:
        """The settings a sequential pass depends on (its checkpoint key): not the refinement's or evaluation's."""
        values = self.to_dict()
        values["densify"] = {k: v for k, v in values["densify"].items() if not k.startswith(("grow_", "split_"))}
        return {k: v for k, v in values.items() if k not in ("refine", "eval", "preset")}

    def validate(self) -> "FitConfig":
        """Raise InputError (one line) for a value of the wrong type or outside its range."""
        validate_fields(self)
        for name in SECTIONS:
            if name != "priors":
                validate_fields(getattr(self, name), prefix=f"{name}.")
        if self.keyframes.long_clip:  # a bad key or value fails now, not when a long clip meets it
            with_long_clip(self)
        if self.sequential.prior_residual_ignored <= self.sequential.prior_residual_trusted:
            raise InputError("config field sequential.prior_residual_ignored must be above "
                             "sequential.prior_residual_trusted")
        if self.sequential.window_frames == 1:
            raise InputError("config field sequential.window_frames must be 0 (one window) or at least 2")
        if self.sfm.enabled and self.sfm.joint and not (self.input.static_scene and self.refine.enabled):
            raise InputError("config field sfm.joint fits a still scene in the refinement: it needs input.static_scene "
                             "(--static) and refine.enabled, or set sfm.joint: false")
        if self.matching.detector not in ("sift", "orb"):
            raise InputError(f"config field matching.detector must be sift or orb, got {self.matching.detector!r}")
        if self.input.intrinsics is not None:
            values = self.input.intrinsics
            if len(values) != 4 or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in values) or min(values[:2]) <= 0:
                raise InputError(f"config field input.intrinsics expects fx, fy, cx, cy (finite, fx and fy > 0), got {values!r}")
        return self


def _apply_section(config: FitConfig, name: str, values: Any, where: str, unknown: list[str]) -> None:
    if name == "priors":
        if isinstance(values, PriorSettings):
            config.priors = values
            return
        known = {f.name for f in dataclasses.fields(PriorSettings)}
        unknown.extend(f"priors.{k}" for k in values if k not in known)
        config.priors = dataclasses.replace(config.priors, **{k: v for k, v in values.items() if k in known})
        return
    if dataclasses.is_dataclass(values):
        setattr(config, name, values)
        return
    section = getattr(config, name)
    known = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key in known:
            setattr(section, key, value)
        else:
            unknown.append(f"{name}.{key}")


# Ranges beyond the defaults of `validate_fields` (ints and floats >= 0, finite): (low, high, low_open).
_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "input.short_side": (16, 4096, False),
    "input.max_frames": (2, None, False),
    "input.stride": (1, None, False),
    "input.fov_x_deg": (0, 180, True),
    "input.holdout_every": (0, None, False),
    "init.num_gaussians": (1, 10_000_000, False),
    "init.opacity": (0, 1, True),
    "init.scale": (0, None, True),
    "losses.ssim": (0, 1, False),
    "sequential.camera_lr_decay": (0, 1, True),
    "sequential.plateau_patience": (1, None, False),
    "sequential.slow_mover_share": (0, 1, False),
    "sequential.slow_mover_min_frames": (1, None, False),
    "sequential.pyramid_levels": (1, 6, False),
    "sequential.coarse_share": (0, 0.9, False),
    "bundle.window": (2, None, False),
    "bundle.loop_min_gap": (1, None, False),
    "bundle.loop_min_similarity": (0, 1, False),
    "bundle.loop_min_departure": (0, 1, False),
    "matching.max_features": (8, None, False),
    "matching.detect_short_side_px": (16, None, False),
    "matching.ratio": (0, 1, True),
    "matching.inlier_px": (0, None, True),
    "matching.ransac_iterations": (1, None, False),
    "matching.min_alpha": (0, 1, False),
    "matching.prefer_ratio": (0, None, True),
    "sfm.short_side": (32, 4096, False),
    "sfm.max_features": (64, None, False),
    "sfm.exhaustive_max_frames": (2, None, False),
    "sfm.sequential_overlap": (1, None, False),
    "sfm.min_registered": (0, 1, False),
    "sfm.min_scale_points": (3, None, False),
    "sfm.match_max_ratio": (0, 1, True),
    "sfm.max_step_degrees": (0, 180, False),
    "sfm.num_threads": (-1, None, False),
    "sfm.point_opacity": (0, 1, True),
    "sfm.point_neighbours": (1, None, False),
    "sfm.drop_error_ratio": (0, None, False),
    "sfm.joint_depth_weight": (0, None, False),
    "sfm.min_shift_px": (0, None, False),
    "densify.max_gaussians": (1, 50_000_000, False),
    "densify.spawn_alpha": (0, 1, False),
    "densify.spawn_every": (1, None, False),
    "densify.grow_every": (1, None, False),
    "densify.grow_until": (0, 1, False),
    "densify.grow_fraction": (0, 1, False),
    "densify.split_scale": (1, None, True),
    "refine.poly_degree": (1, 8, False),
    "refine.min_period_frames": (1, None, False),
    "refine.still_motion_from": (0, 1, False),
    "refine.rigid_neighbours": (1, 64, False),
    "refine.regularise_every": (1, None, False),
    "refine.pyramid_levels": (1, 6, False),
    "refine.coarse_share": (0, 0.9, False),
    "eval.holdout_refine_ssim": (0, 1, False),
    "eval.holdout_refine_lr_decay": (0, 1, True),
    "eval.holdout_refine_coarse_share": (0, 0.9, False),
    "eval.moving_mask_threshold": (0, 1, False),
    "keyframes.flow_short_side_px": (16, None, False),
    "keyframes.motion_percentile": (0, 100, False),
    "keyframes.motion_budget_px": (0, None, True),
    "keyframes.max_gap_frames": (1, None, False),
    "keyframes.max_share": (0, 1, True),
    "keyframes.sequential_budget_px": (0, None, False),
    "keyframes.sequential_min_keyframes": (0, None, False),
    "keyframes.sequential_max_keyframes": (0, None, False),
    "keyframes.dense_refine_frames": (0, None, False),
}
_POSITIVE_PREFIXES = ("lr_",)  # learning rates must move something


def _type_name(annotation: str) -> str:
    return annotation.replace("| None", "or null").replace("None |", "null or").strip()


def validate_fields(config: Any, prefix: str = "") -> None:
    """Check every scalar field of a config dataclass against its annotation and range (`_RANGES`, keyed by
    `prefix` + field name); nested dataclasses and lists are left to their owners."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        annotation = str(f.type)
        name = prefix + f.name
        if name in _FLAT_NAME_OF:  # name the flat key too: presets and overrides may use it
            name = f"{name} ({_FLAT_NAME_OF[name]})"
        if dataclasses.is_dataclass(value) or annotation.startswith(("list", "dict")):
            continue
        if value is None:
            if "None" not in annotation:
                raise InputError(f"config field {name} must not be empty (null)")
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
            raise InputError(f"config field {name} must be {_type_name(annotation)}, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, high, low_open = _RANGES.get(prefix + f.name, (0, None, f.name.startswith(_POSITIVE_PREFIXES)))
        if low is not None and (value < low or (low_open and value == low)):
            bound = f"> {low}" if low_open else f">= {low}"
            raise InputError(f"config field {name} must be {bound}, got {value!r}")
        if high is not None and value > high:
            raise InputError(f"config field {name} must be <= {high}, got {value!r}")


def presets_dir() -> Path:
    """configs/ beside the package (source checkout) or inside it (installed wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "configs", here.parent / "configs"):
        if candidate.is_dir():
            return candidate
    raise InputError("recon4d's configs/ folder with the presets is missing", hint="reinstall recon4d")


def load_config(preset: str = "default", overrides: dict[str, Any] | None = None) -> FitConfig:
    """Preset YAML (`configs/<preset>.yaml`, nested sections or flat keys) on top of the dataclass defaults,
    then `overrides` (flat or dotted keys; None values are skipped)."""
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
    for name, section in values.items():
        if name in SECTIONS and not isinstance(section, dict) and not (name == "refine" and isinstance(section, bool)):
            raise InputError(f"config section {name} in {path} must be a mapping, not a {type(section).__name__}")
    values.setdefault("preset", path.stem)
    config = FitConfig.from_dict(values, where=str(path))
    config = config.replace(**{k: v for k, v in (overrides or {}).items() if v is not None})
    return config.validate()
