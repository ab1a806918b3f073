"""Wide-baseline start of the camera step: feature matches (OpenCV SIFT or ORB) and the essential matrix.

Why: the sequential pass starts camera t from PnP on DIS-flow matches (`recon4d.fit.pnp`). Dense flow follows
the small steps of a video but not steps of a fifth of the image or more (a walk-around of an object, photos
taken a few paces apart): there the flow start recovers a fraction of the true motion, and the photometric
camera step cannot cover the rest. Local features are matched by descriptor, not by search around a pixel,
so they follow any step in which the two views still share texture.

The start: keypoints of frame t-1 and frame t, mutual nearest neighbours that pass Lowe's ratio test; the
essential matrix of the matches (MAGSAC++ in OpenCV) gives the rotation and the direction of travel from
camera t-1 to camera t. It needs no depth: the depth prior of a video is often wrong in shape on such steps
(it triangulates flow), and so are the Gaussians placed from it. Depth sets only the length of the step: the
matches are triangulated with a unit baseline, and the median ratio of the rendered depth of the fitted
Gaussians (camera t-1, opaque pixels) to the triangulated depth scales it (`baseline_scale`). With
`matching.depth_refine`, PnP on that depth then refines the pose (`refine_with_depth`): right when the depth is
right in shape; off by default, as on the lego walk-around it made steps worse (README, "Camera accuracy").
When frame t shares too little with t-1, earlier fitted frames are searched for a reference
(`WideBaselineStart`).

Moving things and missing parallax: the essential matrix and the score use only the matches off the moving
masks of both frames, and there is no feature start when fewer than `matching.min_inliers` of them are (a
turning object's keypoints agree on a rigid motion, the object's, not the camera's). A start whose inliers a
rotation alone maps within `matching.min_parallax_px` (median) has no baseline to measure and is dropped, and
with `matching.check_loss` the sequential pass keeps it only where the camera step's loss is lower than at
the flow start (`SequentialFitter.wide_baseline_start`). Before these, on cup (a static camera, a hand
turning a cup) the feature start won 13 of 27 fitted frames with camera losses 5-10x those of the flow
start, and the frames of the turn rendered at 14-19 dB (25-27 dB without feature starts; README, "Long
clips in temporal windows").

The choice (`choose_start`): both starts are scored on the same matches by their epipolar (Sampson) error:
how many matches each relative pose explains within `matching.inlier_px`. The feature start replaces the
flow start only when it explains at least `matching.min_inliers` matches and `matching.prefer_ratio` times
as many as the flow start. On a small step the flow start fits the matches as well (video clips keep their
start); on a wide step its rotation is off and it explains few of them.

Images are grey uint8 [H, W] at the working resolution; when that is small, they are upsampled (cubic) so the
short side is `matching.detect_short_side_px` before detection, and keypoints are returned in working-resolution
pixels (u right, v down, pixel centres at integers). MAGSAC++ uses OpenCV's fixed seed: a resumed fit repeats it.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
import torch

from recon4d.fit.config import MatchingConfig
from recon4d.fit.pnp import reprojection_px

# The fewest matches the essential matrix is tried on (5 points determine it; below this the consensus means
# little), the fewest rendered depths that may set the step's length, and RANSAC's confidence.
ESSENTIAL_MIN_MATCHES = 10
SCALE_MIN_POINTS = 5
RANSAC_CONFIDENCE = 0.999


def grey_uint8(frame: np.ndarray) -> np.ndarray:
    """frame [H, W, 3] float RGB in [0, 1] -> [H, W] uint8 grey."""
    rgb = np.clip(np.round(frame * 255.0), 0, 255).astype(np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def detect_features(grey: np.ndarray, config: MatchingConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """grey [H, W] uint8 -> (keypoints [N, 2] float64 (u, v) in the image's pixels, descriptors [N, D] or None).

    The image is upsampled by an integer factor so its short side reaches `config.detect_short_side_px`."""
    factor = max(1, math.ceil(config.detect_short_side_px / min(grey.shape)))
    image = grey if factor == 1 else cv2.resize(grey, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
    if config.detector == "sift":
        detector = cv2.SIFT_create(nfeatures=config.max_features, contrastThreshold=config.sift_contrast)
    else:
        # Half of OpenCV's default patch (31 px): the default border would drop most of a small frame.
        detector = cv2.ORB_create(nfeatures=config.max_features, edgeThreshold=15, patchSize=15)
    keypoints, descriptors = detector.detectAndCompute(image, None)
    # Pixel centres at integers at both scales: u_working = (u_up + 0.5) / factor - 0.5.
    points = np.array([k.pt for k in keypoints], dtype=np.float64).reshape(-1, 2)
    return (points + 0.5) / factor - 0.5, descriptors


def match_descriptors(descriptors_a: np.ndarray | None, descriptors_b: np.ndarray | None, ratio: float,
                      binary: bool) -> np.ndarray:
    """Mutual nearest neighbours that pass the ratio test in both directions -> index pairs [M, 2] (a, b).

    descriptors_*: [N, D] float32 (SIFT) or uint8 (ORB, `binary`: Hamming distance)."""
    if descriptors_a is None or descriptors_b is None or len(descriptors_a) < 2 or len(descriptors_b) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING if binary else cv2.NORM_L2)

    def best(query: np.ndarray, train: np.ndarray) -> dict[int, int]:
        return {pair[0].queryIdx: pair[0].trainIdx for pair in matcher.knnMatch(query, train, k=2)
                if len(pair) == 2 and pair[0].distance < ratio * pair[1].distance}

    forward, backward = best(descriptors_a, descriptors_b), best(descriptors_b, descriptors_a)
    pairs = [(a, b) for a, b in forward.items() if backward.get(b) == a]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def match_features(features_a: tuple[np.ndarray, np.ndarray | None], features_b: tuple[np.ndarray, np.ndarray | None],
                   config: MatchingConfig) -> tuple[np.ndarray, np.ndarray]:
    """Two frames' `detect_features` -> matched pixels (pixels_a [M, 2], pixels_b [M, 2]) float64 (u, v)."""
    pairs = match_descriptors(features_a[1], features_b[1], config.ratio, binary=config.detector == "orb")
    return features_a[0][pairs[:, 0]], features_b[0][pairs[:, 1]]


def essential_start(pixels_a: np.ndarray, pixels_b: np.ndarray, K: np.ndarray,
                    config: MatchingConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Relative pose of two views from matched pixels [M, 2] (a -> b) and K [3, 3]: MAGSAC++ on the essential
    matrix with threshold `config.inlier_px`, then the cheirality test. Returns (rotation [3, 3], unit direction
    [3], inliers [M] bool) with x_b = rotation x_a + s * direction for points x in camera coordinates, or None."""
    if len(pixels_a) < ESSENTIAL_MIN_MATCHES:
        return None
    a, b = np.ascontiguousarray(pixels_a, np.float64), np.ascontiguousarray(pixels_b, np.float64)
    try:
        E, mask = cv2.findEssentialMat(a, b, K, cv2.USAC_MAGSAC, RANSAC_CONFIDENCE, config.inlier_px,
                                       config.ransac_iterations)
    except cv2.error:  # degenerate samples (e.g. all matches on one line)
        return None
    if E is None or E.shape != (3, 3) or mask is None:
        return None
    count, rotation, direction, mask = cv2.recoverPose(E, a, b, K, mask=mask.copy())
    if count < ESSENTIAL_MIN_MATCHES // 2:
        return None
    return rotation, direction[:, 0] / np.linalg.norm(direction), mask[:, 0] > 0


def triangulated_depth(pixels_a: np.ndarray, pixels_b: np.ndarray, K: np.ndarray, rotation: np.ndarray,
                       direction: np.ndarray) -> np.ndarray:
    """z-depth [M] in camera a of matches [M, 2] triangulated (linear, OpenCV) with camera b at
    [rotation | direction] (a unit baseline); negative or huge where the rays barely cross."""
    P_a = K @ np.hstack([np.eye(3), np.zeros((3, 1))])
    P_b = K @ np.hstack([rotation, direction[:, None]])
    points = cv2.triangulatePoints(P_a, P_b, pixels_a.T.astype(np.float64), pixels_b.T.astype(np.float64))
    return points[2] / np.where(np.abs(points[3]) > 1e-12, points[3], 1e-12)


def baseline_scale(unit_depth: np.ndarray, pixels_a: np.ndarray, depth: np.ndarray, usable: np.ndarray) -> float | None:
    """Length of the step in scene units: median of rendered depth / unit-baseline depth over the matches.

    unit_depth [M] (triangulated with a unit baseline), pixels_a [M, 2] in the rendered view, depth [H, W]
    rendered (scene units), usable [H, W] bool (opaque). None with fewer than SCALE_MIN_POINTS."""
    height, width = depth.shape
    u = np.clip(np.round(pixels_a[:, 0]).astype(np.int64), 0, width - 1)
    v = np.clip(np.round(pixels_a[:, 1]).astype(np.int64), 0, height - 1)
    keep = usable[v, u] & (unit_depth > 0) & (depth[v, u] > 0)
    if keep.sum() < SCALE_MIN_POINTS:
        return None
    return float(np.median(depth[v, u][keep] / unit_depth[keep]))


def epipolar_errors(b_from_a: np.ndarray, pixels_a: np.ndarray, pixels_b: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Sampson distance (pixels) [M] of matches [M, 2] under the relative pose b_from_a [4, 4]; for a pose
    without translation, the transfer error of the rotation's homography (every direction of travel fits)."""
    rotation, translation = b_from_a[:3, :3], b_from_a[:3, 3]
    K_inv = np.linalg.inv(K)
    ones = np.ones((len(pixels_a), 1))
    a, b = np.hstack([pixels_a, ones]), np.hstack([pixels_b, ones])
    length = np.linalg.norm(translation)
    if length < 1e-12:
        mapped = a @ (K @ rotation @ K_inv).T
        return np.linalg.norm(mapped[:, :2] / mapped[:, 2:] - pixels_b, axis=1)
    t = translation / length
    skew = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    F = K_inv.T @ skew @ rotation @ K_inv
    Fa, Fb = a @ F.T, b @ F
    numerator = np.einsum("ni,ni->n", b, Fa) ** 2
    return np.sqrt(numerator / np.maximum(Fa[:, 0] ** 2 + Fa[:, 1] ** 2 + Fb[:, 0] ** 2 + Fb[:, 1] ** 2, 1e-18))


def rotation_residual_px(pixels_a: np.ndarray, pixels_b: np.ndarray, K: np.ndarray, rotation: np.ndarray) -> float:
    """Median distance (pixels) between pixels_b [M, 2] and pixels_a [M, 2] moved by the camera `rotation`
    [3, 3] alone (the homography K R K^-1): the parallax a translation has to explain."""
    if pixels_a.shape[0] == 0:
        return 0.0
    homography = K @ rotation @ np.linalg.inv(K)
    mapped = np.concatenate([pixels_a, np.ones((pixels_a.shape[0], 1))], 1) @ homography.T
    mapped = mapped[:, :2] / np.where(np.abs(mapped[:, 2:]) > 1e-12, mapped[:, 2:], 1e-12)
    return float(np.median(np.linalg.norm(mapped - pixels_b, axis=1)))


def relative_start(pixels_a: np.ndarray, pixels_b: np.ndarray, depth: np.ndarray, usable: np.ndarray, K: np.ndarray,
                   config: MatchingConfig) -> tuple[np.ndarray | None, int]:
    """Pose of view b relative to a rendered view a from matched pixels [M, 2] (module docstring): the essential
    matrix, and the step's length from a's rendered depth [H, W] (scene units) where `usable` [H, W] (opaque).
    K [3, 3]. Returns (b_from_a [4, 4] or None, matches the essential matrix explains)."""
    found = essential_start(pixels_a, pixels_b, K, config)
    if found is None:
        return None, 0
    rotation, direction, inliers = found
    if rotation_residual_px(pixels_a[inliers], pixels_b[inliers], K, rotation) < config.min_parallax_px:
        return None, int(inliers.sum())  # a rotation alone explains the matches: no baseline to measure
    unit_depth = triangulated_depth(pixels_a[inliers], pixels_b[inliers], K, rotation, direction)
    scale = baseline_scale(unit_depth, pixels_a[inliers], depth, usable)
    if scale is None:
        return None, int(inliers.sum())
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rotation, scale * direction
    if config.depth_refine:
        pose = refine_with_depth(pixels_a[inliers], pixels_b[inliers], depth, usable, K, pose, config)
    return pose, int(inliers.sum())


def refine_with_depth(pixels_a: np.ndarray, pixels_b: np.ndarray, depth: np.ndarray, usable: np.ndarray,
                      K: np.ndarray, guess: np.ndarray, config: MatchingConfig) -> np.ndarray:
    """b_from_a [4, 4] refined by PnP on the matches [M, 2] lifted to 3D by a's rendered depth [H, W] (where
    `usable`): RANSAC (threshold 2 x `inlier_px`) from `guess` [4, 4], then Levenberg-Marquardt on the inliers.
    The essential matrix leaves a rotation and a sideways step that look alike on a narrow view; depth tells
    them apart. Returns `guess` when fewer than `min_inliers` matches agree, or when the refined pose projects
    the lifted matches with a larger median error than `guess` does."""
    height, width = depth.shape
    u = np.clip(np.round(pixels_a[:, 0]).astype(np.int64), 0, width - 1)
    v = np.clip(np.round(pixels_a[:, 1]).astype(np.int64), 0, height - 1)
    keep = np.nonzero(usable[v, u] & (depth[v, u] > 0))[0]
    if len(keep) < config.min_inliers:
        return guess
    z = depth[v[keep], u[keep]]
    points = np.stack([(pixels_a[keep, 0] - K[0, 2]) / K[0, 0] * z, (pixels_a[keep, 1] - K[1, 2]) / K[1, 1] * z, z], 1)
    image = np.ascontiguousarray(pixels_b[keep], np.float64)
    rvec, tvec = cv2.Rodrigues(guess[:3, :3])[0], guess[:3, 3:4].copy()
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(points, image, K, None, rvec, tvec, useExtrinsicGuess=True,
                                                 iterationsCount=config.ransac_iterations,
                                                 reprojectionError=2 * config.inlier_px, confidence=RANSAC_CONFIDENCE,
                                                 flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok or inliers is None or len(inliers) < config.min_inliers:
        return guess
    rvec, tvec = cv2.solvePnPRefineLM(points[inliers[:, 0]], image[inliers[:, 0]], K, None, rvec, tvec)
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = cv2.Rodrigues(rvec)[0], tvec[:, 0]
    # With few matches RANSAC can settle on a pose that fits the lifted matches worse than its start (the wide
    # step of tests/test_fit_matching.py: 36 matches, median 1.10 px against the start's 0.82 px, 2.8 degrees off
    # instead of 0.4): keep the start.
    if median_reprojection_px(points, image, K, pose) > median_reprojection_px(points, image, K, guess):
        return guess
    return pose


def median_reprojection_px(points: np.ndarray, pixels: np.ndarray, K: np.ndarray, b_from_a: np.ndarray) -> float:
    """Median distance (pixels) between pixels [M, 2] and points [M, 3] (in a's camera) projected by b_from_a."""
    return float(np.median(reprojection_px(points, pixels, K, cv2.Rodrigues(b_from_a[:3, :3])[0], b_from_a[:3, 3].copy())))


def choose_start(flow_relative: np.ndarray, feature_relative: np.ndarray | None, pixels_a: np.ndarray,
                 pixels_b: np.ndarray, K: np.ndarray, config: MatchingConfig) -> tuple[bool, int, int]:
    """Whether the feature start replaces the flow start (module docstring).

    *_relative: b_from_a [4, 4] of each start; pixels_* [M, 2] the feature matches. Returns (use the feature
    start, matches the flow start explains, matches the feature start explains)."""
    def explained(relative: np.ndarray) -> int:
        return int((epipolar_errors(relative, pixels_a, pixels_b, K) < config.inlier_px).sum())

    flow_inliers = explained(flow_relative)
    if feature_relative is None:
        return False, flow_inliers, 0
    feature_inliers = explained(feature_relative)
    better = feature_inliers >= max(config.min_inliers, config.prefer_ratio * flow_inliers)
    return bool(better), flow_inliers, feature_inliers


def numpy64(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().double().numpy()


class WideBaselineStart:
    """The sequential pass's feature start: keypoints of each frame, detected once, and the search for the
    reference frame (module docstring).

    Frame t is matched to frame t-1 first. When neither start explains `matching.min_inliers` of those matches
    (the step left t-1's view), the earlier fitted frames, up to `matching.search_frames` back, are matched
    too, and the one whose essential matrix explains the most matches, at least `matching.search_min_inliers`,
    is the reference: its camera and render stand in for t-1's (a path that comes back near an earlier view).
    The bar is higher than for t-1: among many frames, one may reach a small consensus by chance.

    frames [T, H, W, 3] RGB in [0, 1]; K [3, 3]; moving [T, H, W] bool moving masks (None: none)."""

    def __init__(self, frames: torch.Tensor, K: torch.Tensor, config: MatchingConfig,
                 moving: torch.Tensor | None = None) -> None:
        self.frames, self.K, self.config, self.moving = frames, numpy64(K), config, moving
        self._features: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def features(self, k: int) -> tuple[np.ndarray, np.ndarray | None]:
        if k not in self._features:
            self._features[k] = detect_features(grey_uint8(numpy64(self.frames[k])), self.config)
        return self._features[k]

    def __call__(self, t: int, cameras: list[torch.Tensor], render_at: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                 flow_start: torch.Tensor) -> tuple[torch.Tensor | None, int]:
        """Camera t (camera_from_world [4, 4], the flow start's dtype and device) when the feature start wins
        against `flow_start` [4, 4], else None; and the reference frame.

        cameras: camera_from_world [4, 4] of fitted frames 0..t-1; render_at(k) -> (depth [H, W], usable [H, W]
        bool) of frame k's render from its camera."""
        config = self.config
        reference = t - 1
        # Only the last search_frames frames can be matched again: keep the features of those alone (SIFT
        # descriptors of every fitted frame of a long clip would hold about 1 MB each).
        for old in [k for k in self._features if k < t - config.search_frames]:
            del self._features[old]
        pixels_a, pixels_b = match_features(self.features(reference), self.features(t), config)
        start = self._start(t, reference, pixels_a, pixels_b, cameras, render_at, flow_start)
        if start[0] is not None or max(start[1:]) >= config.min_inliers:
            return start[0], reference
        best = (0, reference, pixels_a, pixels_b)
        for k in range(t - 2, max(-1, t - 1 - config.search_frames), -1):
            pixels_a, pixels_b = match_features(self.features(k), self.features(t), config)
            found = essential_start(pixels_a, pixels_b, self.K, config)
            if found is not None and int(found[2].sum()) >= max(best[0] + 1, config.search_min_inliers):
                best = (int(found[2].sum()), k, pixels_a, pixels_b)
        if best[1] == t - 1:
            return None, t - 1
        return self._start(t, best[1], best[2], best[3], cameras, render_at, flow_start)[0], best[1]

    def off_moving_masks(self, a: int, pixels_a: np.ndarray, b: int, pixels_b: np.ndarray) -> np.ndarray:
        """[M] bool: the matches (pixels_* [M, 2] in frames a and b) off both frames' moving masks."""
        if self.moving is None or pixels_a.shape[0] == 0:
            return np.ones(pixels_a.shape[0], dtype=bool)
        height, width = self.moving.shape[1:]

        def masked(k: int, pixels: np.ndarray) -> np.ndarray:
            u = np.clip(np.rint(pixels[:, 0]).astype(np.int64), 0, width - 1)
            v = np.clip(np.rint(pixels[:, 1]).astype(np.int64), 0, height - 1)
            return self.moving[k].cpu().numpy()[v, u]

        return ~(masked(a, pixels_a) | masked(b, pixels_b))

    def _start(self, t: int, k: int, pixels_a: np.ndarray, pixels_b: np.ndarray, cameras: list[torch.Tensor],
               render_at: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
               flow_start: torch.Tensor) -> tuple[torch.Tensor | None, int, int]:
        """Feature start of frame t from reference k (when it wins), matches the flow and feature starts explain."""
        depth, usable = render_at(k)
        reference = numpy64(cameras[k])
        still = self.off_moving_masks(k, pixels_a, t, pixels_b)
        if int(still.sum()) < self.config.min_inliers:
            return None, 0, 0
        pixels_a, pixels_b = pixels_a[still], pixels_b[still]
        relative, _ = relative_start(pixels_a, pixels_b, numpy64(depth), usable.cpu().numpy(), self.K, self.config)
        flow_relative = numpy64(flow_start) @ np.linalg.inv(reference)
        use, flow_inliers, feature_inliers = choose_start(flow_relative, relative, pixels_a, pixels_b, self.K, self.config)
        pose = torch.tensor(relative @ reference, dtype=flow_start.dtype, device=flow_start.device) if use else None
        return pose, flow_inliers, feature_inliers
