"""Triangulating frame pairs: for every frame a partner on each side with enough parallax (flow chained over
up to `max_frame_gap` frames), the relative pose from still pixels (essential matrix + chirality), and the
depth of every still pixel, up to the pair's own scale."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from recon4d.device import cpu_workers, thread_pool
from recon4d.priors.depth.config import VideoDepthConfig
from recon4d.priors.depth.flow_chain import chain_flow, remap
from recon4d.priors.depth.two_view import camera_matrix, rotation_compensated_parallax, triangulate_two_view
from recon4d.priors.types import FlowResult


@dataclass
class PairMaps:
    """Triangulated depth of one frame pair, up to the pair's own scale (|t| = 1)."""

    ref: int
    target: int
    ref_index: np.ndarray  # [N] int32 flat pixel indices in the reference frame
    ref_depth: np.ndarray  # [N]
    target_index: np.ndarray  # [M] int32 flat pixel indices in the target frame (nearest pixel, front-most)
    target_depth: np.ndarray  # [M]
    parallax_px: np.ndarray  # [N] per reference pixel, also used for the target samples (same points)
    target_parallax_px: np.ndarray  # [M]
    rotation: np.ndarray  # [3, 3] target_from_ref
    translation: np.ndarray  # [3] unit length: x_target = R x_ref + t


def triangulate_pairs(flow: FlowResult, moving: np.ndarray, intrinsics: np.ndarray, height: int, width: int,
                      cfg: VideoDepthConfig) -> list[PairMaps]:
    """Every frame with a partner on each side that has parallax, triangulated.

    flow, moving [T, h, w] bool and intrinsics [4] at the working resolution h x w. Pairs that a pure
    rotation explains, or whose pose fit fails, are left out.
    """
    num_frames = moving.shape[0]
    jj, ii = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    grid = np.stack([jj, ii], axis=-1)

    def pair_of(ref_direction: tuple[int, int]) -> PairMaps | None:
        ref, direction = ref_direction
        choice = _choose_partner(flow, moving, intrinsics, ref, direction, grid, cfg)
        if choice is None:
            return None
        target, positions, usable = choice
        return _triangulate_pair(ref, target, positions, usable, intrinsics, height, width, cfg)

    # Each (frame, side) draws from its own seeded generator, so the pairs run on every core and come out
    # the same, in the same order, for any number of workers. OpenCV's fits and remaps release the GIL.
    jobs = [(ref, direction) for ref in range(num_frames) for direction in (1, -1)]
    with thread_pool(cpu_workers()) as pool:
        return [pair for pair in pool.map(pair_of, jobs) if pair is not None]


