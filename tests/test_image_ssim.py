"""SSIM's separable Gaussian blur and the fused SSIM kernels (moments, blur and formula in C++; float32, CPU)
equal the padded convolution and tensor-op path (float64) forward and backward, for both border modes, and
SSIM keeps its reference values."""
from __future__ import annotations

import pytest
import torch

from recon4d.cpp import load_extension
from recon4d.image import _BLUR_KERNEL, _BLUR_MODES, _blur, _gaussian_taps, _ssim_values, ssim, ssim_map


@pytest.mark.parametrize("padding", ["replicate", "symmetric"])
# 75 px rows: 32-float blocks, an 8-float block and single floats in both passes.
@pytest.mark.parametrize("shape", [(1, 15, 45, 80), (1, 2, 23, 75), (2, 3, 7, 9), (1, 1, 11, 6)])
def test_cpp_blur_matches_convolution(padding, shape):
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(shape, generator=generator, dtype=torch.float64, requires_grad=True)
    upstream = torch.rand(shape, generator=generator, dtype=torch.float64)
    reference = _blur(maps, padding)  # the convolution path
    (reference_grad,) = torch.autograd.grad(reference, maps, upstream)
    kernel, taps, mode = load_extension(_BLUR_KERNEL), _gaussian_taps(maps.float()), _BLUR_MODES[padding]
    flat = maps.detach().float().reshape(-1, *shape[-2:]).contiguous()
    blurred = kernel.blur_forward(flat, taps, mode).reshape(shape)
    grad = kernel.blur_backward(upstream.float().reshape(-1, *shape[-2:]).contiguous(), taps, mode).reshape(shape)
    torch.testing.assert_close(blurred.double(), reference.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(grad.double(), reference_grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("padding", ["replicate", "symmetric"])
@pytest.mark.parametrize("shape", [(1, 3, 45, 80), (2, 3, 7, 9), (1, 1, 5, 6)])
def test_fused_ssim_matches_tensor_ops(padding, shape):
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(shape, generator=generator, dtype=torch.float64, requires_grad=True)
    y = (x.detach() + 0.2 * torch.randn(shape, generator=generator, dtype=torch.float64)).clamp(0, 1).requires_grad_(True)
    upstream = torch.randn(shape, generator=generator, dtype=torch.float64)
    reference = _ssim_values(x, y, 1.0, padding)  # float64 takes the tensor-op path
    reference_grads = torch.autograd.grad(reference, (x, y), upstream)
    x32, y32 = (t.detach().float().requires_grad_(True) for t in (x, y))
    fused = _ssim_values(x32, y32, 1.0, padding)
    grads = torch.autograd.grad(fused, (x32, y32), upstream.float())
    torch.testing.assert_close(fused.double(), reference.detach(), rtol=0, atol=1e-5)
    for grad, reference_grad in zip(grads, reference_grads):
        torch.testing.assert_close(grad.double(), reference_grad, rtol=1e-4, atol=1e-4)
    # Only the input that asks for a gradient gets one, the same one up to float32 rounding (x alone takes
    # the backward that blurs 3 moment maps back instead of 5).
    both = torch.autograd.grad(_ssim_values(x32, y32, 1.0, padding).sum(), (x32, y32))
    (grad_x,) = torch.autograd.grad(_ssim_values(x32, y32.detach(), 1.0, padding).sum(), x32)
    (grad_y,) = torch.autograd.grad(_ssim_values(x32.detach(), y32, 1.0, padding).sum(), y32)
    torch.testing.assert_close(grad_x, both[0])
    torch.testing.assert_close(grad_y, both[1])


def test_ssim_values_and_gradient():
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(40, 50, 3, generator=generator)
    noisy = (image + 0.1 * torch.randn(40, 50, 3, generator=generator)).clamp(0, 1)
    assert float(ssim(image, image)) == pytest.approx(1.0, abs=1e-6)
    assert float(ssim_map(image, image).min()) == pytest.approx(1.0, abs=1e-5)
    # the metric in float32 (C++ blur) and float64 (convolution) agree
    assert float(ssim(image, noisy)) == pytest.approx(float(ssim(image.double(), noisy.double())), abs=1e-5)
    assert 0.5 < float(ssim(image, noisy)) < 0.99
    # the loss gradient points towards the target
    estimate = noisy.clone().requires_grad_(True)
    (1 - ssim_map(estimate, image)).mean().backward()
    with torch.no_grad():
        stepped = noisy - 2.0 * estimate.grad / estimate.grad.abs().max() * 0.01
    assert float(ssim(stepped.clamp(0, 1), image)) > float(ssim(noisy, image))
