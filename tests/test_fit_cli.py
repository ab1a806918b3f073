"""`recon4d fit` end to end on a few frames of the bundled sample, at 48x36, and its resume."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recon4d import load_scene

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "cup.mp4"
TINY = """short_side: 36
num_gaussians: 800
frame0_iters: 40
camera_iters: 15
gaussian_iters: 15
max_new_per_frame: 100
holdout_refine_iters: 5
"""


def run_fit(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECON4D_NO_PROGRESS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "recon4d", "fit", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    preset = root / "tiny.yaml"
    preset.write_text(TINY)
    out = root / "out"
    result = run_fit(str(SAMPLE), "--out", str(out), "--preset", str(preset), "--max-frames", "6", "--holdout-every", "3")
    assert result.returncode == 0, result.stderr
    return out, preset, result


def test_outputs(fitted):
    out, _, result = fitted
    assert "held-out PSNR" in result.stdout
    scene = load_scene(out)
    assert scene.num_frames == 6 and (scene.cameras.width, scene.cameras.height) == (48, 36)
    cameras = json.loads((out / "cameras.json").read_text())
    assert [f["index"] for f in cameras["frames"]] == list(range(6))
    assert [f["source_index"] for f in cameras["frames"]] == list(range(6))
    assert all(len(f["world_from_camera"]) == 4 for f in cameras["frames"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["held_out"]["frames"] == 1 and metrics["fitted"]["frames"] == 5  # frame 2; never the last
    # Fitted frames are reconstructed; a broken fit lands far below this on the sample.
    assert metrics["fitted"]["psnr"] > 22
    assert metrics["gaussians"] == len(scene.gaussians) > 0
    assert {"decode", "priors", "fit", "evaluate"} <= set(metrics["seconds"])
    assert (out / "comparison.mp4").stat().st_size > 0
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_rerun_resumes_and_reproduces(fitted):
    out, preset, _ = fitted
    before = (out / "cameras.json").read_text()
    result = run_fit(str(SAMPLE), "--out", str(out), "--preset", str(preset), "--max-frames", "6", "--holdout-every", "3")
    assert result.returncode == 0, result.stderr
    assert "resuming from frame 5 of 5" in result.stdout
    assert (out / "cameras.json").read_text() == before


def test_image_folder_input(tmp_path, fitted):
    import cv2

    from recon4d.io.video import read_clip

    _, preset, _ = fitted
    clip = read_clip(SAMPLE, max_frames=4)
    folder = tmp_path / "images"
    folder.mkdir()
    names = [f"img{i * 5}.png" for i in range(4)]  # natural order differs from lexical order
    for name, frame in zip(names, clip.frames):
        cv2.imwrite(str(folder / name), frame[:, :, ::-1])
    result = run_fit(str(folder), "--out", str(tmp_path / "out"), "--preset", str(preset))
    assert result.returncode == 0, result.stderr
    cameras = json.loads((tmp_path / "out" / "cameras.json").read_text())
    assert [f["name"] for f in cameras["frames"]] == names


def test_export_commands(fitted):
    from recon4d.export import read_3dgs_ply, read_transforms_json

    out, _, _ = fitted
    env = {**os.environ, "RECON4D_NO_PROGRESS": "1"}
    for fmt in ("ply", "cameras", "masks"):
        result = subprocess.run([sys.executable, "-m", "recon4d", "export", str(out), "--format", fmt],
                                capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
    scene = load_scene(out)
    plys = sorted((out / "export" / "ply").glob("*.ply"))
    if scene.is_still:  # this tiny fit found nothing moving: one file holds every frame's Gaussians
        assert [p.name for p in plys] == ["static.ply"]
    else:
        assert len(plys) == scene.num_frames
    assert len(read_3dgs_ply(plys[-1])) == len(scene.gaussians_at(scene.num_frames - 1))
    cameras = read_transforms_json(out / "export" / "cameras")
    assert cameras.world_from_camera.shape == (scene.num_frames, 4, 4)
    assert abs(cameras.world_from_camera - scene.cameras.world_from_camera.numpy()).max() < 1e-6
    assert len(list((out / "export" / "cameras" / "images").glob("*.png"))) == scene.num_frames
    assert len(list((out / "export" / "masks").glob("mask_*.png"))) == scene.num_frames


def test_refine_command_adds_continuous_motion(tmp_path, fitted):
    import shutil

    out, _, _ = fitted
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    env = {**os.environ, "RECON4D_NO_PROGRESS": "1"}
    result = subprocess.run([sys.executable, "-m", "recon4d", "refine", str(copy), "--refine-iters", "20"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "sequential pass" in result.stdout
    scene = load_scene(copy)
    assert scene.motion is not None and scene.config["refine"]["enabled"] is True
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["refine_stats"]["refine_iters"] == 20 and "refine" in metrics["seconds"]
    assert metrics["sequential"]["held_out"]["frames"] == metrics["held_out"]["frames"] == 1
    # Any real time renders: between frames 1 and 2 the Gaussians exist and are finite.
    g = scene.gaussians_at(1.5)
    assert len(g) > 0 and bool(g.means.isfinite().all())
    # A second refine of the same result is refused with one line.
    again = subprocess.run([sys.executable, "-m", "recon4d", "refine", str(copy)], capture_output=True, text=True, env=env)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1


def test_static_scene_empties_the_moving_masks():
    """`--static` / `input.static_scene` (a walk-around of a still object): the priors of frames where the
    sample's hand turns the cup have moving pixels; with the flag they have none."""
    import torch

    from recon4d.fit.config import load_config
    from recon4d.fit.pipeline import prepare

    config = load_config("fast", {"short_side": 96, "max_frames": 6, "stride": 8})
    moving = prepare(SAMPLE, config, torch.device("cpu"), log=lambda *_: None).priors.moving_masks
    assert moving.mean() > 0.005
    still = prepare(SAMPLE, config.replace(**{"input.static_scene": True}), torch.device("cpu"),
                    log=lambda *_: None).priors.moving_masks
    assert still.shape == moving.shape and not still.any()


def test_static_flag_fits_with_nothing_dynamic(tmp_path, fitted):
    """`recon4d fit --static`: no dynamic or moving Gaussian, no moving mask, and the fit still reconstructs."""
    _, preset, _ = fitted
    result = run_fit(str(SAMPLE), "--out", str(tmp_path / "still"), "--preset", str(preset), "--max-frames", "6",
                     "--holdout-every", "3", "--static")
    assert result.returncode == 0, result.stderr
    still = json.loads((tmp_path / "still" / "metrics.json").read_text())
    assert still["dynamic_gaussians"] == 0 and still["moving_gaussians"] == 0
    assert not bool(load_scene(tmp_path / "still").arrays["moving_masks"].any())
    assert still["fitted"]["psnr"] > 22
