"""Evaluation metrics: optical flow, depth, masks, camera trajectories, images and point tracks.

Pure NumPy/SciPy functions. Conventions: pixels for flow and tracks, OpenCV ``world_from_camera`` 4x4 poses,
images as floats in [0, max_val]. Bad shapes or empty selections raise :class:`recon4d.errors.InputError`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recon4d.errors import InputError
from recon4d.geometry.camera import rotation_angle_deg


@dataclass(frozen=True)
class MetricsConfig:
    """Numbers the metrics depend on.

    Attributes:
        degenerate_centre_std: camera centres whose RMS spread about their mean is below this (scene units)
            count as not moving (rotation-only or static camera) in :func:`ate_rpe`.
    """

    degenerate_centre_std: float = 1e-6


DEFAULT_METRICS = MetricsConfig()


def _check_same_shape(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise InputError(f"{name_a} has shape {a.shape} but {name_b} has {b.shape}", hint="pass matching arrays")


def _valid_or_all(valid: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if valid is None:
        return np.ones(shape, bool)
    valid = np.asarray(valid, bool)
    if valid.shape != shape:
        raise InputError(f"valid mask has shape {valid.shape}, expected {shape}", hint="one flag per pixel")
    return valid


# ----------------------------------------------------------------------------------------------------------
# Flow, depth, masks


def flow_epe(flow_pred: np.ndarray, flow_gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean end-point error in pixels.

    Args:
        flow_pred, flow_gt: [..., 2] flow vectors (e.g. [T-1, H, W, 2]).
        valid: [...] bool, pixels to average over (e.g. ``~occluded_forward``); all when None.
    """
    flow_pred = np.asarray(flow_pred, np.float64)
    flow_gt = np.asarray(flow_gt, np.float64)
    _check_same_shape("flow_pred", flow_pred, "flow_gt", flow_gt)
    if flow_gt.shape[-1] != 2:
        raise InputError(f"flow must end in a (du, dv) axis, got shape {flow_gt.shape}", hint="use [..., 2]")
    mask = _valid_or_all(valid, flow_gt.shape[:-1])
    if not mask.any():
        raise InputError("flow_epe has no valid pixels", hint="check the valid mask")
    error = np.linalg.norm(flow_pred - flow_gt, axis=-1)
    return float(error[mask].mean())


