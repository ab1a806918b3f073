"""`recon4d nerf distill`: a fitted scene -> a one-pass light-field student, its ONNX file and metrics.json.

    metrics = distill("out/cup", "out/cup_r2l", preset_config("r2l"))

Writes into the model folder: model.safetensors + model.json (the student), model.onnx (checked against
PyTorch by onnxruntime) and metrics.json: psnr_vs_teacher / ssim_vs_teacher (mean over held-out teacher
cameras), psnr_vs_real / ssim_vs_real next to teacher_psnr_vs_real / teacher_ssim_vs_real (input frames;
moving pixels left out for a static teacher), ms_per_frame (student in onnxruntime at the fit's working
resolution, ray generation included), ms_per_frame_pytorch, teacher_ms_per_frame (recon4d's CPU splat
rasterizer, same resolution, same run), the same three at twice the resolution (``*_2x``), model size, FLOPs
per pixel and training time.
"""
from __future__ import annotations

import json
import os
import shutil
import time as clock
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from recon4d.errors import InputError
from recon4d.io.atomic import write_bytes_atomic
from recon4d.io.scene import load_scene
from recon4d.nerf.nelf.config import DistillConfig
from recon4d.nerf.nelf.encoding import RayFrame, flops_per_pixel
from recon4d.nerf.nelf.evaluate import frame_timings, image_quality, model_megabytes
from recon4d.nerf.nelf.onnx_export import export_and_verify, onnx_session
from recon4d.nerf.nelf.rays import check_resolution
from recon4d.nerf.nelf.student import (
    StudentInfo,
    build_student,
    probe_rays,
    save_student,
    student_rays,
)
from recon4d.nerf.nelf.teacher import input_cameras, make_teacher, median_scene_depth, sample_cameras
from recon4d.nerf.nelf.train import CHECKPOINT_DIR, predict, train_student
from recon4d.io.scene_frames import read_scene_frames
from recon4d.nerf.nelf.views import ViewSet, real_views, render_teacher_views

ONNX_FILE, METRICS_FILE = "model.onnx", "metrics.json"
HELD_OUT_SEED_OFFSET = 1000  # held-out cameras come from another random stream than the training ones


