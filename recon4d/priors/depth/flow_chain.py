"""Following optical flow over several frames: where each pixel of a frame lands k frames later."""
from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np

from recon4d.priors.types import FlowResult


def remap(image: np.ndarray, positions: np.ndarray, nearest: bool = False, border: float = 0.0) -> np.ndarray:
    """Sample image [H, W, ...] at positions [H, W, 2] (u, v) pixels."""
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.remap(image, positions[..., 0], positions[..., 1], interp,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def inside_frame(positions: np.ndarray, height: int, width: int) -> np.ndarray:
    u, v = positions[..., 0], positions[..., 1]
    return (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1)


def chain_flow(flow: FlowResult, ref: int, direction: int, max_gap: int, grid: np.ndarray) -> Iterator[
        tuple[int, np.ndarray, np.ndarray]]:
    """Follow the flow from frame `ref` towards ref + direction * k for k = 1 .. max_gap.

    Yields (target frame, positions [H, W, 2] float32 in the target frame, valid [H, W] bool). A pixel
    stays valid while every step's flow passes the forward-backward check and stays inside the frame.
    """
    num_frames = flow.flow_forward.shape[0] + 1
    height, width = grid.shape[:2]
    positions = grid.copy()
    valid = np.ones((height, width), dtype=bool)
    frame = ref
    for _ in range(max_gap):
        nxt = frame + direction
        if nxt < 0 or nxt >= num_frames:
            return
        if direction > 0:
            step, step_valid = flow.flow_forward[frame], flow.valid_forward[frame]
        else:
            step, step_valid = flow.flow_backward[nxt], flow.valid_backward[nxt]
        step = np.ascontiguousarray(step, dtype=np.float32)
        valid &= remap(step_valid.astype(np.uint8), positions, nearest=True) > 0
        positions = positions + remap(step, positions)
        valid &= inside_frame(positions, height, width)
        frame = nxt
        yield frame, positions, valid
