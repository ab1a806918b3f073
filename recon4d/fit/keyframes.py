"""Keyframes of a long clip: where the image motion accumulated since the previous keyframe reaches a budget.

A long clip is fitted on its keyframes; the frames between two keyframes get their cameras by interpolation
(`recon4d.geometry.lie.fill_poses`, the same filling the pipeline uses for unfitted frames) and their
Gaussians by interpolation plus a short refinement. Keyframes must therefore be dense where the images change
fast (a fast pan, a quick hand) and may be sparse where little happens.

Motion of a consecutive pair: a percentile of the per-pixel magnitude of the optical flow between the two
frames, computed on frames downscaled to a small short side (DIS flow at 64 px: a 450-frame clip takes about
a second) and expressed in pixels at the fit's working resolution. The median would measure the camera's
motion (parallax) of a mostly still scene; a higher percentile also sees a moving object that covers a
tenth of the image, which is what a static camera filming a moving hand needs.

Selection: greedy from frame 0; a frame becomes a keyframe when adding the next pair's motion would take the
motion accumulated since the last keyframe over the budget, when the gap reaches max_gap_frames, and at the
last frame. So the motion between consecutive keyframes stays within the budget unless one pair alone
exceeds it (then both frames are keyframes). `max_share` caps the keyframes at a share of the clip's frames
(the budget and the gap grow together until the selection fits), which bounds the cost of a long clip.

Example:
    >>> keys = choose_keyframes(read_clip("clip.mp4", short_side=64).frames, working_short_side=180)  # doctest: +SKIP
    >>> world_from_camera = fill_poses(world_from_camera, keys)   # fitted keys -> every frame  # doctest: +SKIP
"""
from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from recon4d.errors import InputError
from recon4d.fit.config import KeyframeConfig
from recon4d.priors.flow import make_flow_estimator


def downscale_frames(frames: np.ndarray, short_side: int) -> np.ndarray:
    """frames [T, H, W, 3] uint8 -> [T, h, w, 3] with min(h, w) = short_side (area averaging, aspect ratio
    kept); frames already that small are returned as they are."""
    height, width = frames.shape[1:3]
    scale = short_side / min(height, width)
    if scale >= 1.0:
        return frames
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in frames])


def consecutive_motion(frames: np.ndarray, working_short_side: int, config: KeyframeConfig | None = None) -> np.ndarray:
    """frames [T, H, W, 3] uint8 RGB (any size; T >= 2) -> motion [T-1] float64 of each consecutive pair t,
    t+1: the motion_percentile of the forward flow magnitude, in pixels at a working resolution whose short
    side is working_short_side."""
    config = config or KeyframeConfig()
    config.validate()
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) < 2:
        raise InputError(f"keyframes need uint8 frames [T >= 2, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    small = downscale_frames(frames, config.flow_short_side_px)
    to_working = working_short_side / min(small.shape[1:3])
    solve = make_flow_estimator(config.flow_estimator).make_solver()
    gray = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in small]
    motion = np.empty(len(frames) - 1)
    for t in range(len(frames) - 1):
        magnitude = np.linalg.norm(solve(gray[t], gray[t + 1]), axis=-1)
        motion[t] = np.percentile(magnitude, config.motion_percentile) * to_working
    return motion


def _greedy_keyframes(motion: np.ndarray, budget_px: float, max_gap: float) -> list[int]:
    """The greedy selection of `select_keyframes` for one budget and gap (motion already NaN-free)."""
    last = len(motion)
    keys, accumulated = [0], 0.0
    for t in range(1, last + 1):
        accumulated += motion[t - 1]
        if t == last or t - keys[-1] >= max_gap or accumulated + motion[t] > budget_px:
            keys.append(t)
            accumulated = 0.0
    return keys


