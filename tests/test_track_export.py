"""Track files (`recon4d track`, `recon4d export --format tracks`) on a scene with exactly known motion."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from view_scenes import moving_patch_scene, true_tracks

from recon4d.cli import main
from recon4d.errors import InputError
from recon4d.export.tracks import (
    CSV_HEADER,
    TrackExportConfig,
    check_queries,
    draw_overlay,
    export_tracks,
    grid_queries,
    parse_point_queries,
    read_tracks_csv,
    rendered_frames,
    track_colors,
)
from recon4d.io.scene import NEVER, Scene4D, save_scene
from recon4d.io.scene_frames import read_scene_frames as source_frames
from recon4d.io.video import probe_video
from recon4d.io.video_writer import write_video

W, H, T = 96, 54, 6


@pytest.fixture(scope="module")
def scene():
    return moving_patch_scene(num_frames=T, width=W, height=H)


@pytest.fixture(scope="module")
def exported(scene, tmp_path_factory):
    """A 12 x 12 grid on frame 0 plus a few queries on frame 3 (on the moving patch and on the wall)."""
    out = tmp_path_factory.mktemp("tracks")
    queries = torch.cat([grid_queries(W, H, 12), torch.tensor([[3, 40.0, 22.0], [3, 44.0, 27.0], [3, 80.0, 10.0]])])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECON4D_NO_PROGRESS", "1")
        paths = export_tracks(scene, out, queries)
    return queries, paths


def test_tracks_follow_the_known_motion(scene, exported):
    queries, paths = exported
    with np.load(paths["npz"]) as data:
        uv, xyz, visible = data["uv"], data["xyz"], data["visible"]
        assert np.array_equal(data["queries"], queries.numpy())
    assert uv.shape == (T, len(queries), 2) and xyz.shape == (T, len(queries), 3) and visible.dtype == bool
    truth_uv, truth_visible, on_patch = true_tracks(scene, queries.numpy())
    _, _, interior = true_tracks(scene, queries.numpy(), margin=0.05)  # >= 2 px from the patch border
    assert on_patch.sum() >= 10 and (~on_patch).sum() >= 100
    error = np.linalg.norm(uv - truth_uv, axis=-1)
    # Measured: patch interior max 0.0014 px (the patch moves 1.7 px per frame, so a track that stood still
    # would be off by up to 8 px); wall median 2e-6 px, max 0.2 px (a point at the patch's border).
    assert error[:, interior].max() < 0.05
    wall = error[:, ~on_patch][truth_visible[:, ~on_patch]]
    assert np.median(wall) < 0.01 and np.percentile(wall, 95) < 0.05 and wall.max() < 0.5
    patch_error = error[:, on_patch][truth_visible[:, on_patch]]
    assert np.median(patch_error) < 0.05
    # The query frame of each point is where it was asked for.
    for p, (t0, u, v) in enumerate(queries.tolist()):
        assert np.abs(uv[int(t0), p] - [u, v]).max() < 0.05
    # Visibility: wall points hidden behind the patch. Measured accuracy 0.992 (misses at the patch border).
    assert (visible == truth_visible).mean() > 0.97
    assert (~truth_visible).sum() > 0 and (~visible & ~truth_visible).sum() / (~truth_visible).sum() > 0.7


def test_csv_matches_npz_and_overlay_has_every_frame(exported):
    queries, paths = exported
    header = paths["csv"].read_text().splitlines()[0]
    assert header == CSV_HEADER
    table = read_tracks_csv(paths["csv"])
    with np.load(paths["npz"]) as data:
        assert np.allclose(table["uv"], data["uv"], atol=1e-3)  # 6 significant digits of < 100 px
        assert np.allclose(table["xyz"], data["xyz"], atol=1e-5)
        assert np.array_equal(table["visible"], data["visible"])
    assert len(paths["csv"].read_text().splitlines()) == 1 + T * len(queries)
    info = probe_video(paths["overlay"])
    factor = -(-TrackExportConfig().overlay_min_short_side // H)  # upscaled to a short side >= 360 px
    assert (info.frames, info.width, info.height) == (T, W * factor, H * factor)
    assert info.fps == pytest.approx(10)
    assert not list(paths["csv"].parent.glob(".*")), "temporary files left behind"


def test_overlay_draws_fading_tracks_over_the_input(scene, exported):
    """The overlay differs from the input frame only around the drawn tracks, and old segments fade."""
    _, paths = exported
    with np.load(paths["npz"]) as data:
        uv, visible = data["uv"][:, :1], data["visible"][:, :1]  # one wall point: moves 1.3 px per frame
    plain = rendered_frames(scene)
    config = TrackExportConfig(overlay_min_short_side=H, tail_frames=4)  # no upscaling: overlay pixels = scene pixels
    overlay = draw_overlay(plain, uv, visible, config)
    assert overlay.shape == plain.shape
    rows, cols = np.nonzero(np.abs(overlay[-1].astype(int) - plain[-1]).max(-1) > 0)
    assert len(rows) > 0
    # Everything drawn in the last frame lies near the track's last tail_frames + 1 positions (dot radius 3 px,
    # line 2 px, anti-aliasing 1 px).
    window = uv[-1 - config.tail_frames:, 0]
    distance = np.min(np.hypot(cols[:, None] - window[None, :, 0], rows[:, None] - window[None, :, 1]), axis=1)
    assert distance.max() < config.point_radius + 2


def test_overlay_segments_fade_with_age():
    """A track moving 15 px per frame over grey: segment k frames old is drawn with opacity 1 - (k-1)/tail."""
    tail, steps = 4, 6
    frames = np.full((steps, 40, 100, 3), 128, np.uint8)
    uv = np.array([[[8.0 + 15 * t, 20.0]] for t in range(steps)])
    config = TrackExportConfig(overlay_min_short_side=40, tail_frames=tail, line_thickness=3)
    last = draw_overlay(frames, uv, np.ones((steps, 1), bool), config)[-1].astype(float)
    colour = track_colors(1)[0].astype(float)
    opacities = []
    for age in range(1, tail + 1):  # segment from frame steps-1-age to steps-age
        middle = np.round((uv[steps - 1 - age, 0] + uv[steps - age, 0]) / 2).astype(int)
        opacities.append(np.dot(last[middle[1], middle[0]] - 128, colour - 128) / np.dot(colour - 128, colour - 128))
    # Measured: the line centre is drawn at full coverage, so opacities are 1, 0.75, 0.5, 0.25 to 1/255.
    assert opacities == pytest.approx([1.0, 0.75, 0.5, 0.25], abs=0.02)
    assert np.array_equal(last[:, :19], frames[-1, :, :19])  # segment 0-1 (u 8..23) is older than the tail


def test_source_frames_are_reread_when_they_match(scene, tmp_path):
    renders = rendered_frames(scene)
    video = write_video(tmp_path / "source.mp4", renders, fps=10)
    scene.config["source"] = str(video)
    try:
        frames = source_frames(scene)
        assert frames is not None and frames.shape == (T, H, W, 3)
        assert np.abs(frames.astype(float) - renders).mean() < 10  # H.264 of the same frames (measured 7)
        write_video(tmp_path / "small.mp4", renders[:, ::2, ::2], fps=10)
        scene.config["source"] = str(tmp_path / "small.mp4")
        assert source_frames(scene) is None  # decodes at another size
        scene.config["source"] = str(tmp_path / "gone.mp4")
        assert source_frames(scene) is None
    finally:
        del scene.config["source"]


def test_query_parsing_and_errors(scene):
    grid = grid_queries(W, H, 2, query_frame=4)
    assert grid.tolist() == [[4, 23.5, 13.0], [4, 71.5, 13.0], [4, 23.5, 40.0], [4, 71.5, 40.0]]
    assert parse_point_queries(["10,20", "30.5, 4, 2"], query_frame=1).tolist() == [[1, 10, 20], [2, 30.5, 4]]
    with pytest.raises(InputError, match="x,y or x,y,t"):
        parse_point_queries(["10"])
    with pytest.raises(InputError, match="x,y or x,y,t"):
        parse_point_queries(["a,b"])
    with pytest.raises(InputError, match="not a frame index"):
        check_queries(scene, torch.tensor([[T, 1.0, 1.0]]))
    with pytest.raises(InputError, match="not a frame index"):
        check_queries(scene, torch.tensor([[0.5, 1.0, 1.0]]))
    with pytest.raises(InputError, match="outside the 96x54 image"):
        check_queries(scene, torch.tensor([[0, 1.0, 60.0]]))
    with pytest.raises(InputError, match="at least 1 point"):
        grid_queries(W, H, 0)


def test_cli_track_and_export(scene, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RECON4D_NO_PROGRESS", "1")
    save_scene(scene, tmp_path / "scene.r4d")
    assert main(["track", str(tmp_path), "--points", "40,22", "70,40,2"]) == 0, capsys.readouterr().err
    with np.load(tmp_path / "tracks" / "tracks.npz") as data:
        assert data["queries"].tolist() == [[0, 40, 22], [2, 70, 40]] and data["uv"].shape == (T, 2, 2)
    assert probe_video(tmp_path / "tracks" / "overlay.mp4").frames == T

    assert main(["export", str(tmp_path), "--format", "tracks", "--frame", "1"]) == 0, capsys.readouterr().err
    with np.load(tmp_path / "export" / "tracks" / "tracks.npz") as data:
        n = TrackExportConfig().default_grid
        assert data["uv"].shape == (T, n * n, 2) and set(data["queries"][:, 0].tolist()) == {1.0}
    assert {p.name for p in (tmp_path / "export" / "tracks").iterdir()} == {"tracks.npz", "tracks.csv", "overlay.mp4"}

    capsys.readouterr()
    assert main(["track", str(tmp_path), "--points", "500,2", "--dest", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recon4d: error:") and "outside" in err[0]
    assert not (tmp_path / "bad").exists()


def test_tracks_of_a_scene_with_a_motion_model_are_those_of_its_per_frame_states(scene):
    """A refined scene keeps a motion model, not per-frame states: tracking evaluates the query's
    neighbouring Gaussians' trajectories, window by window, and finds the same tracks."""
    from view_scenes import with_linear_motion

    from recon4d.track import track_points

    continuous = with_linear_motion(scene)
    assert torch.unique(continuous.motion.window, dim=0).shape[0] == 2
    queries = torch.cat([grid_queries(W, H, 6), torch.tensor([[3, 40.0, 22.0], [3, 44.0, 27.0]])])
    dense, model = track_points(scene, queries), track_points(continuous, queries)
    torch.testing.assert_close(model.tracks_3d, dense.tracks_3d, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.tracks_2d, dense.tracks_2d, atol=1e-3, rtol=0)
    assert torch.equal(model.visible, dense.visible)
    moved = (dense.tracks_2d[-1] - dense.tracks_2d[0]).norm(dim=-1)
    assert float(moved.max()) > 3.0  # the patch's queries do travel


