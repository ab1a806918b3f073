"""Evaluation metrics against known answers."""
from __future__ import annotations

import numpy as np
import pytest

from recon4d.errors import InputError
from recon4d.eval.metrics import (
    ate_rpe,
    depth_errors,
    flow_epe,
    mask_iou,
    psnr,
    ssim,
    track_errors,
    umeyama_sim3,
)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _rotation_about(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.deg2rad(degrees)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _trajectory(rng: np.random.Generator, num: int = 15, moving: bool = True) -> np.ndarray:
    poses = np.tile(np.eye(4), (num, 1, 1))
    for t in range(num):
        poses[t, :3, :3] = _rotation_about(np.array([0.2, 1.0, 0.1]), 3.0 * t) @ _rotation_about(
            rng.normal(size=3), 1.0)
        if moving:
            poses[t, :3, 3] = [0.3 * t, 0.05 * t**1.5, np.sin(0.4 * t)]
    return poses


def _sim3_apply(poses: np.ndarray, scale: float, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """World change x' = s R x + t applied to world_from_camera poses."""
    out = poses.copy()
    out[:, :3, :3] = rotation @ poses[:, :3, :3]
    out[:, :3, 3] = scale * poses[:, :3, 3] @ rotation.T + translation
    return out


# ---------------------------------------------------------------------------------------------------- flow


def test_flow_epe_known_values() -> None:
    rng = np.random.default_rng(0)
    flow = rng.normal(size=(3, 8, 10, 2))
    assert flow_epe(flow, flow) == 0.0
    shifted = flow + np.array([3.0, 4.0])
    assert flow_epe(shifted, flow) == pytest.approx(5.0)
    valid = np.zeros((3, 8, 10), bool)
    valid[0, :2] = True
    wrong = flow.copy()
    wrong[~valid] += 100.0
    assert flow_epe(wrong, flow, valid) == 0.0
    assert flow_epe(wrong, flow) == pytest.approx(100.0 * np.sqrt(2) * (1 - valid.mean()))
    with pytest.raises(InputError):
        flow_epe(flow, flow[..., :1])
    with pytest.raises(InputError, match="no valid"):
        flow_epe(flow, flow, np.zeros((3, 8, 10), bool))


# ---------------------------------------------------------------------------------------------------- depth


def test_depth_median_alignment_is_scale_invariant() -> None:
    rng = np.random.default_rng(1)
    gt = rng.uniform(2.0, 8.0, size=(4, 12, 16))
    noisy = gt * rng.uniform(0.9, 1.1, size=gt.shape)
    base = depth_errors(noisy, gt)
    scaled = depth_errors(noisy * 0.137, gt)
    for key in ("abs_rel", "delta_1_25", "rmse"):
        assert scaled[key] == pytest.approx(base[key], rel=1e-9)
    assert scaled["scale"] == pytest.approx(base["scale"] / 0.137, rel=1e-9)
    exact = depth_errors(gt * 3.0, gt)
    assert exact["abs_rel"] == pytest.approx(0.0, abs=1e-12) and exact["delta_1_25"] == 1.0
    assert exact["scale"] == pytest.approx(1.0 / 3.0)


def test_depth_alignment_modes() -> None:
    gt = np.full((2, 4, 4), 4.0)
    pred = np.concatenate([np.full((1, 4, 4), 2.0), np.full((1, 4, 4), 8.0)])  # per-frame scales 2 and 0.5
    per_frame = depth_errors(pred, gt, align="per_frame")
    assert per_frame["abs_rel"] == pytest.approx(0.0)
    clip = depth_errors(pred, gt, align="median")  # one scale cannot fix both frames
    assert clip["abs_rel"] > 0.3
    none = depth_errors(pred, gt, align="none")
    assert none["scale"] == 1.0
    assert none["abs_rel"] == pytest.approx((0.5 + 1.0) / 2)  # |2-4|/4 and |8-4|/4
    assert none["rmse"] == pytest.approx(np.sqrt((4.0 + 16.0) / 2))
    assert none["delta_1_25"] == 0.0
    with pytest.raises(InputError, match="alignment"):
        depth_errors(pred, gt, align="mean")


def test_depth_valid_mask_and_bad_pixels() -> None:
    gt = np.full((1, 3, 3), 2.0)
    pred = gt.copy()
    pred[0, 0, 0] = 50.0
    gt_with_hole = gt.copy()
    gt_with_hole[0, 1, 1] = 0.0  # no ground truth: ignored
    valid = np.ones_like(gt, bool)
    valid[0, 0, 0] = False
    result = depth_errors(pred, gt_with_hole, valid=valid, align="none")
    assert result["abs_rel"] == 0.0
    single = depth_errors(pred[0], gt[0], align="none")  # [H, W] accepted
    assert single["abs_rel"] == pytest.approx(24.0 / 9)


# ---------------------------------------------------------------------------------------------------- masks


def test_mask_iou_known_values() -> None:
    gt = np.zeros((2, 4, 4), bool)
    gt[:, :2] = True  # 16 positives
    pred = np.zeros_like(gt)
    pred[:, 1:3] = True  # 16 positives, 8 shared
    assert mask_iou(pred, gt) == pytest.approx(8 / 24)
    assert mask_iou(gt, gt) == 1.0
    assert mask_iou(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    assert mask_iou(~gt, gt) == 0.0


# ---------------------------------------------------------------------------------------------------- cameras


def test_umeyama_recovers_random_sim3() -> None:
    rng = np.random.default_rng(2)
    for _ in range(5):
        src = rng.normal(size=(30, 3))
        rotation, scale, translation = _random_rotation(rng), float(rng.uniform(0.2, 5.0)), rng.normal(size=3) * 3
        dst = scale * src @ rotation.T + translation
        s, r, t = umeyama_sim3(src, dst)
        assert s == pytest.approx(scale, abs=1e-6)
        np.testing.assert_allclose(r, rotation, atol=1e-6)
        np.testing.assert_allclose(t, translation, atol=1e-6)
        assert np.linalg.det(r) == pytest.approx(1.0)


def test_umeyama_never_returns_a_reflection() -> None:
    rng = np.random.default_rng(3)
    src = rng.normal(size=(20, 3))
    dst = src * np.array([1.0, 1.0, -1.0])  # a mirror image
    _, r, _ = umeyama_sim3(src, dst)
    assert np.linalg.det(r) == pytest.approx(1.0)
    with pytest.raises(InputError):
        umeyama_sim3(src[:2], dst[:2])


def test_ate_rpe_zero_after_sim3() -> None:
    rng = np.random.default_rng(4)
    gt = _trajectory(rng)
    rotation, scale, translation = _random_rotation(rng), 0.37, rng.normal(size=3)
    pred = _sim3_apply(gt, scale, rotation, translation)
    result = ate_rpe(pred, gt)
    assert result["ate_rmse"] < 1e-9
    assert result["rpe_trans"] < 1e-9
    assert result["rpe_rot_deg"] < 1e-5
    assert result["scale"] == pytest.approx(1.0 / scale)
    expected_length = np.sum(np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1))
    assert result["path_length"] == pytest.approx(expected_length)


def test_ate_rpe_measures_known_errors() -> None:
    rng = np.random.default_rng(5)
    gt = _trajectory(rng, num=20)
    # A constant relative-rotation error of 2 degrees on every step.
    pred = gt.copy()
    for t in range(1, len(gt)):
        rel = np.linalg.inv(gt[t - 1]) @ gt[t]
        rel[:3, :3] = rel[:3, :3] @ _rotation_about(np.array([1.0, 0.0, 0.0]), 2.0)
        pred[t] = pred[t - 1] @ rel
    assert ate_rpe(pred, gt)["rpe_rot_deg"] == pytest.approx(2.0, abs=1e-6)
    # Centre noise of known RMS: ATE (after alignment) is at most that and close to it.
    noise = rng.normal(size=(20, 3)) * 0.01
    noisy = gt.copy()
    noisy[:, :3, 3] += noise
    result = ate_rpe(noisy, gt)
    rms = np.sqrt(np.mean(np.sum(noise**2, axis=1)))
    assert 0.6 * rms < result["ate_rmse"] <= rms + 1e-12


def test_ate_rpe_rotation_only_camera() -> None:
    """Centres do not move: align rotations only, scale 1; ATE is the predicted centres' spread."""
    rng = np.random.default_rng(6)
    gt = _trajectory(rng, moving=False)
    gt[:, :3, 3] = [1.0, 2.0, 3.0]
    rotation = _random_rotation(rng)
    pred = _sim3_apply(gt, 1.0, rotation, rng.normal(size=3))
    result = ate_rpe(pred, gt)
    assert result["scale"] == 1.0
    assert result["ate_rmse"] < 1e-9 and result["rpe_rot_deg"] < 1e-5 and result["path_length"] == 0.0
    jitter = pred.copy()
    jitter[:, :3, 3] += rng.normal(size=(len(gt), 3)) * 0.02
    spread = jitter[:, :3, 3] - jitter[:, :3, 3].mean(0)
    assert ate_rpe(jitter, gt)["ate_rmse"] == pytest.approx(np.sqrt(np.mean(np.sum(spread**2, 1))), rel=1e-9)


def test_ate_rpe_bad_input() -> None:
    gt = _trajectory(np.random.default_rng(7))
    with pytest.raises(InputError):
        ate_rpe(gt[:3], gt)
    broken = gt.copy()
    broken[2, 0, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        ate_rpe(broken, gt)


# ---------------------------------------------------------------------------------------------------- images


def test_psnr_known_values() -> None:
    a = np.zeros((8, 8, 3))
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    assert psnr(a, a + 25.5, max_val=255.0) == pytest.approx(20.0)


def test_ssim_known_values() -> None:
    rng = np.random.default_rng(8)
    image = rng.random((40, 48, 3))
    assert ssim(image, image) == pytest.approx(1.0)
    # Constant images: only the luminance term differs from 1 -> (2xy + C1) / (x^2 + y^2 + C1).
    x, y, c1 = 0.3, 0.7, (0.01) ** 2
    assert ssim(np.full((32, 32), x), np.full((32, 32), y)) == pytest.approx((2 * x * y + c1) / (x * x + y * y + c1))
    # Noise lowers SSIM monotonically; the score is symmetric; [T, H, W, C] averages frames.
    light = np.clip(image + rng.normal(size=image.shape) * 0.05, 0, 1)
    heavy = np.clip(image + rng.normal(size=image.shape) * 0.3, 0, 1)
    assert 1.0 > ssim(light, image) > ssim(heavy, image) > 0.0
    assert ssim(light, image) == pytest.approx(ssim(image, light))
    clip = np.stack([image, image])
    assert ssim(np.stack([light, heavy]), clip) == pytest.approx((ssim(light, image) + ssim(heavy, image)) / 2)
    # Negated structure gives a negative score.
    grey = rng.random((32, 32))
    assert ssim(1.0 - grey, grey) < 0.0
    with pytest.raises(InputError):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))


def test_ssim_matches_scikit_image_reference() -> None:
    """Value computed once with skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1) on the same arrays."""
    rng = np.random.default_rng(0)
    a = rng.random((40, 48, 3))
    b = np.clip(a + rng.normal(size=a.shape) * 0.1, 0, 1)
    assert ssim(a, b) == pytest.approx(0.9461843606542087, abs=1e-9)


# ---------------------------------------------------------------------------------------------------- tracks


def test_track_errors_known_values() -> None:
    gt = np.zeros((2, 4, 2))
    pred = gt.copy()
    pred[:, :, 0] = [[0.5, 1.5, 3.0, 10.0], [0.0, 0.0, 0.0, 0.0]]
    visible = np.array([[True, True, True, True], [True, True, False, False]])
    result = track_errors(pred, gt, visible)
    errors = np.array([0.5, 1.5, 3.0, 10.0, 0.0, 0.0])
    assert result["median_px"] == pytest.approx(np.median(errors))
    assert result["mean_px"] == pytest.approx(errors.mean())
    assert result["within_1px"] == pytest.approx(3 / 6)
    assert result["within_2px"] == pytest.approx(4 / 6)
    assert result["within_4px"] == pytest.approx(5 / 6)
    assert np.isnan(result["visibility_accuracy"])
    pred_visible = np.array([[True, True, True, False], [True, True, True, False]])
    assert track_errors(pred, gt, visible, pred_visible)["visibility_accuracy"] == pytest.approx(6 / 8)
    with pytest.raises(InputError):
        track_errors(pred, gt, np.zeros_like(visible))


def test_metrics_on_synthetic_ground_truth() -> None:
    """The metrics and the generator agree: perfect predictions score perfectly, scaled cameras align."""
    from recon4d.eval.synthetic import make_synthetic

    clip = make_synthetic("translate", num_frames=6, width=64, height=48)
    assert flow_epe(clip.flow_forward, clip.flow_forward, ~clip.occluded_forward) == 0.0
    depth = depth_errors(clip.depth * 0.25, clip.depth)
    assert depth["abs_rel"] < 1e-6 and depth["scale"] == pytest.approx(4.0)
    scaled = _sim3_apply(clip.world_from_camera, 0.5, np.eye(3), np.zeros(3))
    cams = ate_rpe(scaled, clip.world_from_camera)
    assert cams["ate_rmse"] < 1e-9 and cams["scale"] == pytest.approx(2.0)
    tracks = track_errors(clip.tracks_2d, clip.tracks_2d, clip.track_visible, clip.track_visible)
    assert tracks["within_1px"] == 1.0 and tracks["visibility_accuracy"] == 1.0
    rotate = make_synthetic("rotate", num_frames=6, width=64, height=48)
    assert ate_rpe(rotate.world_from_camera, rotate.world_from_camera)["scale"] == 1.0
