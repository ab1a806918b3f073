"""Temporal windows (`sequential.window_frames`): a long clip is fitted in windows, each with its own Gaussians.

Every frame is drawn by the Gaussians of one window, the Gaussian budget holds per window, a windowed fit
renders held-out frames about as well as one window over the whole clip, its cameras follow the true path,
the refinement keeps the windows, the scene file round-trips, and an interrupted pass resumes exactly.
"""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from recon4d.eval.ground_truth import evaluate_scene
from recon4d.eval.synthetic import make_synthetic, write_synthetic
from recon4d.fit.config import load_config
from recon4d.fit.pipeline import fit_video, prepare, refine_output
from recon4d.fit.refine import RefineInputs, refine_scene
from recon4d.fit.sequential import FitState, SequentialFitter, window_boundaries
from recon4d.io.scene import NEVER, load_scene
from fit_scenes import static_world_inputs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

FRAMES = 13
WINDOW = 4
BUDGET = 2500


def _config(window_frames: int):
    return load_config("fast").replace(
        short_side=54, num_gaussians=1500, frame0_iters=80, camera_iters=30, gaussian_iters=30, refine=True,
        refine_iters=80, holdout_every=4, max_gaussians=BUDGET,
        **{"sequential.window_frames": window_frames})


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    root = tmp_path_factory.mktemp("windows")
    clip = make_synthetic("translate", num_frames=FRAMES, width=96, height=54, seed=0)
    write_synthetic(clip, root / "gt")
    results = {name: fit_video(root / "gt" / "video.mp4", root / name, _config(window), torch.device("cpu"),
                               log=lambda *_: None)
               for name, window in (("one", 0), ("windows", WINDOW))}
    return clip, results


def test_each_frame_is_drawn_by_one_window(fits):
    _, results = fits
    scene = load_scene(results["windows"].out_dir)  # the file round trip keeps death frames and windows
    assert scene.death_frame is not None and scene.motion is not None and scene.motion.window is not None
    deaths = sorted(set(scene.death_frame.tolist()) - {NEVER})
    assert len(deaths) >= 2, deaths  # 10 fitted frames in windows of 4 sharing their ends: 3 windows
    windows = scene.trajectory_windows()
    for t in range(scene.num_frames):
        alive = scene.alive_at(t)
        assert int(alive.sum()) <= BUDGET * 1.2  # the budget (plus the refinement's growth) holds per window
        starts = torch.unique(windows[alive, 0])
        assert starts.numel() == 1, (t, starts)  # one window's Gaussians, never two on top of each other
    assert load_scene(results["one"].out_dir).death_frame is None


def test_refinement_takes_one_window_at_a_time(fits):
    _, results = fits
    metrics = {k: json.loads((results[k].out_dir / "metrics.json").read_text()) for k in ("one", "windows")}
    scene = load_scene(results["windows"].out_dir)
    windows = torch.unique(scene.trajectory_windows(), dim=0)
    assert metrics["windows"]["refine_stats"]["refine_windows"] == windows.shape[0] >= 3
    assert metrics["one"]["refine_stats"]["refine_windows"] == 1
    # The steps are shared by the windows in proportion to their frames: no fewer than one window takes.
    assert metrics["windows"]["refine_stats"]["refine_iters"] >= metrics["one"]["refine_stats"]["refine_iters"]


def test_windows_render_held_out_frames_like_one_window(fits):
    _, results = fits
    one, windows = (json.loads((results[k].out_dir / "metrics.json").read_text()) for k in ("one", "windows"))
    assert windows["held_out"]["frames"] == one["held_out"]["frames"] >= 2
    assert windows["held_out"]["psnr"] >= one["held_out"]["psnr"] - 1.5, (windows["held_out"], one["held_out"])
    assert windows["fitted"]["psnr"] >= 25.0, windows["fitted"]


@pytest.fixture(scope="module")
def sequential_fit(tmp_path_factory):
    """A windowed fit without refinement: the folder holding gt/video.mp4 and sequential/."""
    root = tmp_path_factory.mktemp("sequential")
    write_synthetic(make_synthetic("translate", num_frames=FRAMES, width=96, height=54, seed=0), root / "gt")
    fit_video(root / "gt" / "video.mp4", root / "sequential", _config(WINDOW).replace(refine=False),
              torch.device("cpu"), log=lambda *_: None)
    return root


