"""A fit on keyframes only (`keyframes.enabled`): every input frame still gets a camera, a moving mask and a
rendered frame; the skipped frames are scored on their own, and their refined cameras follow the true path."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recon4d.eval.ground_truth import evaluate_scene
from recon4d.eval.synthetic import make_synthetic, write_synthetic
from recon4d.fit.config import load_config
from recon4d.fit.pipeline import fit_video
from recon4d.fit.sequential import subset_window_boundaries

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

FRAMES = 16


@pytest.fixture(scope="module")
def keyframe_fit(tmp_path_factory):
    root = tmp_path_factory.mktemp("keyframes")
    clip = make_synthetic("translate", num_frames=FRAMES, width=96, height=54, seed=0)
    write_synthetic(clip, root / "gt")
    config = load_config("fast").replace(
        short_side=54, num_gaussians=1500, frame0_iters=80, camera_iters=30, gaussian_iters=30, refine=False,
        holdout_every=0, **{"keyframes.enabled": True, "keyframes.max_gap_frames": 3,
                            "keyframes.long_clip": {"sequential.camera_iters": 7}})
    result = fit_video(root / "gt" / "video.mp4", root / "out", config, torch.device("cpu"), log=lambda *_: None)
    return clip, result


def test_every_frame_has_a_camera_mask_render_and_score(keyframe_fit):
    _, result = keyframe_fit
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    fitted, skipped = metrics["fitted"]["frames"], metrics["skipped"]["frames"]
    assert skipped >= FRAMES // 3 and fitted + skipped == FRAMES, metrics["fitted"]
    assert metrics["skipped"]["psnr"] is not None
    assert len(result.scene.cameras) == FRAMES and result.scene.arrays["moving_masks"].shape[0] == FRAMES
    assert len(json.loads((result.out_dir / "cameras.json").read_text())["frames"]) == FRAMES
    # The scene stores the fitted frames' dynamic states only; the skipped frames blend them.
    assert result.scene.state_frames.tolist() == metrics["sequential_frames"]
    assert result.scene.dynamic_means.shape[0] == fitted < FRAMES
    # Between keyframes the model is interpolated: skipped frames render close to the fitted ones.
    assert metrics["skipped"]["psnr"] >= metrics["fitted"]["psnr"] - 6.0, (metrics["skipped"], metrics["fitted"])
    # Every keyframe is in the sequential pass (no refinement): not a long clip, `keyframes.long_clip` stays out.
    assert result.scene.config["sequential"]["camera_iters"] == 30


def test_skipped_frames_cameras_follow_the_true_path(keyframe_fit):
    clip, result = keyframe_fit
    errors = evaluate_scene(result.scene, clip)
    assert errors["ate_percent"] <= 5.0, errors


def test_refinement_completes_a_sparser_sequential_pass(tmp_path):
    """`keyframes.sequential_budget_px`: the sequential pass fits every second keyframe, the refinement all of
    them; the keyframes only the refinement saw render about as well as the others, and the cameras hold."""
    clip = make_synthetic("translate", num_frames=FRAMES, width=96, height=54, seed=0)
    write_synthetic(clip, tmp_path / "gt")
    config = load_config("fast").replace(
        short_side=54, num_gaussians=1500, frame0_iters=80, camera_iters=30, gaussian_iters=30, refine=True,
        refine_iters=120, holdout_every=0,
        **{"keyframes.enabled": True, "keyframes.max_gap_frames": 2, "keyframes.motion_budget_px": 1000.0,
           "keyframes.sequential_budget_px": 2000.0, "keyframes.long_clip": {"sequential.camera_iters": 7}})
    result = fit_video(tmp_path / "gt" / "video.mp4", tmp_path / "out", config, torch.device("cpu"), log=lambda *_: None)
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    # A sparser sequential pass makes a long clip: its settings apply, and the scene stores those in force.
    assert max(s["camera_iters"] for s in metrics["frame_stats"][1:]) <= 7
    assert result.scene.config["sequential"]["camera_iters"] == 7 and not result.scene.config["keyframes"]["long_clip"]
    sequential = metrics["sequential_frames"]
    fitted = [f["frame"] for f in metrics["per_frame"] if not f["skipped"] and not f["held_out"]]
    assert set(sequential) < set(fitted) and len(sequential) <= len(fitted) // 2 + 1, (sequential, fitted)
    psnr = {f["frame"]: f["psnr"] for f in metrics["per_frame"]}
    only_refined = [psnr[t] for t in fitted if t not in sequential]
    both = [psnr[t] for t in sequential]
    assert min(only_refined) >= sum(both) / len(both) - 3.0, (only_refined, both)
    assert evaluate_scene(result.scene, clip)["ate_percent"] <= 5.0


def test_short_clip_is_refined_on_every_frame(tmp_path):
    """`keyframes.dense_refine_frames`: the sequential pass fits the keyframes, the refinement every frame that is
    not held out; nothing is skipped, the long-clip settings stay off, and held-out frames render better than when
    the refinement fits the keyframes alone and the frames between them are interpolated."""
    clip = make_synthetic("translate", num_frames=FRAMES, width=96, height=54, seed=0)
    write_synthetic(clip, tmp_path / "gt")
    held_out = {}
    for dense in (16, 0):
        config = load_config("fast").replace(
            short_side=54, num_gaussians=1500, frame0_iters=80, camera_iters=30, gaussian_iters=30, refine=True,
            refine_iters=150, holdout_every=4,
            **{"keyframes.enabled": True, "keyframes.max_gap_frames": 3, "keyframes.motion_budget_px": 1000.0,
               "keyframes.dense_refine_frames": dense, "keyframes.long_clip": {"sequential.camera_iters": 7}})
        result = fit_video(tmp_path / "gt" / "video.mp4", tmp_path / f"out{dense}", config, torch.device("cpu"),
                           log=lambda *_: None)
        metrics = json.loads((result.out_dir / "metrics.json").read_text())
        held_out[dense] = metrics["held_out"]["psnr"]
        if dense:
            refined = [f["frame"] for f in metrics["per_frame"] if not f["held_out"]]
            assert metrics["skipped"]["frames"] == 0 and len(refined) == FRAMES - metrics["held_out"]["frames"]
            assert set(metrics["sequential_frames"]) < set(refined) and len(metrics["sequential_frames"]) <= 7
            assert result.scene.config["sequential"]["camera_iters"] == 30  # not a long clip
            assert evaluate_scene(result.scene, clip)["ate_percent"] <= 5.0
    assert held_out[16] >= held_out[0] + 1.0, held_out


def _refined_on_every_frame_with_a_sparser_pass(tmp_path):
    """A 16-frame clip written to tmp_path/gt, and a config that refines every frame outside the held-out set
    (every 4th) and thins its keyframes for the sequential pass, as a long clip's are."""
    clip = make_synthetic("translate", num_frames=FRAMES, width=96, height=54, seed=0)
    write_synthetic(clip, tmp_path / "gt")
    return load_config("fast").replace(
        short_side=54, refine=True, holdout_every=4,
        **{"keyframes.enabled": True, "keyframes.max_gap_frames": 2, "keyframes.motion_budget_px": 1000.0,
           "keyframes.sequential_budget_px": 2000.0, "keyframes.sequential_min_keyframes": 2,
           "keyframes.dense_refine_frames": 16})