def _usable(moving: np.ndarray, ref: int, target: int, positions: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Correspondences [h, w] bool that are valid and still in both frames."""
    still_target = remap(moving[target].astype(np.uint8), positions, nearest=True, border=1) == 0
    return valid & ~moving[ref] & still_target


def _choose_partner(flow: FlowResult, moving: np.ndarray, intrinsics: np.ndarray, ref: int, direction: int,
                    grid: np.ndarray, cfg: VideoDepthConfig) -> tuple[int, np.ndarray, np.ndarray] | None:
    """Smallest gap whose median rotation-compensated parallax reaches the target, else the largest."""
    height, width = grid.shape[:2]
    best: tuple[float, int, np.ndarray, np.ndarray] | None = None
    for target, positions, valid in chain_flow(flow, ref, direction, cfg.max_frame_gap, grid):
        usable = _usable(moving, ref, target, positions, valid)
        count = int(usable.sum())
        if count < max(cfg.min_link_points, cfg.min_valid_fraction * height * width):
            break
        rng = np.random.default_rng((cfg.seed, ref, target))
        pick = np.flatnonzero(usable.ravel())
        if pick.size > cfg.fit_points:
            pick = rng.choice(pick, cfg.fit_points, replace=False)
        p_ref = grid.reshape(-1, 2)[pick].astype(np.float64)
        p_target = positions.reshape(-1, 2)[pick].astype(np.float64)
        parallax = rotation_compensated_parallax(p_ref, p_target, intrinsics, cfg.rotation_fit_iterations)
        if best is None or parallax > best[0]:
            best = (parallax, target, positions.copy(), usable)
        if parallax >= cfg.target_parallax_px:
            break
    if best is None or best[0] < cfg.min_pair_parallax_px:
        return None
    return best[1], best[2], best[3]


def _triangulate_pair(ref: int, target: int, positions: np.ndarray, usable: np.ndarray, intrinsics: np.ndarray,
                      height: int, width: int, cfg: VideoDepthConfig) -> PairMaps | None:
    """Pose (essential matrix, chirality vote) and depth of the usable pixels of `ref` seen at `positions`
    [h, w, 2] in `target`; None when the pose fit fails or too few points triangulate well."""
    index = np.flatnonzero(usable.ravel())
    p_ref = np.stack([index % width, index // width], axis=1).astype(np.float64)
    p_target = positions.reshape(-1, 2)[index].astype(np.float64)
    rng = np.random.default_rng((cfg.seed, ref, target, 1))
    fit = rng.choice(len(index), min(cfg.fit_points, len(index)), replace=False)
    camera = camera_matrix(intrinsics)
    method = cv2.USAC_MAGSAC if cfg.essential_method == "magsac" else cv2.RANSAC
    try:
        essential, inliers = cv2.findEssentialMat(p_ref[fit], p_target[fit], camera, method=method,
                                                  prob=cfg.essential_confidence,
                                                  threshold=cfg.essential_threshold_px)
    except cv2.error:
        return None
    if essential is None or essential.shape != (3, 3) or inliers is None:
        return None
    if inliers.sum() < cfg.min_inlier_ratio * len(fit):
        return None
    # The chirality vote needs only a few hundred inliers (it triangulates every point it gets).
    vote = fit[inliers.ravel() > 0][: cfg.chirality_points]
    _, rotation, translation, _ = cv2.recoverPose(essential, p_ref[vote], p_target[vote], camera)
    depth_ref, depth_target, parallax, reprojection = triangulate_two_view(
        p_ref, p_target, rotation, translation.ravel(), intrinsics)
    focal = 0.5 * (intrinsics[0] + intrinsics[1])
    parallax_px = parallax * focal
    good = ((depth_ref > 0) & (depth_target > 0) & (parallax_px >= cfg.min_point_parallax_px)
            & (reprojection <= cfg.max_reprojection_px) & np.isfinite(depth_ref))
    if good.sum() < cfg.min_link_points:
        return None
    index, depth_ref, depth_target = index[good], depth_ref[good], depth_target[good]
    parallax_px, p_target = parallax_px[good], p_target[good]
    # Splat the target-side depths to their nearest pixel, front-most first: these samples tie the
    # pair's scale to the pairs of the target frame.
    target_flat = (np.clip(np.rint(p_target[:, 1]), 0, height - 1).astype(np.int64) * width
                   + np.clip(np.rint(p_target[:, 0]), 0, width - 1).astype(np.int64))
    order = np.argsort(depth_target)
    target_index, first = np.unique(target_flat[order], return_index=True)
    # int32 indices (a frame has far fewer than 2^31 pixels): a long clip holds every pair until the merge. With
    # int64 ones the pairs of 900 frames at 235x180 took 1.0 GB, half of it indices; now 0.73 GB.
    return PairMaps(ref=ref, target=target, ref_index=index.astype(np.int32), ref_depth=depth_ref.astype(np.float32),
                     target_index=target_index.astype(np.int32),
                     target_depth=depth_target[order][first].astype(np.float32),
                     parallax_px=parallax_px.astype(np.float32),
                     target_parallax_px=parallax_px[order][first].astype(np.float32),
                     rotation=rotation.astype(np.float64), translation=translation.ravel().astype(np.float64))
