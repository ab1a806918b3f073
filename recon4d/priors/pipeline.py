"""All priors of a clip in one call: flow, still/moving masks, depth; each cached on disk.

Cache keys are the clip hash plus the estimator's settings, so a second fit of the same clip with the same
settings reads the priors instead of recomputing them.
"""
from __future__ import annotations


import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from recon4d.priors.depth import make_depth_estimator
from recon4d.priors.flow import make_flow_estimator
from recon4d.priors.motion import MotionConfig, estimate_moving_masks
from recon4d.priors.motion.config import CAMERA_MODELS, MOTION_ALGORITHM_VERSION
from recon4d.priors.types import DepthResult, FlowResult


@dataclass
class PriorSettings:
    """flow / depth: backend names of `make_flow_estimator` / `make_depth_estimator`, with their options."""

    flow: str = "dis"
    flow_options: dict[str, Any] = field(default_factory=dict)
    depth: str = "video"
    depth_options: dict[str, Any] = field(default_factory=dict)
    use_cache: bool = True

    def to_dict(self) -> dict[str, Any]:
        """What identifies the priors of a fit (stored in the scene; part of the fit's checkpoint key)."""
        return {"flow": self.flow, "flow_options": dict(self.flow_options), "depth": self.depth,
                "depth_options": dict(self.depth_options)}

    @staticmethod
    def from_dict(values: dict[str, Any]) -> "PriorSettings":
        return PriorSettings(flow=values.get("flow", "dis"), flow_options=dict(values.get("flow_options", {})),
                             depth=values.get("depth", "video"), depth_options=dict(values.get("depth_options", {})))


@dataclass
class Priors:
    """flow: FlowResult; depth: DepthResult; moving_masks: [T, H, W] bool; camera_models: per pair (empty for
    a static scene); seconds: compute time per prior (0 when read from the cache)."""

    flow: FlowResult
    depth: DepthResult
    moving_masks: np.ndarray
    camera_models: list[str]
    seconds: dict[str, float]


def _settings(estimator: Any, fallback: dict) -> dict:
    return estimator.settings() if hasattr(estimator, "settings") else fallback


def compute_priors(frames: np.ndarray, intrinsics: np.ndarray, settings: PriorSettings, clip_hash: str,
                   log=print, static_scene: bool = False) -> Priors:
    """frames: [T, H, W, 3] uint8; intrinsics: [4] fx, fy, cx, cy.

    `static_scene`: nothing moves, so there is no still/moving split to compute: the moving masks are empty
    (and so is `camera_models`), and the depth prior reads those empty masks.
    """
    if settings.use_cache:
        from recon4d.priors.cache import PriorCache

        cache = PriorCache()
    else:
        cache = None
    size = {"shape": list(frames.shape)}
    seconds: dict[str, float] = {}

    # Both estimators first: a bad backend name or a missing model file fails before any computing.
    flow_estimator = make_flow_estimator(settings.flow, **settings.flow_options)
    depth_estimator = make_depth_estimator(settings.depth, **settings.depth_options)
    flow_key = {**_settings(flow_estimator, {"name": settings.flow, **settings.flow_options}), **size}
    cached = cache.get("flow", clip_hash, flow_key) if cache else None
    start = time.perf_counter()
    if cached is None:
        flow = flow_estimator(frames)
        if cache:
            cache.put("flow", clip_hash, flow_key, {k: getattr(flow, k) for k in
                                                     ("flow_forward", "flow_backward", "valid_forward", "valid_backward")})
    else:
        flow = FlowResult(**cached)
    seconds["flow"] = time.perf_counter() - start

    # The split reads the flow and the frames (the clip hash and shape stand for them), and its own settings.
    motion_key = ({"static_scene": True} if static_scene else
                  {"version": MOTION_ALGORITHM_VERSION, **asdict(MotionConfig()), "flow": flow_key, **size})
    cached = cache.get("motion", clip_hash, motion_key) if cache and not static_scene else None
    start = time.perf_counter()
    if static_scene:
        moving_masks, camera_models = np.zeros(frames.shape[:3], bool), []
    elif cached is None:
        motion = estimate_moving_masks(flow, MotionConfig(), frames=frames)
        moving_masks, camera_models = motion.moving_masks, list(motion.camera_model)
        # Its three score maps ([T, H, W] float32 each) are read by nothing here: 0.4 GB that the depth prior
        # would otherwise run beside on a long clip's 828 refined frames.
        del motion
        if cache:
            cache.put("motion", clip_hash, motion_key, {
                "moving_masks": moving_masks,
                "camera_model": np.array([CAMERA_MODELS.index(m) for m in camera_models], np.int8)})
    else:
        moving_masks = cached["moving_masks"].astype(bool)
        camera_models = [CAMERA_MODELS[i] for i in cached["camera_model"].tolist()]
    seconds["motion"] = time.perf_counter() - start

    depth_key = {**_settings(depth_estimator, {"name": settings.depth, **settings.depth_options}), **size,
                 "intrinsics": [float(x) for x in intrinsics], "flow": flow_key,
                 "motion": motion_key}  # the depth solver reads the moving masks
    cached = cache.get("depth", clip_hash, depth_key) if cache else None
    start = time.perf_counter()
    if cached is None:
        depth = depth_estimator(frames, flow, intrinsics, moving_masks)
        if cache:
            cache.put("depth", clip_hash, depth_key, {"depth": depth.depth, "confidence": depth.confidence,
                                                      "metric": np.array(depth.metric)})
    else:
        depth = DepthResult(depth=cached["depth"], confidence=cached["confidence"], metric=bool(cached["metric"]))
    seconds["depth"] = time.perf_counter() - start
    split = ("static scene: no still/moving split" if static_scene else
             f"{sum(m != 'fundamental' for m in camera_models)} of {len(camera_models)} pairs without parallax")
    log(f"priors: flow {seconds['flow']:.1f} s, motion {seconds['motion']:.1f} s, depth {seconds['depth']:.1f} s ({split})")
    return Priors(flow=flow, depth=depth, moving_masks=moving_masks, camera_models=camera_models, seconds=seconds)
