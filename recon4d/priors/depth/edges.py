"""Depth discontinuities: where the flow smears foreground and background, and repairing that band."""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from recon4d.priors.depth.config import VideoDepthConfig


def depth_edges(log_depth: np.ndarray, cfg: VideoDepthConfig, margin_px: int | None = None) -> np.ndarray:
    """[h, w] log depth (NaN = none) -> [h, w] bool band around depth discontinuities (see the config),
    widened by margin_px (default `depth_edge_margin_px`)."""
    has = np.isfinite(log_depth)
    if not has.any():
        return np.zeros(log_depth.shape, dtype=bool)
    _, (near_i, near_j) = ndimage.distance_transform_edt(~has, return_indices=True)
    filled = log_depth[near_i, near_j].astype(np.float32)
    # 3x3 Sobel responds 8x the per-pixel slope.
    gx = cv2.Sobel(filled, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(filled, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    edges = np.hypot(gx, gy) > cfg.depth_edge_log_gradient
    margin = cfg.depth_edge_margin_px if margin_px is None else margin_px
    if margin > 0:
        size = 2 * margin + 1
        edges = cv2.dilate(edges.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool)
    return edges


def repair_depth_edges(log_depth: np.ndarray, confidence: np.ndarray, guide: np.ndarray,
                        cfg: VideoDepthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Undo the flow's smear across depth edges with a colour-guided weighted median (as in stereo refinement).

    Pixels in the band of `depth_edges` take the weighted median of the log depths of reliable pixels (outside
    the band) within `edge_repair_radius_px`, weighted by colour similarity exp(-|dI|^2 / (2 sigma^2)) with
    sigma = `edge_repair_colour_sigma`: a background pixel next to an object looks like the background and so
    takes its depth instead of the blend the flow gave it. Band pixels with no reliable neighbour are dropped.
    log_depth, confidence: [h, w] (NaN / 0 = none); guide: [h, w, 3] in [0, 1]. Returns copies.
    """
    band = depth_edges(log_depth, cfg) & np.isfinite(log_depth)
    if not band.any():
        return log_depth, confidence
    height, width = log_depth.shape
    reliable = np.isfinite(log_depth) & ~band
    radius = cfg.edge_repair_radius_px
    rows, cols = np.nonzero(band)
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
               if dy * dy + dx * dx <= radius * radius]
    dy = np.array([o[0] for o in offsets])[None, :]
    dx = np.array([o[1] for o in offsets])[None, :]
    nr = np.clip(rows[:, None] + dy, 0, height - 1)
    nc = np.clip(cols[:, None] + dx, 0, width - 1)
    values = log_depth[nr, nc]
    colour = np.sum((guide[nr, nc] - guide[rows, cols][:, None, :]) ** 2, axis=-1) / guide.shape[-1]
    weights = np.exp(-colour / (2.0 * cfg.edge_repair_colour_sigma**2)) * reliable[nr, nc]
    values = np.where(weights > 0, values, np.inf)
    order = np.argsort(values, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    cumulative = np.cumsum(np.take_along_axis(weights, order, axis=1), axis=1)
    total = cumulative[:, -1]
    pick = np.argmax(cumulative >= 0.5 * total[:, None], axis=1)
    median = values[np.arange(len(rows)), pick]
    out, out_conf = log_depth.copy(), confidence.copy()
    ok = total > 1e-6
    out[rows[ok], cols[ok]] = median[ok]
    out_conf[rows[ok], cols[ok]] *= cfg.edge_repair_confidence
    out[rows[~ok], cols[~ok]] = np.nan
    out_conf[rows[~ok], cols[~ok]] = 0.0
    return out, out_conf
