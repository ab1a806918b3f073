"""Quality and speed of a student next to its teacher.

Quality: PSNR (masked by the per-pixel weights) and SSIM (whole frame, `recon4d.eval.metrics.ssim`) per view,
averaged over views. Speed: median milliseconds per frame of the student in onnxruntime and in PyTorch (ray
generation included) and of the teacher in recon4d's CPU splat rasterizer, at one resolution, in one process.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from recon4d.eval.metrics import ssim
from recon4d.geometry.camera import scale_camera_matrix
from recon4d.nerf.nelf.onnx_export import run_onnx
from recon4d.nerf.nelf.student import student_color, student_rays
from recon4d.nerf.nelf.teacher import Teacher, render_gaussians


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> float:
    """pred, target: [3, H, W]; weights: [1, H, W] -> PSNR in dB over the weighted pixels."""
    w = weights.expand_as(pred).double()
    mse = float((w * (pred.double() - target.double()) ** 2).sum() / w.sum().clamp_min(1.0))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def image_quality(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> dict[str, float]:
    """pred, target: [V, 3, H, W] in [0, 1]; weights [V, 1, H, W] or None -> mean psnr and ssim over views."""
    weights = torch.ones_like(pred[:, :1]) if weights is None else weights
    psnrs = [masked_psnr(p, t, w) for p, t, w in zip(pred, target, weights)]
    ssims = [ssim(p.permute(1, 2, 0).numpy(), t.permute(1, 2, 0).numpy()) for p, t in zip(pred, target)]
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims))}


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of fn() in milliseconds after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def frame_timings(model: nn.Module, session, teacher: Teacher, pose: torch.Tensor, K: torch.Tensor,
                  scene_size: tuple[int, int], width: int, height: int, repeats: int) -> dict[str, float]:
    """ms per frame at width x height of one camera (pose [4, 4], K [3, 3] at the scene's size):
    ``onnxruntime`` and ``pytorch`` (student, rays included; onnxruntime skipped when session is None) and
    ``splats`` (the teacher in recon4d's rasterizer)."""
    K_out = scale_camera_matrix(K.double(), width / scene_size[0], height / scene_size[1]).float()

    def rays() -> torch.Tensor:
        return student_rays(model, pose[None], K_out[None], width, height)

    def torch_frame() -> torch.Tensor:
        with torch.no_grad():
            return student_color(model, rays())

    timings = {"pytorch": median_ms(torch_frame, repeats),
               "splats": median_ms(lambda: render_gaussians(teacher.gaussians, pose, K_out, width, height), repeats)}
    if session is not None:
        timings["onnxruntime"] = median_ms(lambda: run_onnx(session, rays()), repeats)
    return timings


def model_megabytes(model: nn.Module) -> float:
    """Size of the weights as stored (float32) in MB (10^6 bytes)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
