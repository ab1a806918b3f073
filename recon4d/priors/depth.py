"""Per-frame depth priors: classical multi-view depth from the video itself, user files, Depth Anything V2.

Backends (all follow the `DepthEstimator` protocol of `recon4d.priors.types`):

- `VideoDepth` (default, needs no weights): two-view geometry on the optical flow. For every frame it picks a
  partner frame on each side with enough parallax (flow chained over up to `max_frame_gap` frames), estimates
  the relative pose from still pixels (essential matrix + chirality check; pairs a pure rotation explains are
  skipped), triangulates every still pixel, brings all pairs to one clip-wide scale, merges them with a
  robust median, repairs the flow's smear at depth edges (colour-guided weighted median), fills the rest
  with an edge-aware weighted-least-squares solve in log depth, the frame as guide (optionally sharpened by a
  small plane sweep against the partner frames, off by default).
- `FileDepth`: depth maps the user already has (a folder of .npy / 16-bit .png / .tif / .exr, or one
  [T, H, W] .npy / .npz).
- `DepthAnythingV2`: the learned monocular model through `transformers`, from a local folder only.

Pixel convention (as in `types.py`): the centre of pixel (row i, column j) is at (u=j, v=i); intrinsics
fx, fy, cx, cy are in pixels of the frames passed in. Depth is z-depth along the camera axis.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import scipy.sparse as sp
from scipy import ndimage

from recon4d.errors import PriorError
from recon4d.priors.types import DepthEstimator, DepthResult, FlowResult

__all__ = [
    "VideoDepthConfig",
    "VideoDepth",
    "SparseDepth",
    "FileDepthConfig",
    "FileDepth",
    "DepthAnythingV2Config",
    "DepthAnythingV2",
    "DEPTH_BACKENDS",
    "make_depth_estimator",
    "triangulate_two_view",
    "fit_rotation_only",
    "fill_depth_edge_aware",
]

DEPTH_ANYTHING_HINT = (
    "pip install transformers; download depth-anything/Depth-Anything-V2-Small-hf to a folder "
    "and pass --depth depth-anything-v2 --depth-path PATH"
)
# Bumped whenever an estimator's algorithm changes its output, so cached priors are recomputed.
DEPTH_ALGORITHM_VERSION = 2


# --------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------


@dataclass
class VideoDepthConfig:
    """Every threshold of `VideoDepth`. Pixel quantities are in pixels of the working resolution."""

    # Frames larger than this (longest side, pixels) are processed downscaled and the depth upsampled:
    # the two-view geometry gains little from more pixels and the fill solve grows with the pixel count.
    max_working_side: int = 512
    # Partner frames t±k are searched for k = 1 .. max_frame_gap (flow chained k times).
    max_frame_gap: int = 6
    # Stop growing k once the median rotation-compensated parallax of a pair reaches this many pixels.
    target_parallax_px: float = 4.0
    # A pair whose median rotation-compensated parallax stays below this is treated as rotation-only or
    # static: a pure rotation explains its flow, so it carries no depth and is not triangulated.
    min_pair_parallax_px: float = 0.75
    # Stop chaining when fewer than this fraction of the pixels keep a valid, still correspondence.
    min_valid_fraction: float = 0.15
    # Correspondences used to fit the rotation-only model and the essential matrix (random subset).
    fit_points: int = 3000
    # Trimmed re-fits of the rotation-only model (each keeps the residuals below 2x the median).
    rotation_fit_iterations: int = 3
    # Robust estimator of the essential matrix: "magsac" (cv2.USAC_MAGSAC) or "ransac" (cv2.RANSAC).
    essential_method: str = "magsac"
    # Inlier threshold of the essential-matrix fit (pixels, distance to the epipolar line).
    essential_threshold_px: float = 1.0
    essential_confidence: float = 0.999
    # Pairs whose essential matrix explains fewer fit points than this are dropped as unreliable.
    min_inlier_ratio: float = 0.5
    # Inliers used by cv2.recoverPose to pick the one of four poses with the points in front of both cameras.
    chirality_points: int = 500
    # Per-point parallax (angle between the two viewing rays times the focal length, pixels): points
    # below it are too ill-conditioned to triangulate (depth error ~ flow noise / parallax).
    min_point_parallax_px: float = 1.0
    # Points whose triangulation reprojects further than this from the observed target pixel are dropped.
    max_reprojection_px: float = 1.5
    # Two depth maps on one frame are scale-linked only if they overlap on at least this many pixels.
    min_link_points: int = 50
    # Flow smears across depth discontinuities (a band of a few pixels around every occluding edge takes
    # a blend of foreground and background motion), so triangulated depth there is wrong. Pixels where the
    # merged log depth changes faster than depth_edge_log_gradient per pixel, widened by
    # depth_edge_margin_px, are dropped and filled from both sides along the image edges instead.
    depth_edge_log_gradient: float = 0.1
    depth_edge_margin_px: int = 2
    # The band is repaired by a colour-guided weighted median of the reliable depths around it (see
    # `_repair_depth_edges`): window radius (pixels), colour sigma (RGB in [0, 1], root-mean-square over
    # channels) and the factor applied to the confidence of repaired pixels.
    edge_repair_radius_px: int = 6
    edge_repair_colour_sigma: float = 0.06
    edge_repair_confidence: float = 0.5
    # Plane-sweep refinement (after the first fill): each frame's depth is re-estimated per pixel by testing
    # depths exp(offset) * current for sweep_steps offsets in [-sweep_range, +sweep_range] (log depth) against
    # the partner frames' colours, with the cost (mean absolute RGB difference, truncated at
    # sweep_truncation) aggregated over a sweep_window x sweep_window box and the best partner per pixel
    # (so a pixel hidden in one partner is judged by the other). Matching small windows on the images
    # localises depth edges far better than the smoothed flow. A pixel takes the swept depth when its cost
    # curve has a clear minimum inside the range: (mean cost - best cost) >= sweep_min_distinctness.
    # sweep_passes > 1 repeats with half the range each time. 0 passes (the default) turns it off: measured
    # on the synthetic clips at 320x180 and on Middlebury it changed AbsRel by <= 0.001 in edges-only mode
    # for +35% time; on all pixels it sharpened synthetic edges a little but speckled real footage.
    # With sweep_edges_only the swept depth is used only within sweep_edge_margin_px of depth edges (where the
    # flow smears); elsewhere the flow's depth is smoother: on real footage with fine, noisy texture
    # (compressed video of a carpet) small-window matching picks speckled depths.
    sweep_edges_only: bool = True
    sweep_edge_margin_px: int = 4
    sweep_passes: int = 0
    sweep_range: float = 0.3
    sweep_steps: int = 15
    sweep_window: int = 3
    sweep_truncation: float = 0.15
    sweep_min_distinctness: float = 0.01
    sweep_median: int = 5
    # Depth agreement of several pairs on a pixel: confidence falls as exp(-(spread / sigma)^2), spread
    # being the median absolute deviation of log depth.
    agreement_sigma: float = 0.08
    # Agreement factor given to pixels seen by a single pair (nothing to agree with).
    single_map_agreement: float = 0.6
    # Parallax factor of the confidence: 1 - exp(-parallax_px / parallax_quality_px).
    parallax_quality_px: float = 3.0
    # Edge-aware fill: weight of the smoothness term against the data term (data weights are in [0, 1]).
    smoothness: float = 2.0
    # Colour difference (RGB in [0, 1], root-mean-square over channels) at which a neighbour link weakens
    # by exp(-1/2): depth edges are expected where the image has edges.
    guide_sigma: float = 0.04
    # Smallest neighbour weight, so every region stays connected to some data.
    edge_weight_floor: float = 1e-3
    cg_iterations: int = 300
    cg_tolerance: float = 1e-5
    # Confidence of filled (not triangulated) pixels: fill_confidence * exp(-distance / fill_decay_px).
    fill_confidence: float = 0.3
    fill_decay_px: float = 8.0
    # Upper bound of the confidence of pixels on moving objects (their depth is only a guess).
    moving_confidence: float = 0.1
    # Moving regions get the depth of the near end of the still depths around them: a moving thing occludes
    # what is behind it and usually stands on what is below it (ground contact), so the nearer part of its
    # surroundings is a better guess than their average. The ring is moving_ring_fraction of the longer image
    # side wide (at least 2 pixels); the value is the moving_ring_percentile-th percentile of its
    # triangulated depths, used as fill data of weight moving_prior_weight inside the region (the fill does
    # not mix moving and still pixels). Regions with fewer than moving_ring_min_points ring samples are just
    # filled from their surroundings.
    moving_ring_fraction: float = 0.08
    moving_ring_percentile: float = 2.0
    moving_prior_weight: float = 0.3
    moving_ring_min_points: int = 10
    # Frames without any triangulated pixel take depth from the nearest frame through the chained flow,
    # with the confidence scaled by this factor.
    propagated_confidence_factor: float = 0.5
    # Constant-depth fallback (no parallax anywhere in the clip): this confidence everywhere.
    fallback_confidence: float = 0.05
    seed: int = 0


@dataclass
class FileDepthConfig:
    """Options of `FileDepth`."""

    # Integer images (16-bit or 8-bit png/tif) hold depth * (1 / png_scale): depth = value * png_scale.
    # The default reads millimetres as metres.
    png_scale: float = 0.001
    # Whether the files hold depth in a known unit (metres); False = relative depth, one scale per clip.
    metric: bool = False
    # The file aspect ratio may differ from the clip's by this relative amount before it is an error.
    max_aspect_change: float = 0.02


@dataclass
class DepthAnythingV2Config:
    """Options of `DepthAnythingV2`."""

    device: str = "auto"  # "auto" = CUDA when available, else CPU
    batch_size: int = 4
    # Without a triangulated sparse depth to fit to, the relative inverse depth r is normalised to [0, 1]
    # between its 2nd and 98th percentile over the clip and depth = 1 / (r + default_inverse_shift),
    # i.e. the clip is assumed to span about 1 : (1 + 1/shift) in depth (21:1 for 0.05).
    default_inverse_shift: float = 0.05
    # Confidence of the learned depth (constant; the model gives no uncertainty).
    confidence: float = 0.5
    # The affine fit in inverse-depth space needs at least this many triangulated pixels.
    min_fit_points: int = 200
    video: VideoDepthConfig = field(default_factory=VideoDepthConfig)


# --------------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------------


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        shape = getattr(frames, "shape", None)
        raise PriorError(f"depth prior expects frames [T, H, W, 3], got shape {shape}",
                         "pass the decoded clip's RGB frames")


def _check_intrinsics(intrinsics: np.ndarray | None) -> np.ndarray:
    k = np.asarray(intrinsics, dtype=np.float64).reshape(-1) if intrinsics is not None else np.zeros(0)
    if k.size != 4 or not np.all(np.isfinite(k)) or k[0] <= 0 or k[1] <= 0:
        raise PriorError(f"depth prior expects intrinsics [fx, fy, cx, cy] with fx, fy > 0, got {intrinsics}",
                         "estimate or pass the camera intrinsics in pixels")
    return k


def _check_flow(flow: FlowResult, num_frames: int, height: int, width: int) -> None:
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


def _check_moving(moving_masks: np.ndarray | None, num_frames: int, height: int, width: int) -> np.ndarray:
    if moving_masks is None:
        return np.zeros((num_frames, height, width), dtype=bool)
    masks = np.asarray(moving_masks)
    if masks.shape != (num_frames, height, width):
        raise PriorError(f"moving_masks has shape {masks.shape}, expected {(num_frames, height, width)}",
                         "compute the moving masks on the same frames as the depth")
    return masks.astype(bool)


# --------------------------------------------------------------------------------------------------------
# Geometry helpers (pure functions)
# --------------------------------------------------------------------------------------------------------


def _camera_matrix(intrinsics: np.ndarray) -> np.ndarray:
    fx, fy, cx, cy = intrinsics
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _bearings(points: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """points [N, 2] pixels (u, v) -> rays [N, 3] with z = 1 in the camera frame."""
    fx, fy, cx, cy = intrinsics
    return np.stack([(points[:, 0] - cx) / fx, (points[:, 1] - cy) / fy, np.ones(len(points))], axis=1)


def _project(points_camera: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
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
    ray_ref = _bearings(points_ref, intrinsics)
    ray_target = _bearings(points_target, intrinsics)
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
    reprojection = np.linalg.norm(_project(point_target, intrinsics) - points_target, axis=1)
    return depth_ref, depth_target, parallax, reprojection


def _remap(image: np.ndarray, positions: np.ndarray, nearest: bool = False, border: float = 0.0) -> np.ndarray:
    """Sample image [H, W, ...] at positions [H, W, 2] (u, v) pixels."""
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.remap(image, positions[..., 0], positions[..., 1], interp,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def _inside(positions: np.ndarray, height: int, width: int) -> np.ndarray:
    u, v = positions[..., 0], positions[..., 1]
    return (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1)


def _chain(flow: FlowResult, ref: int, direction: int, max_gap: int, grid: np.ndarray) -> Iterator[
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
        valid &= _remap(step_valid.astype(np.uint8), positions, nearest=True) > 0
        positions = positions + _remap(step, positions)
        valid &= _inside(positions, height, width)
        frame = nxt
        yield frame, positions, valid


# --------------------------------------------------------------------------------------------------------
# Edge-aware fill
# --------------------------------------------------------------------------------------------------------


def fill_depth_edge_aware(
    log_depth: np.ndarray,
    weight: np.ndarray,
    guide: np.ndarray,
    smoothness: float = 2.0,
    guide_sigma: float = 0.04,
    edge_weight_floor: float = 1e-3,
    cg_iterations: int = 300,
    cg_tolerance: float = 1e-5,
    regions: np.ndarray | None = None,
) -> np.ndarray:
    """Dense log depth from sparse samples by weighted least squares with image-guided smoothness.

    Minimises sum_i weight_i (x_i - log_depth_i)^2 + smoothness * sum_(i,j 4-neighbours) w_ij (x_i - x_j)^2
    with w_ij = exp(-|guide_i - guide_j|^2 / (2 sigma^2)) + floor, so values spread along surfaces and
    stop at image edges (the classic colourisation / WLS fill). Solved by Jacobi-preconditioned conjugate
    gradients started from the nearest-sample fill.

    log_depth: [H, W] float (ignored where weight == 0); weight: [H, W] >= 0 with at least one > 0;
    guide: [H, W, C] float in [0, 1]; regions: optional [H, W] labels, links between pixels of different
    labels get only the floor weight (e.g. moving objects vs the still scene: neither bleeds into the other).
    Returns [H, W] float32.
    """
    height, width = weight.shape
    n = height * width
    has_data = weight > 0
    data = np.where(has_data, log_depth, 0.0).astype(np.float64)
    # Start from the nearest sample: CG then only has to smooth, not to carry values across holes.
    _, (near_i, near_j) = ndimage.distance_transform_edt(~has_data, return_indices=True)
    x0 = data[near_i, near_j].ravel()

    index = np.arange(n).reshape(height, width)
    g = guide.reshape(height, width, -1).astype(np.float64)
    diff_h = np.mean((g[:, 1:] - g[:, :-1]) ** 2, axis=-1)
    diff_v = np.mean((g[1:, :] - g[:-1, :]) ** 2, axis=-1)
    w_h = np.exp(-diff_h / (2.0 * guide_sigma**2)) + edge_weight_floor
    w_v = np.exp(-diff_v / (2.0 * guide_sigma**2)) + edge_weight_floor
    if regions is not None:
        w_h = np.where(regions[:, 1:] == regions[:, :-1], w_h, edge_weight_floor)
        w_v = np.where(regions[1:, :] == regions[:-1, :], w_v, edge_weight_floor)
    rows = np.concatenate([index[:, :-1].ravel(), index[:-1, :].ravel()])
    cols = np.concatenate([index[:, 1:].ravel(), index[1:, :].ravel()])
    w = smoothness * np.concatenate([w_h.ravel(), w_v.ravel()])
    degree = np.bincount(rows, w, minlength=n) + np.bincount(cols, w, minlength=n)
    diag = weight.ravel().astype(np.float64) + degree
    off = sp.coo_matrix((np.concatenate([-w, -w]), (np.concatenate([rows, cols]), np.concatenate([cols, rows]))),
                        shape=(n, n))
    system = (sp.diags(diag) + off).tocsr()
    rhs = weight.ravel() * data.ravel()
    solution = _conjugate_gradient(system, rhs, x0, 1.0 / diag, cg_iterations, cg_tolerance)
    if not np.all(np.isfinite(solution)):
        solution = x0
    return solution.reshape(height, width).astype(np.float32)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    # einsum instead of BLAS ddot: OpenBLAS worker threads fight OpenCV's thread pool on small machines and
    # made this solve 10-50x slower at random (measured on 2 cores); vectors here are too short to need them.
    return float(np.einsum("i,i->", a, b))


def _conjugate_gradient(system: sp.csr_matrix, rhs: np.ndarray, x0: np.ndarray, inverse_diagonal: np.ndarray,
                        iterations: int, tolerance: float) -> np.ndarray:
    """Jacobi-preconditioned conjugate gradients for a symmetric positive definite sparse system [N, N]."""
    x = x0.astype(np.float64).copy()
    residual = rhs - system @ x
    z = inverse_diagonal * residual
    direction = z.copy()
    rz = _dot(residual, z)
    stop = tolerance * max(np.sqrt(_dot(rhs, rhs)), 1e-30)
    for _ in range(iterations):
        if np.sqrt(_dot(residual, residual)) <= stop:
            break
        product = system @ direction
        step = rz / max(_dot(direction, product), 1e-300)
        x += step * direction
        residual -= step * product
        z = inverse_diagonal * residual
        rz_next = _dot(residual, z)
        direction = z + (rz_next / max(rz, 1e-300)) * direction
        rz = rz_next
    return x


# --------------------------------------------------------------------------------------------------------
# VideoDepth
# --------------------------------------------------------------------------------------------------------


@dataclass
class _PairMaps:
    """Triangulated depth of one frame pair, up to the pair's own scale (|t| = 1)."""

    ref: int
    target: int
    ref_index: np.ndarray  # [N] flat pixel indices in the reference frame
    ref_depth: np.ndarray  # [N]
    target_index: np.ndarray  # [M] flat pixel indices in the target frame (nearest pixel, front-most)
    target_depth: np.ndarray  # [M]
    parallax_px: np.ndarray  # [N] per reference pixel, also used for the target samples (same points)
    target_parallax_px: np.ndarray  # [M]
    rotation: np.ndarray  # [3, 3] target_from_ref
    translation: np.ndarray  # [3] unit length: x_target = R x_ref + t


