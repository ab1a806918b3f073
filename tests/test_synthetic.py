"""The synthetic ground-truth generator checked against itself in ways that can fail."""
from __future__ import annotations

import json

import av
import cv2
import numpy as np
import pytest

from recon4d.errors import InputError
from recon4d.eval.metrics import flow_epe, psnr
from recon4d.eval.synthetic import (
    VARIANTS,
    SyntheticClip,
    load_ground_truth,
    make_synthetic,
    write_synthetic,
)

MOVING_VARIANTS = ("translate", "rotate", "static", "fast")


@pytest.fixture(scope="module")
def clips() -> dict[str, SyntheticClip]:
    return {variant: make_synthetic(variant, num_frames=10, width=128, height=96, seed=0) for variant in VARIANTS}


def _pixel_grid(height: int, width: int) -> np.ndarray:
    """[H, W, 2] (u, v) of pixel centres: u = column, v = row."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([u, v], axis=-1)


def _unproject(depth: np.ndarray, intrinsics: np.ndarray, world_from_camera: np.ndarray) -> np.ndarray:
    """[H, W] z-depth -> [H, W, 3] world points."""
    fx, fy, cx, cy = intrinsics
    uv = _pixel_grid(*depth.shape)
    z = depth.astype(np.float64)
    cam = np.stack([(uv[..., 0] - cx) / fx * z, (uv[..., 1] - cy) / fy * z, z], axis=-1)
    return cam @ world_from_camera[:3, :3].T + world_from_camera[:3, 3]


def _project(
    points: np.ndarray, intrinsics: np.ndarray, world_from_camera: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    fx, fy, cx, cy = intrinsics
    cam = (points - world_from_camera[:3, 3]) @ world_from_camera[:3, :3]
    uv = np.stack([fx * cam[..., 0] / cam[..., 2] + cx, fy * cam[..., 1] / cam[..., 2] + cy], axis=-1)
    return uv, cam[..., 2]


def _sample(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear sample of [H, W, C] at [..., 2] positions (u, v), borders replicated."""
    mx = np.ascontiguousarray(uv[..., 0], dtype=np.float32)
    my = np.ascontiguousarray(uv[..., 1], dtype=np.float32)
    return cv2.remap(image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def test_shapes_dtypes_and_depth_range(clips: dict[str, SyntheticClip]) -> None:
    for variant, clip in clips.items():
        t, h, w = 10, 96, 128
        assert clip.variant == variant
        assert clip.frames.shape == (t, h, w, 3) and clip.frames.dtype == np.uint8
        assert clip.intrinsics.shape == (4,)
        assert clip.world_from_camera.shape == (t, 4, 4) and clip.world_from_camera.dtype == np.float64
        assert clip.depth.shape == (t, h, w) and clip.depth.dtype == np.float32
        assert clip.flow_forward.shape == (t - 1, h, w, 2) and clip.flow_forward.dtype == np.float32
        assert clip.occluded_forward.shape == (t - 1, h, w) and clip.occluded_forward.dtype == bool
        assert clip.moving_mask.shape == (t, h, w) and clip.moving_mask.dtype == bool
        p = clip.tracks_3d.shape[1]
        assert p > 100
        assert clip.tracks_2d.shape == (t, p, 2) and clip.track_visible.shape == (t, p)
        # Depth range roughly 2..9 units, and every pixel hits something.
        assert 2.0 < clip.depth.min() < 3.0 and 7.5 < clip.depth.max() < 9.5
        # Rotations are proper.
        rotations = clip.world_from_camera[:, :3, :3]
        identity = np.broadcast_to(np.eye(3), rotations.shape)
        np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1), identity, atol=1e-12)
        np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-12)


def test_intrinsics_follow_pixel_centre_convention(clips: dict[str, SyntheticClip]) -> None:
    fx, fy, cx, cy = clips["translate"].intrinsics
    assert fx == pytest.approx(64.0 / np.tan(np.deg2rad(30.0)))
    assert fy == fx
    assert (cx, cy) == (63.5, 47.5)


