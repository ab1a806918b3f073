"""ONNX export of a student and its check with onnxruntime.

The graph takes the student's input rays [B, 6, h, w] (see `recon4d.nerf.nelf.rays`) with batch, height and
width dynamic: every layer is a 1x1 convolution, a stride-2 transposed convolution or elementwise, so one file
renders any resolution (R2L: sides divisible by its super-resolution factor). Output: ``rgb`` [B, 3, H, W].
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recon4d.errors import InputError
from recon4d.io.atomic import atomic_path
from recon4d.nerf.nelf.student import student_color

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "rays", "rgb"
TOLERANCE = 2e-4  # max |onnxruntime - PyTorch| over RGB in [0, 1]


class ColorOnly(nn.Module):
    """The student with its colour output only (NeRDF also returns its weights along rays)."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, rays: torch.Tensor) -> torch.Tensor:
        return student_color(self.student, rays)


def export_onnx(model: nn.Module, path: str | os.PathLike, example_rays: torch.Tensor) -> Path:
    """Write `model` (eval mode) as ONNX with dynamic batch and resolution, atomically -> path."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder", hint="give the ONNX file name, e.g. --onnx student.onnx")
    model.eval()
    axes = {INPUT_NAME: {0: "batch", 2: "rays_height", 3: "rays_width"},
            OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its own deprecation
        torch.onnx.export(ColorOnly(model), (example_rays,), str(tmp), dynamo=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=axes, opset_version=OPSET)
    return path


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """onnxruntime CPU session of an exported student, with `threads` intra-op threads (default: as many as
    PyTorch uses, so that both runtimes are compared on the same cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, rays: torch.Tensor) -> np.ndarray:
    """rays [B, 6, h, w] -> RGB [B, 3, H, W] float32 from onnxruntime."""
    return session.run([OUTPUT_NAME], {INPUT_NAME: rays.numpy().astype(np.float32)})[0]


def onnx_max_difference(path: str | os.PathLike, model: nn.Module, rays: torch.Tensor) -> float:
    """max |onnxruntime - PyTorch| of the RGB for `rays`."""
    with torch.no_grad():
        expected = student_color(model.eval(), rays).numpy()
    return float(np.abs(run_onnx(onnx_session(path), rays) - expected).max())


def export_and_verify(model: nn.Module, path: str | os.PathLike, rays_by_size: list[torch.Tensor]) -> float:
    """Export with the first rays as example, check onnxruntime against PyTorch on all of them (several sizes:
    the dynamic axes are exercised) -> the largest difference; raises if it exceeds TOLERANCE."""
    export_onnx(model, path, rays_by_size[0])
    worst = max(onnx_max_difference(path, model, rays) for rays in rays_by_size)
    if not worst <= TOLERANCE:
        Path(path).unlink(missing_ok=True)
        raise RuntimeError(f"onnxruntime differs from PyTorch by {worst:.2e} (> {TOLERANCE:.0e})")
    return worst