@dataclass
class SparseDepth:
    """Triangulated (not filled) depth of a clip at the working resolution, one scale for the clip.

    Attributes:
        log_depth: [T, h, w] float32, log of depth (NaN where nothing was triangulated).
        confidence: [T, h, w] float32 in [0, 1], 0 where nothing was triangulated.
        scale: working size / input size (1.0 when the frames were not downscaled).
        num_pairs: frame pairs that were triangulated.
        intrinsics: [4] fx, fy, cx, cy at the working resolution.
        pair_poses: (ref, target, rotation [3, 3], translation [3]) per triangulated pair, x_target = R x_ref + t
            in the units of `log_depth`.
        moving: [T, h, w] bool moving masks at the working resolution.
    """

    log_depth: np.ndarray
    confidence: np.ndarray
    scale: float
    num_pairs: int
    intrinsics: np.ndarray
    pair_poses: list[tuple[int, int, np.ndarray, np.ndarray]]
    moving: np.ndarray


class VideoDepth:
    """Depth from the video itself: two-view triangulation on chained optical flow (no learned weights).

    Output depth is relative (`metric=False`): one scale for the whole clip, normalised so that the median
    depth over the clip is 1. Pixels on moving objects (`moving_masks`) are never triangulated (their motion
    is not the camera's): each moving region gets the near end of the still depths around it (see
    `VideoDepthConfig.moving_ring_percentile`), a guess with confidence at most `moving_confidence`. Without
    moving masks, moving things are triangulated as if still (wrong depth; the robust pose fit still holds
    while they cover a minority of the pixels).
    When no frame pair has parallax (static or purely rotating camera) the result is a constant depth of 1
    with confidence `fallback_confidence` everywhere; frames without a pair of their own take depth from the
    nearest frame that has one, through the flow.
    """

    name = "video"

    def __init__(self, config: VideoDepthConfig | None = None) -> None:
        self.config = config or VideoDepthConfig()
        if self.config.essential_method not in ("magsac", "ransac"):
            raise PriorError(f"unknown essential_method {self.config.essential_method!r}",
                             "use 'magsac' or 'ransac'")
        if self.config.sweep_median not in (1, 3, 5):
            raise PriorError(f"sweep_median must be 1, 3 or 5, got {self.config.sweep_median}",
                             "OpenCV median-filters float images only with 3x3 or 5x5 windows")

    # ---- public ---------------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """Everything that changes the result, for cache keys (JSON-serialisable)."""
        return {"estimator": self.name, "version": DEPTH_ALGORITHM_VERSION, "opencv": cv2.__version__,
                **asdict(self.config)}

    def __call__(self, frames: np.ndarray, flow: FlowResult | None, intrinsics: np.ndarray,
                 moving_masks: np.ndarray | None = None) -> DepthResult:
        """frames [T, H, W, 3] uint8 RGB; flow on the same frames; intrinsics [4] px; moving_masks [T, H, W]."""
        _check_frames(frames)
        num_frames, height, width = frames.shape[:3]
        cfg = self.config
        sparse = self.sparse(frames, flow, intrinsics, moving_masks)
        if sparse is None:
            return self._fallback(num_frames, height, width)
        moving = _check_moving(moving_masks, num_frames, height, width)

        small_h, small_w = sparse.log_depth.shape[1:]
        moving_small = sparse.moving
        guides = _working_frames(frames, small_w, small_h)
        partners_of = _partners_by_frame(sparse.pair_poses, num_frames)
        depth = np.empty((num_frames, height, width), dtype=np.float32)
        confidence = np.empty((num_frames, height, width), dtype=np.float32)
        for t in range(num_frames):
            has_data = sparse.confidence[t] > 0
            log_data, weight = _moving_region_prior(sparse.log_depth[t], sparse.confidence[t], moving_small[t], cfg)
            log_dense = self._fill(log_data, weight, guides[t], moving_small[t])
            partners = [(guides[s], rotation, translation) for s, rotation, translation in partners_of[t]]
            sweep_range = cfg.sweep_range
            for _ in range(cfg.sweep_passes if partners else 0):
                refined, distinct, inside = plane_sweep_refine(log_dense, guides[t], partners, sparse.intrinsics,
                                                               sweep_range, cfg.sweep_steps, cfg.sweep_window,
                                                               cfg.sweep_truncation, cfg.sweep_median)
                use = inside & (distinct >= cfg.sweep_min_distinctness) & ~moving_small[t]
                if cfg.sweep_edges_only:
                    use &= _depth_edges(log_dense, cfg, cfg.sweep_edge_margin_px)
                if len(partners) < 2:
                    # One partner cannot judge pixels it does not see (no triangulated depth there = most
                    # likely occluded in it): leave those to the fill.
                    use &= sparse.confidence[t] > 0
                log_data = np.where(use, refined, log_data)
                weight = np.where(use, np.maximum(weight, cfg.fill_confidence), weight)
                has_data = has_data | use
                # Swept pixels keep their own value: the fill's smoothing would blur the edges again.
                log_dense = np.where(use, refined, self._fill(log_data, weight, guides[t], moving_small[t]))
                sweep_range *= 0.5
            distance = ndimage.distance_transform_edt(~has_data)
            conf = np.where(has_data, weight, cfg.fill_confidence * np.exp(-distance / cfg.fill_decay_px))
            if (small_h, small_w) != (height, width):
                log_dense = _resize(log_dense, width, height, cv2.INTER_LINEAR)
                conf = _resize(conf.astype(np.float32), width, height, cv2.INTER_LINEAR)
            conf = np.where(moving[t], np.minimum(conf, cfg.moving_confidence), conf)
            depth[t] = np.exp(log_dense)
            confidence[t] = np.clip(conf, 0.0, 1.0)

        # One clip-wide gauge: median depth 1.
        depth /= np.median(depth)
        if not np.all(np.isfinite(depth)) or depth.min() <= 0:
            return self._fallback(num_frames, height, width)
        return DepthResult(depth=depth.astype(np.float32), confidence=confidence.astype(np.float32), metric=False)

    def sparse(self, frames: np.ndarray, flow: FlowResult | None, intrinsics: np.ndarray,
               moving_masks: np.ndarray | None = None) -> SparseDepth | None:
        """Triangulated, scale-consistent, merged depth before the fill; None when no pair has parallax."""
        _check_frames(frames)
        num_frames, height, width = frames.shape[:3]
        k = _check_intrinsics(intrinsics)
        moving = _check_moving(moving_masks, num_frames, height, width)
        if num_frames < 2:
            return None
        if flow is None:
            raise PriorError("the video depth prior needs optical flow",
                             "compute it first, e.g. recon4d.priors.flow.DISFlow()(frames)")
        _check_flow(flow, num_frames, height, width)

        cfg = self.config
        scale = min(1.0, cfg.max_working_side / max(height, width))
        small_w, small_h = max(8, round(width * scale)), max(8, round(height * scale))
        if (small_w, small_h) != (width, height):
            flow, moving, k = _downscale_inputs(flow, moving, k, width, height, small_w, small_h)
        else:
            scale = 1.0

        pairs = self._triangulate_pairs(flow, moving, k, small_h, small_w)
        if not pairs:
            return None
        pair_scale, groups = self._solve_pair_scales(pairs, num_frames, small_h, small_w)
        guides = _working_frames(frames, small_w, small_h)
        log_depth, confidence, group_scale = self._merge(pairs, pair_scale, groups, guides)
        has_data = np.isfinite(log_depth).reshape(num_frames, -1).any(axis=1)
        if not has_data.any():
            return None
        self._propagate_to_empty_frames(log_depth, confidence, has_data, flow, small_h, small_w)
        poses = [(p.ref, p.target, p.rotation, p.translation * pair_scale[i] * group_scale[groups[i]])
                 for i, p in enumerate(pairs)]
        return SparseDepth(log_depth=log_depth, confidence=confidence, scale=scale, num_pairs=len(pairs),
                           intrinsics=k, pair_poses=poses, moving=moving)

    # ---- stages ---------------------------------------------------------------------------------------

    def _fill(self, log_data: np.ndarray, weight: np.ndarray, guide: np.ndarray, moving: np.ndarray) -> np.ndarray:
        cfg = self.config
        return fill_depth_edge_aware(log_data, weight, guide, cfg.smoothness, cfg.guide_sigma, cfg.edge_weight_floor,
                                     cfg.cg_iterations, cfg.cg_tolerance, regions=moving)

    def _fallback(self, num_frames: int, height: int, width: int) -> DepthResult:
        return DepthResult(depth=np.ones((num_frames, height, width), dtype=np.float32),
                           confidence=np.full((num_frames, height, width), self.config.fallback_confidence,
                                              dtype=np.float32),
                           metric=False)

    def _triangulate_pairs(self, flow: FlowResult, moving: np.ndarray, intrinsics: np.ndarray,
                           height: int, width: int) -> list[_PairMaps]:
        num_frames = moving.shape[0]
        jj, ii = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        grid = np.stack([jj, ii], axis=-1)
        pairs: list[_PairMaps] = []
        for ref in range(num_frames):
            for direction in (1, -1):
                choice = self._choose_partner(flow, moving, intrinsics, ref, direction, grid)
                if choice is None:
                    continue
                target, positions, usable = choice
                pair = self._triangulate_pair(ref, target, positions, usable, intrinsics, height, width)
                if pair is not None:
                    pairs.append(pair)
        return pairs

    def _usable(self, moving: np.ndarray, ref: int, target: int, positions: np.ndarray,
                valid: np.ndarray) -> np.ndarray:
        still_target = _remap(moving[target].astype(np.uint8), positions, nearest=True, border=1) == 0
        return valid & ~moving[ref] & still_target

    def _choose_partner(self, flow: FlowResult, moving: np.ndarray, intrinsics: np.ndarray, ref: int,
                        direction: int, grid: np.ndarray) -> tuple[int, np.ndarray, np.ndarray] | None:
        """Smallest gap whose median rotation-compensated parallax reaches the target, else the largest."""
        cfg = self.config
        height, width = grid.shape[:2]
        best: tuple[float, int, np.ndarray, np.ndarray] | None = None
        for target, positions, valid in _chain(flow, ref, direction, cfg.max_frame_gap, grid):
            usable = self._usable(moving, ref, target, positions, valid)
            count = int(usable.sum())
            if count < max(cfg.min_link_points, cfg.min_valid_fraction * height * width):
                break
            rng = np.random.default_rng((cfg.seed, ref, target))
            pick = np.flatnonzero(usable.ravel())
            if pick.size > cfg.fit_points:
                pick = rng.choice(pick, cfg.fit_points, replace=False)
            p_ref = grid.reshape(-1, 2)[pick].astype(np.float64)
            p_target = positions.reshape(-1, 2)[pick].astype(np.float64)
            parallax = _rotation_compensated_parallax(p_ref, p_target, intrinsics, cfg.rotation_fit_iterations)
            if best is None or parallax > best[0]:
                best = (parallax, target, positions.copy(), usable)
            if parallax >= cfg.target_parallax_px:
                break
        if best is None or best[0] < cfg.min_pair_parallax_px:
            return None
        return best[1], best[2], best[3]

    def _triangulate_pair(self, ref: int, target: int, positions: np.ndarray, usable: np.ndarray,
                          intrinsics: np.ndarray, height: int, width: int) -> _PairMaps | None:
        cfg = self.config
        index = np.flatnonzero(usable.ravel())
        p_ref = np.stack([index % width, index // width], axis=1).astype(np.float64)
        p_target = positions.reshape(-1, 2)[index].astype(np.float64)
        rng = np.random.default_rng((cfg.seed, ref, target, 1))
        fit = rng.choice(len(index), min(cfg.fit_points, len(index)), replace=False)
        camera = _camera_matrix(intrinsics)
        method = cv2.USAC_MAGSAC if cfg.essential_method == "magsac" else cv2.RANSAC
        try:
            essential, inliers = cv2.findEssentialMat(p_ref[fit], p_target[fit], camera, method=method,
                                                      prob=cfg.essential_confidence,
                                                      threshold=cfg.essential_threshold_px)
        except cv2.error:
            return None
        if essential is None or essential.shape != (3, 3) or inliers is None:
            return None
        if inliers.sum() < cfg.min_inlier_ratio * len(fit):
            return None
        # The chirality vote needs only a few hundred inliers (it triangulates every point it gets).
        vote = fit[inliers.ravel() > 0][: cfg.chirality_points]
        _, rotation, translation, _ = cv2.recoverPose(essential, p_ref[vote], p_target[vote], camera)
        depth_ref, depth_target, parallax, reprojection = triangulate_two_view(
            p_ref, p_target, rotation, translation.ravel(), intrinsics)
        focal = 0.5 * (intrinsics[0] + intrinsics[1])
        parallax_px = parallax * focal
        good = ((depth_ref > 0) & (depth_target > 0) & (parallax_px >= cfg.min_point_parallax_px)
                & (reprojection <= cfg.max_reprojection_px) & np.isfinite(depth_ref))
        if good.sum() < cfg.min_link_points:
            return None
        index, depth_ref, depth_target = index[good], depth_ref[good], depth_target[good]
        parallax_px, p_target = parallax_px[good], p_target[good]
        # Splat the target-side depths to their nearest pixel, front-most first: these samples tie the
        # pair's scale to the pairs of the target frame.
        target_flat = (np.clip(np.rint(p_target[:, 1]), 0, height - 1).astype(np.int64) * width
                       + np.clip(np.rint(p_target[:, 0]), 0, width - 1).astype(np.int64))
        order = np.argsort(depth_target)
        target_index, first = np.unique(target_flat[order], return_index=True)
        return _PairMaps(ref=ref, target=target, ref_index=index, ref_depth=depth_ref.astype(np.float32),
                         target_index=target_index,
                         target_depth=depth_target[order][first].astype(np.float32),
                         parallax_px=parallax_px.astype(np.float32),
                         target_parallax_px=parallax_px[order][first].astype(np.float32),
                         rotation=rotation.astype(np.float64), translation=translation.ravel().astype(np.float64))

    @staticmethod
    def _maps_by_frame(pairs: list[_PairMaps]) -> dict[int, list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]]:
        """frame -> [(pair id, flat index, depth, parallax_px)]."""
        by_frame: dict[int, list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]] = {}
        for pid, pair in enumerate(pairs):
            by_frame.setdefault(pair.ref, []).append((pid, pair.ref_index, pair.ref_depth, pair.parallax_px))
            by_frame.setdefault(pair.target, []).append(
                (pid, pair.target_index, pair.target_depth, pair.target_parallax_px))
        return by_frame

    def _solve_pair_scales(self, pairs: list[_PairMaps], num_frames: int, height: int,
                           width: int) -> tuple[np.ndarray, np.ndarray]:
        """One scale per pair so that all pairs agree where they see the same pixels of a frame.

        Each overlap of two pairs' depth maps on one frame gives log s_a - log s_b = median(log d_b - log d_a).
        The links are solved jointly by least squares (weight sqrt(overlap)); pairs not linked to the largest
        group are scaled afterwards in `_merge` by median depth (their scale cannot be observed).
        Returns the scale per pair [P] and the linked group of each pair [P].
        """
        cfg = self.config
        n = len(pairs)
        rows: list[tuple[int, int, float, float]] = []
        n_pixels = height * width
        for maps in self._maps_by_frame(pairs).values():
            dense = []
            for pid, index, depth, _ in maps:
                arr = np.full(n_pixels, np.nan, dtype=np.float32)
                arr[index] = np.log(depth)
                dense.append((pid, arr))
            for a in range(len(dense)):
                for b in range(a + 1, len(dense)):
                    pa, da = dense[a]
                    pb, db = dense[b]
                    if pa == pb:
                        continue
                    both = np.isfinite(da) & np.isfinite(db)
                    count = int(both.sum())
                    if count < cfg.min_link_points:
                        continue
                    rows.append((pa, pb, float(np.median(db[both] - da[both])), float(np.sqrt(count))))
        # Tiny prior on every log scale fixes the gauge of each linked group without biasing the links.
        lhs = np.zeros((len(rows) + n, n))
        rhs = np.zeros(len(rows) + n)
        for r, (pa, pb, value, weight) in enumerate(rows):
            lhs[r, pa], lhs[r, pb], rhs[r] = weight, -weight, weight * value
        lhs[len(rows):, :] = 1e-3 * np.eye(n)
        log_scale = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
        # Robust re-weighting: a pair with a wrong pose disagrees with its links; Huber-down-weight them.
        for _ in range(3):
            if not rows:
                break
            res = np.array([log_scale[pa] - log_scale[pb] - v for pa, pb, v, _ in rows])
            huber = np.minimum(1.0, 0.05 / np.maximum(np.abs(res), 1e-9))
            lhs_w = lhs.copy()
            rhs_w = rhs.copy()
            lhs_w[: len(rows)] *= np.sqrt(huber)[:, None]
            rhs_w[: len(rows)] *= np.sqrt(huber)
            log_scale = np.linalg.lstsq(lhs_w, rhs_w, rcond=None)[0]
        return np.exp(log_scale), _linked_groups(n, [(pa, pb) for pa, pb, _, _ in rows])

    def _merge(self, pairs: list[_PairMaps], pair_scale: np.ndarray, groups: np.ndarray,
               guides: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-pixel median of the scaled log depths of all pairs, with a confidence from their agreement.

        guides: [T, h, w, 3] float frames in [0, 1] at the working resolution (for the depth-edge repair).
        Returns log depth [T, h, w] (NaN = none), confidence [T, h, w] and the extra scale of each linked group
        (1 for the main group; others are matched to it by median depth since their scale is unobservable).
        """
        cfg = self.config
        num_frames, height, width = guides.shape[:3]
        n_pixels = height * width
        main = np.bincount(groups).argmax()
        group_scale = np.ones(groups.max() + 1)
        ref_frames = [{p.ref for p, g in zip(pairs, groups) if g == group} for group in range(len(group_scale))]
        scaled = pair_scale.copy()
        log_depth = np.full((num_frames, n_pixels), np.nan, dtype=np.float32)
        for attempt in range(2):
            confidence = np.zeros((num_frames, n_pixels), dtype=np.float32)
            for frame, maps in self._maps_by_frame(pairs).items():
                stack = np.full((len(maps), n_pixels), np.nan, dtype=np.float32)
                para = np.zeros((len(maps), n_pixels), dtype=np.float32)
                for m, (pid, index, depth, parallax_px) in enumerate(maps):
                    stack[m, index] = np.log(depth * scaled[pid])
                    para[m, index] = parallax_px
                merged, conf = _merge_stack(stack, para, cfg)
                repaired, repaired_conf = _repair_depth_edges(merged.reshape(height, width),
                                                              conf.reshape(height, width), guides[frame], cfg)
                log_depth[frame], confidence[frame] = repaired.ravel(), repaired_conf.ravel()
            if attempt == 1 or len(group_scale) == 1:
                break
            main_frames = sorted(ref_frames[main])
            main_median = np.nanmedian(log_depth[main_frames])
            for group in range(len(group_scale)):
                frames_g = sorted(ref_frames[group] - ref_frames[main])
                if group != main and frames_g:
                    group_scale[group] = np.exp(main_median - np.nanmedian(log_depth[frames_g]))
            scaled = pair_scale * group_scale[groups]
        return (log_depth.reshape(num_frames, height, width), confidence.reshape(num_frames, height, width),
                group_scale)

    def _propagate_to_empty_frames(self, log_depth: np.ndarray, confidence: np.ndarray, has_data: np.ndarray,
                                   flow: FlowResult, height: int, width: int) -> None:
        """Frames without triangulated pixels borrow them from the nearest frame that has some (in place)."""
        cfg = self.config
        source_frames = np.flatnonzero(has_data)
        jj, ii = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        grid = np.stack([jj, ii], axis=-1)
        for frame in np.flatnonzero(~has_data):
            source = int(source_frames[np.argmin(np.abs(source_frames - frame))])
            direction = 1 if source > frame else -1
            gap = abs(source - frame)
            positions, valid = grid, np.ones((height, width), dtype=bool)
            for _, positions, valid in _chain(flow, int(frame), direction, gap, grid):
                pass
            sampled = _remap(log_depth[source], positions, nearest=True, border=np.nan)
            sampled_conf = _remap(confidence[source], positions, nearest=True, border=0.0)
            ok = valid & np.isfinite(sampled)
            if not ok.any():
                # Nothing maps across: the camera barely moved, so the nearest frame's samples are close.
                ok = np.isfinite(log_depth[source])
                sampled, sampled_conf = log_depth[source], confidence[source]
            log_depth[frame] = np.where(ok, sampled, np.nan)
            confidence[frame] = np.where(ok, sampled_conf * cfg.propagated_confidence_factor, 0.0)


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


def _depth_edges(log_depth: np.ndarray, cfg: VideoDepthConfig, margin_px: int | None = None) -> np.ndarray:
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


def _repair_depth_edges(log_depth: np.ndarray, confidence: np.ndarray, guide: np.ndarray,
                        cfg: VideoDepthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Undo the flow's smear across depth edges with a colour-guided weighted median (as in stereo refinement).

    Pixels in the band of `_depth_edges` take the weighted median of the log depths of reliable pixels (outside
    the band) within `edge_repair_radius_px`, weighted by colour similarity exp(-|dI|^2 / (2 sigma^2)) with
    sigma = `edge_repair_colour_sigma`: a background pixel next to an object looks like the background and so
    takes its depth instead of the blend the flow gave it. Band pixels with no reliable neighbour are dropped.
    log_depth, confidence: [h, w] (NaN / 0 = none); guide: [h, w, 3] in [0, 1]. Returns copies.
    """
    band = _depth_edges(log_depth, cfg) & np.isfinite(log_depth)
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


def _moving_region_prior(log_depth: np.ndarray, weight: np.ndarray, moving: np.ndarray,
                         cfg: VideoDepthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Fill data for moving regions: each connected region gets the near end of its surroundings' depth.

    log_depth, weight: [h, w] sparse log depth (NaN / 0 where none); moving: [h, w] bool.
    Returns the data and weight for `fill_depth_edge_aware` (copies; inputs untouched).
    """
    if not moving.any():
        return log_depth, weight
    log_depth, weight = log_depth.copy(), weight.copy()
    count, labels = cv2.connectedComponents(moving.astype(np.uint8), connectivity=8)
    ring_px = max(2, round(cfg.moving_ring_fraction * max(moving.shape)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_px + 1,) * 2)
    still_data = (weight > 0) & ~cv2.dilate(moving.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    for label in range(1, count):
        region = labels == label
        ring = cv2.dilate(region.astype(np.uint8), kernel).astype(bool) & still_data
        if ring.sum() < cfg.moving_ring_min_points:
            continue
        log_depth[region] = np.percentile(log_depth[ring], cfg.moving_ring_percentile)
        weight[region] = cfg.moving_prior_weight
    return log_depth, weight


def _merge_stack(stack: np.ndarray, parallax_px: np.ndarray, cfg: VideoDepthConfig) -> tuple[np.ndarray, np.ndarray]:
    """stack [M, N] log depths (NaN = none), parallax [M, N] px -> merged log depth [N], confidence [N]."""
    count = np.isfinite(stack).sum(axis=0)
    has = count > 0
    merged = np.full(stack.shape[1], np.nan, dtype=np.float32)
    conf = np.zeros(stack.shape[1], dtype=np.float32)
    if not has.any():
        return merged, conf
    sub = stack[:, has]
    med = np.nanmedian(sub, axis=0)
    spread = np.nanmedian(np.abs(sub - med[None]), axis=0)
    agreement = np.where(count[has] > 1, np.exp(-((spread / cfg.agreement_sigma) ** 2)), cfg.single_map_agreement)
    quality = 1.0 - np.exp(-parallax_px[:, has].max(axis=0) / cfg.parallax_quality_px)
    merged[has] = med
    conf[has] = np.clip(agreement * quality, 1e-3, 1.0)
    return merged, conf


def _linked_groups(n: int, links: list[tuple[int, int]]) -> np.ndarray:
    """Connected components of n nodes under the links -> group id per node [n]."""
    from scipy.sparse.csgraph import connected_components

    if not links:
        return np.arange(n)
    a, b = np.array(links).T
    graph = sp.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _rotation_compensated_parallax(p_ref: np.ndarray, p_target: np.ndarray, intrinsics: np.ndarray,
                                   iterations: int) -> float:
    """Median distance (px) between target pixels and the reference pixels moved by the best pure rotation.

    Small = a rotation (or no motion) explains the flow: the pair has no usable baseline.
    """
    ray_ref = _bearings(p_ref, intrinsics)
    ray_target = _bearings(p_target, intrinsics)
    rotation = fit_rotation_only(ray_ref, ray_target, iterations)
    predicted = _project(np.einsum("ij,nj->ni", rotation, ray_ref), intrinsics)
    return float(np.median(np.linalg.norm(predicted - p_target, axis=1)))


def _partners_by_frame(pair_poses: list[tuple[int, int, np.ndarray, np.ndarray]],
                       num_frames: int) -> list[list[tuple[int, np.ndarray, np.ndarray]]]:
    """frame -> [(other frame, rotation, translation)] with x_other = R x_frame + t, from both pair directions."""
    partners: list[list[tuple[int, np.ndarray, np.ndarray]]] = [[] for _ in range(num_frames)]
    seen: set[tuple[int, int]] = set()
    for ref, target, rotation, translation in pair_poses:
        if (ref, target) not in seen:
            partners[ref].append((target, rotation, translation))
            seen.add((ref, target))
        if (target, ref) not in seen:
            partners[target].append((ref, rotation.T, -rotation.T @ translation))
            seen.add((target, ref))
    return partners


def _working_frames(frames: np.ndarray, small_w: int, small_h: int) -> np.ndarray:
    """[T, H, W, 3] uint8 -> [T, h, w, 3] float32 in [0, 1] at the working resolution."""
    return np.stack([_resize(f, small_w, small_h, cv2.INTER_AREA) for f in frames]).astype(np.float32) / 255.0


def _resize(image: np.ndarray, width: int, height: int, interpolation: int) -> np.ndarray:
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _downscale_inputs(flow: FlowResult, moving: np.ndarray, intrinsics: np.ndarray, width: int, height: int,
                      small_w: int, small_h: int) -> tuple[FlowResult, np.ndarray, np.ndarray]:
    """Flow, moving masks and intrinsics at the working resolution (flow vectors rescaled)."""
    sx, sy = small_w / width, small_h / height

    def flows(arr: np.ndarray) -> np.ndarray:
        out = np.stack([_resize(np.ascontiguousarray(f, dtype=np.float32), small_w, small_h, cv2.INTER_LINEAR)
                        for f in arr])
        out[..., 0] *= sx
        out[..., 1] *= sy
        return out

    def masks(arr: np.ndarray, all_true: bool) -> np.ndarray:
        # A small pixel is valid only if all its source pixels are; moving if any of them is.
        out = np.stack([_resize(m.astype(np.float32), small_w, small_h, cv2.INTER_AREA) for m in arr])
        return out > 0.999 if all_true else out > 0.0

    small_flow = FlowResult(flows(flow.flow_forward), flows(flow.flow_backward),
                            masks(flow.valid_forward, True), masks(flow.valid_backward, True))
    # Pixel (u=j) of the small image covers source columns j/sx .. (j+1)/sx: centre at (j + 0.5)/sx - 0.5.
    fx, fy, cx, cy = intrinsics
    small_k = np.array([fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5])
    return small_flow, masks(moving, False), small_k


# --------------------------------------------------------------------------------------------------------
# FileDepth
# --------------------------------------------------------------------------------------------------------

_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".exr")
_FILE_SUFFIXES = (".npy",) + _IMAGE_SUFFIXES


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


class FileDepth:
    """User-supplied depth maps: a folder with one file per frame (.npy, 16-bit .png, .tif, .exr; sorted by
    natural order of the names), or one .npy / .npz holding [T, H, W] (npz: key "depth" or its only array).

    Maps are resized (nearest neighbour, so no depth is invented across edges) to the clip size when the
    aspect ratio fits. Non-finite or non-positive values are filled from the nearest valid pixel and get
    confidence 0; every other pixel has confidence 1.
    """

    name = "file"

    def __init__(self, path: str | Path, config: FileDepthConfig | None = None) -> None:
        self.path = Path(path)
        self.config = config or FileDepthConfig()
        if not self.path.exists():
            raise PriorError(f"depth path {self.path} does not exist",
                             "pass a folder of per-frame depth files or one .npy/.npz [T, H, W]")
        if self.path.is_file() and self.path.suffix.lower() not in (".npy", ".npz"):
            raise PriorError(f"depth file {self.path} is not .npy or .npz",
                             "pass a folder of per-frame depth files or one .npy/.npz [T, H, W]")

    def settings(self) -> dict[str, Any]:
        """Everything that changes the result, for cache keys: the files' names, sizes and times, the config."""
        paths = [self.path] if self.path.is_file() else sorted(self.path.iterdir())
        files = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in paths if p.is_file()]
        return {"estimator": self.name, "version": DEPTH_ALGORITHM_VERSION, "path": str(self.path.resolve()),
                "files": files, **asdict(self.config)}

    def __call__(self, frames: np.ndarray, flow: FlowResult | None = None, intrinsics: np.ndarray | None = None,
                 moving_masks: np.ndarray | None = None) -> DepthResult:
        """frames [T, H, W, 3] uint8 RGB (only their count and size are used); the other inputs are ignored."""
        _check_frames(frames)
        num_frames, height, width = frames.shape[:3]
        maps = self._load()
        if len(maps) != num_frames:
            raise PriorError(f"{self.path} holds {len(maps)} depth maps but the clip has {num_frames} frames",
                             "give one depth map per frame")
        depth = np.empty((num_frames, height, width), dtype=np.float32)
        confidence = np.empty((num_frames, height, width), dtype=np.float32)
        for t, raw in enumerate(maps):
            depth[t], confidence[t] = self._fit(raw, t, height, width)
        return DepthResult(depth=depth, confidence=confidence, metric=self.config.metric)

    def _load(self) -> list[np.ndarray]:
        if self.path.is_file():
            arr = self._load_array_file(self.path)
            if arr.ndim == 2:
                arr = arr[None]
            if arr.ndim != 3:
                raise PriorError(f"{self.path} holds an array of shape {arr.shape}, expected [T, H, W]",
                                 "save the depth as one [T, H, W] array")
            return list(arr)
        files = sorted((p for p in self.path.iterdir() if p.suffix.lower() in _FILE_SUFFIXES), key=_natural_key)
        if not files:
            raise PriorError(f"no depth files (.npy, .png, .tif, .exr) in {self.path}",
                             "put one depth map per frame in the folder")
        return [self._load_frame_file(p) for p in files]

    @staticmethod
    def _load_array_file(path: Path) -> np.ndarray:
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise PriorError(f"cannot read depth file {path}: {exc}", "save it with numpy.save / savez") from exc
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                keys = list(data.keys())
                if "depth" in keys:
                    return np.asarray(data["depth"])
                if len(keys) == 1:
                    return np.asarray(data[keys[0]])
            raise PriorError(f"{path} holds arrays {keys}; expected one array or one named 'depth'",
                             "save the depth under the key 'depth'")
        return np.asarray(data)

    def _load_frame_file(self, path: Path) -> np.ndarray:
        if path.suffix.lower() == ".npy":
            arr = self._load_array_file(path)
        else:
            arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if arr is None:
                hint = ("OpenCV reads EXR only with OPENCV_IO_ENABLE_OPENEXR=1 set; or convert to .npy"
                        if path.suffix.lower() == ".exr" else "save depth as 16-bit png or .npy")
                raise PriorError(f"cannot read depth image {path}", hint)
            if np.issubdtype(arr.dtype, np.integer):
                arr = arr.astype(np.float64) * self.config.png_scale
        arr = np.squeeze(arr)
        if arr.ndim != 2:
            raise PriorError(f"depth map {path} has shape {arr.shape}, expected one channel [H, W]",
                             "save depth as a single-channel image or a 2-D array")
        return arr

    def _fit(self, raw: np.ndarray, index: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        raw = np.asarray(raw, dtype=np.float32)
        src_h, src_w = raw.shape
        if abs((src_w / src_h) / (width / height) - 1.0) > self.config.max_aspect_change:
            raise PriorError(f"depth map {index} is {src_w}x{src_h}, which does not fit the {width}x{height} clip",
                             "give depth maps with the clip's aspect ratio")
        valid = np.isfinite(raw) & (raw > 0)
        if not valid.any():
            raise PriorError(f"depth map {index} has no positive finite value", "check the depth files")
        if not valid.all():
            _, (near_i, near_j) = ndimage.distance_transform_edt(~valid, return_indices=True)
            raw = raw[near_i, near_j]
        conf = valid.astype(np.float32)
        if (src_h, src_w) != (height, width):
            raw = _resize(raw, width, height, cv2.INTER_NEAREST)
            conf = _resize(conf, width, height, cv2.INTER_NEAREST)
        return raw, conf


# --------------------------------------------------------------------------------------------------------
# Depth Anything V2
# --------------------------------------------------------------------------------------------------------


_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class DepthAnythingV2:
    """Depth Anything V2 (relative inverse depth) through `transformers`, from a local folder only.

    The model predicts affine-invariant inverse depth r. When flow and intrinsics are given, `VideoDepth`
    triangulates a sparse depth d on still pixels and one affine map 1/d = a r + b is fitted for the clip
    (robustly, in inverse-depth space); otherwise the documented default of `DepthAnythingV2Config`
    (`default_inverse_shift`) is used. Depth is normalised to median 1, `metric=False`.
    """

    name = "depth-anything-v2"

    def __init__(self, model_path: str | Path, config: DepthAnythingV2Config | None = None) -> None:
        self.model_path = Path(model_path)
        self.config = config or DepthAnythingV2Config()
        if importlib.util.find_spec("transformers") is None:
            raise PriorError("the depth-anything-v2 prior needs the 'transformers' package", DEPTH_ANYTHING_HINT)
        has_weights = self.model_path.is_dir() and (self.model_path / "config.json").is_file() and (
            any((self.model_path / name).is_file() for name in _WEIGHT_FILES)
            or any(self.model_path.glob("*.safetensors")))
        if not has_weights:
            raise PriorError(f"no Depth Anything V2 weights (config.json + model.safetensors) in {self.model_path}",
                             DEPTH_ANYTHING_HINT)
        self._model: Any = None
        self._processor: Any = None
        self._device: Any = None

    def settings(self) -> dict[str, Any]:
        """Everything that changes the result, for cache keys: the model folder's files and the config."""
        files = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(self.model_path.iterdir())
                 if p.is_file()]
        config = asdict(self.config)
        config.pop("batch_size")  # speed only
        return {"estimator": self.name, "version": DEPTH_ALGORITHM_VERSION, "path": str(self.model_path.resolve()),
                "files": files, **config}

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        try:
            self._processor = AutoImageProcessor.from_pretrained(str(self.model_path), local_files_only=True)
            model = AutoModelForDepthEstimation.from_pretrained(str(self.model_path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise PriorError(f"cannot load Depth Anything V2 from {self.model_path}: {exc}",
                             DEPTH_ANYTHING_HINT) from exc
        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        self._model = model.to(self._device).eval()

    def predict_inverse_depth(self, frames: np.ndarray) -> np.ndarray:
        """frames [T, H, W, 3] uint8 RGB -> relative inverse depth [T, H, W] float32 (>= 0, larger = nearer)."""
        import torch

        self._load()
        num_frames, height, width = frames.shape[:3]
        out = np.empty((num_frames, height, width), dtype=np.float32)
        batch = max(1, self.config.batch_size)
        with torch.no_grad():
            for start in range(0, num_frames, batch):
                chunk = [frames[i] for i in range(start, min(num_frames, start + batch))]
                inputs = self._processor(images=chunk, return_tensors="pt").to(self._device)
                predicted = self._model(**inputs).predicted_depth  # [B, h, w]
                resized = torch.nn.functional.interpolate(predicted[:, None], size=(height, width),
                                                          mode="bicubic", align_corners=False)[:, 0]
                out[start:start + len(chunk)] = resized.clamp_min(0).float().cpu().numpy()
        return out

    def __call__(self, frames: np.ndarray, flow: FlowResult | None, intrinsics: np.ndarray | None,
                 moving_masks: np.ndarray | None = None) -> DepthResult:
        _check_frames(frames)
        inverse = self.predict_inverse_depth(frames)
        sparse = None
        if flow is not None and intrinsics is not None:
            sparse = VideoDepth(self.config.video).sparse(frames, flow, intrinsics, moving_masks)
        depth = inverse_to_depth(inverse, sparse, self.config)
        confidence = np.full(depth.shape, self.config.confidence, dtype=np.float32)
        return DepthResult(depth=depth, confidence=confidence, metric=False)


def inverse_to_depth(inverse: np.ndarray, sparse: SparseDepth | None,
                     config: DepthAnythingV2Config | None = None) -> np.ndarray:
    """Relative inverse depth [T, H, W] -> depth [T, H, W] > 0 with median 1.

    With a sparse triangulated depth: 1/d = a r + b fitted over all its pixels of the clip by iteratively
    re-weighted least squares (Cauchy weights); the fit is used only if a > 0 and it keeps 99% of the
    pixels in front of the camera. Otherwise the default of `DepthAnythingV2Config.default_inverse_shift`.
    """
    cfg = config or DepthAnythingV2Config()
    num_frames, height, width = inverse.shape
    fitted: np.ndarray | None = None
    if sparse is not None:
        small_h, small_w = sparse.log_depth.shape[1:]
        r_small = np.stack([_resize(f, small_w, small_h, cv2.INTER_AREA) for f in inverse])
        ok = np.isfinite(sparse.log_depth)
        if ok.sum() >= cfg.min_fit_points:
            r = r_small[ok].astype(np.float64)
            target = np.exp(-sparse.log_depth[ok].astype(np.float64))
            weight = sparse.confidence[ok].astype(np.float64)
            design = np.stack([r, np.ones_like(r)], axis=1)
            coef = np.zeros(2)
            for _ in range(10):
                sw = np.sqrt(weight)
                coef = np.linalg.lstsq(design * sw[:, None], target * sw, rcond=None)[0]
                residual = design @ coef - target
                scale = 1.4826 * np.median(np.abs(residual)) + 1e-12
                weight = sparse.confidence[ok] / (1.0 + (residual / (2.0 * scale)) ** 2)
            candidate = coef[0] * inverse + coef[1]
            if coef[0] > 0 and np.mean(candidate > 0) >= 0.99:
                floor = np.percentile(candidate[candidate > 0], 1)
                fitted = 1.0 / np.maximum(candidate, floor)
    if fitted is None:
        low, high = np.percentile(inverse, [2, 98])
        normalised = np.clip((inverse - low) / max(high - low, 1e-12), 0.0, 1.0)
        fitted = 1.0 / (normalised + cfg.default_inverse_shift)
    fitted = fitted / np.median(fitted)
    return fitted.astype(np.float32)


# --------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------

DEPTH_BACKENDS = ("video", "file", "depth-anything-v2")


def _config_from(cls: type, options: dict[str, Any], backend: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise PriorError(f"unknown option(s) {unknown} for the {backend!r} depth prior",
                         f"valid options: {', '.join(sorted(known))}")
    return cls(**options)


def make_depth_estimator(name: str = "video", **options: Any) -> DepthEstimator:
    """Depth prior by name: "video" (default, no weights), "file" (path=...), "depth-anything-v2"
    (model_path=...). Other keyword options are fields of that backend's config dataclass, or config=."""
    config = options.pop("config", None)
    if name == "video":
        return VideoDepth(config or _config_from(VideoDepthConfig, options, name))
    if name == "file":
        path = options.pop("path", None)
        if path is None:
            raise PriorError("the 'file' depth prior needs a path", "pass --depth-path FOLDER_OR_NPY")
        return FileDepth(path, config or _config_from(FileDepthConfig, options, name))
    if name == "depth-anything-v2":
        model_path = options.pop("model_path", None)
        if model_path is None:
            raise PriorError("the 'depth-anything-v2' depth prior needs a model folder", DEPTH_ANYTHING_HINT)
        return DepthAnythingV2(model_path, config or _config_from(DepthAnythingV2Config, options, name))
    raise PriorError(f"unknown depth prior {name!r}", f"choose one of: {', '.join(DEPTH_BACKENDS)}")
