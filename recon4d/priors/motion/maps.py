"""Per-pixel maps of the still/moving split: chained flow, texture strength, mask clean-up."""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from recon4d.priors.motion.config import MotionConfig


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


def sample_at(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Bilinear samples of an [H, W] float image at x + flow(x) for every pixel x; [H, W, 2] flow (u, v) in
    pixels. Outside the image the nearest border value is used. Returns [H, W] float32."""
    height, width = flow.shape[:2]
    cols, rows = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(
        image.astype(np.float32), cols + flow[..., 0], rows + flow[..., 1], cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


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


def disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def clean_mask(mask: np.ndarray, config: MotionConfig) -> np.ndarray:
    """Morphological clean-up of one [H, W] bool mask: open, close, drop small components, fill holes."""
    out = mask.astype(np.uint8)
    if config.open_radius_px > 0:
        out = cv2.morphologyEx(out, cv2.MORPH_OPEN, disk(config.open_radius_px))
    if config.close_radius_px > 0:
        out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, disk(config.close_radius_px))
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

