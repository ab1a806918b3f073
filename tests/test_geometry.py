"""Quaternions, small rigid motions, pose interpolation and camera helpers."""
from __future__ import annotations

import math

import numpy as np
import torch

from recon4d.geometry import invert_pose, look_at, quaternion_from_rotation, rotation_from_quaternion
from recon4d.geometry.camera import scale_camera_matrix, scale_intrinsics
from recon4d.geometry.lie import apply_pose_delta, interpolate_pose, so3_exp, so3_log


def test_quaternion_round_trip():
    q = torch.randn(500, 4, dtype=torch.float64)
    rotation = rotation_from_quaternion(q)
    assert torch.allclose(rotation @ rotation.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(500, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(rotation), torch.ones(500, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(rotation_from_quaternion(quaternion_from_rotation(rotation)), rotation, atol=1e-10)


def test_so3_exp_log_and_small_angles():
    omega = torch.randn(200, 3, dtype=torch.float64)
    omega = omega / omega.norm(dim=-1, keepdim=True) * torch.rand(200, 1, dtype=torch.float64) * 3.0  # angles below pi
    assert torch.allclose(so3_log(so3_exp(omega)), omega, atol=1e-9)
    tiny = torch.tensor([1e-7, -2e-7, 3e-7], dtype=torch.float64)
    assert torch.allclose(so3_exp(tiny), torch.eye(3, dtype=torch.float64) + torch.tensor(
        [[0, -3e-7, -2e-7], [3e-7, 0, -1e-7], [2e-7, 1e-7, 0]], dtype=torch.float64), atol=1e-12)


def test_pose_delta_gradient_matches_finite_differences():
    pose = look_at(torch.tensor([0.3, -0.2, -3.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                   torch.tensor([0, -1.0, 0], dtype=torch.float64))
    point = torch.tensor([0.2, 0.1, 0.5], dtype=torch.float64)

    def f(delta):
        return (apply_pose_delta(delta, invert_pose(pose))[:3, :3] @ point).sum()

    assert torch.autograd.gradcheck(f, (torch.zeros(6, dtype=torch.float64, requires_grad=True),))


def test_interpolate_pose_midpoint():
    a = torch.eye(4, dtype=torch.float64)
    b = torch.eye(4, dtype=torch.float64)
    b[:3, :3] = so3_exp(torch.tensor([0.0, 0.8, 0.0], dtype=torch.float64))
    b[:3, 3] = torch.tensor([2.0, 0.0, -1.0])
    mid = interpolate_pose(a, b, 0.25)
    assert torch.allclose(so3_log(mid[:3, :3]), torch.tensor([0.0, 0.2, 0.0], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(mid[:3, 3], torch.tensor([0.5, 0.0, -0.25], dtype=torch.float64))
    assert torch.allclose(interpolate_pose(a, b, 1.0), b, atol=1e-9)


def test_look_at_points_the_optical_axis_at_the_target():
    eye = torch.tensor([1.0, -2.0, -4.0], dtype=torch.float64)
    pose = look_at(eye, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))
    target_cam = invert_pose(pose) @ torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    assert abs(target_cam[0]) < 1e-12 and abs(target_cam[1]) < 1e-12
    assert math.isclose(float(target_cam[2]), float(eye.norm()), rel_tol=1e-12)


def test_scale_camera_matrix_matches_numpy_scale_intrinsics_and_inverts():
    generator = torch.Generator().manual_seed(0)
    fx_fy = 50.0 + 100.0 * torch.rand(2, 3, 2, generator=generator, dtype=torch.float64)
    cx_cy = 10.0 + 60.0 * torch.rand(2, 3, 2, generator=generator, dtype=torch.float64)
    K = torch.zeros(2, 3, 3, 3, dtype=torch.float64)  # batched [2, 3] cameras
    K[..., 0, 0], K[..., 1, 1], K[..., :2, 2], K[..., 2, 2] = fx_fy[..., 0], fx_fy[..., 1], cx_cy, 1.0
    K.requires_grad_(True)
    before = K.detach().clone()
    scaled = scale_camera_matrix(K, 0.5, 1.75)
    assert scaled.shape == K.shape and scaled.dtype == K.dtype and torch.equal(K.detach(), before)
    intrinsics = torch.cat([fx_fy, cx_cy], -1).numpy()  # [..., 4] fx, fy, cx, cy
    expected = scale_intrinsics(intrinsics, 0.5, 1.75)
    got = scaled.detach()[..., [0, 1, 0, 1], [0, 1, 2, 2]].numpy()
    assert np.allclose(got, expected, rtol=0, atol=1e-12)
    assert torch.equal(scaled.detach()[..., 2, :], before[..., 2, :])
    assert torch.equal(scaled.detach()[..., [1, 0], [0, 1]], before[..., [1, 0], [0, 1]])  # zeros stay zeros
    for s in (0.25, 3.0, 1.0 / 3.0, 1.6):  # s then 1 / s is the identity
        assert torch.allclose(scale_camera_matrix(scale_camera_matrix(K, s, s), 1 / s, 1 / s), K, rtol=0, atol=1e-12)
    scaled.sum().backward()  # differentiable: d(sum)/dfx = 0.5, d(sum)/dcx = 0.5
    assert math.isclose(float(K.grad[0, 0, 0, 0]), 0.5) and math.isclose(float(K.grad[0, 0, 0, 2]), 0.5)
    assert scale_camera_matrix(K.detach().float(), 2.0, 2.0).dtype == torch.float32
