"""The command line: help, version, one-line errors with exit code 2, info on a scene file."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import torch

from recon4d import __version__
from recon4d.io.scene import save_scene
from test_scene import make_scene


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recon4d", *args], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "RECON4D_NO_PROGRESS": "1"})


def test_help_and_version():
    result = run_cli("--help")
    assert result.returncode == 0 and "fit" in result.stdout and "--device" in result.stdout
    result = run_cli("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def _assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recon4d: error:") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_bad_input_is_one_line_exit_2(tmp_path):
    _assert_one_line_error(run_cli("fit", str(tmp_path / "missing.mp4")), "missing.mp4")
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("hello")
    _assert_one_line_error(run_cli("fit", str(not_video)), "notes.mp4")
    _assert_one_line_error(run_cli("info", str(tmp_path)), "no scene file")
    _assert_one_line_error(run_cli("--device", "gpu", "info", "x"), "invalid choice")
    _assert_one_line_error(run_cli("fit"), "video")


def test_info_reads_scene(tmp_path):
    save_scene(make_scene(num_frames=3, n=20), tmp_path / "scene.r4d")
    result = run_cli("info", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["frames"] == 3 and summary["gaussians"] == 20 and summary["image_size"] == [64, 48]
    assert summary["dynamic_states"] == {"stored_frames": 3}
    # A sequential scene storing the states of frames 0 and 2 of 3 says so.
    scene = make_scene(num_frames=3, n=20)
    picked = torch.tensor([0, 2])
    sparse = dataclasses.replace(scene, dynamic_means=scene.dynamic_means[picked],
                                 dynamic_quats=scene.dynamic_quats[picked], state_frames=picked)
    save_scene(sparse, tmp_path / "scene.r4d")
    summary = json.loads(run_cli("info", str(tmp_path), "--json").stdout)
    assert summary["dynamic_states"] == {"stored_frames": 2}


def test_info_text_shortens_a_long_clips_per_frame_lists(tmp_path):
    scene = make_scene(num_frames=3, n=20)
    scene.metrics = {"camera_inits": [None] + ["pnp"] * 449, "fitted": {"psnr": 27.5, "frames": 450}}
    save_scene(scene, tmp_path / "scene.r4d")
    result = run_cli("info", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in result.stdout.splitlines()}
    assert lines["camera_inits"] == "[450 values: None, 'pnp', 'pnp', ..., 'pnp', 'pnp', 'pnp']"
    assert lines["fitted"] == "{'psnr': 27.5, 'frames': 450}" and lines["frames"] == "3"
    full = json.loads(run_cli("info", str(tmp_path), "--json").stdout)  # --json keeps every value
    assert len(full["metrics"]["camera_inits"]) == 450