def test_static_pixels_reproject_onto_forward_flow(clips: dict[str, SyntheticClip]) -> None:
    """(a) Unproject depth at t, project into t+1: equals the flow on pixels of static surfaces."""
    for variant, clip in clips.items():
        grid = _pixel_grid(*clip.depth.shape[1:])
        worst = 0.0
        for t in range(len(clip.frames) - 1):
            points = _unproject(clip.depth[t], clip.intrinsics, clip.world_from_camera[t])
            uv, _ = _project(points, clip.intrinsics, clip.world_from_camera[t + 1])
            still = ~clip.moving_mask[t]
            worst = max(worst, float(np.abs(uv - grid - clip.flow_forward[t])[still].max()))
        assert worst < 1e-3, f"{variant}: reprojection differs from flow by {worst} px"


def test_static_camera_pixels_have_zero_flow(clips: dict[str, SyntheticClip]) -> None:
    clip = clips["static"]
    still = ~clip.moving_mask[:-1]
    assert np.abs(clip.flow_forward[still]).max() < 1e-6
    moving = np.linalg.norm(clip.flow_forward, axis=-1)[clip.moving_mask[:-1]]
    assert np.median(moving) > 1.0


def test_colours_agree_along_flow(clips: dict[str, SyntheticClip]) -> None:
    """(b) Frame t+1 sampled at (u, v) + flow matches frame t where the point stays visible."""
    for variant, clip in clips.items():
        grid = _pixel_grid(*clip.depth.shape[1:])
        warped_err, still_err, moving_errs = [], [], []
        for t in range(len(clip.frames) - 1):
            seen = ~clip.occluded_forward[t]
            frame_t = clip.frames[t].astype(np.float32)
            warped = _sample(clip.frames[t + 1].astype(np.float32), grid + clip.flow_forward[t])
            diff = np.abs(warped - frame_t).mean(axis=-1)
            warped_err.append(diff[seen].mean())
            still_err.append(np.abs(clip.frames[t + 1].astype(np.float32) - frame_t).mean(axis=-1)[seen].mean())
            moving = seen & clip.moving_mask[t]
            if moving.any():
                moving_errs.append(diff[moving].mean())
        warped_mean, still_mean = float(np.mean(warped_err)), float(np.mean(still_err))
        assert warped_mean < 3.0, f"{variant}: colour error along flow {warped_mean:.2f}/255"
        assert warped_mean < 0.4 * still_mean, f"{variant}: flow explains too little ({warped_mean} vs {still_mean})"
        if variant in MOVING_VARIANTS:
            # The moving objects' own flow (rotation + translation) is right too; shading changes a little
            # as they spin, so allow more.
            assert np.mean(moving_errs) < 6.0, f"{variant}: moving-object colour error {np.mean(moving_errs):.2f}"


def test_occlusion_flags_mark_real_disocclusions(clips: dict[str, SyntheticClip]) -> None:
    for variant, clip in clips.items():
        share = clip.occluded_forward.mean()
        assert 0.002 < share < 0.15, f"{variant}: occluded share {share}"
        # Points that leave the image are flagged.
        grid = _pixel_grid(*clip.depth.shape[1:])
        target = grid + clip.flow_forward
        outside = (target[..., 0] < -0.5) | (target[..., 0] > 127.5) | (target[..., 1] < -0.5) | (target[..., 1] > 95.5)
        assert clip.occluded_forward[outside].all()


def test_moving_mask(clips: dict[str, SyntheticClip]) -> None:
    """(c) Non-empty in every frame with moving objects, empty without."""
    for variant in MOVING_VARIANTS:
        per_frame = clips[variant].moving_mask.mean(axis=(1, 2))
        assert (per_frame > 0.02).all() and (per_frame < 0.4).all(), f"{variant}: {per_frame}"
    assert not clips["static_scene"].moving_mask.any()