def windowed_patch_scene(boundary: int = 3):
    """`moving_patch_scene` fitted as a long clip is, in two temporal windows (frames 0..boundary-1 and
    boundary..T-1): the first window's patch Gaussians die at `boundary`, where a copy of them is born for
    the second. Each copy holds the true motion in its window and at the boundary frame, and stands still
    elsewhere, as a dead or unborn Gaussian's state means nothing. The wall lives through both."""
    scene = moving_patch_scene(num_frames=T, width=W, height=H)
    n, nd = len(scene.gaussians), int(scene.is_dynamic.sum())
    copy = scene.gaussians.select(scene.is_dynamic)
    gaussians = type(copy)(*(torch.cat([getattr(scene.gaussians, f), getattr(copy, f)])
                             for f in ("means", "quats", "scales", "opacities", "colors")))
    first, second = scene.dynamic_means.clone(), scene.dynamic_means.clone()
    first[boundary + 1:] = scene.dynamic_means[boundary]
    second[:boundary] = scene.dynamic_means[boundary]
    death = torch.full((n + nd,), NEVER, dtype=torch.int32)
    death[:n][scene.is_dynamic] = boundary
    windowed = Scene4D(gaussians, torch.cat([scene.is_dynamic, torch.ones(nd, dtype=torch.bool)]),
                       torch.cat([scene.birth_frame, torch.full((nd,), boundary, dtype=torch.int32)]),
                       torch.cat([first, second], 1), scene.dynamic_quats.repeat(1, 2, 1), scene.cameras,
                       death_frame=death)
    windowed.validate()
    return windowed


