"""What a depth backend is given: checks of the frames, intrinsics, flow and moving masks (one-line PriorError
on a mismatch), and their resampling to the working resolution."""
from __future__ import annotations

import cv2
import numpy as np

from recon4d.errors import PriorError
from recon4d.priors.types import FlowResult


def check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        shape = getattr(frames, "shape", None)
        raise PriorError(f"depth prior expects frames [T, H, W, 3], got shape {shape}",
                         "pass the decoded clip's RGB frames")


def check_intrinsics(intrinsics: np.ndarray | None) -> np.ndarray:
    k = np.asarray(intrinsics, dtype=np.float64).reshape(-1) if intrinsics is not None else np.zeros(0)
    if k.size != 4 or not np.all(np.isfinite(k)) or k[0] <= 0 or k[1] <= 0:
        raise PriorError(f"depth prior expects intrinsics [fx, fy, cx, cy] with fx, fy > 0, got {intrinsics}",
                         "estimate or pass the camera intrinsics in pixels")
    return k


def check_flow(flow: FlowResult, num_frames: int, height: int, width: int) -> None:
    expected = (num_frames - 1, height, width)
    for name in ("flow_forward", "flow_backward"):
        arr = getattr(flow, name)
        if arr.shape != expected + (2,):
            raise PriorError(f"{name} has shape {arr.shape}, expected {expected + (2,)}",
                             "compute the flow on the same frames as the depth")
    for name in ("valid_forward", "valid_backward"):
        arr = getattr(flow, name)
        if arr.shape != expected:
            raise PriorError(f"{name} has shape {arr.shape}, expected {expected}",
                             "compute the flow on the same frames as the depth")


def check_moving(moving_masks: np.ndarray | None, num_frames: int, height: int, width: int) -> np.ndarray:
    if moving_masks is None:
        return np.zeros((num_frames, height, width), dtype=bool)
    masks = np.asarray(moving_masks)
    if masks.shape != (num_frames, height, width):
        raise PriorError(f"moving_masks has shape {masks.shape}, expected {(num_frames, height, width)}",
                         "compute the moving masks on the same frames as the depth")
    return masks.astype(bool)


def resize(image: np.ndarray, width: int, height: int, interpolation: int) -> np.ndarray:
    return cv2.resize(image, (width, height), interpolation=interpolation)


class WorkingFrames:
    """The frames [T, H, W, 3] uint8 as float32 [h, w, 3] in [0, 1] at the working resolution, one frame at a
    time on demand (`guides[t]`), as read by the merge's edge repair and by the fill. A float copy of the whole
    clip was the largest thing the depth prior held: 228 MB for 450 frames of 180 x 235.

        >>> guides = WorkingFrames(np.full((2, 4, 6, 3), 255, np.uint8), 3, 2)
        >>> guides.shape, float(guides[1].max())
        ((2, 2, 3, 3), 1.0)
    """

    def __init__(self, frames: np.ndarray, width: int, height: int) -> None:
        self.frames, self.width, self.height = frames, width, height
        self.shape = (frames.shape[0], height, width, frames.shape[3])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, t: int) -> np.ndarray:
        guide = resize(self.frames[t], self.width, self.height, cv2.INTER_AREA).astype(np.float32)
        guide /= 255.0
        return guide


def downscale_inputs(flow: FlowResult, moving: np.ndarray, intrinsics: np.ndarray, width: int, height: int,
                      small_w: int, small_h: int) -> tuple[FlowResult, np.ndarray, np.ndarray]:
    """Flow, moving masks and intrinsics at the working resolution (flow vectors rescaled)."""
    sx, sy = small_w / width, small_h / height

    def flows(arr: np.ndarray) -> np.ndarray:
        out = np.stack([resize(np.ascontiguousarray(f, dtype=np.float32), small_w, small_h, cv2.INTER_LINEAR)
                        for f in arr])
        out[..., 0] *= sx
        out[..., 1] *= sy
        return out

    def masks(arr: np.ndarray, all_true: bool) -> np.ndarray:
        # A small pixel is valid only if all its source pixels are; moving if any of them is.
        out = np.stack([resize(m.astype(np.float32), small_w, small_h, cv2.INTER_AREA) for m in arr])
        return out > 0.999 if all_true else out > 0.0

    small_flow = FlowResult(flows(flow.flow_forward), flows(flow.flow_backward),
                            masks(flow.valid_forward, True), masks(flow.valid_backward, True))
    # Pixel (u=j) of the small image covers source columns j/sx .. (j+1)/sx: centre at (j + 0.5)/sx - 0.5.
    fx, fy, cx, cy = intrinsics
    small_k = np.array([fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5])
    return small_flow, masks(moving, False), small_k
