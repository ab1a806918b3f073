"""recon4d.nerf.data: every reader round-trips cameras, projections and pixels in recon4d's conventions."""
from __future__ import annotations

import json
import logging
import math

import cv2
import numpy as np
import pycolmap
import pytest
import torch

from recon4d.errors import InputError
from recon4d.geometry import look_at
from recon4d.io.scene import save_scene
from recon4d.nerf.data import (
    PosedImages,
    holdout_split,
    load_posed_images,
    write_transforms,
)
from recon4d.nerf.data.conventions import scale_intrinsics

WIDTH, HEIGHT = 40, 30


def orbit_poses(count: int, radius: float = 4.0) -> torch.Tensor:
    """[count, 4, 4] OpenCV cameras around the origin at varying heights, looking at it."""
    poses = []
    for i in range(count):
        angle = 2 * math.pi * i / count
        eye = torch.tensor([radius * math.cos(angle), -0.6 + 0.3 * i, radius * math.sin(angle)], dtype=torch.float64)
        poses.append(look_at(eye, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)))
    return torch.stack(poses).float()


def synthetic_set(count: int = 5, alphas: bool = False, per_frame: bool = False) -> PosedImages:
    g = torch.Generator().manual_seed(count)
    images = torch.rand(count, HEIGHT, WIDTH, 3, generator=g)
    intrinsics = torch.tensor([[45.0, 44.0, 19.25, 14.5]]).repeat(count, 1)
    if per_frame:
        intrinsics[count // 2:] = torch.tensor([50.5, 49.0, 20.0, 15.25])
    alpha = None
    if alphas:
        alpha = (torch.rand(count, HEIGHT, WIDTH, generator=g) * 1.2).clamp(0, 1)
        images = images * alpha[..., None] + (1 - alpha[..., None])  # over white
    return PosedImages(images, alpha, None, orbit_poses(count), intrinsics, [f"view_{i:02d}.png" for i in range(count)],
                       near=2.0, far=6.0, source="synthetic")


def project(world_from_camera: np.ndarray, intrinsics: np.ndarray, point: np.ndarray) -> np.ndarray:
    """OpenCV pinhole with pixel centres at integers."""
    local = np.linalg.inv(world_from_camera) @ np.append(point, 1.0)
    fx, fy, cx, cy = intrinsics
    return np.array([fx * local[0] / local[2] + cx, fy * local[1] / local[2] + cy])


def project_opengl_half_pixel(matrix: np.ndarray, fx: float, fy: float, cx: float, cy: float, point: np.ndarray):
    """The transforms.json convention done independently: OpenGL camera looks down -z, y up, centres at +0.5."""
    local = np.linalg.inv(matrix) @ np.append(point, 1.0)
    return np.array([fx * local[0] / -local[2] + cx, -fy * local[1] / -local[2] + cy]) - 0.5


def assert_same(read: PosedImages, truth: PosedImages, image_tol: float = 1.0 / 255 + 1e-6):
    assert read.names == truth.names
    assert torch.allclose(read.world_from_camera, truth.world_from_camera, atol=1e-5)
    assert torch.allclose(read.intrinsics, truth.intrinsics, atol=1e-4)
    assert (read.images - truth.images).abs().max() <= image_tol


@pytest.mark.parametrize("per_frame", [False, True])
def test_transforms_round_trip_and_opengl_projection(tmp_path, per_frame):
    truth = synthetic_set(per_frame=per_frame)
    path = write_transforms(truth, tmp_path, shared_intrinsics=not per_frame)
    read = load_posed_images(tmp_path)
    assert_same(read, truth)
    assert (read.near, read.far) == (2.0, 6.0) and read.alphas is None
    content = json.loads(path.read_text())
    point = np.array([0.3, -0.2, 0.1])
    for i, frame in enumerate(content["frames"]):
        get = lambda k, frame=frame: frame.get(k, content.get(k))
        expected = project_opengl_half_pixel(np.array(frame["transform_matrix"]), get("fl_x"), get("fl_y"),
                                             get("cx"), get("cy"), point)
        ours = project(read.world_from_camera[i].double().numpy(), read.intrinsics[i].double().numpy(), point)
        assert np.allclose(ours, expected, atol=1e-4)


def test_blender_camera_angle_rgba_and_missing_images(tmp_path, caplog):
    truth = synthetic_set(count=4, alphas=True)
    write_transforms(truth, tmp_path)
    content = json.loads((tmp_path / "transforms.json").read_text())
    blender = {"camera_angle_x": 0.7, "frames": [{"file_path": "./" + f["file_path"][:-4],  # no extension
                                                   "transform_matrix": f["transform_matrix"]} for f in content["frames"]]}
    blender["frames"].insert(2, {"file_path": "./images/gone", "transform_matrix": content["frames"][0]["transform_matrix"]})
    blender["frames"].append({"file_path": "./images/also_gone", "transform_matrix": content["frames"][0]["transform_matrix"]})
    (tmp_path / "transforms_train.json").write_text(json.dumps(blender))
    (tmp_path / "transforms.json").unlink()
    with caplog.at_level(logging.WARNING):
        read = load_posed_images(tmp_path)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "2 of 6 frames" in warnings[0].getMessage()
    assert len(read) == 4 and read.names == truth.names
    fx = 0.5 * WIDTH / math.tan(0.35)
    assert torch.allclose(read.intrinsics[0], torch.tensor([fx, fx, (WIDTH - 1) / 2, (HEIGHT - 1) / 2]), atol=1e-4)
    assert torch.allclose(read.world_from_camera, truth.world_from_camera, atol=1e-5)
    # RGBA composited over white again gives the same pixels (up to 8-bit quantisation of colour and alpha)
    assert (read.alphas - truth.alphas).abs().max() <= 0.5 / 255 + 1e-6
    assert (read.images - truth.images).abs().max() <= 2.0 / 255


def test_short_side_moves_projections_with_the_pixels(tmp_path):
    truth = synthetic_set()
    write_transforms(truth, tmp_path)
    small = load_posed_images(tmp_path, short_side=15)
    assert small.images.shape[1:3] == (15, 20)
    point = np.array([0.2, 0.1, -0.3])
    big_px = project(truth.world_from_camera[1].double().numpy(), truth.intrinsics[1].double().numpy(), point)
    small_px = project(small.world_from_camera[1].double().numpy(), small.intrinsics[1].double().numpy(), point)
    assert np.allclose(small_px, (big_px + 0.5) * 0.5 - 0.5, atol=1e-4)
    assert np.allclose(scale_intrinsics(np.array([10.0, 10.0, 4.5, 4.5]), 0.5, 0.5), [5.0, 5.0, 2.0, 2.0])


def _pattern(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth colour pattern of normalised pinhole coordinates."""
    return np.stack([0.5 + 0.4 * np.sin(6 * x), 0.5 + 0.4 * np.cos(5 * y), 0.5 + 0.3 * np.sin(4 * (x + y))], -1)


def _undistort_normalised(xd: np.ndarray, yd: np.ndarray, distortion: np.ndarray):
    """Invert the OpenCV k1 k2 p1 p2 model by fixed-point iteration (independent of OpenCV)."""
    k1, k2, p1, p2 = distortion
    x, y = xd.copy(), yd.copy()
    for _ in range(50):
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 * r2
        dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        x, y = (xd - dx) / radial, (yd - dy) / radial
    return x, y


def test_distortion_is_removed(tmp_path):
    width, height, (fx, fy, cx, cy) = 80, 60, (70.0, 70.0, 39.5, 29.5)
    distortion = np.array([-0.3, 0.1, 0.004, -0.003])
    # The distorted photo: each pixel shows the pattern at its undistorted normalised position.
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    x, y = _undistort_normalised((u - cx) / fx, (v - cy) / fy, distortion)
    photo = _pattern(x, y).astype(np.float32)
    posed = PosedImages(torch.from_numpy(photo)[None], None, None, orbit_poses(3)[:1], torch.tensor([[fx, fy, cx, cy]]),
                        ["distorted.png"], 2.0, 6.0)
    write_transforms(posed, tmp_path, distortion=distortion)
    read = load_posed_images(tmp_path).images[0].numpy()
    ideal = _pattern((u - cx) / fx, (v - cy) / fy)
    inner = (slice(6, -6), slice(6, -6))  # border pixels map outside the photo
    error_read, error_photo = np.abs(read[inner] - ideal[inner]).mean(), np.abs(photo[inner] - ideal[inner]).mean()
    assert error_read < 0.01 and error_photo > 4 * error_read, (error_read, error_photo)


def _colmap_dataset(tmp_path, truth: PosedImages, binary: bool, model: str = "PINHOLE"):
    reconstruction = pycolmap.Reconstruction()
    fx, fy, cx, cy = truth.intrinsics[0].double().tolist()
    params = [fx, fy, cx + 0.5, cy + 0.5] + ([0.0] * 4 if model == "OPENCV" else [])
    reconstruction.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=1, model=model, width=WIDTH, height=HEIGHT, params=params))
    (tmp_path / "images").mkdir()
    order = list(reversed(range(len(truth))))  # registration order differs from name order
    for image_id, i in enumerate(order, start=1):
        cam_from_world = np.linalg.inv(truth.world_from_camera[i].double().numpy())
        reconstruction.add_image_with_trivial_frame(pycolmap.Image(name=truth.names[i], camera_id=1, image_id=image_id),
                                                    pycolmap.Rigid3d(cam_from_world[:3, :4]))
        rgb = (truth.images[i].numpy() * 255).round().astype(np.uint8)[..., ::-1]
        cv2.imwrite(str(tmp_path / "images" / truth.names[i]), rgb)
    g = np.random.default_rng(0)
    for point in g.uniform(-0.8, 0.8, size=(50, 3)):
        reconstruction.add_point3D(point, pycolmap.Track(), np.array([128, 128, 128], np.uint8))
    model_dir = tmp_path / "sparse" / "0"
    model_dir.mkdir(parents=True)
    (reconstruction.write_binary if binary else reconstruction.write_text)(str(model_dir))
    return reconstruction


@pytest.mark.parametrize("binary,model", [(False, "PINHOLE"), (True, "OPENCV")])
def test_colmap_round_trip_and_pycolmap_projection(tmp_path, binary, model):
    truth = synthetic_set()
    reconstruction = _colmap_dataset(tmp_path, truth, binary, model)
    read = load_posed_images(tmp_path)
    assert_same(read, truth)
    assert 2.0 < read.near < 4.0 < read.far < 6.0  # the points lie within 1.4 of the origin, cameras at ~4
    point = np.array([0.1, 0.2, -0.1])
    for image in reconstruction.images.values():
        i = read.names.index(image.name)
        cam_from_world = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
        colmap_px = reconstruction.cameras[1].img_from_cam(cam_from_world * point) - 0.5
        ours = project(read.world_from_camera[i].double().numpy(), read.intrinsics[i].double().numpy(), point)
        assert np.allclose(ours, np.asarray(colmap_px).ravel()[:2], atol=1e-4)


def test_fit_directory_reads_frames_cameras_and_moving_masks(tmp_path):
    from test_scene import make_scene

    scene = make_scene(num_frames=4, n=200)
    scene.cameras.world_from_camera = orbit_poses(4).double()
    frames = np.random.default_rng(1).integers(0, 256, size=(4, 48, 64, 3), dtype=np.uint8)
    (tmp_path / "clip").mkdir()
    for t, frame in enumerate(frames):
        cv2.imwrite(str(tmp_path / "clip" / f"f{t}.png"), frame[..., ::-1])
    moving = torch.zeros(4, 48, 64, dtype=torch.bool)
    moving[:, 10:20, 30:40] = True
    scene.arrays["moving_masks"] = moving
    scene.config = {"source": str(tmp_path / "clip"), "stride": 1}
    save_scene(scene, tmp_path / "fit" / "scene.r4d")
    read = load_posed_images(tmp_path / "fit")
    assert torch.allclose(read.world_from_camera, scene.cameras.world_from_camera.float())
    assert torch.allclose(read.intrinsics, scene.cameras.intrinsics.float())
    assert (read.images * 255 - torch.from_numpy(frames).float()).abs().max() < 0.5
    assert not read.valid[:, 10:20, 30:40].any() and not read.valid[:, 8, 30].any()  # dilated
    assert read.valid[:, 30:, :20].all() and read.valid.float().mean() > 0.9
    assert 0 < read.near < read.far


def test_holdout_split_and_bad_inputs(tmp_path):
    assert holdout_split(10, 4) == ([3, 7], [0, 1, 2, 4, 5, 6, 8, 9])
    with pytest.raises(InputError):
        holdout_split(2, 8)
    with pytest.raises(InputError, match="no such data set"):
        load_posed_images(tmp_path / "nothing")
    (tmp_path / "transforms.json").write_text("{\"frames\": [{\"file_path\": \"x.png\", \"transform_matrix\": []}]}")
    with pytest.raises(InputError, match="none of its 1 images exist"):
        load_posed_images(tmp_path)
    (tmp_path / "transforms.json").write_text("not json")
    with pytest.raises(InputError, match="not a transforms.json"):
        load_posed_images(tmp_path)
