"""Shared result types and protocols of the prior estimators (flow, depth, motion masks).

Pixel convention: the centre of pixel (row i, column j) is at image coordinates (u=j, v=i).
Flow vectors are in pixels: a pixel at (u, v) in frame t moves to (u + flow[..., 0], v + flow[..., 1]) in t+1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass
class FlowResult:
    """Optical flow between consecutive frames of a clip of T frames.

    Attributes:
        flow_forward: [T-1, H, W, 2] float32, frame t -> t+1, pixels.
        flow_backward: [T-1, H, W, 2] float32, frame t+1 -> t, pixels (indexed by t, defined on frame t+1).
        valid_forward: [T-1, H, W] bool, forward flow passes the forward-backward consistency check
            (False = occluded or unreliable), defined on frame t.
        valid_backward: [T-1, H, W] bool, the same for the backward flow, defined on frame t+1.
    """

    flow_forward: np.ndarray
    flow_backward: np.ndarray
    valid_forward: np.ndarray
    valid_backward: np.ndarray


@dataclass
class DepthResult:
    """Per-frame depth of a clip of T frames.

    Attributes:
        depth: [T, H, W] float32, z-depth along the camera axis (not ray length), > 0 everywhere.
        confidence: [T, H, W] float32 in [0, 1].
        metric: True when depth is in metres (or a consistent known unit), False when it is known only up to
            one global scale for the whole clip (per-frame scales are already made consistent).
    """

    depth: np.ndarray
    confidence: np.ndarray
    metric: bool


class FlowEstimator(Protocol):
    """Estimates dense optical flow for consecutive frames."""

    name: str

    def __call__(self, frames: np.ndarray) -> FlowResult:
        """frames: [T, H, W, 3] uint8 RGB, T >= 2."""
        ...

    def settings(self) -> dict[str, Any]:
        """Everything that changes the result (JSON-serialisable): the key of cached priors."""
        ...


class DepthEstimator(Protocol):
    """Estimates per-frame depth."""

    name: str

    def __call__(self, frames: np.ndarray, flow: FlowResult | None, intrinsics: np.ndarray | None,
                 moving_masks: np.ndarray | None = None) -> DepthResult:
        """frames: [T, H, W, 3] uint8 RGB; flow: on the same frames (None where the backend needs none);
        intrinsics: [4] fx, fy, cx, cy in pixels; moving_masks: [T, H, W] bool, pixels of moving objects
        (not to be triangulated as if still), None = nothing known to move."""
        ...

    def settings(self) -> dict[str, Any]:
        """Everything that changes the result (JSON-serialisable): the key of cached priors."""
        ...
