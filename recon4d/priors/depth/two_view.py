"""Two-view geometry of pixel correspondences: rays, projection, rotation-only fit, triangulation.

Pixel convention: the centre of pixel (row i, column j) is at (u=j, v=i); intrinsics fx, fy, cx, cy in pixels.
"""
from __future__ import annotations

import numpy as np


def camera_matrix(intrinsics: np.ndarray) -> np.ndarray:
    fx, fy, cx, cy = intrinsics
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def bearings(points: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """points [N, 2] pixels (u, v) -> rays [N, 3] with z = 1 in the camera frame."""
    fx, fy, cx, cy = intrinsics
    return np.stack([(points[:, 0] - cx) / fx, (points[:, 1] - cy) / fy, np.ones(len(points))], axis=1)


def project(points_camera: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """points [N, 3] in a camera frame -> pixels [N, 2]; points at z <= 0 project far away."""
    fx, fy, cx, cy = intrinsics
    z = np.where(points_camera[:, 2] > 1e-12, points_camera[:, 2], 1e-12)
    return np.stack([fx * points_camera[:, 0] / z + cx, fy * points_camera[:, 1] / z + cy], axis=1)


def fit_rotation_only(bearings_ref: np.ndarray, bearings_target: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Rotation R (target_from_ref) that best maps unit rays of the reference onto the target's (Kabsch).

    bearings_*: [N, 3] rays (any length). Trimmed re-fits drop residuals above twice the median, so a
    few outliers (moving pixels the masks missed, bad flow) do not bias the rotation.
    Returns [3, 3] rotation.
    """
    a = bearings_ref / np.linalg.norm(bearings_ref, axis=1, keepdims=True)
    b = bearings_target / np.linalg.norm(bearings_target, axis=1, keepdims=True)
    keep = np.ones(len(a), dtype=bool)
    rotation = np.eye(3)
    for _ in range(max(1, iterations)):
        u, _, vt = np.linalg.svd(np.einsum("ni,nj->ij", b[keep], a[keep]))
        fix = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
        rotation = u @ fix @ vt
        residual = np.linalg.norm(b - np.einsum("ij,nj->ni", rotation, a), axis=1)
        keep = residual <= 2.0 * np.median(residual) + 1e-12
    return rotation


def triangulate_two_view(
    points_ref: np.ndarray,
    points_target: np.ndarray,
    rotation: np.ndarray,
    translation: np.ndarray,
    intrinsics: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Depth of correspondences for a known relative pose x_target = R x_ref + t.

    points_ref, points_target: [N, 2] pixels (u, v); rotation [3, 3]; translation [3]; intrinsics [4].
    The point is put on the reference ray at the depth that best satisfies d_t b_t = d_r R b_r + t in the
    least-squares sense (closed form, no SVD per point).
    Returns depth_ref [N] (z in the reference camera, units of |t|), depth_target [N] (z in the target
    camera), parallax [N] (angle between the two viewing rays, radians) and reprojection_px [N] (distance
    of the point's projection into the target from the observed target pixel).
    """
    ray_ref = bearings(points_ref, intrinsics)
    ray_target = bearings(points_target, intrinsics)
    rotated = np.einsum("ij,nj->ni", rotation, ray_ref)
    t = np.asarray(translation, dtype=np.float64).reshape(3)
    c1 = np.cross(ray_target, rotated)
    c2 = np.cross(ray_target, t[None, :])
    denom = np.einsum("ij,ij->i", c1, c1)
    depth_ref = -np.einsum("ij,ij->i", c1, c2) / np.maximum(denom, 1e-18)
    point_target = depth_ref[:, None] * rotated + t[None, :]
    depth_target = point_target[:, 2]
    cos_angle = np.einsum("ij,ij->i", rotated, ray_target) / (
        np.linalg.norm(rotated, axis=1) * np.linalg.norm(ray_target, axis=1))
    parallax = np.arccos(np.clip(cos_angle, -1.0, 1.0))
    reprojection = np.linalg.norm(project(point_target, intrinsics) - points_target, axis=1)
    return depth_ref, depth_target, parallax, reprojection


def rotation_compensated_parallax(p_ref: np.ndarray, p_target: np.ndarray, intrinsics: np.ndarray,
                                   iterations: int) -> float:
    """Median distance (px) between target pixels and the reference pixels moved by the best pure rotation.

    Small = a rotation (or no motion) explains the flow: the pair has no usable baseline.
    """
    ray_ref = bearings(p_ref, intrinsics)
    ray_target = bearings(p_target, intrinsics)
    rotation = fit_rotation_only(ray_ref, ray_target, iterations)
    predicted = project(np.einsum("ij,nj->ni", rotation, ray_ref), intrinsics)
    return float(np.median(np.linalg.norm(predicted - p_target, axis=1)))
