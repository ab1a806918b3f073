"""`estimate_moving_masks`: the still/moving split of a clip from its flow (steps in the package doc)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recon4d.device import cpu_workers, ordered_map, thread_pool
from recon4d.errors import PriorError
from recon4d.priors.motion.config import MotionConfig
from recon4d.priors.motion.geometry import PairGeometry, fit_pair_geometry, pair_residuals, sample_correspondences
from recon4d.priors.motion.maps import clean_mask, compose_flow, texture_strength
from recon4d.priors.motion.window import BACKWARD, FORWARD, WindowResiduals, window_baselines, window_residuals, window_score
from recon4d.priors.types import FlowResult


@dataclass
class MotionResult:
    """Still/moving split of a clip of T frames.

    Attributes:
        moving_masks: [T, H, W] bool, True = independently moving (after clean-up).
        motion_score: [T, H, W] float32, max(pair_score, window_score) before clean-up (> 1 = moving);
            useful as a soft weight.
        pair_score: [T, H, W] float32, mean residual / threshold over the pairs (all baselines) touching each
            frame (> 1 = moving).
        window_score: [T, H, W] float32, the motion window's score (> 1 = moving; 0 where it has no
            evidence or is switched off), see ``recon4d.priors.motion.window``.
        camera_model: [T-1] per pair (t, t+1), one of CAMERA_MODELS.
        inlier_ratio: [T-1] float, inlier share of the chosen model.
        fundamental_inlier_ratio, homography_inlier_ratio: [T-1] float, of both fits.
        threshold_px: [T-1] float, residual threshold of each pair.
        fundamental, homography: [T-1, 3, 3] float64 fitted matrices (x' from frame t to t+1).
    """

    moving_masks: np.ndarray
    motion_score: np.ndarray
    pair_score: np.ndarray
    window_score: np.ndarray
    camera_model: list[str]
    inlier_ratio: np.ndarray
    fundamental_inlier_ratio: np.ndarray
    homography_inlier_ratio: np.ndarray
    threshold_px: np.ndarray
    fundamental: np.ndarray
    homography: np.ndarray

    @property
    def has_parallax(self) -> np.ndarray:
        """[T-1] bool: the pair's camera translates with measurable parallax (camera model "fundamental");
        False means flow carries no depth information for that pair."""
        return np.array([model == "fundamental" for model in self.camera_model], bool)


def _check_flow(flow: FlowResult) -> None:
    shape = flow.flow_forward.shape
    if flow.flow_forward.ndim != 4 or shape[-1] != 2 or shape[0] < 1:
        raise PriorError(
            f"flow_forward must be [T-1, H, W, 2], got {list(shape)}", hint="pass a FlowResult from a flow estimator"
        )
    for name in ("flow_backward",):
        if getattr(flow, name).shape != shape:
            raise PriorError(
                f"{name} has shape {list(getattr(flow, name).shape)}, expected {list(shape)}",
                hint="pass a FlowResult from a flow estimator",
            )
    for name in ("valid_forward", "valid_backward"):
        if getattr(flow, name).shape != shape[:-1]:
            raise PriorError(
                f"{name} has shape {list(getattr(flow, name).shape)}, expected {list(shape[:-1])}",
                hint="pass a FlowResult from a flow estimator",
            )


def estimate_moving_masks(
    flow: FlowResult, config: MotionConfig | None = None, frames: np.ndarray | None = None
) -> MotionResult:
    """Still/moving split of T frames from the flow of their T-1 consecutive pairs (see module doc).

    flow: FlowResult of the clip; frames: optional [T, H, W, 3] uint8 RGB frames the flow came from, used
    only to ignore evidence from blank regions (MotionConfig.min_texture); without them every pixel counts.
    """
    config = config or MotionConfig()
    _check_flow(flow)
    pairs, height, width = flow.flow_forward.shape[:3]
    if frames is not None and (
        frames.ndim != 4 or frames.shape[:3] != (pairs + 1, height, width) or frames.shape[3] != 3
    ):
        raise PriorError(
            f"frames of shape {list(frames.shape)} do not match flow of {pairs + 1} frames of {width}x{height}",
            hint="pass the frames the flow was computed from",
        )
    if frames is not None and config.min_texture > 0:
        textured = np.stack(
            [texture_strength(frame, config.texture_radius_px) >= config.min_texture for frame in frames]
        )
    else:
        textured = np.ones((pairs + 1, height, width), bool)
    frames_count = pairs + 1
    rng = np.random.default_rng(config.seed)

    # Per frame: sums of normalised residuals over the pairs that touch it, of valid vectors and of all.
    # Counts are small integers (at most two per baseline): int16, exact, a quarter of float64's memory.
    valid_sum = np.zeros((frames_count, height, width))
    valid_count = np.zeros((frames_count, height, width), np.int16)
    any_sum = np.zeros((frames_count, height, width))
    any_count = np.zeros((frames_count, height, width), np.int16)
    consecutive: list[PairGeometry] = []
    # Chains of length k, per pair: forward[s] maps frame s -> s+k (on frame s), backward[s] frame s+k -> s
    # (on s+k). Lists of per-pair maps, never stacked.
    forward, forward_valid = list(flow.flow_forward), list(flow.valid_forward)
    backward, backward_valid = list(flow.flow_backward), list(flow.valid_backward)
    baselines = sorted({1, *(int(k) for k in config.baselines if 1 <= int(k) <= pairs)})
    window_ks, window_k, reference = window_baselines(frames_count, config)
    windows = WindowResiduals.empty(window_k, reference, height, width)
    fitted = sorted(set(baselines) | set(window_ks))
    # Every per-pair map (chained flow, residuals, scores) is computed on the pool, one pair per task: OpenCV
    # and NumPy release the GIL. The sums are then added in pair order, so the result does not depend on the
    # number of workers.
    workers = cpu_workers(config.num_threads)
    with thread_pool(workers) as pool:
        for k in range(1, fitted[-1] + 1):
            count = frames_count - k
            if k > 1:
                def chain(s: int, k: int = k) -> tuple:
                    return (compose_flow(forward[s], forward_valid[s], flow.flow_forward[s + k - 1],
                                         flow.valid_forward[s + k - 1]),
                            compose_flow(backward[s + 1], backward_valid[s + 1], flow.flow_backward[s],
                                         flow.valid_backward[s]))
                # Chain s replaces chain s in place once every task that reads the old one is done (task s reads
                # forward[s], task s-1 backward[s]): one set of chains in memory, not two.
                for s, (chained_forward, chained_backward) in enumerate(
                        ordered_map(pool, chain, range(count), ahead=2 * workers)):
                    forward[s], forward_valid[s] = chained_forward
                    backward[s], backward_valid[s] = chained_backward
                for chains in (forward, forward_valid, backward, backward_valid):
                    del chains[count:]
            # End frames keep their chain to the reference frame k frames away (forward[s]: s -> s+k on s,
            # backward[r]: r+k -> r on r+k).
            for t in np.flatnonzero(reference - np.arange(frames_count) == k):
                windows.to_reference[int(t)] = (forward[t], forward_valid[t])
            for t in np.flatnonzero(np.arange(frames_count) - reference == k):
                windows.to_reference[int(t)] = (backward[reference[t]], backward_valid[reference[t]])
            if k not in fitted:
                continue
            # Samples are drawn in order (deterministic), the robust fits run in parallel (OpenCV releases the GIL).
            samples = [
                sample_correspondences(
                    forward[s],
                    forward_valid[s] & textured[s],
                    backward[s],
                    backward_valid[s] & textured[s + k],
                    config,
                    rng,
                )
                for s in range(count)
            ]
            geometries = list(pool.map(lambda sample: fit_pair_geometry(*sample, config, baseline=k), samples))
            if k == 1:
                consecutive = geometries
                static_pairs = np.array([g.camera_model == "static" for g in geometries])

            def pair_maps(s: int, k: int = k, geometries: list = geometries) -> tuple:
                """Per-pair score terms of frames s and s+k, and the pair's window residuals (None if unused)."""
                geometry = geometries[s]
                terms = []
                if k in baselines:
                    residual_forward, residual_backward = pair_residuals(geometry, forward[s], backward[s])
                    for frame, residual, valid in (
                        (s, residual_forward, forward_valid[s]),
                        (s + k, residual_backward, backward_valid[s]),
                    ):
                        score = residual / geometry.threshold_px
                        valid = valid & textured[frame]
                        terms.append((frame, np.where(valid, score, 0.0), valid, np.where(textured[frame], score, 0.0)))
                residuals = None
                if window_k[FORWARD, s] == k or window_k[BACKWARD, s + k] == k:
                    residuals = window_residuals(geometry, forward[s], backward[s], bool(static_pairs[s : s + k].all()))
                return terms, residuals

            # A pair's maps are a few full-size float64 images: only a few pairs' are held at a time.
            for s, (terms, residuals) in enumerate(ordered_map(pool, pair_maps, range(count), ahead=2 * workers)):
                for frame, valid_score, valid, any_score in terms:
                    valid_sum[frame] += valid_score
                    valid_count[frame] += valid
                    any_sum[frame] += any_score
                    any_count[frame] += textured[frame]
                if residuals is None:
                    continue
                if window_k[FORWARD, s] == k:
                    windows.residual[FORWARD, s] = residuals[0]
                    windows.valid[FORWARD, s] = forward_valid[s] & textured[s]
                if window_k[BACKWARD, s + k] == k:
                    windows.residual[BACKWARD, s + k] = residuals[1]
                    windows.valid[BACKWARD, s + k] = backward_valid[s] & textured[s + k]
    for chains in (forward, forward_valid, backward, backward_valid):
        chains.clear()
    # Frame by frame: whole-clip float64 temporaries would be the split's largest allocation on a long clip.
    pair_score = np.empty((frames_count, height, width), np.float32)
    for t in range(frames_count):
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_valid = valid_sum[t] / valid_count[t]  # NaN where a pixel has no valid evidence
        fallback = any_sum[t] / np.maximum(any_count[t], 1) if config.use_invalid_evidence else 0.0
        pair_score[t] = np.where(valid_count[t] > 0, mean_valid, fallback)
    del valid_sum, valid_count, any_sum, any_count
    windowed = window_score(windows, pair_score, config)
    motion_score = np.maximum(pair_score, windowed)
    moving_masks = np.stack([clean_mask(score > 1.0, config) for score in motion_score])

    return MotionResult(
        moving_masks=moving_masks,
        motion_score=motion_score,
        pair_score=pair_score,
        window_score=windowed,
        camera_model=[g.camera_model for g in consecutive],
        inlier_ratio=np.array([g.inlier_ratio for g in consecutive]),
        fundamental_inlier_ratio=np.array([g.fundamental_inlier_ratio for g in consecutive]),
        homography_inlier_ratio=np.array([g.homography_inlier_ratio for g in consecutive]),
        threshold_px=np.array([g.threshold_px for g in consecutive]),
        fundamental=np.stack([g.fundamental for g in consecutive]),
        homography=np.stack([g.homography for g in consecutive]),
    )
