"""Per-pixel depth refinement by a small plane sweep against partner frames (multi-view photo-consistency)."""
from __future__ import annotations

import cv2
import numpy as np


def plane_sweep_refine(
    log_depth: np.ndarray,
    image: np.ndarray,
    partners: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    intrinsics: np.ndarray,
    depth_range: float = 0.3,
    steps: int = 15,
    window: int = 5,
    truncation: float = 0.15,
    median_size: int = 5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel depth refinement by a plane sweep around a current estimate (multi-view photo-consistency).

    log_depth: [h, w] current log z-depth of `image`; image: [h, w, 3] float in [0, 1];
    partners: (image [h, w, 3], rotation [3, 3], translation [3]) with x_partner = R x_ref + t in the units of
    the depth; intrinsics [4] px. Depth hypotheses are exp(log_depth + offset) for `steps` offsets evenly in
    [-depth_range, depth_range]; the per-pixel cost of a hypothesis is the box-aggregated truncated RGB
    difference to the best partner.
    Returns the refined log depth [h, w] (sub-step by a parabola through the best cost and its neighbours),
    the distinctness [h, w] = mean cost - best cost, and inside [h, w] bool = the minimum is not at the
    ends of the range. `median_size` (1, 3 or 5) median-filters the refined log depth.
    """
    height, width = log_depth.shape
    fx, fy, cx, cy = intrinsics
    jj, ii = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    rays = np.stack([(jj - cx) / fx, (ii - cy) / fy, np.ones_like(jj)], axis=-1)
    offsets = np.linspace(-depth_range, depth_range, steps)
    # Per partner: R * ray split into channels, so a hypothesis costs a few float32 multiply-adds per pixel.
    rotated = [[np.ascontiguousarray(c) for c in np.moveaxis(np.einsum("ij,hwj->hwi", rotation, rays), -1, 0)
                .astype(np.float32)] for _, rotation, _ in partners]
    to_gray_mean = np.full((1, image.shape[-1]), 1.0 / image.shape[-1], dtype=np.float32)
    base = np.exp(log_depth).astype(np.float32)
    costs = np.empty((steps, height, width), dtype=np.float32)
    for k, offset in enumerate(offsets):
        depth = base * np.float32(np.exp(offset))
        best = np.full((height, width), truncation, dtype=np.float32)
        for (partner, _, translation), (rx, ry, rz) in zip(partners, rotated):
            tx, ty, tz = (np.float32(v) for v in translation)
            z = depth * rz + tz
            in_front = z > 1e-6
            inv_z = 1.0 / np.where(in_front, z, np.float32(1e-6))
            u = (depth * rx + tx) * inv_z * np.float32(fx) + np.float32(cx)
            v = (depth * ry + ty) * inv_z * np.float32(fy) + np.float32(cy)
            warped = cv2.remap(partner, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=(-9, -9, -9))
            diff = cv2.transform(cv2.absdiff(warped, image), to_gray_mean)
            diff = np.minimum(diff.reshape(height, width), truncation)
            diff[~in_front] = truncation
            cost = cv2.boxFilter(diff, -1, (window, window), borderType=cv2.BORDER_REFLECT)
            np.minimum(best, cost, out=best)
        costs[k] = best
    arg = np.argmin(costs, axis=0)
    best_cost = np.take_along_axis(costs, arg[None], axis=0)[0]
    distinct = costs.mean(axis=0) - best_cost
    inside = (arg > 0) & (arg < steps - 1)
    lo = np.take_along_axis(costs, np.clip(arg - 1, 0, steps - 1)[None], axis=0)[0]
    hi = np.take_along_axis(costs, np.clip(arg + 1, 0, steps - 1)[None], axis=0)[0]
    curvature = lo + hi - 2.0 * best_cost
    shift = np.where(inside & (curvature > 1e-9), 0.5 * (lo - hi) / np.maximum(curvature, 1e-9), 0.0)
    step = offsets[1] - offsets[0] if steps > 1 else 0.0
    refined = (log_depth + offsets[arg] + np.clip(shift, -0.5, 0.5) * step).astype(np.float32)
    if median_size > 1:
        # Winner-take-all picks are noisy in weak texture; a small median removes isolated wrong picks.
        refined = cv2.medianBlur(refined, median_size)
    return refined, distinct.astype(np.float32), inside
