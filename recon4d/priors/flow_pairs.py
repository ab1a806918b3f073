"""What every flow backend shares: run a two-frame solver forward and backward over each consecutive pair of
frames, then the forward-backward consistency check that gives the validity masks, so ``valid_*`` mean the
same thing whatever the backend.

Pixel convention: the centre of pixel (row i, column j) is at (u=j, v=i); pixel (i, j) covers
[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5], so a flow target is inside the frame when
-0.5 <= u < W - 0.5 and -0.5 <= v < H - 0.5. A pixel at (u, v) of frame t moves to
(u + flow[..., 0], v + flow[..., 1]) in frame t+1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from recon4d.device import cpu_workers, thread_pool
from recon4d.errors import PriorError
from recon4d.priors.types import FlowResult


@dataclass
class ConsistencyConfig:
    """Forward-backward consistency check (Sundaram et al. 2010, as used by UnFlow/GFlow).

    A forward vector f(x) is valid when the backward flow at its target, b(x + f(x)), brings it back:

        |f + b|^2 < alpha * (|f|^2 + |b|^2) + beta     (pixels^2)

    and its target x + f(x) lies inside the frame. The backward flow is checked the same way with the roles
    swapped.

    Attributes:
        alpha: relative tolerance (dimensionless); lets long vectors err by a few per cent of their length.
        beta: absolute tolerance in pixels^2; 0.5 px^2 keeps the ~0.2-0.4 px noise of DIS on textured still
            pixels valid while a pixel that lands on a different surface (|f + b| of several px) fails.
        mark_out_of_frame: mark vectors whose target leaves the frame invalid (there is nothing to match).
    """

    alpha: float = 0.01
    beta: float = 0.5
    mark_out_of_frame: bool = True


def validate_frames(frames: np.ndarray) -> np.ndarray:
    """Check `frames` is [T, H, W, 3] uint8 with T >= 2 and return it C-contiguous; else PriorError."""
    if not isinstance(frames, np.ndarray):
        raise PriorError(f"flow needs a numpy array of frames, got {type(frames).__name__}", hint="pass Clip.frames")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise PriorError(f"flow needs frames of shape [T, H, W, 3], got {list(frames.shape)}", hint="pass RGB frames")
    if frames.dtype != np.uint8:
        raise PriorError(f"flow needs uint8 frames, got {frames.dtype}", hint="convert to uint8 RGB in [0, 255]")
    if frames.shape[0] < 2:
        raise PriorError(f"flow needs at least 2 frames, got {frames.shape[0]}", hint="use a longer clip")
    if frames.shape[1] < 8 or frames.shape[2] < 8:
        raise PriorError(f"frames of {frames.shape[2]}x{frames.shape[1]} are too small for flow", hint="use >= 8x8")
    return np.ascontiguousarray(frames)


def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Column (u) and row (v) coordinates [H, W] float32 of every pixel centre."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return u, v


def warp_backward(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample `image` [H, W, C] or [H, W] at x + flow(x) for every pixel x (bilinear, border replicated).

    flow: [H, W, 2] pixels, defined on the output grid. Returns an array shaped like `image` over that grid.
    """
    u, v = _pixel_grid(*flow.shape[:2])
    return cv2.remap(image, u + flow[..., 0], v + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def consistency_masks(
    flow_forward: np.ndarray, flow_backward: np.ndarray, config: ConsistencyConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Forward-backward consistency of one pair.

    flow_forward: [H, W, 2] t -> t+1 on frame t; flow_backward: [H, W, 2] t+1 -> t on frame t+1 (pixels).
    Returns (valid_forward [H, W] bool on frame t, valid_backward [H, W] bool on frame t+1).
    """
    return _one_way_valid(flow_forward, flow_backward, config), _one_way_valid(flow_backward, flow_forward, config)


def _one_way_valid(flow: np.ndarray, other: np.ndarray, config: ConsistencyConfig) -> np.ndarray:
    height, width = flow.shape[:2]
    other_at_target = warp_backward(other, flow)
    round_trip = np.square(flow + other_at_target).sum(-1)
    bound = config.alpha * (np.square(flow).sum(-1) + np.square(other_at_target).sum(-1)) + config.beta
    valid = round_trip < bound
    if config.mark_out_of_frame:
        u, v = _pixel_grid(height, width)
        target_u, target_v = u + flow[..., 0], v + flow[..., 1]
        valid &= (target_u >= -0.5) & (target_u < width - 0.5) & (target_v >= -0.5) & (target_v < height - 0.5)
    return valid


def pairwise_flow(
    frames: np.ndarray,
    make_solver: Callable[[], Callable[[np.ndarray, np.ndarray], np.ndarray]],
    prepare: Callable[[np.ndarray], np.ndarray],
    consistency: ConsistencyConfig,
    num_threads: int,
) -> FlowResult:
    """Run a two-frame solver forward and backward over every consecutive pair, then the consistency check.

    make_solver() returns a fresh `solve(a, b) -> [H, W, 2] float32` flow a -> b; each worker thread gets its
    own, since OpenCV's flow objects are not thread-safe. prepare(frame) converts an RGB frame to the solver's
    input.
    """
    frames = validate_frames(frames)
    count, height, width = frames.shape[:3]
    prepared = [prepare(frame) for frame in frames]
    flow_forward = np.empty((count - 1, height, width, 2), np.float32)
    flow_backward = np.empty_like(flow_forward)
    valid_forward = np.empty((count - 1, height, width), bool)
    valid_backward = np.empty_like(valid_forward)
    workers = min(cpu_workers(num_threads), count - 1)
    pairs = list(range(count - 1))
    chunks = [pairs[k::workers] for k in range(workers)]

    def run_chunk(chunk: list[int]) -> None:
        solve = make_solver()
        for t in chunk:
            flow_forward[t] = solve(prepared[t], prepared[t + 1])
            flow_backward[t] = solve(prepared[t + 1], prepared[t])
            valid_forward[t], valid_backward[t] = consistency_masks(flow_forward[t], flow_backward[t], consistency)

    if workers == 1:
        run_chunk(pairs)
    else:
        with thread_pool(workers) as pool:
            list(pool.map(run_chunk, chunks))  # list() re-raises a worker's exception here
    return FlowResult(flow_forward, flow_backward, valid_forward, valid_backward)
