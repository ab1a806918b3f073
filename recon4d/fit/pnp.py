"""Initial camera of a new frame from 3D-2D matches: deterministic PnP (OpenCV) with outlier rejection.

The sequential pass renders frame t-1's still pixels with their depth, moves them to frame t along the forward
flow, and solves for camera t; the result starts the photometric camera step.
"""
from __future__ import annotations

import cv2
import numpy as np

# Smallest outlier threshold (pixels), the fewest inliers to trust a pose, re-solve rounds, and the most
# matches used (a regular subsample of the usable pixels).
PNP_REPROJECTION_PX = 1.5
PNP_MIN_INLIERS = 30
PNP_ROUNDS = 3
PNP_MAX_POINTS = 4000


def pnp_camera_from_world(points_world: np.ndarray, pixels: np.ndarray, K: np.ndarray,
                          guess: np.ndarray) -> np.ndarray | None:
    """PnP of 3D-2D matches from a pose guess: Levenberg-Marquardt, then re-solved without the matches whose
    reprojection error exceeds a robust threshold. Deterministic (no RANSAC sampling), which keeps a resumed
    fit identical to an uninterrupted one; the matches come from flow on still pixels, so outliers are few.
    Returns camera_from_world [4, 4] or None."""
    if len(points_world) < PNP_MIN_INLIERS:
        return None
    points = points_world.astype(np.float64)
    image = pixels.astype(np.float64)
    K = K.astype(np.float64)
    rvec, _ = cv2.Rodrigues(guess[:3, :3].astype(np.float64))
    tvec = guess[:3, 3:4].astype(np.float64).copy()
    keep = np.ones(len(points), dtype=bool)
    for _ in range(PNP_ROUNDS):
        ok, rvec, tvec = cv2.solvePnP(points[keep], image[keep], K, None, rvec=rvec, tvec=tvec,
                                      useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        if not ok:
            return None
        error = reprojection_px(points, image, K, rvec, tvec)
        threshold = max(PNP_REPROJECTION_PX, 3.0 * float(np.median(error[keep])))
        keep = error < threshold
        if keep.sum() < PNP_MIN_INLIERS:
            return None
    pose = np.eye(4)
    pose[:3, :3] = cv2.Rodrigues(rvec)[0]
    pose[:3, 3] = tvec[:, 0]
    return pose


def reprojection_px(points: np.ndarray, pixels: np.ndarray, K: np.ndarray, rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """[M] distances (pixels) between pixels [M, 2] and points [M, 3] projected by the pose (rvec, tvec)."""
    projected, _ = cv2.projectPoints(points, rvec, tvec, K, None)
    return np.linalg.norm(projected[:, 0] - pixels, axis=1)
