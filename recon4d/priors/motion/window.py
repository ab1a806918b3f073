"""The motion window: judge every frame by where its pixels are W frames later (and earlier), not only by
consecutive pairs.

An object moving a fraction of a pixel per frame (a hand slowly lifting a cup) never crosses a per-pair
threshold, which must stay above flow noise. Over a window of W frames its independent motion adds up (about
linearly in W), while flow noise adds up more slowly, so the window sees it. Per frame t:

1. Chained flow t -> t+k and t -> t-k (``compose_flow``) follows each pixel over the window; k is the longest
   baseline of the split (``MotionConfig.baselines`` plus W itself) that fits into the clip, at most W.
2. Its residual under the camera model of that window pair, chosen to call parallax still:
   - every consecutive pair inside the window is "static" (the camera did not move): the camera-induced flow
     is zero and the residual is the whole chained displacement (transfer distance under the identity). The
     model fitted to the window pair itself is not used there: where slow movers cover most textured pixels
     (a hand in front of a blank wall), their motion over the window wins the robust fit and is explained
     away as camera motion (a degenerate F). A camera that drifts by less than ``static_flow_px`` per frame
     moves the still pixels too, which raises the measured noise level (step 3) instead;
   - "fundamental": the Sampson distance (parallax lies along the epipolar lines);
   - "homography": min(transfer distance, Sampson distance). GRIC prefers H when parallax is small, but over
     a window the parallax of a still object above a dominant plane grows; whatever F explains is treated
     as parallax (the price: an object moving along its epipolar lines under a rotating camera is missed);
   - "static" (at the window baseline): the transfer distance of the fitted H;
   - "unknown": no evidence.
3. Noise level at baseline k, measured on the clip itself from the window residuals at k of its still
   pixels (valid, textured, per-pair score <= 1) over all frames. Slow movers pass the per-pair test, so
   they are among those pixels, and can be most of them (a hand in front of a blank wall: on 60 frames of
   the opencv cup clip, median + 6 MAD puts the threshold at 2.0 px over 16 frames, this rule at 0.8 px).
   So the scale
   comes from a low quantile (``window_noise_quantile``), read as the quantile of a Rayleigh distribution
   (the length of a 2D Gaussian error): sigma = Q_q / sqrt(-2 ln(1 - q)). Threshold = max(
   ``window_noise_sigmas`` * sigma, ``window_floor_px`` * k ** threshold_growth); window score = residual /
   threshold.
4. Per frame, the smaller of the forward and backward scores (a direction whose baseline is under half of
   the other's is left out): a pixel that a moving object is about to cover (or has just uncovered) gets
   that object's flow in one direction only, while a moving pixel moves in both. Near the clip ends, where
   only one direction is usable, the score is also capped by the two-sided score of the nearest frame that
   has both (its reference frame), read where the pixel's chained flow takes it there.
5. Near pixels that the per-pair score already calls moving (``window_exclusion_px``) the window is ignored:
   flow blurs a fast object's motion into its surroundings, which the window would add up into a halo.

The split's score is max(per-pair score, window score): a pixel moving fast in one pair stays moving.
Units: pixels at the resolution of the flow; pixel centres as in ``recon4d.priors.types``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from recon4d.priors.motion.config import MotionConfig
from recon4d.priors.motion.geometry import PairGeometry, pair_residuals
from recon4d.priors.motion.maps import disk, sample_at

#: Directions of a window: index 0 = forward (chain t -> t+k), 1 = backward (chain t -> t-k).
FORWARD, BACKWARD = 0, 1


def window_baselines(num_frames: int, config: MotionConfig) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Baselines the window uses, the one each frame gets per direction, and each frame's reference frame.

    Returns (sorted baselines k <= W; [2, T] int: the longest of them with t + k <= T-1 (FORWARD) or t - k >= 0
    (BACKWARD), 0 = none; [T] int reference frame: t itself where both directions are usable (each at least
    half the other), else the nearest such frame, -1 if there is none). Empty, zeros and -1 when
    ``config.window_frames`` is 0.
    """
    window = min(config.window_frames, num_frames - 1)
    chosen = np.zeros((2, num_frames), np.int64)
    reference = np.full(num_frames, -1, np.int64)
    if window < 1:
        return [], chosen, reference
    ks = sorted({window, *(int(k) for k in config.baselines if 1 <= int(k) <= window)})
    for t in range(num_frames):
        chosen[FORWARD, t] = max((k for k in ks if t + k <= num_frames - 1), default=0)
        chosen[BACKWARD, t] = max((k for k in ks if t - k >= 0), default=0)
    two_sided = np.flatnonzero((2 * chosen.min(axis=0) >= chosen.max(axis=0)) & (chosen.min(axis=0) > 0))
    if two_sided.size:
        reference = two_sided[np.abs(np.arange(num_frames)[:, None] - two_sided[None]).argmin(axis=1)]
    return ks, chosen, reference


def window_residuals(
    geometry: PairGeometry, forward: np.ndarray, backward: np.ndarray, camera_still: bool
) -> tuple[np.ndarray, np.ndarray] | None:
    """Residual maps of a window pair (s, s+k) under the window's camera model (module doc, step 2).

    forward: [H, W, 2] chained flow s -> s+k on frame s; backward: [H, W, 2] s+k -> s on frame s+k;
    camera_still: every consecutive pair inside the window is "static". Returns (forward residual on frame s
    [H, W], backward residual on frame s+k [H, W]) in pixels, or None for an "unknown" pair.
    """
    if geometry.camera_model == "unknown":
        return None
    if camera_still:
        return pair_residuals(_with(geometry, "homography", homography=np.eye(3)), forward, backward)
    if geometry.camera_model == "homography" and np.isfinite(geometry.fundamental).all():
        transfer = pair_residuals(geometry, forward, backward)
        sampson = pair_residuals(_with(geometry, "fundamental"), forward, backward)
        return np.minimum(transfer[0], sampson[0]), np.minimum(transfer[1], sampson[1])
    return pair_residuals(geometry, forward, backward)