def test_a_clip_refined_on_every_frame_can_still_take_a_sparser_sequential_pass(tmp_path):
    """Every frame outside the held-out set is refined; the keyframes among them are thinned for the sequential
    pass as a long clip's are, and its temporal windows are counted in keyframes, not in refined frames."""
    from recon4d.fit.pipeline import prepare

    config = _refined_on_every_frame_with_a_sparser_pass(tmp_path)
    prepared = prepare(tmp_path / "gt" / "video.mp4", config, torch.device("cpu"), log=lambda *_: None)
    assert prepared.held == [3, 7, 11] and prepared.skipped == []
    assert prepared.fitted == [t for t in range(FRAMES) if t not in prepared.held]
    assert set(prepared.keyframes) < set(prepared.fitted) and set(prepared.sequential) < set(prepared.keyframes)
    assert prepared.long_clip and len(prepared.inputs.frames) == len(prepared.fitted)
    assert len(prepared.sequential_inputs.frames) == len(prepared.sequential)
    # Windows of 5 keyframes: the 9 keyframes make 2 windows; counted in the 13 refined frames they would make 4
    # (3, made even).
    boundaries = prepared.window_boundaries(5)
    assert boundaries == subset_window_boundaries(prepared.keyframes, prepared.sequential, 5) and len(boundaries) == 1
    assert len(subset_window_boundaries(prepared.fitted, prepared.sequential, 5)) == 3
    # Off (0): the frames between keyframes are skipped, and the refinement fits the keyframes.
    off = prepare(tmp_path / "gt" / "video.mp4", config.replace(**{"keyframes.dense_refine_frames": 0}),
                  torch.device("cpu"), log=lambda *_: None)
    assert off.fitted == off.keyframes == prepared.keyframes and off.sequential == prepared.sequential
    assert sorted(off.fitted + off.skipped) == prepared.fitted


def test_a_long_clips_priors_of_every_frame_compute_beside_the_sequential_pass(tmp_path):
    """`prepare(overlap=True)` returns once the sequential pass's priors are in; the priors of every fitted frame
    arrive later (`wait_priors`) and equal those computed up front."""
    from recon4d.fit.pipeline import prepare

    config = _refined_on_every_frame_with_a_sparser_pass(tmp_path).replace(**{"priors.use_cache": False})
    video, cpu = tmp_path / "gt" / "video.mp4", torch.device("cpu")
    upfront = prepare(video, config, cpu, log=lambda *_: None)
    overlapped = prepare(video, config, cpu, log=lambda *_: None, overlap=True)
    assert overlapped.long_clip and overlapped.pending is not None and overlapped.inputs is None
    assert len(overlapped.sequential_inputs.frames) == len(overlapped.sequential)
    overlapped.wait_priors()
    assert overlapped.pending is None and overlapped.background_seconds > 0
    assert upfront.pending is None and upfront.background_seconds == 0
    for name in ("frames", "flow_forward", "valid_forward", "depth", "depth_confidence", "moving"):
        assert torch.equal(getattr(overlapped.inputs, name), getattr(upfront.inputs, name)), name
    assert np.array_equal(overlapped.priors.moving_masks, upfront.priors.moving_masks)
