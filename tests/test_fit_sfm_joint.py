"""A still scene fitted as one model from COLMAP's points and cameras (`sfm.joint`, the walkaround preset)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recon4d.errors import InputError
from recon4d.fit.config import FitConfig
from recon4d.fit.sfm_scene import SFM_CAMERAS, place_unfitted, scene_from_sfm
from recon4d.geometry import invert_pose, look_at
from recon4d.geometry.lie import fill_poses
from recon4d.priors.sfm import SfmCameras, SfmConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
LEGO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nerf-synthetic-lego"


def _orbit(angles_deg: list[float], radius: float = 4.0) -> torch.Tensor:
    """world_from_camera [T, 4, 4] on a circle round the origin, looking at it."""
    poses = [look_at(torch.tensor([radius * math.sin(math.radians(a)), -1.0, -radius * math.cos(math.radians(a))]),
                     torch.zeros(3), torch.tensor([0.0, -1.0, 0.0])) for a in angles_deg]
    return torch.stack(poses).double()


def test_a_held_out_view_takes_colmaps_place_beside_its_fitted_neighbour_not_the_interpolated_one():
    """Views 60 degrees apart: the held-out view 1 between fitted views 0 and 2. Interpolating misses it by
    0.55 units (the chord's midpoint); COLMAP's motion from view 0 applied to view 0's fitted camera hits it,
    also after the fit moved the fitted cameras (view 0 shifted: view 1 moves with it)."""
    truth = _orbit([0.0, 60.0, 120.0])
    interpolated = fill_poses(truth.clone(), [0, 2])
    assert (interpolated[1, :3, 3] - truth[1, :3, 3]).norm() > 0.5
    sfm = invert_pose(truth)
    placed = place_unfitted(interpolated, sfm, [0, 2])
    assert torch.allclose(placed[1], truth[1], atol=1e-6)
    assert torch.equal(placed[[0, 2]], interpolated[[0, 2]])
    shifted = interpolated.clone()
    shifted[0, :3, 3] += torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64)
    moved = place_unfitted(shifted, sfm, [0, 2])
    assert torch.allclose(moved[1, :3, 3] - truth[1, :3, 3], torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64), atol=1e-6)
    unplaced = sfm.clone()
    unplaced[1] = float("nan")
    assert torch.equal(place_unfitted(interpolated, unplaced, [0, 2]), interpolated)


def test_the_joint_start_puts_still_gaussians_on_colmaps_points_with_the_colours_the_views_see():
    """The tiny world's five views; COLMAP's world rotated, shifted and 0.3 times the size, view 0 not placed.
    The start's world is view 1's camera (the first fitted view placed) at the points' median depth; its
    cameras are the true ones in that world (view 0: view 1's); each Gaussian's colour is the median of the
    fitted views' pixels it lands on, within 0.1 of the rendered colour there."""
    from fit_scenes import static_world_inputs

    from recon4d.fit.strategy.spawn import unproject_pixels
    from recon4d.io.video import Clip

    inputs, poses = static_world_inputs(width=64, height=36, num_frames=5)
    rotation = torch.linalg.matrix_exp(torch.tensor([[0.0, -0.4, 0.9], [0.4, 0.0, -0.2], [-0.9, 0.2, 0.0]]))
    shift, scale = torch.tensor([1.0, 2.0, -0.5]), 0.3

    def to_colmap(world_from_camera: torch.Tensor) -> torch.Tensor:
        camera_from_world = invert_pose(world_from_camera)
        out = torch.eye(4, dtype=torch.float64)
        out[:3, :3] = (camera_from_world[:3, :3] @ rotation.T).double()
        out[:3, 3] = ((camera_from_world[:3, 3] - camera_from_world[:3, :3] @ rotation.T @ shift) / scale).double()
        return out

    cameras = torch.stack([to_colmap(p) for p in poses])
    cameras[0] = float("nan")
    flat = torch.arange(0, 36 * 64, 5)
    world_points = unproject_pixels(flat, inputs.depth[1].flatten()[flat], inputs.K, 64, poses[1])
    colmap_points = ((world_points @ rotation.T + shift) / scale).double().numpy()
    frames = (inputs.frames.numpy() * 255).round().astype(np.uint8)
    clip = Clip(frames=frames, fps=10.0, timestamps=np.arange(5) / 10.0, source_indices=np.arange(5),
                names=[f"frame_{t}" for t in range(5)], source="tiny", source_hash="0")
    K = np.array([float(inputs.K[0, 0]), float(inputs.K[1, 1]), float(inputs.K[0, 2]), float(inputs.K[1, 2])])
    fitted = [0, 1, 2, 4]
    scene = scene_from_sfm(SfmCameras(cameras.numpy(), colmap_points, 1.0), clip, K, fitted, SfmConfig())
    assert len(scene.gaussians) == len(flat) and not scene.is_dynamic.any()
    camera_1 = invert_pose(scene.cameras.world_from_camera[1])
    assert torch.allclose(camera_1, torch.eye(4, dtype=torch.float64), atol=1e-9)
    depth_1 = scene.gaussians.means[:, 2]
    assert abs(float(depth_1.median()) - 1.0) < 1e-5
    unit = float(inputs.depth[1].flatten()[flat].median())  # true world units per start unit
    for t in range(1, 5):
        true = invert_pose(poses[1]).double() @ poses[t].double()  # view t in view 1's frame, true units
        start = scene.cameras.world_from_camera[t]
        assert torch.allclose(start[:3, :3], true[:3, :3], atol=1e-5)
        assert (start[:3, 3] * unit - true[:3, 3]).norm() < 1e-4
    assert torch.equal(scene.cameras.world_from_camera[0], scene.cameras.world_from_camera[1])
    pixels = flat  # the points are view 1's pixels: their colour there
    seen = torch.from_numpy(frames[1].reshape(-1, 3)[pixels.numpy()] / 255.0).float()
    assert float((scene.gaussians.colors - seen).abs().max(1).values.median()) < 0.1
    assert SFM_CAMERAS in scene.arrays and not torch.isfinite(scene.arrays[SFM_CAMERAS][0]).any()


def test_joint_needs_a_still_scene_and_the_refinement():
    joint = {"sfm": {"enabled": True, "joint": True}, "input": {"static_scene": True}, "refine": {"enabled": True}}
    FitConfig.from_dict(joint).validate()
    for section, key in (("input", "static_scene"), ("refine", "enabled")):
        bad = {**joint, section: {key: False}}
        with pytest.raises(InputError, match="sfm.joint"):
            FitConfig.from_dict(bad).validate()


@pytest.mark.skipif(not LEGO.is_dir(), reason="needs ../shared/data/nerf-synthetic-lego")
def test_a_walkaround_renders_its_held_out_views(tmp_path):
    """Lego's 34 views (file order, 3.5-95 degrees apart), every 4th held out, `--preset walkaround`: one model
    from COLMAP's points. The held-out views render at PSNR >= 22 dB (measured 24.92, fitted 27.87, in 56 s with
    COLMAP; the sequential walk-around: 11.6 dB in path order), and no sequential pass ran.

    The cameras are COLMAP's (the preset keeps them): at 400 px with DSP-SIFT, ratio test 0.9 and guided
    matching it places all 34 views with an ATE under 0.5 % of the path after Sim(3) alignment and every
    rotation within 2 degrees (README, "Global camera prior from structure-from-motion"). One COLMAP thread
    (the default) makes the run repeatable; with all threads one CI run turned a view round (ATE 0.85 %). The
    frames are composited in 8 bits and then resized, as bench/fit.py writes them: from float frames (0.05 grey
    levels apart on average) COLMAP placed all 34 views but turned one of them by 125 degrees."""
    import cv2

    from recon4d.eval.metrics import ate_rpe, umeyama_sim3
    from recon4d.fit.config import load_config
    from recon4d.fit.pipeline import fit_video
    from recon4d.nerf.data import load_posed_images

    lego = load_posed_images(LEGO, short_side=400)
    frames_dir = tmp_path / "views"
    frames_dir.mkdir()
    for index, name in enumerate(lego.names):
        rgba = cv2.imread(str(LEGO / "train" / name), cv2.IMREAD_UNCHANGED).astype(np.float64)
        alpha = rgba[..., 3:] / 255.0
        bgr = (rgba[..., :3] * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
        cv2.imwrite(str(frames_dir / f"frame_{index:03d}.png"), cv2.resize(bgr, (400, 400), interpolation=cv2.INTER_AREA))
    fov = math.degrees(2 * math.atan(200.0 / float(lego.intrinsics[0, 0])))
    config = load_config("walkaround", {"input.fov_x_deg": fov, "input.holdout_every": 4})
    result = fit_video(frames_dir, tmp_path / "out", config, torch.device("cpu"), log=lambda *_: None)
    metrics = result.metrics
    held = [p["frame"] for p in metrics["per_frame"] if p["held_out"]]
    assert len(held) == 8 and "sfm_joint" in metrics and "camera_inits" not in metrics
    assert metrics["held_out"]["psnr"] >= 22.0, metrics["held_out"]
    assert metrics["sfm_joint"]["placed"] == 34 and metrics["sfm_joint"]["points"] > 500
    predicted = result.scene.cameras.world_from_camera.double().numpy()
    truth = lego.world_from_camera.double().numpy()
    errors = ate_rpe(predicted, truth)
    assert 100 * errors["ate_rmse"] / errors["path_length"] < 0.5
    _, rotation, _ = umeyama_sim3(predicted[:, :3, 3], truth[:, :3, 3])
    relative = np.einsum("tji,jk,tkl->til", truth[:, :3, :3], rotation, predicted[:, :3, :3])
    angles = np.degrees(np.arccos(np.clip((np.trace(relative, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert angles[held].max() < 2.0 and angles.max() < 2.0, angles


def test_a_joint_fit_drops_a_view_colmap_turned_round_skips_unplaced_ones_and_renders_held_out_views(tmp_path, monkeypatch):
    """The tiny world's 9 views as an image folder, COLMAP replaced by its perfect answer in a world rotated,
    shifted and 0.3 times the size, with view 5 not placed and view 2 turned round. `fit_video` runs no
    sequential pass, fits the views placed of the 7 not held out, finds view 2 drawn far worse than the others
    and fits again without it, leaves views 2 and 5 to the camera search (skipped), and renders the held-out
    views 3 and 7 from COLMAP's cameras above 30 dB (36.8 and 37.4 measured) and views 2 and 5 above 30 dB
    (35.8 and 39.0). Measured in a run with view 5 placed too: view 2 kept in the fit took view 3 from 38.6 to
    34.4 dB; dropped, 37.0."""
    import cv2
    from fit_scenes import static_world_inputs

    import recon4d.priors.sfm as sfm_module
    from recon4d.fit.config import load_config
    from recon4d.fit.pipeline import fit_video
    from recon4d.fit.strategy.spawn import unproject_pixels

    width, height, count = 96, 54, 9
    inputs, poses = static_world_inputs(width=width, height=height, num_frames=count, step=0.12)
    folder = tmp_path / "views"
    folder.mkdir()
    for t in range(count):
        rgb = (inputs.frames[t].numpy() * 255).round().astype(np.uint8)
        cv2.imwrite(str(folder / f"view_{t:02d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    rotation = torch.linalg.matrix_exp(torch.tensor([[0.0, -0.4, 0.9], [0.4, 0.0, -0.2], [-0.9, 0.2, 0.0]]))
    shift, scale = torch.tensor([1.0, 2.0, -0.5]), 0.3
    colmap_from_world = torch.eye(4)
    colmap_from_world[:3, :3], colmap_from_world[:3, 3] = rotation / scale, shift / scale
    colmap_cameras = torch.stack([invert_pose(p) for p in poses]) @ torch.linalg.inv(colmap_from_world)
    colmap_cameras[:, :3] = colmap_cameras[:, :3] / scale  # camera coordinates in COLMAP's unit too
    colmap_cameras[5] = float("nan")
    # COLMAP turns view 2 round its viewing axis (what it did to a lego view with other matching settings).
    colmap_cameras[2, :3] = torch.diag(torch.tensor([-1.0, -1.0, 1.0])) @ colmap_cameras[2, :3]
    points = []
    for t in (0, 4, 8):
        flat = torch.arange(0, width * height, 3)
        points.append(unproject_pixels(flat, inputs.depth[t].flatten()[flat], inputs.K, width, poses[t]))
    colmap_points = (torch.cat(points) @ colmap_from_world[:3, :3].T + colmap_from_world[:3, 3]).double().numpy()
    asked = []

    def colmap(frames, intrinsics, config):
        asked.append(frames.shape[0])
        return SfmCameras(colmap_cameras.double().numpy(), colmap_points, 0.0)

    monkeypatch.setattr(sfm_module, "sfm_cameras", colmap)
    monkeypatch.setattr(sfm_module, "require_pycolmap", lambda: None)
    monkeypatch.setenv("RECON4D_CACHE_DIR", str(tmp_path / "cache"))
    fov = math.degrees(2 * math.atan(0.5 * width / float(inputs.K[0, 0])))
    config = load_config("walkaround", {"input.fov_x_deg": fov, "input.holdout_every": 4, "input.short_side": height,
                                        "refine.iters": 400, "sfm.short_side": height})
    result = fit_video(folder, tmp_path / "out", config, torch.device("cpu"), log=lambda *_: None)
    metrics = result.metrics
    assert asked == [count]  # every view, the held-out ones too
    joint = metrics["sfm_joint"]
    assert joint["dropped"] == [2] and joint["fitted"] == [0, 1, 4, 6, 8] and "camera_inits" not in metrics
    rows = {p["frame"]: p for p in metrics["per_frame"]}
    assert rows[3]["held_out"] and rows[7]["held_out"] and rows[2]["skipped"] and rows[5]["skipped"]
    assert min(rows[3]["psnr"], rows[7]["psnr"]) > 30.0, (rows[3], rows[7])
    assert min(rows[2]["psnr"], rows[5]["psnr"]) > 30.0, (rows[2], rows[5])


def test_colmaps_cameras_are_cached_per_frames_and_settings(tmp_path, monkeypatch):
    """A second run on the same frames with the same COLMAP settings reads the cameras back (no COLMAP run);
    other frames, other settings or no cache run COLMAP again."""
    import recon4d.priors.sfm as sfm_module

    runs = []

    def colmap(frames, intrinsics, config):
        runs.append(frames.shape[0])
        cameras = np.stack([np.eye(4)] * frames.shape[0])
        cameras[-1] = np.nan
        return SfmCameras(cameras, np.arange(12.0).reshape(4, 3), 1.0)

    monkeypatch.setattr(sfm_module, "sfm_cameras", colmap)
    monkeypatch.setattr(sfm_module, "require_pycolmap", lambda: None)
    monkeypatch.setenv("RECON4D_CACHE_DIR", str(tmp_path))
    frames, intrinsics = np.zeros((3, 8, 8, 3), np.uint8), np.array([8.0, 8.0, 3.5, 3.5])
    first, cached = sfm_module.cached_sfm_cameras(frames, intrinsics, SfmConfig(), "clip:0,1,2")
    assert not cached and runs == [3]
    again, cached = sfm_module.cached_sfm_cameras(frames, intrinsics, SfmConfig(), "clip:0,1,2")
    assert cached and runs == [3] and again.registered == 2
    assert np.array_equal(again.camera_from_world, first.camera_from_world, equal_nan=True)
    assert np.array_equal(again.points, first.points)
    sfm_module.cached_sfm_cameras(frames, intrinsics, SfmConfig(), "clip:0,1,3")
    sfm_module.cached_sfm_cameras(frames, intrinsics, SfmConfig(match_max_ratio=0.8), "clip:0,1,2")
    sfm_module.cached_sfm_cameras(frames, intrinsics, SfmConfig(min_registered=0.9, joint=True), "clip:0,1,2")
    sfm_module.cached_sfm_cameras(frames, intrinsics, SfmConfig(), "clip:0,1,2", use_cache=False)
    assert runs == [3, 3, 3, 3]  # settings that do not change COLMAP's result (min_registered, joint) hit
