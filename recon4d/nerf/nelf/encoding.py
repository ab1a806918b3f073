"""Pieces both students share: the normalisation of ray coordinates, positional encoding, and counting work.

Everything works on image-shaped tensors [B, C, H, W] with 1x1 convolutions, so one exported ONNX graph
renders any resolution.
"""
from __future__ import annotations

import torch
from torch import nn


def positional_encoding(x: torch.Tensor, freqs: int) -> torch.Tensor:
    """x: [B, C, H, W] -> [B, C (1 + 2 freqs), H, W]: x, sin(2^k pi x), cos(2^k pi x) for k < freqs."""
    if freqs == 0:
        return x
    bands = (2.0 ** torch.arange(freqs, dtype=x.dtype, device=x.device)) * torch.pi
    scaled = (x[:, :, None] * bands[None, None, :, None, None]).flatten(1, 2)
    return torch.cat([x, torch.sin(scaled), torch.cos(scaled)], 1)


class RayFrame(nn.Module):
    """Scene bounds a student was trained in (buffers, saved with its weights).

    centre [3] and radius map world points into roughly [-1, 1]; near/far bound the samples along rays.
    """

    def __init__(self, centre: torch.Tensor | None = None, radius: float = 1.0, near: float = 0.1,
                 far: float = 10.0) -> None:
        super().__init__()
        self.register_buffer("centre", torch.zeros(3) if centre is None else centre.float().reshape(3).clone())
        self.register_buffer("radius", torch.tensor(float(radius)))
        self.register_buffer("near", torch.tensor(float(near)))
        self.register_buffer("far", torch.tensor(float(far)))

    def normalise(self, points: torch.Tensor) -> torch.Tensor:
        """points: [B, ..., 3, H, W] world -> the same shape in the normalised frame."""
        shape = [1] * (points.dim() - 3) + [3, 1, 1]
        return (points - self.centre.reshape(shape)) / self.radius

    def sample_fractions(self, count: int) -> torch.Tensor:
        """[count] bin centres in (0, 1) along the ray, uniform in inverse depth."""
        return (torch.arange(count, dtype=torch.float32, device=self.near.device) + 0.5) / count

    def depths(self, count: int) -> torch.Tensor:
        """[count] camera depths of the bin centres between near and far, uniform in inverse depth."""
        s = self.sample_fractions(count)
        return 1.0 / (1.0 / self.near + s * (1.0 / self.far - 1.0 / self.near))


def flops_per_pixel(model: nn.Module, rays: torch.Tensor) -> float:
    """Multiply-adds x 2 of the convolutions (the bulk of the work) per output pixel, counted on `rays`
    [B, 6, h, w] with forward hooks."""
    total = 0

    def conv_hook(module: nn.Module, inputs, output) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        if isinstance(module, nn.ConvTranspose2d):  # every input pixel scatters a k x k footprint
            total += inputs[0].numel() // module.in_channels * module.in_channels * module.out_channels * k
        else:
            total += output.numel() * module.in_channels // module.groups * k

    handles = [m.register_forward_hook(conv_hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            out = model(rays)
    finally:
        for handle in handles:
            handle.remove()
    color = out[0] if isinstance(out, tuple) else out
    return 2.0 * total / (color.shape[0] * color.shape[2] * color.shape[3])
