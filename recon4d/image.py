"""Image similarity on [H, W, C] tensors: the one SSIM and PSNR of recon4d (losses, metrics.json, tests).

SSIM follows Wang et al. 2004 with a Gaussian window (sigma 1.5, truncated at 3.5 sigma: 11 taps) and
C1 = (0.01 L)^2, C2 = (0.03 L)^2 for values in [0, L]. Two uses, one computation:

- :func:`ssim` is the reported metric: borders mirrored (``d c b a | a b c d``, scipy's "reflect") and
  the mean taken over the interior, a window radius away from the border, like scikit-image's
  ``structural_similarity(gaussian_weights=True)``; `recon4d.eval.metrics.ssim` is the same number for
  numpy arrays.
- :func:`ssim_map` is the per-pixel map for losses (differentiable): every pixel counts, borders repeat
  the edge pixel, which keeps gradients at the image border.

Example:
    >>> import torch
    >>> image = torch.rand(32, 32, 3)
    >>> round(float(ssim(image, image)), 6), psnr(image, image)
    (1.0, inf)
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from recon4d.cpp import load_extension

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # 5: an 11 x 11 window


@functools.lru_cache(maxsize=8)
def _taps_for(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=dtype, device=device)
    taps = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    return taps / taps.sum()


def _gaussian_taps(like: torch.Tensor) -> torch.Tensor:
    """The SSIM window's normalised 1D taps [2 r + 1] in the dtype and on the device of `like`; built once
    per dtype and device (the loss asks for them at every optimisation step)."""
    return _taps_for(like.dtype, like.device)


def _pad(x: torch.Tensor, mode: str) -> torch.Tensor:
    """x [B, C, H, W] padded by the window radius: 'replicate' or 'symmetric' (edge pixel repeated once)."""
    r = SSIM_RADIUS
    if mode == "replicate":
        return F.pad(x, (r, r, r, r), mode="replicate")

    def symmetric(n: int) -> torch.Tensor:
        index = torch.arange(-r, n + r, device=x.device)
        index = torch.where(index < 0, -index - 1, index)
        return torch.where(index >= n, 2 * n - 1 - index, index)

    rows, cols = symmetric(x.shape[-2]), symmetric(x.shape[-1])
    return x.index_select(-2, rows).index_select(-1, cols)


_BLUR_KERNEL = Path(__file__).with_name("csrc") / "gaussian_blur.cpp"
_BLUR_MODES = {"replicate": 0, "symmetric": 1}


def _blur(maps: torch.Tensor, padding: str) -> torch.Tensor:
    """Gaussian window average of maps [B, C, H, W] with borders padded by `padding` (same shape out): a padded,
    grouped convolution pair. The SSIM of float32 CPU maps blurs in C++ instead (`_SsimCpu`)."""
    taps = _gaussian_taps(maps)
    groups = maps.shape[1]
    horizontal = taps.view(1, 1, 1, -1).expand(groups, 1, 1, taps.numel())
    vertical = taps.view(1, 1, -1, 1).expand(groups, 1, taps.numel(), 1)
    return F.conv2d(F.conv2d(_pad(maps, padding), horizontal, groups=groups), vertical, groups=groups)


class _SsimCpu(torch.autograd.Function):
    """SSIM per element of maps x, y [N, H, W] (float32, CPU), fused in C++ (csrc/gaussian_blur.cpp): the local
    moments, their blur and the SSIM formula, and the backward passes of the three. At 320x180x3 a loss step's
    SSIM forward and backward fall from 4.9 to 2.6 ms against the same blur with the formula in tensor ops. When
    only x needs a gradient (a render against its target) the backward blurs 3 moment maps back instead of 5."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, taps: torch.Tensor, mode: int, c1: float, c2: float) -> torch.Tensor:
        kernel = load_extension(_BLUR_KERNEL)
        x, y = x.contiguous(), y.contiguous()
        moments = kernel.ssim_moments(x, y)  # [5, N, H, W]
        blurred = kernel.blur_forward(moments.reshape(-1, *x.shape[-2:]), taps, mode).reshape(moments.shape)
        ctx.save_for_backward(x, y, blurred, taps)
        ctx.mode, ctx.constants = mode, (c1, c2)
        return kernel.ssim_map_forward(blurred, c1, c2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, y, blurred, taps = ctx.saved_tensors
        kernel = load_extension(_BLUR_KERNEL)
        need_x, need_y = ctx.needs_input_grad[:2]
        # A render against a fixed target: only the three moments x enters are blurred back.
        x_only = need_x and not need_y
        d_blurred = kernel.ssim_map_backward(grad.contiguous(), blurred, *ctx.constants, x_only)
        d_moments = kernel.blur_backward(d_blurred.reshape(-1, *x.shape[-2:]), taps, ctx.mode).reshape(d_blurred.shape)
        if x_only:
            return kernel.ssim_moments_backward_x(d_moments, x, y), None, None, None, None, None
        dx, dy = kernel.ssim_moments_backward(d_moments, x, y, need_x, need_y)
        return dx, dy, None, None, None, None


def _ssim_values(x: torch.Tensor, y: torch.Tensor, max_value: float, padding: str) -> torch.Tensor:
    """x, y: [B, C, H, W] -> SSIM per pixel and channel [B, C, H, W] (separable Gaussian blur)."""
    c1, c2 = (SSIM_K1 * max_value) ** 2, (SSIM_K2 * max_value) ** 2
    if x.device.type == "cpu" and x.dtype == torch.float32 and y.dtype == torch.float32 and x.shape == y.shape:
        maps = _SsimCpu.apply(x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:]), _gaussian_taps(x),
                              _BLUR_MODES[padding], c1, c2)
        return maps.reshape(x.shape)
    channels = x.shape[1]
    # The five local moments are blurred in one call (the loss runs every optimisation step, and per-call
    # overhead dominates at thumbnail sizes).
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    mu_x, mu_y, xx, yy, xy = _blur(moments, padding).split(channels, dim=1)
    var_x = xx - mu_x**2
    var_y = yy - mu_y**2
    cov = xy - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a, b: [H, W, C] in [0, 1] -> per-pixel SSIM [H, W] (mean over channels), edge-replicated borders."""
    x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    return _ssim_values(x, y, 1.0, "replicate")[0].mean(0)


def ssim(a: torch.Tensor, b: torch.Tensor, max_value: float = 1.0) -> torch.Tensor:
    """Mean SSIM (the reported metric; scalar tensor, differentiable) of [H, W, C] or [T, H, W, C] images
    with values in [0, max_value]: mirrored borders, mean over the interior pixels of every channel (over all
    pixels for images of 10 px or less, which have no interior)."""
    if a.shape != b.shape or a.dim() not in (3, 4):
        raise ValueError(f"ssim takes two [H, W, C] or [T, H, W, C] images of one shape, got {a.shape}, {b.shape}")
    x, y = (z.permute(2, 0, 1)[None] if z.dim() == 3 else z.permute(0, 3, 1, 2) for z in (a, b))
    values = _ssim_values(x, y, max_value, "symmetric")
    r = SSIM_RADIUS
    if min(x.shape[-2:]) <= 2 * r:  # no interior (thumbnails): every pixel counts
        return values.mean()
    return values[..., r:-r, r:-r].mean()


def psnr(a: torch.Tensor, b: torch.Tensor, max_value: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of two images of equal shape (inf when equal)."""
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(max_value**2 / mse)