def test_camera_paths(clips: dict[str, SyntheticClip]) -> None:
    """(d) rotate: one centre, rotation changes; static: all poses equal; translate: real baseline."""
    rotate = clips["rotate"].world_from_camera
    np.testing.assert_array_equal(rotate[:, :3, 3], np.broadcast_to(rotate[0, :3, 3], (len(rotate), 3)))
    angle = np.degrees(np.arccos(np.clip((np.trace(rotate[0, :3, :3].T @ rotate[-1, :3, :3]) - 1) / 2, -1, 1)))
    assert angle > 5.0
    static = clips["static"].world_from_camera
    np.testing.assert_array_equal(static, np.broadcast_to(static[0], static.shape))
    for variant in ("translate", "fast", "static_scene"):
        centres = clips[variant].world_from_camera[:, :3, 3]
        baseline = np.linalg.norm(centres[-1] - centres[0])
        assert baseline > 0.8, f"{variant}: baseline {baseline}"
        assert abs(centres[-1, 0] - centres[0, 0]) > 3 * abs(centres[-1, 2] - centres[0, 2])  # mostly sideways


def test_parallax_in_translate_and_none_in_rotate(clips: dict[str, SyntheticClip]) -> None:
    """Translating camera: static flow depends on depth. Rotating camera: flow is a pure homography."""
    clip = clips["translate"]
    still = ~clip.moving_mask[0]
    near = still & (clip.depth[0] < 3.5)
    far = still & (clip.depth[0] > 7.5)
    du = clip.flow_forward[0, ..., 0]
    assert abs(du[near].mean() - du[far].mean()) > 1.5
    rot = clips["rotate"]
    fx, fy, cx, cy = rot.intrinsics
    k = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    rel = rot.world_from_camera[1, :3, :3].T @ rot.world_from_camera[0, :3, :3]
    homography = k @ rel @ np.linalg.inv(k)
    grid = _pixel_grid(96, 128)
    mapped = np.concatenate([grid, np.ones((96, 128, 1))], -1) @ homography.T
    flow_h = mapped[..., :2] / mapped[..., 2:] - grid
    still = ~rot.moving_mask[0]
    assert np.abs(flow_h - rot.flow_forward[0])[still].max() < 1e-3


def test_flow_magnitudes_per_variant(clips: dict[str, SyntheticClip]) -> None:
    fast = clips["fast"]
    magnitude = np.linalg.norm(fast.flow_forward, axis=-1)[fast.moving_mask[:-1]]
    assert 8.0 < np.median(magnitude) < 15.0
    normal = clips["translate"]
    magnitude = np.linalg.norm(normal.flow_forward, axis=-1)[normal.moving_mask[:-1]]
    assert 0.5 < np.median(magnitude) < 5.0