def _with(geometry: PairGeometry, model: str, homography: np.ndarray | None = None) -> PairGeometry:
    """The same pair geometry with another camera model (and optionally another H)."""
    return PairGeometry(
        model,
        geometry.fundamental,
        geometry.homography if homography is None else homography,
        geometry.fundamental_inlier_ratio,
        geometry.homography_inlier_ratio,
        geometry.threshold_px,
        geometry.num_samples,
    )


@dataclass
class WindowResiduals:
    """Window residuals of a clip of T frames, H x W pixels.

    Attributes:
        residual: [2, T, H, W] float32 pixels, per direction (FORWARD, BACKWARD) and frame.
        valid: [2, T, H, W] bool: the chained flow is valid and the pixel textured.
        baseline: [2, T] int, the window's baseline k per direction and frame (0 = no window).
        reference: [T] int, reference frame of each frame (see :func:`window_baselines`).
        to_reference: frame t -> ([H, W, 2] chained flow from t to reference[t] on frame t, [H, W] bool valid),
            for the frames whose reference is another frame.
    """

    residual: np.ndarray
    valid: np.ndarray
    baseline: np.ndarray
    reference: np.ndarray
    to_reference: dict[int, tuple[np.ndarray, np.ndarray]]

    @staticmethod
    def empty(baseline: np.ndarray, reference: np.ndarray, height: int, width: int) -> "WindowResiduals":
        shape = baseline.shape + (height, width)
        return WindowResiduals(np.zeros(shape, np.float32), np.zeros(shape, bool), baseline, reference, {})


def window_thresholds(windows: WindowResiduals, still: np.ndarray, config: MotionConfig) -> dict[int, float]:
    """Threshold (pixels) per baseline k from the residuals of still pixels at k over the clip (module doc,
    step 3): max(window_floor_px * k ** threshold_growth, window_noise_sigmas * sigma), where sigma is the
    Rayleigh scale that puts the window_noise_quantile-quantile of those residuals where it is.

    still: [T, H, W] bool, pixels the per-pair score calls still. Baselines without still pixels get inf.
    """
    rayleigh_quantile = np.sqrt(-2.0 * np.log1p(-config.window_noise_quantile))  # of a unit-scale Rayleigh
    thresholds = {}
    # Every 2nd pixel along each axis: neighbours are strongly correlated, and the quantile stays cheap. The
    # maps are thinned before they are gathered: gathering whole ones copied up to [2, T, H, W] float32 at once.
    residual, valid, still_thin = (x[..., ::2, ::2] for x in (windows.residual, windows.valid, still))
    for k in np.unique(windows.baseline[windows.baseline > 0]):
        directions, frames = np.nonzero(windows.baseline == k)
        values = residual[directions, frames][valid[directions, frames] & still_thin[frames]]
        if values.size == 0:
            thresholds[int(k)] = np.inf
            continue
        sigma = float(np.quantile(values, config.window_noise_quantile)) / rayleigh_quantile
        floor = config.window_floor_px * float(k) ** config.threshold_growth
        thresholds[int(k)] = max(floor, config.window_noise_sigmas * sigma)
    return thresholds


def window_score(windows: WindowResiduals, pair_score: np.ndarray, config: MotionConfig) -> np.ndarray:
    """[T, H, W] float32 window score (> 1 = moving; 0 where there is no usable window), module doc steps 3-5.

    pair_score: [T, H, W] per-pair score of the split (> 1 = moving).
    """
    thresholds = window_thresholds(windows, pair_score <= 1.0, config)
    lookup = np.array([thresholds.get(k, np.inf) for k in range(int(windows.baseline.max()) + 1)])
    per_frame = lookup[windows.baseline]  # [2, T], inf where there is no window
    # A direction much shorter than the other (near the clip ends) is noisier and slower to see motion.
    longer = windows.baseline.max(axis=0, keepdims=True)
    usable = 2 * windows.baseline >= longer  # [2, T]
    # Frame by frame: the whole clip's [2, T, H, W] float64 ratios are the split's largest temporaries. Each
    # frame's score is stored in float32 straight away, which is what the steps below would round it to anyway:
    # they only take minima with float32 values (`sample_at` samples in float32) and set zeros, and rounding
    # commutes with both, so the result is the same bit for bit without a whole-clip float64 copy (0.4 GB with
    # its float32 cast at 828 frames of 235x180).
    score = np.empty(windows.residual.shape[1:], np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        for t in range(score.shape[0]):
            directions = [np.where(windows.valid[d, t] & usable[d, t],
                                   windows.residual[d, t].astype(np.float64) / per_frame[d, t], np.nan)
                          for d in (FORWARD, BACKWARD)]
            score[t] = np.fmin(*directions)
    score = np.nan_to_num(score, nan=0.0, posinf=0.0, copy=False)
    # Near the clip ends only one direction is usable: also ask the reference frame, where the pixel has gone.
    for t, (chained, valid) in windows.to_reference.items():
        there = sample_at(score[windows.reference[t]], chained)
        score[t] = np.where(valid, np.minimum(score[t], there), 0.0)
    if config.window_exclusion_px > 0:
        element = disk(config.window_exclusion_px)
        for t, frame_score in enumerate(pair_score):
            near = cv2.dilate((frame_score > 1.0).astype(np.uint8), element).astype(bool)
            score[t][near] = 0.0
    return score
