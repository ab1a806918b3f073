"""Camera paths and path videos (`recon4d render`) on a scene with exactly known motion (tests/view_scenes.py)."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
from view_scenes import PATCH_STEP, moving_patch_scene, patch_centre, project

from recon4d.cli import main
from recon4d.errors import InputError
from recon4d.geometry.camera import invert_pose, scale_camera_matrix
from recon4d.io.scene import save_scene
from recon4d.io.video import probe_video, read_clip
from recon4d.render import rasterize
from recon4d.render_views import (
    PathConfig,
    make_path,
    output_size,
    read_camera_path,
    render_path,
    scene_centre,
    visualise,
    write_camera_path,
    write_outputs,
)
from recon4d.render_views.paths import (
    bullet_time_path,
    focus_depth,
    input_path,
    orbit_path,
    spiral_path,
    stabilized_path,
    world_up,
    zoom_path,
)
from recon4d.render_views.video import to_uint8

W, H, T = 96, 54, 6


@pytest.fixture(scope="module")
def scene():
    return moving_patch_scene(num_frames=T, width=W, height=H)


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("RECON4D_NO_PROGRESS", "1")


def highlight_centroids(motion_frames: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] motion panels -> [N, 2] (u, v) centroid of the highlighted (moving) pixels."""
    rgb = motion_frames.astype(np.float64)
    weight = np.clip(rgb[..., 0] - rgb[..., 1], 0, None)  # linear in coverage: greys have R == G
    rows, cols = np.mgrid[: rgb.shape[1], : rgb.shape[2]]
    total = weight.sum((1, 2))
    return np.stack([(weight * cols).sum((1, 2)) / total, (weight * rows).sum((1, 2)) / total], 1)


def test_input_path_reproduces_frame_renders_exactly(scene):
    views = make_path(scene, "input")
    assert [v.time for v in views] == list(range(T))
    rendered = render_path(scene, views, W, H)
    for t in range(T):
        g = scene.gaussians_at(t)
        direct = rasterize(g.means, g.quats, g.scales, g.opacities, g.colors,
                           invert_pose(scene.cameras.world_from_camera[t]).float(), scene.cameras.K(t), W, H)
        assert np.array_equal(rendered.color[t], to_uint8(direct.color))


def test_fractional_times_interpolate_camera_and_motion(scene):
    views = input_path(scene, slowmo=2)
    assert [v.time for v in views] == [k / 2 for k in range(2 * (T - 1) + 1)]
    middle = views[1]  # t = 0.5: camera halfway between frames 0 and 1
    expected = (scene.cameras.world_from_camera[0, :3, 3] + scene.cameras.world_from_camera[1, :3, 3]) / 2
    assert torch.allclose(middle.world_from_camera[:3, 3], expected.double(), atol=1e-12)
    # The highlighted patch moves as its interpolated centre projects, seen from the held camera of frame 0
    # (the patch moves 1.7 px per frame) and from the interpolated input cameras (0.3 px per frame). Measured:
    # shifts within 0.011 px of the truth; a constant 0.1 px offset comes from the patch's texture weighting.
    for path in (stabilized_path(scene, 0, slowmo=2)[:3], views[:3]):
        centroids = highlight_centroids(visualise(render_path(scene, path, W, H, ("motion",)), ("motion",))["motion"])
        truth = []
        for view in path:
            pose, K = view.world_from_camera.numpy(), view.K.numpy()
            cam = (patch_centre(view.time) - pose[:3, 3]) @ pose[:3, :3]
            truth.append([cam[0] / cam[2] * K[0, 0] + K[0, 2], cam[1] / cam[2] * K[1, 1] + K[1, 2]])
        truth = np.array(truth)
        assert np.abs(centroids - truth).max() < 0.2
        assert np.abs((centroids - centroids[0]) - (truth - truth[0])).max() < 0.05