def test_texture_is_rich_enough_for_classical_flow(clips: dict[str, SyntheticClip]) -> None:
    """OpenCV DIS flow recovers the true flow of the slow variants to well under a pixel."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    for variant in ("translate", "rotate", "static_scene"):
        clip = clips[variant]
        grey = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in clip.frames]
        flow = np.stack([dis.calc(grey[t], grey[t + 1], None) for t in range(len(grey) - 1)])
        epe = flow_epe(flow, clip.flow_forward, ~clip.occluded_forward)
        zero = flow_epe(np.zeros_like(flow), clip.flow_forward, ~clip.occluded_forward)
        assert epe < 0.5 and epe < 0.3 * zero, f"{variant}: DIS EPE {epe:.3f} (zero flow {zero:.3f})"


def test_tracks_start_at_pixel_centres_and_follow_flow(clips: dict[str, SyntheticClip]) -> None:
    """(e) Frame-0 tracks sit on pixel centres with the right depth; chained flow reaches the tracks."""
    for variant, clip in clips.items():
        start = clip.tracks_2d[0]
        np.testing.assert_array_equal(start, np.round(start))
        cols, rows = start[:, 0].astype(int), start[:, 1].astype(int)
        uv, z = _project(clip.tracks_3d[0], clip.intrinsics, clip.world_from_camera[0])
        np.testing.assert_allclose(uv, start, atol=1e-6)
        np.testing.assert_allclose(z, clip.depth[0, rows, cols], rtol=1e-6)
        assert clip.track_visible[0].all()
        if variant in MOVING_VARIANTS:
            share = clip.moving_mask[0, rows, cols].mean()
            assert 0.4 < share < 0.6
        # One flow step from a pixel centre is exact; visibility at t=1 is the occlusion flag.
        np.testing.assert_allclose(start + clip.flow_forward[0, rows, cols], clip.tracks_2d[1], atol=1e-4)
        np.testing.assert_array_equal(clip.track_visible[1], ~clip.occluded_forward[0, rows, cols])
        # Chaining bilinearly sampled flow over three frames stays on the tracks where they stay visible.
        position = start.copy()
        for t in range(3):
            position = position + _sample(clip.flow_forward[t], position[None])[0]
            seen = clip.track_visible[: t + 2].all(axis=0)
            error = np.linalg.norm(position - clip.tracks_2d[t + 1], axis=1)[seen]
            assert np.median(error) < 0.01 and np.percentile(error, 90) < 0.2, f"{variant} t={t + 1}"


def test_tracks_visibility_is_a_depth_test(clips: dict[str, SyntheticClip]) -> None:
    """A visible track lies on the depth map; an in-view hidden one lies behind it."""
    for variant, clip in clips.items():
        for t in range(1, len(clip.frames)):
            uv, z = _project(clip.tracks_3d[t], clip.intrinsics, clip.world_from_camera[t])
            np.testing.assert_allclose(uv, clip.tracks_2d[t], atol=1e-9)
            cols = np.clip(np.round(uv[:, 0]).astype(int), 0, 127)
            rows = np.clip(np.round(uv[:, 1]).astype(int), 0, 95)
            inside = (uv[:, 0] > 0) & (uv[:, 0] < 127) & (uv[:, 1] > 0) & (uv[:, 1] < 95) & (z > 0)
            nearest_depth = clip.depth[t, rows, cols]
            hidden = inside & ~clip.track_visible[t]
            # Hidden points are clearly behind the surface seen at their pixel (at least mostly: at silhouettes
            # the nearest pixel may show the point's own object).
            if hidden.any():
                assert np.mean(z[hidden] > nearest_depth[hidden] + 0.05) > 0.8, variant
            visible = clip.track_visible[t]
            assert not (visible & ~inside & (z > 0) & ((uv[:, 0] < -0.5) | (uv[:, 0] > 127.5))).any()
            rel = np.abs(z[visible] - nearest_depth[visible]) / z[visible]
            assert np.median(rel) < 0.01, variant


def test_moving_objects_really_move_with_tracks(clips: dict[str, SyntheticClip]) -> None:
    clip = clips["static"]
    rows, cols = clip.tracks_2d[0, :, 1].astype(int), clip.tracks_2d[0, :, 0].astype(int)
    on_object = clip.moving_mask[0, rows, cols]
    travelled = np.linalg.norm(clip.tracks_3d[-1] - clip.tracks_3d[0], axis=1)
    assert travelled[~on_object].max() == 0.0
    assert travelled[on_object].min() > 0.05
    # Rigid motion includes a spin: a pure translation would give one displacement per object (two in all).
    displacements = np.round(clip.tracks_3d[-1] - clip.tracks_3d[0], 6)[on_object]
    assert len(np.unique(displacements, axis=0)) > 20


def _surface_distance(kind: str, size: np.ndarray, local: np.ndarray) -> np.ndarray:
    if kind == "plane":
        return np.abs(local[:, 2])
    if kind == "sphere":
        return np.abs(np.linalg.norm(local, axis=1) - size[0])
    outside = np.linalg.norm(np.maximum(np.abs(local) - size, 0.0), axis=1)
    inside = np.minimum(np.max(np.abs(local) - size, axis=1), 0.0)
    return np.abs(outside + inside)  # signed distance of a box, made unsigned


def test_depth_lands_on_the_analytic_surfaces(clips: dict[str, SyntheticClip]) -> None:
    """Every pixel's unprojected depth lies on some primitive of the scene, at its pose of that frame."""
    from recon4d.eval.synthetic import SyntheticConfig
    from recon4d.eval.synthetic.scene import build_scene as _build_scene

    for variant, clip in clips.items():
        scene = _build_scene(variant, 0, SyntheticConfig())
        for t in (0, len(clip.frames) - 1):
            points = _unproject(clip.depth[t], clip.intrinsics, clip.world_from_camera[t]).reshape(-1, 3)
            distance = np.full(len(points), np.inf)
            for prim in scene.primitives:
                rotation, centre = prim.pose(float(t))
                local = (points - centre) @ rotation
                distance = np.minimum(distance, _surface_distance(prim.kind, prim.size, local))
            assert distance.max() < 1e-5, f"{variant} t={t}: {distance.max()}"


