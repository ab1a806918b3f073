"""recon4d.geometry.camera.project_to_pixels: the one world-to-pixel projection, against hand-computed values,
OpenCV's projectPoints, per-camera loops (batch dimensions) and finite differences."""
from __future__ import annotations

import doctest

import cv2
import numpy as np
import pytest
import torch

import recon4d.geometry.camera as camera_module
from recon4d.geometry import intrinsics_matrices, intrinsics_matrix, invert_pose, look_at, project_to_pixels

K = intrinsics_matrix(100.0, 80.0, 32.0, 24.0, dtype=torch.float64)


def rotated_camera_from_world() -> torch.Tensor:
    """A camera looking along world +x: camera x = -world z, camera y = world y, camera z = world x; t = (0.5, 0, 2)."""
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = torch.tensor([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    pose[:3, 3] = torch.tensor([0.5, 0.0, 2.0], dtype=torch.float64)
    return pose


def test_hand_computed_projection():
    # world (3, 0.4, 1) -> camera (-1 + 0.5, 0.4, 3 + 2) = (-0.5, 0.4, 5) -> u = 100 * -0.1 + 32, v = 80 * 0.08 + 24
    pixels, z = project_to_pixels(torch.tensor([[3.0, 0.4, 1.0]], dtype=torch.float64), rotated_camera_from_world(), K)
    assert pixels[0].tolist() == pytest.approx([22.0, 30.4], abs=1e-12)
    assert z.tolist() == [5.0]


def test_docstring_example_runs():
    assert doctest.testmod(camera_module).failed == 0


def test_matches_opencv_project_points():
    generator = torch.Generator().manual_seed(0)
    world_from_camera = look_at(torch.tensor([1.0, -0.5, -4.0], dtype=torch.float64),
                                torch.tensor([0.2, 0.1, 0.3], dtype=torch.float64),
                                torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))
    points = torch.rand(50, 3, generator=generator, dtype=torch.float64) * 2 - 1
    camera_from_world = invert_pose(world_from_camera)
    pixels, z = project_to_pixels(points, camera_from_world, K)
    rvec, _ = cv2.Rodrigues(camera_from_world[:3, :3].numpy())
    expected, _ = cv2.projectPoints(points.numpy(), rvec, camera_from_world[:3, 3].numpy(), K.numpy(), None)
    np.testing.assert_allclose(pixels.numpy(), expected[:, 0], atol=1e-9)
    np.testing.assert_allclose(z.numpy(), (points @ camera_from_world[:3, :3].T + camera_from_world[:3, 3])[:, 2], atol=1e-12)


def test_points_at_or_behind_min_depth_are_projected_at_min_depth_not_mirrored():
    camera_points = torch.tensor([[1.0, -2.0, -3.0], [0.5, 0.5, 0.0], [0.2, 0.1, 1e-4], [0.2, 0.1, 2.0]], dtype=torch.float64)
    pixels, z = project_to_pixels(camera_points, torch.eye(4, dtype=torch.float64), K, min_depth=1e-3)
    assert z.tolist() == camera_points[:, 2].tolist()  # depths come back unclamped
    assert bool(torch.isfinite(pixels).all())
    clamped = camera_points[:3, :2] / 1e-3 * torch.tensor([100.0, 80.0], dtype=torch.float64) + torch.tensor([32.0, 24.0], dtype=torch.float64)
    assert torch.allclose(pixels[:3], clamped)
    # Behind the camera on the right and above: lands right of and above the image, where x / z would mirror it.
    assert pixels[0, 0] > 1e4 and pixels[0, 1] < -1e4
    assert pixels[3].tolist() == pytest.approx([42.0, 28.0])  # in front: untouched by the clamp


def test_leading_batch_dimensions_broadcast_like_a_loop_over_cameras():
    generator = torch.Generator().manual_seed(1)
    eyes = torch.tensor([[0.0, 0.0, -3.0], [2.0, 0.5, -2.0], [-2.0, -0.3, -2.5]], dtype=torch.float64)
    up = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)
    cameras = torch.stack([invert_pose(look_at(eye, torch.zeros(3, dtype=torch.float64), up)) for eye in eyes])
    intrinsics = torch.tensor([[100.0, 80.0, 32.0, 24.0], [90.0, 90.0, 31.5, 23.5], [120.0, 110.0, 30.0, 20.0]],
                              dtype=torch.float64)
    Ks = intrinsics_matrices(intrinsics)
    assert Ks.shape == (3, 3, 3) and torch.equal(Ks[0], K)
    shared = torch.rand(7, 3, generator=generator, dtype=torch.float64)
    pixels, z = project_to_pixels(shared, cameras, Ks)  # [N, 3] into V cameras
    assert pixels.shape == (3, 7, 2) and z.shape == (3, 7)
    own = torch.rand(3, 7, 3, generator=generator, dtype=torch.float64)
    own_pixels, own_z = project_to_pixels(own, cameras, Ks)  # one point set per camera
    for v in range(3):
        for points, batched, batched_z in ((shared, pixels, z), (own[v], own_pixels, own_z)):
            single, single_z = project_to_pixels(points, cameras[v], Ks[v])
            assert torch.allclose(batched[v], single, atol=1e-12) and torch.allclose(batched_z[v], single_z, atol=1e-12)


def test_gradients_match_finite_differences():
    points = torch.tensor([[0.3, -0.2, 2.0], [1.5, 0.4, 0.5]], dtype=torch.float64, requires_grad=True)  # z 0.6, 1.8
    camera_from_world = rotated_camera_from_world()
    camera_from_world[:3, 3] = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    camera_from_world.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, c: project_to_pixels(p, c, K), (points, camera_from_world))