def _check_output(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output {out_dir} is a file", hint="give a folder for the model")
    probe = out_dir if out_dir.exists() else next((p for p in out_dir.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK):
        raise InputError(f"cannot write to {out_dir}", hint="choose another -o")


def _with_rays(model: torch.nn.Module, views: ViewSet, width: int, height: int) -> ViewSet:
    views.rays = student_rays(model, views.poses, views.Ks, width, height)
    return views


def distill(fit_dir: str | os.PathLike, out_dir: str | os.PathLike, config: DistillConfig,
            time: float | None = None, restart: bool = False, device: torch.device = torch.device("cpu"),
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Distil the teacher of `fit_dir` (still part, or the scene at `time`) into a student in `out_dir`.
    Resumes an interrupted run of the same settings; returns the metrics (also written to metrics.json).
    Training runs on `device`; the teacher, evaluation and timings on the CPU."""
    out_dir = Path(out_dir)
    _check_output(out_dir)
    scene = load_scene(fit_dir)
    width, height = scene.cameras.width, scene.cameras.height
    check_resolution(width, height, config.r2l.sr_factor if config.model == "r2l" else 1)
    teacher = make_teacher(scene, time, config.data)
    torch.manual_seed(config.train.seed)
    model = build_student(config, RayFrame(teacher.centre, teacher.radius, teacher.near, teacher.far))
    checkpoint = out_dir / CHECKPOINT_DIR
    if restart and checkpoint.exists():
        shutil.rmtree(checkpoint)
    log(f"teacher: {teacher.state}, {len(teacher.gaussians)} Gaussians, rays sampled from depth "
        f"{teacher.near:.3g} to {teacher.far:.3g}; student {config.model} ({config.preset}) at {width}x{height}")

    depth = median_scene_depth(teacher)
    generator = torch.Generator().manual_seed(config.train.seed)
    poses, Ks = sample_cameras(scene, config.data.views, config.data, depth, generator, teacher.frames)
    input_poses, input_Ks = input_cameras(scene, teacher.frames)
    held_generator = torch.Generator().manual_seed(config.train.seed + HELD_OUT_SEED_OFFSET)
    held_poses, held_Ks = sample_cameras(scene, config.data.held_out_views, config.data, depth, held_generator,
                                         teacher.frames)
    samples = config.nerdf.samples if config.model == "nerdf" else None
    pseudo = _with_rays(model, render_teacher_views(teacher, torch.cat([poses, input_poses]),
                                                    torch.cat([Ks, input_Ks]), width, height, samples,
                                                    "teacher views"), width, height)
    held = _with_rays(model, render_teacher_views(teacher, held_poses, held_Ks, width, height, None,
                                                  "held-out views"), width, height)
    frames = read_scene_frames(scene)
    real = real_views(scene, frames, time, teacher.frames) if frames is not None else None
    if real is None:
        log("finetune on real frames: skipped (the fit's source frames are not readable or show no frame "
            "of this state)")
    else:
        real = _with_rays(model, real, width, height)

    fingerprint = f"{Path(fit_dir).resolve()}|{teacher.state}|{len(teacher.gaussians)}"
    started = clock.perf_counter()
    losses = train_student(model, pseudo, real if config.train.finetune_steps > 0 else None, config, checkpoint,
                           fingerprint, device)
    train_seconds = clock.perf_counter() - started

    metrics: dict[str, Any] = {"model": config.model, "preset": config.preset, "state": teacher.state,
                               "width": width, "height": height, "teacher_gaussians": len(teacher.gaussians),
                               "held_out_views": len(held), "train_seconds_this_run": train_seconds,
                               "steps": config.train.steps,
                               "finetune_steps": config.train.finetune_steps if real is not None else 0,
                               "final_loss": losses}
    held_quality = image_quality(predict(model, held.rays), held.colors)
    metrics.update(psnr_vs_teacher=held_quality["psnr"], ssim_vs_teacher=held_quality["ssim"])
    if real is not None:
        student_real = image_quality(predict(model, real.rays), real.colors, real.weights)
        teacher_real = render_teacher_views(teacher, real.poses, real.Ks, width, height, None, "teacher at inputs")
        teacher_quality = image_quality(teacher_real.colors, real.colors, real.weights)
        metrics.update(psnr_vs_real=student_real["psnr"], ssim_vs_real=student_real["ssim"],
                       teacher_psnr_vs_real=teacher_quality["psnr"], teacher_ssim_vs_real=teacher_quality["ssim"])

    info = StudentInfo(fit_dir=str(Path(fit_dir).resolve()), state=teacher.state, width=width, height=height,
                       probe_world_from_camera=held.poses[0].tolist(), probe_K=held.Ks[0].double().tolist())
    save_student(model, info, config, out_dir)
    onnx_path = out_dir / ONNX_FILE
    check_rays = [probe_rays(model, info, scale) for scale in (1, 2)]
    metrics["onnx_max_abs_diff"] = export_and_verify(model, onnx_path, check_rays)
    metrics["model_mb"] = model_megabytes(model)
    metrics["onnx_mb"] = onnx_path.stat().st_size / 1e6
    metrics["flops_per_pixel"] = flops_per_pixel(model, held.rays[:1])
    session = onnx_session(onnx_path)
    metrics["torch_threads"] = torch.get_num_threads()
    for scale, suffix in ((1, ""), (2, "_2x")):
        timings = frame_timings(model, session, teacher, held.poses[0], held.Ks[0], (width, height), scale * width,
                                scale * height, config.train.timing_repeats)
        metrics[f"ms_per_frame{suffix}"] = timings["onnxruntime"]
        metrics[f"ms_per_frame_pytorch{suffix}"] = timings["pytorch"]
        metrics[f"teacher_ms_per_frame{suffix}"] = timings["splats"]
    write_bytes_atomic(out_dir / METRICS_FILE, json.dumps(metrics, indent=2).encode())
    log(f"student vs teacher at {len(held)} held-out cameras: {metrics['psnr_vs_teacher']:.2f} dB, SSIM "
        f"{metrics['ssim_vs_teacher']:.3f}; {metrics['ms_per_frame']:.1f} ms/frame in onnxruntime vs "
        f"{metrics['teacher_ms_per_frame']:.1f} ms for the splats at {width}x{height}")
    return metrics