def test_deterministic_and_seed_dependent() -> None:
    a = make_synthetic("translate", num_frames=3, width=64, height=48, seed=3)
    b = make_synthetic("translate", num_frames=3, width=64, height=48, seed=3)
    c = make_synthetic("translate", num_frames=3, width=64, height=48, seed=4)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.tracks_2d, b.tracks_2d)
    assert np.abs(a.frames.astype(int) - c.frames.astype(int)).mean() > 5.0


def test_bad_arguments_raise_input_error(tmp_path) -> None:
    with pytest.raises(InputError, match="unknown synthetic variant"):
        make_synthetic("spin")
    with pytest.raises(InputError, match="num_frames"):
        make_synthetic(num_frames=1)
    with pytest.raises(InputError, match="too small"):
        make_synthetic(width=8)
    with pytest.raises(InputError, match="no synthetic ground truth"):
        load_ground_truth(tmp_path)


def test_write_load_round_trip(tmp_path) -> None:
    clip = make_synthetic("fast", num_frames=6, width=96, height=64, seed=1)
    write_synthetic(clip, tmp_path / "clip")
    folder = tmp_path / "clip"
    loaded = load_ground_truth(folder)
    assert loaded.variant == "fast"
    for name in ("frames", "intrinsics", "world_from_camera", "depth", "flow_forward", "occluded_forward",
                 "moving_mask", "tracks_3d", "tracks_2d", "track_visible"):
        original, restored = getattr(clip, name), getattr(loaded, name)
        assert restored.dtype == original.dtype, name
        np.testing.assert_array_equal(restored, original, err_msg=name)

    meta = json.loads((folder / "gt.json").read_text())
    assert meta["variant"] == "fast" and meta["num_frames"] == 6 and (meta["width"], meta["height"]) == (96, 64)
    np.testing.assert_allclose(meta["intrinsics"], clip.intrinsics)
    np.testing.assert_allclose(np.array(meta["world_from_camera"]), clip.world_from_camera)

    pngs = sorted((folder / "frames").glob("*.png"))
    assert len(pngs) == 6
    np.testing.assert_array_equal(cv2.imread(str(pngs[2]))[:, :, ::-1], clip.frames[2])

    with av.open(str(folder / "video.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
    assert decoded.shape == clip.frames.shape
    quality = psnr(decoded / 255.0, clip.frames / 255.0)
    assert quality > 33.0, f"video PSNR {quality:.1f} dB"

    (folder / "gt.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(InputError, match="version"):
        load_ground_truth(folder)
