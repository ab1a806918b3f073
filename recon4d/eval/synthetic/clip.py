"""A synthetic clip and its exact ground truth, as arrays."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SyntheticClip:
    """A synthetic clip of T frames, H x W pixels, with exact ground truth.

    Attributes:
        frames: [T, H, W, 3] uint8 RGB.
        intrinsics: [4] float64 fx, fy, cx, cy in pixels.
        world_from_camera: [T, 4, 4] float64, OpenCV camera convention.
        depth: [T, H, W] float32 z-depth (along the camera axis, not ray length) of the pixel-centre ray.
        flow_forward: [T-1, H, W, 2] float32 pixels; the surface point seen at pixel (u, v) of frame t
            projects to (u + flow[..., 0], v + flow[..., 1]) in frame t+1 (exact, also where occluded).
        occluded_forward: [T-1, H, W] bool; that point is hidden, behind the camera, or outside the image
            (outside [-0.5, W-0.5] x [-0.5, H-0.5]) in frame t+1.
        moving_mask: [T, H, W] bool; the pixel shows an independently moving object.
        tracks_3d: [T, P, 3] float64 world positions of P surface points picked at pixel centres of frame 0,
            carried along with their object.
        tracks_2d: [T, P, 2] float64 their projections (u, v) in pixels.
        track_visible: [T, P] bool; in front of the camera, inside the image, and not occluded (an exact
            ray cast through the projected position hits the same point).
        variant: name of the variant that made the clip (see ``VARIANTS``).
    """

    frames: np.ndarray
    intrinsics: np.ndarray
    world_from_camera: np.ndarray
    depth: np.ndarray
    flow_forward: np.ndarray
    occluded_forward: np.ndarray
    moving_mask: np.ndarray
    tracks_3d: np.ndarray
    tracks_2d: np.ndarray
    track_visible: np.ndarray
    variant: str