def test_output_size_scales_intrinsics(scene):
    assert output_size(W, H, scale=2) == (192, 108)
    assert output_size(W, H, width=48) == (48, 27)
    assert output_size(W, H, height=108) == (192, 108)
    with pytest.raises(InputError, match="either --scale"):
        output_size(W, H, width=10, scale=2)
    K = scene.cameras.K(0).double()
    big = scale_camera_matrix(K, 2.0, 2.0)
    point = torch.tensor([0.3, -0.2, 3.0], dtype=torch.float64)
    uv = (K @ point)[:2] / point[2]
    assert torch.allclose((big @ point)[:2] / point[2], (uv + 0.5) * 2 - 0.5)  # pixel centres stay centres
    views = input_path(scene, count=1)
    small = highlight_centroids(visualise(render_path(scene, views, W, H, ("motion",)), ("motion",))["motion"])[0]
    large = highlight_centroids(visualise(render_path(scene, views, 2 * W, 2 * H, ("motion",)), ("motion",))["motion"])[0]
    # Measured: 0.01 px apart after mapping (a half-pixel convention slip gives 0.5 px).
    assert np.linalg.norm((small + 0.5) * 2 - 0.5 - large) < 0.1


def test_orbit_looks_at_a_robust_centre_and_keeps_its_radius(scene):
    centre = scene_centre(scene)
    # The still Gaussians are a wall spanning x, y in +-2.9, +-1.7 at z = 4: its middle.
    assert torch.allclose(centre, torch.tensor([0.0, 0.0, 4.0], dtype=torch.float64), atol=0.05)
    views = orbit_path(scene, count=24)
    up = world_up(scene)
    start = scene.cameras.world_from_camera[:, :3, 3].double().median(0).values
    radius = float((start - centre).norm())
    angles = []
    for view in views:
        eye, forward = view.world_from_camera[:3, 3], view.world_from_camera[:3, 2]
        to_centre = centre - eye
        assert float(to_centre @ forward / to_centre.norm()) > 1 - 1e-9  # looks at the centre
        assert abs(float(to_centre.norm()) - radius) < 1e-9  # keeps the radius
        assert abs(float((eye - centre) @ up) - float((start - centre) @ up)) < 1e-9  # keeps the height
        assert abs(float(view.world_from_camera[:3, 0] @ up)) < 1e-9  # horizon level
        angles.append(math.atan2(float(eye[0] - centre[0]), float(eye[2] - centre[2])))
    steps = np.diff(np.unwrap(angles))
    assert np.allclose(np.abs(steps), 2 * math.pi / 24, atol=1e-9)  # a full circle in even steps
    assert [v.time for v in views] == pytest.approx(np.linspace(0, T - 1, 24).tolist())

    # 5 % of the still Gaussians flung ~1500 units away: the centre moves by one wall grid step (0.06 units;
    # measured), where their mean would move by ~70 units.
    noisy = moving_patch_scene(num_frames=T, width=W, height=H)
    still = (~noisy.is_dynamic).nonzero().squeeze(1)
    outliers = still[torch.randperm(len(still), generator=torch.Generator().manual_seed(0))[: len(still) // 20]]
    noisy.gaussians.means[outliers] += torch.tensor([1000.0, -700.0, 900.0])
    assert float((scene_centre(noisy) - centre).norm()) < 0.1


def test_spiral_and_bullet_time(scene):
    centre = scene_centre(scene)
    for view in spiral_path(scene, count=30):
        eye, forward = view.world_from_camera[:3, 3], view.world_from_camera[:3, 2]
        assert float((centre - eye) @ forward / (centre - eye).norm()) > 1 - 1e-9
    eyes = torch.stack([v.world_from_camera[:3, 3] for v in spiral_path(scene, count=30)])
    assert float(eyes.std(0).max()) > 0.02  # it moves even though the input camera barely does

    views = bullet_time_path(scene, time=2.5, count=16, config=PathConfig(bullet_arc_degrees=30))
    assert all(v.time == 2.5 for v in views)
    assert torch.equal(views[0].world_from_camera, scene.cameras.world_from_camera_at(2.5).double())
    depth = focus_depth(scene, 2.5)
    assert abs(depth - 4.0) < 0.05  # most of the view is the wall at z = 4
    first = views[0].world_from_camera
    pivot = first[:3, 3] + first[:3, 2] * depth
    swing = []
    for view in views:
        cam = (pivot - view.world_from_camera[:3, 3]) @ view.world_from_camera[:3, :3]
        assert abs(float(cam[0])) < 1e-9 and abs(float(cam[1])) < 1e-9  # pivot stays on the optical axis
        assert abs(float(cam[2]) - depth) < 1e-9  # at the same distance
        cos = round(float(view.world_from_camera[:3, 2] @ first[:3, 2]), 12)
        swing.append(math.degrees(math.acos(min(1.0, cos))))
    assert max(swing) == pytest.approx(15.0, abs=0.5)  # +-15 degrees for a 30-degree arc


def test_stabilized_keeps_the_pose_fixed(scene):
    views = stabilized_path(scene, camera_frame=2)
    assert [v.time for v in views] == list(range(T))
    assert all(torch.equal(v.world_from_camera, scene.cameras.world_from_camera[2].double()) for v in views)
    frames = render_path(scene, views, W, H).color.astype(np.int16)
    # Pixels the patch never covers are identical in every frame; with the moving input camera they are not.
    changed = np.abs(frames - frames[:1]).max(-1).max(0) > 0
    uv, _ = project(scene, 2, np.stack([patch_centre(t) for t in range(T)]))
    assert changed.mean() < 0.25 and changed[2, 2] == 0 and changed[H - 3, W - 3] == 0
    moving = render_path(scene, input_path(scene), W, H).color.astype(np.int16)
    assert (np.abs(moving - moving[:1]).max(-1).max(0) > 0).mean() > 0.9
    assert np.all((uv > 0) & (uv < [W, H]))  # the patch stays in view of the held camera


def test_zoom_modes(scene):
    count = 5
    focal = zoom_path(scene, camera_frame=1, count=count, time=1.0, mode="focal", config=PathConfig(zoom_factor=2))
    assert [float(v.K[0, 0] / focal[0].K[0, 0]) for v in focal] == pytest.approx([1, 1.25, 1.5, 1.75, 2])
    patch = visualise(render_path(scene, [focal[0], focal[-1]], W, H, ("motion",)), ("motion",))["motion"]
    area = ((patch[..., 0].astype(int) - patch[..., 1]) > 80).sum((1, 2))
    assert area[1] / area[0] == pytest.approx(4.0, rel=0.1)  # twice the focal length: four times the area

    depth = focus_depth(scene, 1.0)
    dolly = zoom_path(scene, camera_frame=1, count=count, mode="dolly", config=PathConfig(zoom_factor=2))
    start = dolly[0].world_from_camera[:3, 3]
    moved = float((dolly[-1].world_from_camera[:3, 3] - start) @ dolly[0].world_from_camera[:3, 2])
    assert moved == pytest.approx(depth / 2)  # the focus plane is half as far: twice as large
    vertigo = zoom_path(scene, camera_frame=1, count=count, mode="vertigo", config=PathConfig(zoom_factor=2))
    for view in vertigo:  # focal / distance to the focus plane stays constant
        distance = depth - float((view.world_from_camera[:3, 3] - start) @ vertigo[0].world_from_camera[:3, 2])
        assert float(view.K[0, 0]) / distance == pytest.approx(float(vertigo[0].K[0, 0]) / depth)
    with pytest.raises(InputError, match="zoom mode"):
        zoom_path(scene, mode="warp")


def test_custom_json_round_trip_and_errors(scene, tmp_path):
    views = bullet_time_path(scene, time=1.25, count=4) + input_path(scene, count=3)
    path = write_camera_path(tmp_path / "path.json", views)
    back = read_camera_path(path, scene)
    assert len(back) == len(views)
    for a, b in zip(views, back):
        assert torch.equal(a.world_from_camera, b.world_from_camera) and torch.equal(a.K, b.K) and a.time == b.time
    assert np.array_equal(render_path(scene, back, W, H).color, render_path(scene, views, W, H).color)
    assert len(make_path(scene, str(path))) == 7

    entry = json.loads(path.read_text())[0]
    del entry["cx"], entry["cy"]
    (tmp_path / "default_centre.json").write_text(json.dumps({"views": [entry]}))
    (view,) = read_camera_path(tmp_path / "default_centre.json", scene)
    assert view.K[0, 2] == (W - 1) / 2 and view.K[1, 2] == (H - 1) / 2

    bad = {
        "syntax.json": ("[{", "not valid JSON"),
        "empty.json": ("[]", "non-empty JSON list"),
        "shape.json": (json.dumps([{**entry, "world_from_camera": [[1, 0, 0], [0, 1, 0]]}]), "4x4"),
        "scaled.json": (json.dumps([{**entry, "world_from_camera": (2 * np.eye(4)).tolist()}]), "rigid"),
        "time.json": (json.dumps([{**entry, "time": T + 1}]), "outside the scene's time range"),
        "focal.json": (json.dumps([{k: v for k, v in entry.items() if k != "fx"}]), "'fx' must be a finite number"),
    }
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=message):
            read_camera_path(tmp_path / name, scene)


def test_separate_layout_and_depth_colours(scene, tmp_path):
    views = input_path(scene, count=2)
    panels = visualise(render_path(scene, views, W, H, ("depth", "alpha", "motion")))
    assert list(panels) == ["color", "depth", "alpha", "motion"]
    uv, _ = project(scene, 0, patch_centre(0)[None])
    patch_px = panels["depth"][0, round(uv[0, 1]), round(uv[0, 0])].astype(int)
    wall_px = panels["depth"][0, 2, 2].astype(int)
    assert patch_px[0] > patch_px[2] and wall_px[2] > wall_px[0]  # turbo: near is red, far is blue
    assert panels["alpha"][0].min() > 240  # the wall covers the whole view
    written = write_outputs(panels, tmp_path, "clip", fps=10, layout="separate")
    assert sorted(p.name for p in written) == ["clip.mp4", "clip_alpha.mp4", "clip_depth.mp4", "clip_motion.mp4"]
    assert all(probe_video(p).frames == 2 for p in written)


def test_cli_render_writes_playable_video(scene, tmp_path, capsys):
    save_scene(scene, tmp_path / "scene.r4d")
    w, h = 64, 36  # --width 64 keeps the 16:9 aspect ratio
    code = main(["render", str(tmp_path), "--path", "input", "--slowmo", "2", "--width", str(w), "--depth",
                 "--motion", "--png"])
    assert code == 0, capsys.readouterr().err
    out = tmp_path / "render"
    info = probe_video(out / "input.mp4")
    frames = 2 * (T - 1) + 1
    assert (info.frames, info.width, info.height) == (frames, 3 * w, h)  # colour | depth | motion
    assert info.fps == pytest.approx(10)  # the scene's frame rate
    clip = read_clip(out / "input.mp4")
    assert clip.frames.shape == (frames, h, 3 * w, 3)
    assert len(list((out / "input_frames").glob("frame_*.png"))) == frames
    assert len(json.loads((out / "input_cameras.json").read_text())) == frames
    assert not list(out.glob(".*")), "temporary files left behind"
    # PNG frames hold the exact renders; the mp4 holds them up to H.264 4:2:0 compression of this tiny, very
    # colourful image (measured: mean error 7.1 levels; swapped channels or misaligned panels give > 40).
    native = render_path(scene, input_path(scene, slowmo=2), w, h).color
    png = cv2.cvtColor(cv2.imread(str(out / "input_frames" / "frame_0003.png")), cv2.COLOR_BGR2RGB)
    assert png.shape == (h, 3 * w, 3) and np.array_equal(png[:, :w], native[3])
    assert np.abs(clip.frames[:, :, :w].astype(float) - native).mean() < 10

    capsys.readouterr()
    (tmp_path / "bad.json").write_text('[{"fx": 1}]')
    code = main(["render", str(tmp_path), "--path", str(tmp_path / "bad.json"), "--dest", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("recon4d: error:") and "world_from_camera" in err[0]
    assert not (tmp_path / "bad").exists()


def test_patch_moves_as_built(scene):
    """Guard on the test scene itself: the patch's Gaussians move by PATCH_STEP per frame."""
    dynamic = scene.gaussians_at(3).means[scene.is_dynamic] - scene.gaussians_at(0).means[scene.is_dynamic]
    assert torch.allclose(dynamic, torch.tensor(3 * PATCH_STEP, dtype=torch.float32).expand_as(dynamic), atol=1e-6)