def select_keyframes(motion: np.ndarray, config: KeyframeConfig | None = None) -> list[int]:
    """motion [T-1] (pixels, see `consecutive_motion`; NaN counts as too much) -> sorted keyframe indices of
    the T frames: 0 and T-1 always, at most max_gap_frames apart, and the motion summed between consecutive
    keyframes within motion_budget_px unless one pair alone exceeds it.

    With `max_share` < 1 at most max(2, ceil(max_share * T)) frames are keyframes: when the budget and gap
    pick more, both are scaled by the smallest factor (bisection to 1 %) that keeps the count within the
    cap, so a long, busy clip spreads its keyframes evenly over its motion instead of spending them early."""
    config = config or KeyframeConfig()
    config.validate()
    motion = np.nan_to_num(np.asarray(motion, dtype=np.float64).reshape(-1), nan=np.inf)
    cap = max(2, math.ceil(config.max_share * (len(motion) + 1)))
    # At a scale of T the gap alone allows the two ends only.
    return _within_cap(lambda scale: _greedy_keyframes(motion, config.motion_budget_px * scale,
                                                       config.max_gap_frames * scale), cap, float(len(motion) + 1))


def _within_cap(pick: Callable[[float], list[int]], cap: int, largest_scale: float) -> list[int]:
    """`pick(1)`, or when that has more than `cap` entries, `pick(scale)` for the smallest scale (bisection to
    1 %, up to `largest_scale`, where the pick must fit) that keeps the count within the cap."""
    keys = pick(1.0)
    if len(keys) <= cap:
        return keys
    low, high = 1.0, largest_scale
    best = pick(high)
    while high / low > 1.01:
        middle = math.sqrt(low * high)
        candidate = pick(middle)
        if len(candidate) <= cap:
            high, best = middle, candidate
        else:
            low = middle
    return best


def choose_keyframes(frames: np.ndarray, working_short_side: int, config: KeyframeConfig | None = None) -> list[int]:
    """frames [T, H, W, 3] uint8 RGB -> keyframe indices (`consecutive_motion` then `select_keyframes`)."""
    return select_keyframes(consecutive_motion(frames, working_short_side, config), config)


def sequential_keyframes(fitted: list[int], motion: np.ndarray, config: KeyframeConfig) -> list[int]:
    """The keyframes `fitted` (sorted clip indices) that the sequential pass fits when
    `config.sequential_budget_px` > 0: greedy as `select_keyframes`, over the motion summed between consecutive
    fitted frames (`motion` [T-1], see `consecutive_motion`), with that budget and a gap of max_gap_frames
    scaled by the ratio of the two budgets (clip frames). The first and last fitted frames are always in; with
    no more than `config.sequential_min_keyframes` fitted frames, all of them are. With
    `config.sequential_max_keyframes` > 0 at most that many (and at least 2) are picked: the budget and the gap
    are scaled up together until the pick fits, as `select_keyframes` does for `max_share`.

    Example:
        >>> config = KeyframeConfig(motion_budget_px=10, sequential_budget_px=20, max_gap_frames=100)
        >>> sequential_keyframes([0, 2, 4, 6, 8], np.full(8, 5.0), config)
        [0, 4, 8]
        >>> config.sequential_max_keyframes = 2
        >>> sequential_keyframes([0, 2, 4, 6, 8], np.full(8, 5.0), config)
        [0, 8]
    """
    if config.sequential_budget_px <= 0 or len(fitted) <= max(2, config.sequential_min_keyframes):
        return list(fitted)
    cumulative = np.concatenate([[0.0], np.cumsum(np.nan_to_num(np.asarray(motion, dtype=np.float64), nan=np.inf))])
    between = [cumulative[b] - cumulative[a] for a, b in zip(fitted[:-1], fitted[1:])]
    max_gap = config.max_gap_frames * config.sequential_budget_px / max(config.motion_budget_px, 1e-9)

    def pick(scale: float) -> list[int]:
        budget, gap = config.sequential_budget_px * scale, max_gap * scale
        keys, accumulated = [0], 0.0
        for k in range(1, len(fitted)):
            accumulated += between[k - 1]
            if k == len(fitted) - 1 or fitted[k + 1] - fitted[keys[-1]] > gap or accumulated + between[k] > budget:
                keys.append(k)
                accumulated = 0.0
        return keys

    cap = max(2, config.sequential_max_keyframes) if config.sequential_max_keyframes > 0 else len(fitted)
    # At a scale where the gap spans the clip and the budget its whole (finite) motion only the two ends are
    # picked, bar pairs of unmeasured (infinite) motion, which always split.
    finite_motion = sum(b for b in between if math.isfinite(b))
    largest = max(1.0, (fitted[-1] - fitted[0] + 1) / max(max_gap, 1e-9),
                  2.0 * finite_motion / config.sequential_budget_px)
    return [fitted[k] for k in _within_cap(pick, cap, largest)]
