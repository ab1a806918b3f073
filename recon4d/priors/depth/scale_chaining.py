"""Bringing the triangulated pairs of a clip to one scale and merging them per pixel.

Pairs that see the same pixels of a frame are scale-linked (jointly, by robust least squares); the scaled
depths of all pairs on a frame are merged by a median with a confidence from their agreement; frames
without a triangulated pixel borrow depth from the nearest frame through the chained flow.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recon4d.device import cpu_workers, thread_pool
from recon4d.priors.depth.config import VideoDepthConfig
from recon4d.priors.depth.edges import repair_depth_edges
from recon4d.priors.depth.flow_chain import chain_flow, remap
from recon4d.priors.depth.inputs import WorkingFrames
from recon4d.priors.depth.pairs import PairMaps
from recon4d.priors.types import FlowResult


def _maps_by_frame(pairs: list[PairMaps]) -> dict[int, list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]]:
    """frame -> [(pair id, flat index, depth, parallax_px)]."""
    by_frame: dict[int, list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]] = {}
    for pid, pair in enumerate(pairs):
        by_frame.setdefault(pair.ref, []).append((pid, pair.ref_index, pair.ref_depth, pair.parallax_px))
        by_frame.setdefault(pair.target, []).append(
            (pid, pair.target_index, pair.target_depth, pair.target_parallax_px))
    return by_frame


def solve_pair_scales(pairs: list[PairMaps], num_frames: int, height: int, width: int,
                      cfg: VideoDepthConfig) -> tuple[np.ndarray, np.ndarray]:
    """One scale per pair so that all pairs agree where they see the same pixels of a frame.

    Each overlap of two pairs' depth maps on one frame gives log s_a - log s_b = median(log d_b - log d_a).
    The links are solved jointly by least squares (weight sqrt(overlap)); pairs not linked to the largest
    group are scaled afterwards in `merge_pairs` by median depth (their scale cannot be observed).
    Returns the scale per pair [P] and the linked group of each pair [P].
    """
    n = len(pairs)
    rows: list[tuple[int, int, float, float]] = []
    n_pixels = height * width
    for maps in _maps_by_frame(pairs).values():
        dense = []
        for pid, index, depth, _ in maps:
            arr = np.full(n_pixels, np.nan, dtype=np.float32)
            arr[index] = np.log(depth)
            dense.append((pid, arr))
        for a in range(len(dense)):
            for b in range(a + 1, len(dense)):
                pa, da = dense[a]
                pb, db = dense[b]
                if pa == pb:
                    continue
                both = np.isfinite(da) & np.isfinite(db)
                count = int(both.sum())
                if count < cfg.min_link_points:
                    continue
                rows.append((pa, pb, float(np.median(db[both] - da[both])), float(np.sqrt(count))))
    # Tiny prior on every log scale fixes the gauge of each linked group without biasing the links.
    lhs = np.zeros((len(rows) + n, n))
    rhs = np.zeros(len(rows) + n)
    for r, (pa, pb, value, weight) in enumerate(rows):
        lhs[r, pa], lhs[r, pb], rhs[r] = weight, -weight, weight * value
    lhs[len(rows):, :] = 1e-3 * np.eye(n)
    log_scale = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    # Robust re-weighting: a pair with a wrong pose disagrees with its links; Huber-down-weight them.
    for _ in range(3):
        if not rows:
            break
        res = np.array([log_scale[pa] - log_scale[pb] - v for pa, pb, v, _ in rows])
        huber = np.minimum(1.0, 0.05 / np.maximum(np.abs(res), 1e-9))
        lhs_w = lhs.copy()
        rhs_w = rhs.copy()
        lhs_w[: len(rows)] *= np.sqrt(huber)[:, None]
        rhs_w[: len(rows)] *= np.sqrt(huber)
        log_scale = np.linalg.lstsq(lhs_w, rhs_w, rcond=None)[0]
    return np.exp(log_scale), _linked_groups(n, [(pa, pb) for pa, pb, _, _ in rows])


def merge_pairs(pairs: list[PairMaps], pair_scale: np.ndarray, groups: np.ndarray, guides: WorkingFrames,
                cfg: VideoDepthConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel median of the scaled log depths of all pairs, with a confidence from their agreement.

    guides: the frames at the working resolution (guides[t]: [h, w, 3] float in [0, 1]; for the depth-edge
    repair).
    Returns log depth [T, h, w] (NaN = none), confidence [T, h, w] and the extra scale of each linked group
    (1 for the main group; others are matched to it by median depth since their scale is unobservable).
    """
    num_frames, height, width = guides.shape[:3]
    n_pixels = height * width
    main = np.bincount(groups).argmax()
    group_scale = np.ones(groups.max() + 1)
    ref_frames = [{p.ref for p, g in zip(pairs, groups) if g == group} for group in range(len(group_scale))]
    scaled = pair_scale.copy()
    log_depth = np.full((num_frames, n_pixels), np.nan, dtype=np.float32)
    by_frame = _maps_by_frame(pairs)
    for attempt in range(2):
        confidence = np.zeros((num_frames, n_pixels), dtype=np.float32)

        def merge_frame(frame: int, scaled: np.ndarray = scaled) -> None:
            """Rows `frame` of log_depth and confidence: each frame reads only its own maps."""
            maps = by_frame[frame]
            stack = np.full((len(maps), n_pixels), np.nan, dtype=np.float32)
            para = np.zeros((len(maps), n_pixels), dtype=np.float32)
            for m, (pid, index, depth, parallax_px) in enumerate(maps):
                stack[m, index] = np.log(depth * scaled[pid])
                para[m, index] = parallax_px
            merged, conf = _merge_stack(stack, para, cfg)
            repaired, repaired_conf = repair_depth_edges(merged.reshape(height, width),
                                                          conf.reshape(height, width), guides[frame], cfg)
            log_depth[frame], confidence[frame] = repaired.ravel(), repaired_conf.ravel()

        # Frames are independent (NumPy's sorts and medians release the GIL): they run on every core.
        with thread_pool(cpu_workers()) as pool:
            list(pool.map(merge_frame, by_frame))
        if attempt == 1 or len(group_scale) == 1:
            break
        main_frames = sorted(ref_frames[main])
        main_median = np.nanmedian(log_depth[main_frames])
        for group in range(len(group_scale)):
            frames_g = sorted(ref_frames[group] - ref_frames[main])
            if group != main and frames_g:
                group_scale[group] = np.exp(main_median - np.nanmedian(log_depth[frames_g]))
        scaled = pair_scale * group_scale[groups]
    return (log_depth.reshape(num_frames, height, width), confidence.reshape(num_frames, height, width),
            group_scale)


