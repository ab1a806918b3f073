"""`VideoDepth`: depth from the video itself, two-view triangulation on chained optical flow (no weights).

Stages, in order: triangulate frame pairs (`pairs`), bring them to one clip-wide scale and merge them
(`scale_chaining`, with the depth-edge repair of `edges`), give moving regions a guess from their
surroundings, fill the rest edge-aware (`fill`), optionally sharpen edges by a plane sweep (`plane_sweep`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from recon4d.device import cpu_workers, thread_pool
from recon4d.errors import PriorError
from recon4d.priors.depth.config import DEPTH_ALGORITHM_VERSION, VideoDepthConfig
from recon4d.priors.depth.edges import depth_edges
from recon4d.priors.depth.fill import fill_depth_edge_aware
from recon4d.priors.depth.inputs import (check_flow, check_frames, check_intrinsics, check_moving, downscale_inputs,
                                         WorkingFrames, resize)
from recon4d.priors.depth.pairs import triangulate_pairs
from recon4d.priors.depth.plane_sweep import plane_sweep_refine
from recon4d.priors.depth.scale_chaining import merge_pairs, propagate_to_empty_frames, solve_pair_scales
from recon4d.priors.types import DepthResult, FlowResult


@dataclass
class SparseDepth:
    """Triangulated (not filled) depth of a clip at the working resolution, one scale for the clip.

    Attributes:
        log_depth: [T, h, w] float32, log of depth (NaN where nothing was triangulated).
        confidence: [T, h, w] float32 in [0, 1], 0 where nothing was triangulated.
        scale: working size / input size (1.0 when the frames were not downscaled).
        num_pairs: frame pairs that were triangulated.
        intrinsics: [4] fx, fy, cx, cy at the working resolution.
        pair_poses: (ref, target, rotation [3, 3], translation [3]) per triangulated pair, x_target = R x_ref + t
            in the units of `log_depth`.
        moving: [T, h, w] bool moving masks at the working resolution.
        guides: the frames at the working resolution (`WorkingFrames`: guides[t] is [h, w, 3] float32 in
            [0, 1]), the colour guide of the merge's edge repair and of the fill; None in a SparseDepth built by
            hand.
    """

    log_depth: np.ndarray
    confidence: np.ndarray
    scale: float
    num_pairs: int
    intrinsics: np.ndarray
    pair_poses: list[tuple[int, int, np.ndarray, np.ndarray]]
    moving: np.ndarray
    guides: WorkingFrames | None = None


class VideoDepth:
    """Depth from the video itself: two-view triangulation on chained optical flow (no learned weights).

    Output depth is relative (`metric=False`): one scale for the whole clip, normalised so that the median
    depth over the clip is 1. Pixels on moving objects (`moving_masks`) are never triangulated (their motion
    is not the camera's): each moving region gets the near end of the still depths around it (see
    `VideoDepthConfig.moving_ring_percentile`), a guess with confidence at most `moving_confidence`. Without
    moving masks, moving things are triangulated as if still (wrong depth; the robust pose fit still holds
    while they cover a minority of the pixels).
    When no frame pair has parallax (static or purely rotating camera) the result is a constant depth of 1
    with confidence `fallback_confidence` everywhere; frames without a pair of their own take depth from the
    nearest frame that has one, through the flow.
    """

    name = "video"

    def __init__(self, config: VideoDepthConfig | None = None) -> None:
        self.config = config or VideoDepthConfig()
        if self.config.essential_method not in ("magsac", "ransac"):
            raise PriorError(f"unknown essential_method {self.config.essential_method!r}",
                             "use 'magsac' or 'ransac'")
        if self.config.sweep_median not in (1, 3, 5):
            raise PriorError(f"sweep_median must be 1, 3 or 5, got {self.config.sweep_median}",
                             "OpenCV median-filters float images only with 3x3 or 5x5 windows")

    def settings(self) -> dict[str, Any]:
        """Everything that changes the result, for cache keys (JSON-serialisable)."""
        return {"estimator": self.name, "version": DEPTH_ALGORITHM_VERSION, "opencv": cv2.__version__,
                **asdict(self.config)}

    def __call__(self, frames: np.ndarray, flow: FlowResult | None, intrinsics: np.ndarray,
                 moving_masks: np.ndarray | None = None) -> DepthResult:
        """frames [T, H, W, 3] uint8 RGB; flow on the same frames; intrinsics [4] px; moving_masks [T, H, W]."""
        check_frames(frames)
        num_frames, height, width = frames.shape[:3]
        cfg = self.config
        sparse = self.sparse(frames, flow, intrinsics, moving_masks)
        if sparse is None:
            return self._fallback(num_frames, height, width)
        moving = check_moving(moving_masks, num_frames, height, width)

        small_h, small_w = sparse.log_depth.shape[1:]
        moving_small = sparse.moving
        guides = sparse.guides
        partners_of = _partners_by_frame(sparse.pair_poses, num_frames)
        depth = np.empty((num_frames, height, width), dtype=np.float32)
        confidence = np.empty((num_frames, height, width), dtype=np.float32)

        def dense_frame(t: int) -> None:
            """Depth and confidence of frame t (its fill and plane sweep read no other frame's result)."""
            has_data = sparse.confidence[t] > 0
            log_data, weight = _moving_region_prior(sparse.log_depth[t], sparse.confidence[t], moving_small[t], cfg)
            guide = guides[t]
            log_dense = self._fill(log_data, weight, guide, moving_small[t])
            partners = [(guides[s], rotation, translation) for s, rotation, translation in partners_of[t]]
            sweep_range = cfg.sweep_range
            for _ in range(cfg.sweep_passes if partners else 0):
                refined, distinct, inside = plane_sweep_refine(log_dense, guide, partners, sparse.intrinsics,
                                                               sweep_range, cfg.sweep_steps, cfg.sweep_window,
                                                               cfg.sweep_truncation, cfg.sweep_median)
                use = inside & (distinct >= cfg.sweep_min_distinctness) & ~moving_small[t]
                if cfg.sweep_edges_only:
                    use &= depth_edges(log_dense, cfg, cfg.sweep_edge_margin_px)
                if len(partners) < 2:
                    # One partner cannot judge pixels it does not see (no triangulated depth there = most
                    # likely occluded in it): leave those to the fill.
                    use &= sparse.confidence[t] > 0
                log_data = np.where(use, refined, log_data)
                weight = np.where(use, np.maximum(weight, cfg.fill_confidence), weight)
                has_data = has_data | use
                # Swept pixels keep their own value: the fill's smoothing would blur the edges again.
                log_dense = np.where(use, refined, self._fill(log_data, weight, guide, moving_small[t]))
                sweep_range *= 0.5
            distance = ndimage.distance_transform_edt(~has_data)
            conf = np.where(has_data, weight, cfg.fill_confidence * np.exp(-distance / cfg.fill_decay_px))
            if (small_h, small_w) != (height, width):
                log_dense = resize(log_dense, width, height, cv2.INTER_LINEAR)
                conf = resize(conf.astype(np.float32), width, height, cv2.INTER_LINEAR)
            conf = np.where(moving[t], np.minimum(conf, cfg.moving_confidence), conf)
            depth[t] = np.exp(log_dense)
            confidence[t] = np.clip(conf, 0.0, 1.0)

        # Frames are independent, and the fill's sparse products, OpenCV and most of NumPy release the GIL, so
        # the frames run on every core (the result does not depend on how many). On Ctrl-C the frames not yet
        # started are dropped instead of waited for.
        with thread_pool(cpu_workers()) as pool:
            list(pool.map(dense_frame, range(num_frames)))

        # One clip-wide gauge: median depth 1.
        depth /= np.median(depth)
        if not np.all(np.isfinite(depth)) or depth.min() <= 0:
            return self._fallback(num_frames, height, width)
        return DepthResult(depth=depth.astype(np.float32), confidence=confidence.astype(np.float32), metric=False)

    def sparse(self, frames: np.ndarray, flow: FlowResult | None, intrinsics: np.ndarray,
               moving_masks: np.ndarray | None = None) -> SparseDepth | None:
        """Triangulated, scale-consistent, merged depth before the fill; None when no pair has parallax."""
        check_frames(frames)
        num_frames, height, width = frames.shape[:3]
        k = check_intrinsics(intrinsics)
        moving = check_moving(moving_masks, num_frames, height, width)
        if num_frames < 2:
            return None
        if flow is None:
            raise PriorError("the video depth prior needs optical flow",
                             "compute it first, e.g. recon4d.priors.flow.DISFlow()(frames)")
        check_flow(flow, num_frames, height, width)

        cfg = self.config
        scale = min(1.0, cfg.max_working_side / max(height, width))
        small_w, small_h = max(8, round(width * scale)), max(8, round(height * scale))
        if (small_w, small_h) != (width, height):
            flow, moving, k = downscale_inputs(flow, moving, k, width, height, small_w, small_h)
        else:
            scale = 1.0

        pairs = triangulate_pairs(flow, moving, k, small_h, small_w, cfg)
        if not pairs:
            return None
        pair_scale, groups = solve_pair_scales(pairs, num_frames, small_h, small_w, cfg)
        guides = WorkingFrames(frames, small_w, small_h)
        log_depth, confidence, group_scale = merge_pairs(pairs, pair_scale, groups, guides, cfg)
        has_data = np.isfinite(log_depth).reshape(num_frames, -1).any(axis=1)
        if not has_data.any():
            return None
        propagate_to_empty_frames(log_depth, confidence, has_data, flow, small_h, small_w, cfg)
        poses = [(p.ref, p.target, p.rotation, p.translation * pair_scale[i] * group_scale[groups[i]])
                 for i, p in enumerate(pairs)]
        return SparseDepth(log_depth=log_depth, confidence=confidence, scale=scale, num_pairs=len(pairs),
                           intrinsics=k, pair_poses=poses, moving=moving, guides=guides)

    def _fill(self, log_data: np.ndarray, weight: np.ndarray, guide: np.ndarray, moving: np.ndarray) -> np.ndarray:
        cfg = self.config
        return fill_depth_edge_aware(log_data, weight, guide, cfg.smoothness, cfg.guide_sigma, cfg.edge_weight_floor,
                                     cfg.cg_iterations, cfg.cg_tolerance, regions=moving)

    def _fallback(self, num_frames: int, height: int, width: int) -> DepthResult:
        return DepthResult(depth=np.ones((num_frames, height, width), dtype=np.float32),
                           confidence=np.full((num_frames, height, width), self.config.fallback_confidence,
                                              dtype=np.float32),
                           metric=False)


def _moving_region_prior(log_depth: np.ndarray, weight: np.ndarray, moving: np.ndarray,
                         cfg: VideoDepthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Fill data for moving regions: each connected region gets the near end of its surroundings' depth.

    log_depth, weight: [h, w] sparse log depth (NaN / 0 where none); moving: [h, w] bool.
    Returns the data and weight for `fill_depth_edge_aware` (copies; inputs untouched).
    """
    if not moving.any():
        return log_depth, weight
    log_depth, weight = log_depth.copy(), weight.copy()
    count, labels = cv2.connectedComponents(moving.astype(np.uint8), connectivity=8)
    ring_px = max(2, round(cfg.moving_ring_fraction * max(moving.shape)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_px + 1,) * 2)
    still_data = (weight > 0) & ~cv2.dilate(moving.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    for label in range(1, count):
        region = labels == label
        ring = cv2.dilate(region.astype(np.uint8), kernel).astype(bool) & still_data
        if ring.sum() < cfg.moving_ring_min_points:
            continue
        log_depth[region] = np.percentile(log_depth[ring], cfg.moving_ring_percentile)
        weight[region] = cfg.moving_prior_weight
    return log_depth, weight


def _partners_by_frame(pair_poses: list[tuple[int, int, np.ndarray, np.ndarray]],
                       num_frames: int) -> list[list[tuple[int, np.ndarray, np.ndarray]]]:
    """frame -> [(other frame, rotation, translation)] with x_other = R x_frame + t, from both pair directions."""
    partners: list[list[tuple[int, np.ndarray, np.ndarray]]] = [[] for _ in range(num_frames)]
    seen: set[tuple[int, int]] = set()
    for ref, target, rotation, translation in pair_poses:
        if (ref, target) not in seen:
            partners[ref].append((target, rotation, translation))
            seen.add((ref, target))
        if (target, ref) not in seen:
            partners[target].append((ref, rotation.T, -rotation.T @ translation))
            seen.add((target, ref))
    return partners
