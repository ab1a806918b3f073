"""`recon4d nerf distill` / `export` end to end on a small scene with known content; rendering paths with a
student; bad inputs."""
from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch
from view_scenes import moving_patch_scene

from recon4d.cli import main
from recon4d.eval.reconstruction import render_moving_masks
from recon4d.io.scene import save_scene
from recon4d.nerf.nelf import distill, preset_config, render_path_with_student
from recon4d.nerf.nelf.config import NeRDFConfig, PseudoDataConfig, R2LConfig, TrainConfig
from recon4d.nerf.nelf.evaluate import image_quality
from recon4d.render_views import make_path, render_path

WIDTH, HEIGHT, FRAMES = 36, 24, 4


pytestmark = pytest.mark.usefixtures("one_thread")


def _small_config(model: str):
    base = preset_config(model)
    return dataclasses.replace(
        base,
        r2l=R2LConfig(num_points=4, pe_freqs=4, width=32, blocks=2, sr_factor=2, sr_width=16),
        nerdf=NeRDFConfig(pe_freqs=4, width=48, layers=3, basis_freqs=4),
        data=PseudoDataConfig(views=24, held_out_views=4),
        train=TrainConfig(steps=250, finetune_steps=20, batch_views=4, rays_per_step=1024, lr=3e-3,
                          checkpoint_every=100, timing_repeats=1),
    )