def _merge_stack(stack: np.ndarray, parallax_px: np.ndarray, cfg: VideoDepthConfig) -> tuple[np.ndarray, np.ndarray]:
    """stack [M, N] log depths (NaN = none), parallax [M, N] px -> merged log depth [N], confidence [N]."""
    count = np.isfinite(stack).sum(axis=0)
    has = count > 0
    merged = np.full(stack.shape[1], np.nan, dtype=np.float32)
    conf = np.zeros(stack.shape[1], dtype=np.float32)
    if not has.any():
        return merged, conf
    sub = stack[:, has]
    med = np.nanmedian(sub, axis=0)
    spread = np.nanmedian(np.abs(sub - med[None]), axis=0)
    agreement = np.where(count[has] > 1, np.exp(-((spread / cfg.agreement_sigma) ** 2)), cfg.single_map_agreement)
    quality = 1.0 - np.exp(-parallax_px[:, has].max(axis=0) / cfg.parallax_quality_px)
    merged[has] = med
    conf[has] = np.clip(agreement * quality, 1e-3, 1.0)
    return merged, conf


def _linked_groups(n: int, links: list[tuple[int, int]]) -> np.ndarray:
    """Connected components of n nodes under the links -> group id per node [n]."""
    from scipy.sparse.csgraph import connected_components

    if not links:
        return np.arange(n)
    a, b = np.array(links).T
    graph = sp.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def propagate_to_empty_frames(log_depth: np.ndarray, confidence: np.ndarray, has_data: np.ndarray,
                              flow: FlowResult, height: int, width: int, cfg: VideoDepthConfig) -> None:
    """Frames without triangulated pixels borrow them from the nearest frame that has some (in place)."""
    source_frames = np.flatnonzero(has_data)
    jj, ii = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    grid = np.stack([jj, ii], axis=-1)
    for frame in np.flatnonzero(~has_data):
        source = int(source_frames[np.argmin(np.abs(source_frames - frame))])
        direction = 1 if source > frame else -1
        gap = abs(source - frame)
        positions, valid = grid, np.ones((height, width), dtype=bool)
        for _, positions, valid in chain_flow(flow, int(frame), direction, gap, grid):
            pass
        sampled = remap(log_depth[source], positions, nearest=True, border=np.nan)
        sampled_conf = remap(confidence[source], positions, nearest=True, border=0.0)
        ok = valid & np.isfinite(sampled)
        if not ok.any():
            # Nothing maps across: the camera barely moved, so the nearest frame's samples are close.
            ok = np.isfinite(log_depth[source])
            sampled, sampled_conf = log_depth[source], confidence[source]
        log_depth[frame] = np.where(ok, sampled, np.nan)
        confidence[frame] = np.where(ok, sampled_conf * cfg.propagated_confidence_factor, 0.0)