def test_a_track_is_handed_over_to_the_next_windows_gaussians():
    """A long clip's windows each have their own Gaussians: a track follows its window's, then, from each
    boundary on, the next window's nearest ones (backwards likewise), so it follows the motion over the
    whole clip instead of freezing where its Gaussians die."""
    from recon4d.track import track_points

    scene = windowed_patch_scene()
    assert scene.window_at(0) == (0, 2) and scene.window_at(3) == (3, T - 1)
    queries = torch.cat([grid_queries(W, H, 12), torch.tensor([[5, 40.0, 22.0], [5, 44.0, 27.0], [0, 35.0, 25.0]])])
    tracks = track_points(scene, queries)
    truth_uv, truth_visible, on_patch = true_tracks(scene, queries.numpy())
    _, _, interior = true_tracks(scene, queries.numpy(), margin=0.05)
    assert interior.sum() >= 8 and set(queries[interior, 0].tolist()) == {0.0, 5.0}
    error = np.linalg.norm(tracks.tracks_2d.numpy() - truth_uv, axis=-1)
    # Measured: 0.0013 px at most on the patch's interior (a track that froze at the boundary would be
    # 1.7 px off per frame), in both directions; the wall as in the one-window scene.
    assert error[:, interior].max() < 0.05, error[:, interior].max(0)
    wall = error[:, ~on_patch][truth_visible[:, ~on_patch]]
    assert np.median(wall) < 0.01 and np.percentile(wall, 95) < 0.05