def _depth_stats(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    """abs_rel, delta < 1.25, rmse of aligned depth samples [N]."""
    abs_rel = float(np.mean(np.abs(pred - gt) / gt))
    ratio = np.maximum(pred / gt, gt / pred)
    delta = float(np.mean(ratio < 1.25))
    rmse = float(np.sqrt(np.mean((pred - gt) ** 2)))
    return abs_rel, delta, rmse


def depth_errors(
    depth_pred: np.ndarray, depth_gt: np.ndarray, valid: np.ndarray | None = None, align: str = "median"
) -> dict[str, float]:
    """Depth accuracy after scale alignment.

    Args:
        depth_pred, depth_gt: [T, H, W] (or [H, W], one frame) z-depth.
        valid: [T, H, W] bool; pixels used. Pixels with non-finite or non-positive depth (either side) are
            always dropped.
        align: ``"median"`` one scale for the whole clip, median(gt) / median(pred) over all valid pixels
            (the right choice for a relative-depth fit, whose frames share one scale);
            ``"per_frame"`` one median scale per frame (the usual monocular-depth protocol);
            ``"none"`` no scaling (metric depth).

    Returns:
        abs_rel: mean |pred - gt| / gt; delta_1_25: share of max(pred/gt, gt/pred) < 1.25; rmse: root mean
        squared error in gt units; scale: the factor applied to pred (for ``per_frame`` the median of the
        per-frame factors; 1 for ``none``).
    """
    pred = np.asarray(depth_pred, np.float64)
    gt = np.asarray(depth_gt, np.float64)
    _check_same_shape("depth_pred", pred, "depth_gt", gt)
    if pred.ndim == 2:
        pred, gt = pred[None], gt[None]
        valid = None if valid is None else np.asarray(valid)[None]
    if pred.ndim != 3:
        raise InputError(f"depth must be [T, H, W] or [H, W], got shape {depth_gt.shape}", hint="drop channel axes")
    mask = _valid_or_all(valid, gt.shape)
    mask = mask & np.isfinite(pred) & np.isfinite(gt) & (pred > 0) & (gt > 0)
    if not mask.any():
        raise InputError("depth_errors has no valid pixels", hint="check the valid mask and depth signs")

    if align == "median":
        scale = float(np.median(gt[mask]) / np.median(pred[mask]))
        scales = np.full(len(gt), scale)
    elif align == "per_frame":
        scales = np.ones(len(gt))
        for t in range(len(gt)):
            if mask[t].any():
                scales[t] = np.median(gt[t][mask[t]]) / np.median(pred[t][mask[t]])
        scale = float(np.median(scales[mask.reshape(len(gt), -1).any(axis=1)]))
    elif align == "none":
        scale, scales = 1.0, np.ones(len(gt))
    else:
        raise InputError(f"unknown depth alignment {align!r}", hint="use 'median', 'per_frame' or 'none'")

    aligned = pred * scales[:, None, None]
    abs_rel, delta, rmse = _depth_stats(aligned[mask], gt[mask])
    return {"abs_rel": abs_rel, "delta_1_25": delta, "rmse": rmse, "scale": scale}


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of the positive class over the whole array (e.g. [T, H, W] for a clip).

    Both empty counts as perfect agreement (1.0).
    """
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    _check_same_shape("pred", pred, "gt", gt)
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(pred & gt) / union)


# ----------------------------------------------------------------------------------------------------------
# Camera trajectories


def umeyama_sim3(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity dst ~ scale * R @ src + t (Umeyama 1991).

    Args:
        src, dst: [N, 3] corresponding points, N >= 3 (collinear points leave the rotation about their line
            free; the aligned points are still optimal).
        with_scale: False fixes scale = 1 (SE(3) alignment).

    Returns:
        scale (float), R [3, 3] (det +1), t [3].
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    _check_same_shape("src", src, "dst", dst)
    if src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise InputError(f"umeyama_sim3 needs [N, 3] points with N >= 3, got {src.shape}", hint="pass more points")
    mean_src, mean_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mean_src, dst - mean_dst
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1.0  # reflection -> closest proper rotation
    rotation = u @ sign @ vt
    var_src = float(np.mean(np.sum(src_c**2, axis=1)))
    if with_scale:
        if var_src <= 0.0:
            raise InputError("umeyama_sim3: source points coincide", hint="scale is undefined; use with_scale=False")
        scale = float(np.sum(singular * np.diag(sign)) / var_src)
    else:
        scale = 1.0
    translation = mean_dst - scale * rotation @ mean_src
    return scale, rotation, translation


def _project_to_rotation(matrix: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(matrix)
    sign = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    return u @ sign @ vt


def ate_rpe(
    world_from_camera_pred: np.ndarray,
    world_from_camera_gt: np.ndarray,
    config: MetricsConfig = DEFAULT_METRICS,
) -> dict[str, float]:
    """Absolute trajectory error and relative pose error of a camera path.

    Alignment: Sim(3) (Umeyama) of predicted camera centres onto true centres. When the true centres barely
    move (RMS spread < ``config.degenerate_centre_std``: rotation-only or static camera) or the predicted ones
    coincide, a Sim(3) is undefined; then the rotation is the chordal mean of R_gt R_pred^T over frames, the
    scale is fixed to 1, and the translation matches the centroids (ATE then measures the predicted centres'
    spread, in the prediction's own units).

    Args:
        world_from_camera_pred, world_from_camera_gt: [T, 4, 4] OpenCV poses.

    Returns:
        ate_rmse: RMS distance between aligned predicted and true centres (gt units);
        rpe_trans: RMS translation error of consecutive relative motions (pred translations scaled);
        rpe_rot_deg: RMS rotation error of consecutive relative motions, degrees;
        path_length: length of the true centre path; scale: the alignment scale.
    """
    pred = np.asarray(world_from_camera_pred, np.float64)
    gt = np.asarray(world_from_camera_gt, np.float64)
    _check_same_shape("world_from_camera_pred", pred, "world_from_camera_gt", gt)
    if pred.ndim != 3 or pred.shape[1:] != (4, 4) or len(pred) < 1:
        raise InputError(f"poses must be [T, 4, 4], got {pred.shape}", hint="stack world_from_camera matrices")
    if not (np.isfinite(pred).all() and np.isfinite(gt).all()):
        raise InputError("poses contain NaN or inf", hint="check the camera estimate")

    centres_pred, centres_gt = pred[:, :3, 3], gt[:, :3, 3]
    spread_gt = np.sqrt(np.mean(np.sum((centres_gt - centres_gt.mean(0)) ** 2, axis=1)))
    spread_pred = np.sqrt(np.mean(np.sum((centres_pred - centres_pred.mean(0)) ** 2, axis=1)))
    degenerate = len(pred) < 3 or spread_gt < config.degenerate_centre_std or spread_pred < config.degenerate_centre_std
    if degenerate:
        rotation = _project_to_rotation(np.einsum("tij,tkj->ik", gt[:, :3, :3], pred[:, :3, :3]))
        scale = 1.0
        translation = centres_gt.mean(0) - rotation @ centres_pred.mean(0)
    else:
        scale, rotation, translation = umeyama_sim3(centres_pred, centres_gt)
    aligned = scale * centres_pred @ rotation.T + translation
    ate = float(np.sqrt(np.mean(np.sum((aligned - centres_gt) ** 2, axis=1))))

    # Relative motions are invariant to the world transform; only the scale applies.
    if len(pred) >= 2:
        pred_scaled = pred.copy()
        pred_scaled[:, :3, 3] *= scale
        rel_pred = np.linalg.inv(pred_scaled[:-1]) @ pred_scaled[1:]
        rel_gt = np.linalg.inv(gt[:-1]) @ gt[1:]
        error = np.linalg.inv(rel_gt) @ rel_pred
        rpe_trans = float(np.sqrt(np.mean(np.sum(error[:, :3, 3] ** 2, axis=1))))
        rpe_rot = float(np.sqrt(np.mean(rotation_angle_deg(error[:, :3, :3]) ** 2)))
    else:
        rpe_trans, rpe_rot = 0.0, 0.0
    path_length = float(np.sum(np.linalg.norm(np.diff(centres_gt, axis=0), axis=1)))
    return {"ate_rmse": ate, "rpe_trans": rpe_trans, "rpe_rot_deg": rpe_rot, "path_length": path_length,
            "scale": float(scale)}


# ----------------------------------------------------------------------------------------------------------
# Images


def psnr(a: np.ndarray, b: np.ndarray, max_val: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements of same-shape images (inf when equal)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    _check_same_shape("a", a, "b", b)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(max_val**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, max_val: float = 1.0) -> float:
    """Mean structural similarity (Wang et al. 2004), computed by :func:`recon4d.image.ssim` in float64.

    Args:
        a, b: [H, W] grey, [H, W, C] or [T, H, W, C] images with values in [0, max_val].

    The local statistics use mirrored borders; the mean skips a border as wide as the window radius, like
    scikit-image's ``structural_similarity(gaussian_weights=True)``.
    """
    import torch

    from recon4d.image import SSIM_RADIUS, ssim as ssim_tensor

    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    _check_same_shape("a", a, "b", b)
    if a.ndim == 2:
        a, b = a[:, :, None], b[:, :, None]
    elif a.ndim not in (3, 4):
        raise InputError(f"ssim takes [H, W], [H, W, C] or [T, H, W, C], got {a.shape}", hint="reshape images")
    if min(a.shape[-3:-1]) <= 2 * SSIM_RADIUS:
        raise InputError(f"images {a.shape[-3:-1]} are smaller than the SSIM window", hint="use larger images")
    return float(ssim_tensor(torch.from_numpy(a), torch.from_numpy(b), max_val))


# ----------------------------------------------------------------------------------------------------------
# Point tracks


def track_errors(
    pred_2d: np.ndarray, gt_2d: np.ndarray, gt_visible: np.ndarray, pred_visible: np.ndarray | None = None
) -> dict[str, float]:
    """Position accuracy of 2D point tracks on the frames where the true point is visible.

    Args:
        pred_2d, gt_2d: [T, P, 2] positions (u, v) in pixels.
        gt_visible: [T, P] bool; errors are taken over these entries (the query frame included).
        pred_visible: [T, P] bool predicted visibility, optional.

    Returns:
        median_px, mean_px: end-point error in pixels; within_1px/2px/4px: share with error < 1/2/4 px;
        visibility_accuracy: share of all [T, P] entries where pred_visible == gt_visible (NaN without
        pred_visible).
    """
    pred = np.asarray(pred_2d, np.float64)
    gt = np.asarray(gt_2d, np.float64)
    _check_same_shape("pred_2d", pred, "gt_2d", gt)
    if gt.ndim != 3 or gt.shape[-1] != 2:
        raise InputError(f"tracks must be [T, P, 2], got {gt.shape}", hint="stack (u, v) per frame and point")
    visible = _valid_or_all(gt_visible, gt.shape[:2])
    if not visible.any():
        raise InputError("track_errors: no visible ground-truth points", hint="check gt_visible")
    error = np.linalg.norm(pred - gt, axis=-1)[visible]
    error = np.where(np.isfinite(error), error, np.inf)  # a lost track counts as infinitely wrong
    out = {
        "median_px": float(np.median(error)),
        "mean_px": float(np.mean(error)),
        "within_1px": float(np.mean(error < 1.0)),
        "within_2px": float(np.mean(error < 2.0)),
        "within_4px": float(np.mean(error < 4.0)),
        "visibility_accuracy": float("nan"),
    }
    if pred_visible is not None:
        pred_vis = _valid_or_all(pred_visible, gt.shape[:2])
        out["visibility_accuracy"] = float(np.mean(pred_vis == np.asarray(gt_visible, bool)))
    return out


__all__ = [
    "DEFAULT_METRICS", "MetricsConfig", "ate_rpe", "depth_errors", "flow_epe", "mask_iou", "psnr", "ssim",
    "track_errors", "umeyama_sim3",
]
