"""Camera export: nerfstudio and COLMAP round trips, and projections that agree with each tool's convention."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pycolmap
import pytest
import torch
from test_scene import make_scene

from recon4d.errors import InputError
from recon4d.export.cameras import (
    CameraExportConfig,
    export_cameras,
    read_colmap_text,
    read_transforms_json,
)
from recon4d.geometry import look_at


def posed_scene(num_frames: int = 6):
    """A scene whose cameras circle the origin at different heights, with two distinct intrinsics."""
    scene = make_scene(num_frames=num_frames, n=80, seed=1)
    poses = []
    for t in range(num_frames):
        angle = 2 * np.pi * t / num_frames
        eye = torch.tensor([3 * np.cos(angle), -0.5 + 0.2 * t, 3 * np.sin(angle)], dtype=torch.float64)
        poses.append(
            look_at(eye, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))
        )
    scene.cameras.world_from_camera = torch.stack(poses)
    scene.cameras.intrinsics[num_frames // 2 :] = torch.tensor([70.5, 69.25, 33.0, 22.75])
    scene.gaussians.opacities[:10] = 0.1  # below min_point_opacity: not COLMAP points
    return scene


def opencv_projection(scene, t, points):
    """Our convention: points [M, 3] world -> pixels [M, 2] with pixel (0, 0) centred at (0, 0)."""
    camera_from_world = torch.linalg.inv(scene.cameras.world_from_camera[t]).numpy()
    local = points @ camera_from_world[:3, :3].T + camera_from_world[:3, 3]
    fx, fy, cx, cy = scene.cameras.intrinsics[t].double().numpy()
    return np.stack([fx * local[:, 0] / local[:, 2] + cx, fy * local[:, 1] / local[:, 2] + cy], -1)


def assert_same_cameras(poses, scene):
    assert tuple(poses.world_from_camera.shape) == (scene.num_frames, 4, 4)
    err_pose = (poses.world_from_camera - scene.cameras.world_from_camera).abs().max().item()
    err_k = (poses.intrinsics - scene.cameras.intrinsics.double()).abs().max().item()
    assert err_pose < 1e-6 and err_k < 1e-6, (err_pose, err_k)
    assert (poses.width, poses.height) == (scene.cameras.width, scene.cameras.height)
    assert poses.image_names == [f"frame_{t:04d}.png" for t in range(scene.num_frames)]


def test_nerfstudio_round_trip_and_opengl_convention(tmp_path):
    scene = posed_scene()
    written = export_cameras(scene, tmp_path, formats=["nerfstudio"])
    assert set(written) == {"nerfstudio"} and not (tmp_path / "sparse").exists()
    assert_same_cameras(read_transforms_json(written["nerfstudio"]), scene)

    content = json.loads(written["nerfstudio"].read_text())
    assert content["camera_model"] == "OPENCV" and (content["w"], content["h"]) == (64, 48)
    assert "fl_x" not in content["frames"][0] and content["frames"][-1]["fl_x"] == 70.5
    # Independent check of the convention: nerfstudio casts the ray of pixel (i, j) through (j + .5, i + .5)
    # along (u - cx) / fx, -(v - cy) / fy, -1 in OpenGL camera axes.
    points = np.random.default_rng(0).uniform(-0.5, 0.5, (20, 3))
    for t, frame in enumerate(content["frames"]):
        camera_from_world = np.linalg.inv(np.asarray(frame["transform_matrix"]))
        local = points @ camera_from_world[:3, :3].T + camera_from_world[:3, 3]
        assert (local[:, 2] < 0).all(), "points in front of an OpenGL camera have z < 0"
        fx, fy = frame.get("fl_x", content["fl_x"]), frame.get("fl_y", content["fl_y"])
        cx, cy = frame.get("cx", content["cx"]), frame.get("cy", content["cy"])
        pixels = np.stack([fx * local[:, 0] / -local[:, 2] + cx, fy * -local[:, 1] / -local[:, 2] + cy], -1)
        np.testing.assert_allclose(pixels, opencv_projection(scene, t, points) + 0.5, atol=1e-9)
        assert frame["timestamp"] == pytest.approx(t / 30)


def test_colmap_round_trip_and_pycolmap_projection(tmp_path):
    scene = posed_scene()
    written = export_cameras(scene, tmp_path, formats=("colmap",), config=CameraExportConfig(max_points=30))
    model = written["colmap"]
    assert model == tmp_path / "sparse" / "0"
    assert {"cameras.txt", "images.txt", "points3D.txt"} <= {p.name for p in model.iterdir()}
    assert not list(model.glob(".*")), "staging files left behind"
    assert_same_cameras(read_colmap_text(model), scene)

    # pycolmap's own reader and projection (COLMAP puts pixel (0, 0)'s centre at (0.5, 0.5)).
    reconstruction = pycolmap.Reconstruction(str(model))
    assert reconstruction.num_cameras() == 2 and reconstruction.num_images() == scene.num_frames
    assert {c.model_name for c in reconstruction.cameras.values()} == {"PINHOLE"}
    points = np.random.default_rng(1).uniform(-0.5, 0.5, (20, 3))
    for t in range(scene.num_frames):
        image = reconstruction.images[t + 1]
        projected = np.stack([image.project_point(p) for p in points])
        np.testing.assert_allclose(projected, opencv_projection(scene, t, points) + 0.5, atol=1e-9)

    # points3D: still Gaussians with opacity >= 0.5, thinned to max_points, with their colours.
    still = (~scene.is_dynamic) & (scene.gaussians.opacities >= 0.5)
    assert reconstruction.num_points3D() == min(30, int(still.sum()))
    means = scene.gaussians.means[still].double().numpy()
    for point in reconstruction.points3D.values():
        assert np.abs(means - point.xyz).sum(-1).min() < 1e-6


def test_images_written_beside_the_cameras(tmp_path):
    scene = posed_scene(num_frames=3)
    frames = np.random.default_rng(2).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    written = export_cameras(scene, tmp_path, frames_rgb=torch.from_numpy(frames))
    assert set(written) == {"nerfstudio", "colmap", "images"}
    content = json.loads((tmp_path / "transforms.json").read_text())
    for t, frame in enumerate(content["frames"]):
        png = cv2.imread(str(tmp_path / frame["file_path"]), cv2.IMREAD_COLOR)
        assert np.array_equal(png[..., ::-1], frames[t]), "PNG must hold the RGB frame losslessly"
    names = [image.name for image in pycolmap.Reconstruction(str(written["colmap"])).images.values()]
    assert all((tmp_path / "images" / name).is_file() for name in names)


def test_errors(tmp_path):
    scene = posed_scene(num_frames=2)
    with pytest.raises(InputError, match="unknown camera format"):
        export_cameras(scene, tmp_path, formats=["blender"])
    with pytest.raises(InputError, match="frames have shape"):
        export_cameras(scene, tmp_path, frames_rgb=np.zeros((2, 10, 10, 3), np.uint8))
    with pytest.raises(InputError, match="no COLMAP text model"):
        read_colmap_text(tmp_path)
    with pytest.raises(InputError, match="no transforms.json"):
        read_transforms_json(tmp_path)
    (tmp_path / "transforms.json").write_text('{"frames": [{"file_path": "a.png"}]}')
    with pytest.raises(InputError, match="not a nerfstudio transforms.json"):
        read_transforms_json(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["transforms.json"], "failed exports must not leave files"