@pytest.fixture(scope="module")
def fit_dir(tmp_path_factory):
    """A fit folder: the scene file, and its 'source' frames (renders of the scene) as an image folder."""
    folder = tmp_path_factory.mktemp("fit")
    scene = moving_patch_scene(num_frames=FRAMES, width=WIDTH, height=HEIGHT)
    # A wall texture a 36 x 24 image resolves (the stock one aliases at this size).
    x, y = scene.gaussians.means[:, 0], scene.gaussians.means[:, 1]
    smooth = torch.stack([0.5 + 0.3 * torch.sin(1.3 * x + 0.4), 0.5 + 0.3 * torch.cos(1.7 * y - 0.2 * x),
                          0.5 + 0.25 * torch.sin(0.9 * x + 1.1 * y)], 1)
    scene.gaussians.colors = torch.where(scene.is_moving[:, None], scene.gaussians.colors, smooth)
    source = folder / "frames"
    source.mkdir()
    frames = render_path(scene, make_path(scene, "input"), WIDTH, HEIGHT).color
    for t, frame in enumerate(frames):
        cv2.imwrite(str(source / f"frame_{t:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    scene.config["source"] = str(source)
    scene.arrays["moving_masks"] = render_moving_masks(scene, 0.5)  # the patch: left out for a static teacher
    save_scene(scene, folder / "scene.r4d")
    return folder


@pytest.fixture(scope="module")
def r2l_model(fit_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("r2l")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECON4D_NO_PROGRESS", "1")
        metrics = distill(fit_dir, out, _small_config("r2l"), log=lambda line: None)
    return out, metrics


def test_r2l_distillation_reaches_the_teacher(r2l_model):
    out, metrics = r2l_model
    written = json.loads((out / "metrics.json").read_text())
    assert written["psnr_vs_teacher"] == metrics["psnr_vs_teacher"] and set(written) == set(metrics)
    assert metrics["psnr_vs_teacher"] > 25.0
    assert metrics["finetune_steps"] == 20  # the source frames were read back
    assert metrics["psnr_vs_real"] > 22.0 and metrics["teacher_psnr_vs_real"] > 35.0
    for key in ("ms_per_frame", "teacher_ms_per_frame", "ms_per_frame_pytorch", "ms_per_frame_2x"):
        assert metrics[key] > 0
    assert metrics["onnx_max_abs_diff"] < 1e-4 and metrics["model_mb"] < 1.0


def test_nerdf_distillation_reaches_the_teacher(fit_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RECON4D_NO_PROGRESS", "1")
    metrics = distill(fit_dir, tmp_path / "nerdf", _small_config("nerdf"), time=1.0, log=lambda line: None)
    assert metrics["state"] == "time 1"
    assert metrics["psnr_vs_teacher"] > 22.0
    assert metrics["finetune_steps"] == 20  # frame 1 is the real frame of time 1


def test_export_cli_writes_a_model_onnxruntime_loads(r2l_model, tmp_path, capsys):
    import onnxruntime as ort

    out, _ = r2l_model
    assert main(["nerf", "export", str(out), "--onnx", str(tmp_path / "student.onnx")]) == 0
    session = ort.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    rays = np.zeros((1, 6, 5, 7), np.float32)
    rays[:, 5] = 1.0  # looking along +z from the origin
    rgb = session.run(None, {"rays": rays})[0]
    assert rgb.shape == (1, 3, 10, 14)
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out


def test_student_renders_camera_paths_like_the_teacher(r2l_model, fit_dir):
    from recon4d.io.scene import load_scene

    out, _ = r2l_model
    scene = load_scene(fit_dir)
    views = make_path(scene, "input")
    student = render_path_with_student(out, scene, views, WIDTH, HEIGHT, expected_kind="r2l")
    torch_student = render_path_with_student(out, scene, views, WIDTH, HEIGHT, backend="torch")
    assert student.shape == (FRAMES, HEIGHT, WIDTH, 3) and student.dtype == np.uint8
    assert np.abs(student.astype(int) - torch_student.astype(int)).max() <= 1
    # The static teacher: the scene without its moving patch.
    still = scene.gaussians.select(~scene.is_moving)
    from recon4d.nerf.nelf.teacher import render_gaussians

    teacher = torch.stack([render_gaussians(still, v.world_from_camera, v.K.float(), WIDTH, HEIGHT).color
                           for v in views]).permute(0, 3, 1, 2)
    quality = image_quality(torch.from_numpy(student).permute(0, 3, 1, 2).float() / 255, teacher)
    assert quality["psnr"] > 24.0
    # Twice the working resolution works too (allowed by the super-resolution factor).
    assert render_path_with_student(out, scene, views[:1], 2 * WIDTH, 2 * HEIGHT).shape == (1, 2 * HEIGHT, 2 * WIDTH, 3)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_inputs_exit_2(fit_dir, r2l_model, tmp_path, capsys):
    assert main(["nerf", "distill", str(tmp_path / "missing"), "--model", "r2l", "-o", str(tmp_path / "m")]) == 2
    assert "no scene file" in _one_error_line(capsys)
    assert main(["nerf", "distill", str(fit_dir), "--model", "nerf", "-o", str(tmp_path / "m")]) == 2
    assert "unknown light-field model" in _one_error_line(capsys)
    assert main(["nerf", "distill", str(fit_dir), "--model", "r2l", "--time", "99", "-o", str(tmp_path / "m")]) == 2
    assert "outside the scene's time range" in _one_error_line(capsys)
    # 36 x 24 is not divisible by the paper preset's x8 super-resolution.
    paper = ["nerf", "distill", str(fit_dir), "--model", "r2l", "--preset", "paper", "-o", str(tmp_path / "m")]
    assert main(paper) == 2
    assert "not allowed by the student's super-resolution factor 8" in _one_error_line(capsys)
    assert not (tmp_path / "m" / "model.safetensors").exists()
    assert main(["nerf", "export", str(tmp_path), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert "no light-field model" in _one_error_line(capsys)
    from recon4d.io.scene import load_scene

    out, _ = r2l_model
    with pytest.raises(Exception, match="super-resolution factor 2"):
        render_path_with_student(out, load_scene(fit_dir), make_path(load_scene(fit_dir), "input"), 35, 24)


def test_render_command_with_the_student(r2l_model, fit_dir, tmp_path, capsys):
    """`recon4d render --renderer r2l` writes the path as the student sees it: the frames the student
    function gives, encoded; a student of the other kind or a splats-only view is one line, exit 2."""
    import av

    from recon4d.io.scene import load_scene

    out, _ = r2l_model
    dest = tmp_path / "render"
    assert main(["render", str(fit_dir), "--renderer", "r2l", "--model", str(out), "-o", str(dest)]) == 0
    with av.open(str(dest / "input_r2l.mp4")) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    scene = load_scene(fit_dir)
    expected = render_path_with_student(out, scene, make_path(scene, "input"), WIDTH, HEIGHT)
    assert decoded.shape == expected.shape
    mse = np.mean((decoded.astype(float) - expected.astype(float)) ** 2)
    assert 10 * np.log10(255.0**2 / max(mse, 1e-12)) > 30.0  # only the video codec in between
    assert (dest / "input_cameras.json").is_file()
    capsys.readouterr()
    assert main(["render", str(fit_dir), "--renderer", "nerdf", "--model", str(out), "-o", str(dest)]) == 2
    assert main(["render", str(fit_dir), "--renderer", "r2l", "--model", str(out), "--depth", "-o", str(dest)]) == 2
    assert main(["render", str(fit_dir), "--renderer", "r2l", "-o", str(dest)]) == 2  # no OUT/nelf/r2l
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("recon4d: error:") for line in errors), errors