def test_windows_refined_side_by_side_match_one_after_another(sequential_fit, tmp_path):
    """On the CPU the windows are refined on parallel threads, one thread each: the scene must be the one that
    refining them one after another on one thread gives, bit for bit."""
    threads = torch.get_num_threads()
    scenes = {}
    try:
        for count in (1, 2):
            shutil.copytree(sequential_fit / "sequential", tmp_path / f"threads{count}")
            torch.set_num_threads(count)
            scenes[count] = refine_output(tmp_path / f"threads{count}", torch.device("cpu"), log=lambda *_: None).scene
    finally:
        torch.set_num_threads(threads)
    one, two = scenes[1], scenes[2]
    assert torch.unique(two.trajectory_windows(), dim=0).shape[0] >= 3
    assert torch.equal(one.cameras.world_from_camera, two.cameras.world_from_camera)
    for name in ("means", "quats", "scales", "opacities", "colors"):
        assert torch.equal(getattr(one.gaussians, name), getattr(two.gaussians, name)), name
    assert torch.equal(one.motion.position, two.motion.position)


def test_refinement_may_drop_what_it_has_read(sequential_fit):
    """The refinement reads the sequential scene's per-frame states once, to start the trajectories, and the
    priors until the last window is refined; dropping each then (`consume`, as `recon4d fit` does: on a long
    clip they weigh as much as the refined scene's states) leaves `data` without them and changes no bit of the
    result."""
    config = _config(WINDOW)
    prepared = prepare(sequential_fit / "gt" / "video.mp4", config, torch.device("cpu"), log=lambda *_: None)
    refined = {}
    for consume in (False, True):
        scene = load_scene(sequential_fit / "sequential")
        assert scene.dynamic_means.shape[1] > 0
        data = RefineInputs(scene, prepared.fitted, prepared.inputs)
        refined[consume], _ = refine_scene(data, config, torch.device("cpu"), consume=consume)
        assert (scene.dynamic_means is None) == (scene.dynamic_quats is None) == (data.inputs is None) == consume
    kept, dropped = refined[False], refined[True]
    assert torch.unique(kept.trajectory_windows(), dim=0).shape[0] >= 3
    assert torch.equal(kept.cameras.world_from_camera, dropped.cameras.world_from_camera)
    for name in ("means", "quats", "scales", "opacities", "colors"):
        assert torch.equal(getattr(kept.gaussians, name), getattr(dropped.gaussians, name)), name
    assert torch.equal(kept.motion.position, dropped.motion.position)
    assert all(torch.equal(a, b) for a, b in zip(kept.dynamic_states(), dropped.dynamic_states()))


def test_windowed_cameras_follow_the_true_path(fits):
    clip, results = fits
    errors = evaluate_scene(results["windows"].scene, clip)
    assert errors["ate_percent"] <= 5.0, errors


def test_interrupted_windowed_pass_resumes_to_the_same_result():
    inputs, _ = static_world_inputs(width=64, height=36, num_frames=6)
    config = load_config("fast", {"num_gaussians": 1500, "frame0_iters": 60, "camera_iters": 20, "gaussian_iters": 20,
                                  "max_new_per_frame": 200, "window_frames": 2})
    full = SequentialFitter(inputs, config).run()
    assert full.retired is not None and full.window_start == 4  # windows [0, 1], [1, 2], [2, 3], [3, 4], [4, 5]
    saved = {}

    def stop_after_three(state: FitState, t: int) -> None:
        saved["state"] = state.state_dict()
        if t == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        SequentialFitter(inputs, config, on_frame=stop_after_three).run()
    resumed = SequentialFitter(inputs, config).run(FitState.from_state_dict(saved["state"], torch.device("cpu")))
    for a, b in zip(resumed.camera_from_world, full.camera_from_world):
        assert torch.equal(a, b)
    for name in ("means", "color_logits", "death_frame"):
        assert torch.equal(getattr(resumed.all_gaussians(), name), getattr(full.all_gaussians(), name))


def test_windows_are_balanced_and_never_longer_than_asked():
    assert window_boundaries(30, 32) == [] and window_boundaries(79, 0) == []  # one window
    for frames in range(2, 200):
        for most in (2, 4, 10, 32):
            edges = [0, *window_boundaries(frames, most), frames - 1]  # windows share their boundary frames
            steps = [b - a for a, b in zip(edges[:-1], edges[1:])]
            assert max(steps) <= most - 1, (frames, most, steps)  # no window longer than asked
            fewest = math.ceil((frames - 1) / (most - 1))
            if fewest > 1:  # several: an even count (the refinement runs them in pairs), unless windows of 2 frames
                fewest = min(fewest + fewest % 2, frames - 1)
            assert len(steps) == max(1, fewest), (frames, most, steps)  # as few as can be
            assert max(steps) - min(steps) <= 1, (frames, most, steps)  # as equal as can be
