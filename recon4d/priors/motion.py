"""Still/moving split of every frame from optical flow, GFlow-style: epipolar (or homography) residuals.

For every pair of frames (s, s+k), k in ``MotionConfig.baselines`` (k > 1 through chained flow), the camera
motion is fitted robustly to flow correspondences of the whole image, where still pixels are the majority:

1. Correspondences: a grid of valid forward vectors (x, x + f(x)) plus valid backward vectors reversed
   (y + b(y), y), so both directions vote for one pair geometry. Blank (textureless) pixels are left out
   when frames are given.
2. Robust fits of a fundamental matrix F and a homography H (``cv2.findFundamentalMat`` /
   ``cv2.findHomography`` with MAGSAC++ or RANSAC).
3. Model selection with Torr's GRIC: a rotation-only (or static, or planar-scene) camera is explained by H
   as well as by F, and F is then degenerate (any F through the epipole fits, so moving pixels can fit it
   too). GRIC charges F for its extra degree of freedom per point, so H wins unless there is real parallax.
   A camera whose still pixels barely move is labelled "static" (its H is ~identity).
4. Per-pixel residual of the chosen model for every flow vector of the pair: the Sampson distance for F, and
   the transfer distance |H x - x'| / sqrt(2) for H (the same both-image first-order distance for a
   near-isometric H, so one threshold scale fits both). Both in pixels.
5. Each residual is divided by its pair's threshold: max(floor * k ** growth, factor * robust spread of the
   inlier residuals), with a lower floor for F pairs (Sampson sees only the off-epipolar part of an
   independent motion). A frame's score is the mean of its valid, textured normalised residuals over all
   pairs that touch it (later and earlier frames; frame 0 has only later ones). Score > 1 = moving.
6. Clean-up: morphological opening and closing, removal of small components, hole filling.

Limitations, inherent to geometry from flow alone:
- An object moving along its own epipolar lines (e.g. sideways when the camera also moves sideways) looks
  like still parallax; longer baselines, spin or any other motion component give it away.
- A translating camera over a dominant plane (a table top) with a small still object above it is explained
  by H nearly as well as by F; GRIC then picks H and the object's parallax is called motion.

Pixel convention: the centre of pixel (row i, column j) is at (u=j, v=i), as in ``recon4d.priors.types``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from recon4d.errors import PriorError
from recon4d.priors.types import FlowResult

__all__ = [
    "CAMERA_MODELS",
    "MotionConfig",
    "MotionResult",
    "PairGeometry",
    "estimate_moving_masks",
    "fit_pair_geometry",
    "sampson_distance",
    "homography_distance",
    "clean_mask",
    "compose_flow",
    "texture_strength",
]

#: Per-pair camera models: "fundamental" (translation with parallax), "homography" (rotation-only or planar
#: scene: no parallax), "static" (still pixels do not move), "unknown" (too few valid flow vectors to fit,
#: e.g. a scene cut; nothing is marked moving in that pair).
CAMERA_MODELS = ("fundamental", "homography", "static", "unknown")

_ROBUST_METHODS = {"magsac": cv2.USAC_MAGSAC, "ransac": cv2.RANSAC}
# 1.4826 * median(|x|) estimates the standard deviation of a zero-mean Gaussian.
_MAD_TO_SIGMA = 1.4826


@dataclass
class MotionConfig:
    """Every threshold of the still/moving split. Pixel values are at the resolution of the flow.

    Attributes:
        baselines: frame distances k at which frames are compared: frame t against t +- k through chained
            flow (1 = consecutive pairs; it is always used). Independent motion accumulates over k frames
            faster than flow noise, so slow objects moving nearly along the epipolar lines, which look still
            in one pair, stand out over a longer baseline.
        sample_stride: grid step in pixels of the correspondences used to fit F and H.
        max_samples: at most this many correspondences per pair (a seeded random subset beyond it); the
            robust fits cost time linear in it.
        min_samples: fewer valid correspondences than this -> camera model "unknown", nothing moving.
        robust_method: "magsac" (cv2.USAC_MAGSAC, MAGSAC++) or "ransac".
        robust_threshold_px: inlier threshold of the robust fits in pixels (MAGSAC++ treats it as the
            maximum noise level).
        robust_confidence: confidence of the robust fits.
        robust_max_iters: iteration cap of the robust fits.
        static_flow_px: if the median flow length of the still (H-inlier) correspondences is below this,
            the camera is "static".
        gric_lambda3: GRIC's cap on one outlier's cost, in units of (4 - model dimension); Torr uses 2.
        gric_sigma_floor_px: lower bound of the noise level sigma used by GRIC (the inlier spread of good
            flow can be tiny, which would make GRIC over-sensitive to sub-pixel flow bias).
        homography_gric_margin: H is chosen when GRIC(H) < GRIC(F) + margin * n (n correspondences); 0 is
            plain GRIC, a positive margin prefers H (safer: a wrongly chosen F is degenerate).
        error_threshold_px: floor of the per-pair residual threshold for "homography" and "static" pairs,
            pixels (Sampson units). There the residual is the whole independent motion of a pixel.
        epipolar_threshold_px: the same floor for "fundamental" pairs. The Sampson distance sees only the
            part of an independent motion that leaves the epipolar line, so this floor is lower to stay
            about as sensitive; the price is a slightly wider mask where flow blurs motion boundaries.
        threshold_growth: the floors grow as k ** threshold_growth with the baseline k: chained flow is
            noisier and blurs motion boundaries more, while independent motion grows about linearly with k.
        adaptive_sigma_factor: the threshold is max(error_threshold_px, factor * sigma) where sigma is the
            robust spread (1.4826 * median) of the chosen model's inlier residuals.
        min_texture: pixels whose texture strength (:func:`texture_strength`, grey levels per pixel along
            the weakest gradient direction) is below this carry no evidence when frames are given: flow in
            blank regions (walls, sky, sensor-flat backgrounds) is a guess that can pass the forward-backward
            check, and its residuals are noise. 0 = off.
        texture_radius_px: half size of the window of the texture measure.
        use_invalid_evidence: where a pixel has no valid (forward-backward consistent) flow in either
            direction, score it from its unreliable flow instead of calling it still.
        open_radius_px: radius of the opening that removes speckles (0 = off).
        close_radius_px: radius of the closing that joins nearby fragments (0 = off).
        min_component_fraction: moving components smaller than this share of the image are dropped.
        fill_holes: fill holes inside moving regions (textureless object interiors have weak evidence).
        seed: seed of the correspondence subsampling (results are deterministic).
        num_threads: robust fits run at once (OpenCV releases the GIL); 0 = os.cpu_count().
    """

    baselines: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    sample_stride: int = 4
    max_samples: int = 2000
    min_samples: int = 30
    robust_method: str = "magsac"
    robust_threshold_px: float = 0.5
    robust_confidence: float = 0.999
    robust_max_iters: int = 2000
    static_flow_px: float = 0.25
    gric_lambda3: float = 2.0
    gric_sigma_floor_px: float = 0.2
    homography_gric_margin: float = 0.0
    error_threshold_px: float = 1.0
    epipolar_threshold_px: float = 0.25
    threshold_growth: float = 0.5
    adaptive_sigma_factor: float = 3.0
    min_texture: float = 0.5
    texture_radius_px: int = 3
    use_invalid_evidence: bool = True
    open_radius_px: int = 1
    close_radius_px: int = 2
    min_component_fraction: float = 0.002
    fill_holes: bool = True
    seed: int = 0
    num_threads: int = 0


@dataclass
class PairGeometry:
    """Camera geometry of one pair of frames (s, s+k), fitted on correspondences x (frame s) -> x' (frame s+k).

    Attributes:
        camera_model: one of CAMERA_MODELS.
        fundamental: [3, 3] F with x'^T F x = 0 (NaN if the fit failed; a 7-point fit with several
            solutions keeps the first).
        homography: [3, 3] H with x' ~ H x (NaN if the fit failed).
        fundamental_inlier_ratio: share of the correspondences that are F inliers.
        homography_inlier_ratio: share that are H inliers.
        threshold_px: residual threshold of this pair (Sampson units, pixels).
        num_samples: correspondences used.
    """

    camera_model: str
    fundamental: np.ndarray
    homography: np.ndarray
    fundamental_inlier_ratio: float
    homography_inlier_ratio: float
    threshold_px: float
    num_samples: int

    @property
    def inlier_ratio(self) -> float:
        """Inlier share of the chosen model (0 for "unknown")."""
        if self.camera_model == "fundamental":
            return self.fundamental_inlier_ratio
        if self.camera_model in ("homography", "static"):
            return self.homography_inlier_ratio
        return 0.0


@dataclass
class MotionResult:
    """Still/moving split of a clip of T frames.

    Attributes:
        moving_masks: [T, H, W] bool, True = independently moving (after clean-up).
        motion_score: [T, H, W] float32, combined residual / threshold before clean-up (> 1 = moving);
            useful as a soft weight.
        camera_model: [T-1] per pair (t, t+1), one of CAMERA_MODELS.
        inlier_ratio: [T-1] float, inlier share of the chosen model.
        fundamental_inlier_ratio, homography_inlier_ratio: [T-1] float, of both fits.
        threshold_px: [T-1] float, residual threshold of each pair.
        fundamental, homography: [T-1, 3, 3] float64 fitted matrices (x' from frame t to t+1).
    """

    moving_masks: np.ndarray
    motion_score: np.ndarray
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


def _homogeneous(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points, np.ones(points.shape[:-1] + (1,), points.dtype)], axis=-1)


def sampson_distance(fundamental: np.ndarray, points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """First-order geometric distance of correspondences to the epipolar constraint x'^T F x = 0.

    points, targets: [..., 2] pixels (u, v) in frames t and t+1. Returns [...] pixels (>= 0).
    """
    x = _homogeneous(points.astype(np.float64))
    x_prime = _homogeneous(targets.astype(np.float64))
    line_in_target = x @ fundamental.T  # F x, the epipolar line of x in frame t+1
    line_in_source = x_prime @ fundamental  # F^T x'
    algebraic = np.sum(x_prime * line_in_target, axis=-1)
    norm = (
        line_in_target[..., 0] ** 2
        + line_in_target[..., 1] ** 2
        + line_in_source[..., 0] ** 2
        + line_in_source[..., 1] ** 2
    )
    return np.abs(algebraic) / np.sqrt(np.maximum(norm, 1e-30))


def homography_distance(homography: np.ndarray, points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Transfer distance |H x - x'| / sqrt(2) in pixels: the both-image first-order distance for a
    near-isometric H, in the same units as :func:`sampson_distance`. points, targets: [..., 2] -> [...]."""
    mapped = _homogeneous(points.astype(np.float64)) @ homography.T
    mapped = mapped[..., :2] / np.where(np.abs(mapped[..., 2:]) < 1e-12, 1e-12, mapped[..., 2:])
    return np.linalg.norm(mapped - targets, axis=-1) / np.sqrt(2.0)


def _gric(residuals: np.ndarray, sigma: float, model_dim: int, num_params: int, lambda3: float) -> float:
    """Torr's Geometric Robust Information Criterion of a model (lower is better).

    residuals: [n] distances in the joint 4D space (two 2D points per correspondence, r = 4); model_dim:
    dimension of the model's manifold (F: 3, H: 2); num_params: its degrees of freedom (F: 7, H: 8).
    """
    n, r = len(residuals), 4
    cost = np.minimum((residuals / sigma) ** 2, lambda3 * (r - model_dim)).sum()
    return float(cost + np.log(r) * model_dim * n + np.log(r * n) * num_params)


def _sample_correspondences(
    flow_forward: np.ndarray,
    valid_forward: np.ndarray,
    flow_backward: np.ndarray,
    valid_backward: np.ndarray,
    config: MotionConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Grid correspondences of a pair (s, e): ([N, 2] points in frame s, [N, 2] targets in frame e), pixels.

    flow_forward [H, W, 2] s -> e on frame s, flow_backward [H, W, 2] e -> s on frame e, with their [H, W]
    validity masks; backward vectors are reversed so both directions vote.
    """
    height, width = flow_forward.shape[:2]
    stride = max(1, config.sample_stride)
    rows, cols = np.mgrid[stride // 2 : height : stride, stride // 2 : width : stride]
    grid = np.stack([cols, rows], axis=-1).astype(np.float64)  # (u, v)
    keep_f = valid_forward[rows, cols]
    keep_b = valid_backward[rows, cols]
    points = np.concatenate([grid[keep_f], grid[keep_b] + flow_backward[rows, cols][keep_b]])
    targets = np.concatenate([grid[keep_f] + flow_forward[rows, cols][keep_f], grid[keep_b]])
    if len(points) > config.max_samples:
        pick = rng.choice(len(points), config.max_samples, replace=False)
        points, targets = points[pick], targets[pick]
    return points, targets


def _robust_sigma(residuals: np.ndarray) -> float:
    return float(_MAD_TO_SIGMA * np.median(residuals)) if len(residuals) else 0.0


def fit_pair_geometry(points: np.ndarray, targets: np.ndarray, config: MotionConfig, baseline: int = 1) -> PairGeometry:
    """Fit F and H to correspondences [N, 2] -> [N, 2] (pixels) of two frames `baseline` frames apart and
    choose the camera model (see module doc)."""
    nan = np.full((3, 3), np.nan)
    n = len(points)
    if n < max(config.min_samples, 8):
        return PairGeometry("unknown", nan, nan, 0.0, 0.0, np.inf, n)
    method = _ROBUST_METHODS.get(config.robust_method)
    if method is None:
        raise PriorError(
            f"unknown robust method {config.robust_method!r}", hint=f"choose one of {', '.join(_ROBUST_METHODS)}"
        )
    src = np.ascontiguousarray(points, np.float64)
    dst = np.ascontiguousarray(targets, np.float64)

    # USAC asserts (cv2.error) instead of returning None on some degenerate inputs, e.g. all-zero flow.
    try:
        homography, _ = cv2.findHomography(
            src,
            dst,
            method,
            config.robust_threshold_px,
            maxIters=config.robust_max_iters,
            confidence=config.robust_confidence,
        )
    except cv2.error:
        homography = None
    try:
        fundamental, _ = cv2.findFundamentalMat(
            src, dst, method, config.robust_threshold_px, config.robust_confidence, config.robust_max_iters
        )
    except cv2.error:
        fundamental = None
    if fundamental is not None and fundamental.shape != (3, 3):
        fundamental = fundamental[:3]  # the 7-point solver can return up to three stacked solutions
    if homography is None and np.median(np.linalg.norm(dst - src, axis=-1)) < config.static_flow_px:
        homography = np.eye(3)  # the robust fit can fail on (near-)zero flow, which identity explains
    has_h, has_f = homography is not None, fundamental is not None
    homography = homography if has_h else nan
    fundamental = fundamental if has_f else nan
    if not has_h and not has_f:
        return PairGeometry("unknown", fundamental, homography, 0.0, 0.0, np.inf, n)

    # Inliers are re-counted with our own residuals so both models share one definition and one threshold.
    res_h = homography_distance(homography, src, dst) if has_h else np.full(n, np.inf)
    res_f = sampson_distance(fundamental, src, dst) if has_f else np.full(n, np.inf)
    inliers_h = res_h < config.robust_threshold_px
    inliers_f = res_f < config.robust_threshold_px
    ratio_h, ratio_f = float(inliers_h.mean()), float(inliers_f.mean())

    if not has_f:
        model = "homography"
    elif not has_h:
        model = "fundamental"
    else:
        sigma = max(config.gric_sigma_floor_px, _robust_sigma(res_f[inliers_f]))
        gric_f = _gric(res_f, sigma, model_dim=3, num_params=7, lambda3=config.gric_lambda3)
        gric_h = _gric(res_h, sigma, model_dim=2, num_params=8, lambda3=config.gric_lambda3)
        model = "homography" if gric_h < gric_f + config.homography_gric_margin * n else "fundamental"
    if model == "homography" and inliers_h.any():
        still_flow = np.linalg.norm(dst[inliers_h] - src[inliers_h], axis=-1)
        if np.median(still_flow) < config.static_flow_px:
            model = "static"
    chosen = res_f[inliers_f] if model == "fundamental" else res_h[inliers_h]
    floor = config.epipolar_threshold_px if model == "fundamental" else config.error_threshold_px
    floor *= baseline**config.threshold_growth
    threshold = max(floor, config.adaptive_sigma_factor * _robust_sigma(chosen))
    return PairGeometry(model, fundamental, homography, ratio_f, ratio_h, threshold, n)


def _pair_residuals(
    geometry: PairGeometry, flow_forward: np.ndarray, flow_backward: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Residual maps of a pair (s, e) under its chosen model: (forward on frame s [H, W], backward on frame e
    [H, W]), pixels. flow_forward/backward as in _sample_correspondences. "unknown" pairs give zeros."""
    height, width = flow_forward.shape[:2]
    if geometry.camera_model == "unknown":
        zeros = np.zeros((height, width))
        return zeros, zeros
    cols, rows = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    grid = np.stack([cols, rows], axis=-1)
    forward_targets = grid + flow_forward
    backward_sources = grid + flow_backward  # pixels of frame e seen from frame s
    if geometry.camera_model == "fundamental":
        return (
            sampson_distance(geometry.fundamental, grid, forward_targets),
            sampson_distance(geometry.fundamental, backward_sources, grid),
        )
    return (
        homography_distance(geometry.homography, grid, forward_targets),
        homography_distance(geometry.homography, backward_sources, grid),
    )


def compose_flow(
    first: np.ndarray, first_valid: np.ndarray, second: np.ndarray, second_valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Chain two flows: a -> b on frame a ([H, W, 2]) then b -> c on frame b -> a -> c on frame a.

    The chained vector is first(x) + second(x + first(x)) (bilinear); it is valid when the first link is
    valid, its target lies inside frame b, and the second link is valid around that target (bilinear weight
    of valid neighbours >= 0.5). Returns ([H, W, 2] float32, [H, W] bool).
    """
    height, width = first.shape[:2]
    cols, rows = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    map_u, map_v = cols + first[..., 0], rows + first[..., 1]
    second_at = cv2.remap(second, map_u, map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    second_valid_at = cv2.remap(
        second_valid.astype(np.float32), map_u, map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0
    )
    inside = (map_u >= -0.5) & (map_u < width - 0.5) & (map_v >= -0.5) & (map_v < height - 0.5)
    return first + second_at, first_valid & inside & (second_valid_at >= 0.5)


def texture_strength(frame: np.ndarray, radius: int) -> np.ndarray:
    """Square root of the smaller eigenvalue of the structure tensor of a [H, W, 3] uint8 RGB frame, averaged
    over a (2 radius + 1)^2 box: grey levels (0-255) per pixel along the weakest gradient direction. [H, W]
    float32; near 0 in blank regions and along straight edges (where flow is ambiguous too)."""
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    # Sobel 3x3 sums 8 weighted differences over 2 pixels: / 8 gives grey levels per pixel.
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    size = (2 * radius + 1, 2 * radius + 1)
    xx, xy, yy = (cv2.boxFilter(g, -1, size) for g in (gx * gx, gx * gy, gy * gy))
    smaller = 0.5 * (xx + yy) - np.sqrt(0.25 * (xx - yy) ** 2 + xy**2)
    return np.sqrt(np.maximum(smaller, 0.0))


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def clean_mask(mask: np.ndarray, config: MotionConfig) -> np.ndarray:
    """Morphological clean-up of one [H, W] bool mask: open, close, drop small components, fill holes."""
    out = mask.astype(np.uint8)
    if config.open_radius_px > 0:
        out = cv2.morphologyEx(out, cv2.MORPH_OPEN, _disk(config.open_radius_px))
    if config.close_radius_px > 0:
        out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, _disk(config.close_radius_px))
    min_area = config.min_component_fraction * mask.size
    if min_area > 0 and out.any():
        count, labels, stats, _ = cv2.connectedComponentsWithStats(out, connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_area
        keep[0] = False  # background label
        out = keep[labels].astype(np.uint8)
    result = out.astype(bool)
    if config.fill_holes:
        result = ndimage.binary_fill_holes(result)
    return result


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
    valid_sum = np.zeros((frames_count, height, width))
    valid_count = np.zeros((frames_count, height, width))
    any_sum = np.zeros((frames_count, height, width))
    any_count = np.zeros((frames_count, height, width))
    consecutive: list[PairGeometry] = []
    # Chains of length k: forward[s] maps frame s -> s+k (on frame s), backward[s] frame s+k -> s (on s+k).
    forward, forward_valid = flow.flow_forward, flow.valid_forward
    backward, backward_valid = flow.flow_backward, flow.valid_backward
    baselines = sorted({1, *(int(k) for k in config.baselines if 1 <= int(k) <= pairs)})
    workers = config.num_threads if config.num_threads > 0 else max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for k in range(1, baselines[-1] + 1):
            if k > 1:
                chained = [
                    compose_flow(
                        forward[s], forward_valid[s], flow.flow_forward[s + k - 1], flow.valid_forward[s + k - 1]
                    )
                    for s in range(frames_count - k)
                ]
                forward, forward_valid = np.stack([c[0] for c in chained]), np.stack([c[1] for c in chained])
                chained = [
                    compose_flow(backward[s + 1], backward_valid[s + 1], flow.flow_backward[s], flow.valid_backward[s])
                    for s in range(frames_count - k)
                ]
                backward, backward_valid = np.stack([c[0] for c in chained]), np.stack([c[1] for c in chained])
            if k not in baselines:
                continue
            # Samples are drawn in order (deterministic), the robust fits run in parallel (OpenCV releases the GIL).
            samples = [
                _sample_correspondences(
                    forward[s],
                    forward_valid[s] & textured[s],
                    backward[s],
                    backward_valid[s] & textured[s + k],
                    config,
                    rng,
                )
                for s in range(frames_count - k)
            ]
            geometries = list(pool.map(lambda sample: fit_pair_geometry(*sample, config, baseline=k), samples))
            if k == 1:
                consecutive = geometries
            for s, geometry in enumerate(geometries):
                residual_forward, residual_backward = _pair_residuals(geometry, forward[s], backward[s])
                for frame, residual, valid in (
                    (s, residual_forward, forward_valid[s]),
                    (s + k, residual_backward, backward_valid[s]),
                ):
                    score = residual / geometry.threshold_px
                    valid = valid & textured[frame]
                    valid_sum[frame] += np.where(valid, score, 0.0)
                    valid_count[frame] += valid
                    any_sum[frame] += np.where(textured[frame], score, 0.0)
                    any_count[frame] += textured[frame]
    with np.errstate(invalid="ignore", divide="ignore"):
        motion_score = valid_sum / valid_count  # NaN where a pixel has no valid evidence
    if config.use_invalid_evidence:
        fallback = any_sum / np.maximum(any_count, 1)
    else:
        fallback = np.zeros_like(motion_score)
    motion_score = np.where(valid_count > 0, motion_score, fallback)
    moving_masks = np.stack([clean_mask(score > 1.0, config) for score in motion_score])

    return MotionResult(
        moving_masks=moving_masks,
        motion_score=motion_score.astype(np.float32),
        camera_model=[g.camera_model for g in consecutive],
        inlier_ratio=np.array([g.inlier_ratio for g in consecutive]),
        fundamental_inlier_ratio=np.array([g.fundamental_inlier_ratio for g in consecutive]),
        homography_inlier_ratio=np.array([g.homography_inlier_ratio for g in consecutive]),
        threshold_px=np.array([g.threshold_px for g in consecutive]),
        fundamental=np.stack([g.fundamental for g in consecutive]),
        homography=np.stack([g.homography for g in consecutive]),
    )
