"""Rendering camera paths with a distilled student (what `recon4d render --renderer r2l|nerdf` calls).

The student shows one frozen state of the scene (its still part or one time), so path times are ignored.
It runs in onnxruntime from the model folder's model.onnx when that exists, else in PyTorch.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from recon4d.errors import InputError
from recon4d.geometry.camera import scale_camera_matrix
from recon4d.io.scene import Scene4D
from recon4d.nerf.nelf.onnx_export import onnx_session, run_onnx
from recon4d.nerf.nelf.student import check_student_resolution, load_student, student_color, student_rays
from recon4d.progress import track
from recon4d.render_views.paths import PathView

RENDERERS = ("splats", "r2l", "nerdf")


def render_path_with_student(model_dir: str | os.PathLike, scene: Scene4D, views: Sequence[PathView], width: int,
                             height: int, expected_kind: str | None = None, backend: str = "onnxruntime") -> np.ndarray:
    """Render `views` (intrinsics in pixels of the scene's size) at width x height with the student in
    `model_dir` -> frames [N, H, W, 3] uint8 RGB.

    expected_kind: "r2l" or "nerdf" to insist on that student (InputError otherwise); backend:
    "onnxruntime" (model.onnx, falls back to PyTorch if the folder has none) or "torch".
    """
    model, _, config = load_student(model_dir)
    if expected_kind is not None and config.model != expected_kind:
        raise InputError(f"{model_dir} holds a {config.model} student, not {expected_kind}",
                         hint=f"use --renderer {config.model}")
    check_student_resolution(model, width, height)
    onnx_file = Path(model_dir) / "model.onnx"
    session = onnx_session(onnx_file) if backend == "onnxruntime" and onnx_file.is_file() else None
    size = (scene.cameras.width, scene.cameras.height)
    frames = np.empty((len(views), height, width, 3), np.uint8)
    for k, view in enumerate(track(views, f"rendering with {config.model}", total=len(views))):
        K = scale_camera_matrix(view.K.double(), width / size[0], height / size[1]).float()
        rays = student_rays(model, view.world_from_camera.double()[None], K[None], width, height)
        if session is not None:
            rgb = torch.from_numpy(run_onnx(session, rays))
        else:
            with torch.no_grad():
                rgb = student_color(model, rays)
        frames[k] = (rgb[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    return frames
