"""The CPU tile rasterizer against the dense reference, analytic projections and edge cases."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recon4d.errors import InputError
from recon4d.render import RasterConfig, rasterize
from recon4d.render.reference import rasterize_dense
from render_scenes import intrinsics, random_scene

GRAD_NAMES = ["means", "quats", "scales", "opacities", "colors", "camera_from_world", "K"]


def _render_both(scene: dict, K: torch.Tensor, width: int, height: int, background=None,
                 config: RasterConfig = RasterConfig()):
    """Forward + backward of one random linear loss through both renderers."""
    results = []
    for backend in ("tiles", "dense"):
        params = {name: value.clone().requires_grad_(True) for name, value in {**scene, "K": K}.items()}
        args = [params[n] for n in ("means", "quats", "scales", "opacities", "colors", "camera_from_world", "K")]
        if backend == "tiles":
            out = rasterize(*args, width, height, background=background, config=config)
            color, depth, alpha = out.color, out.depth, out.alpha
        else:
            color, depth, alpha = rasterize_dense(*args, width, height, config)
            if background is not None:
                color = color + (1 - alpha)[..., None] * background
        g = torch.Generator().manual_seed(7)
        loss = (color * torch.randn(color.shape, generator=g)).sum()
        loss = loss + 0.1 * (depth * torch.randn(depth.shape, generator=g)).sum()
        loss = loss + (alpha * torch.randn(alpha.shape, generator=g)).sum()
        loss.backward()
        results.append(((color.detach(), depth.detach(), alpha.detach()), {n: params[n].grad for n in GRAD_NAMES}))
    return results


# Tiles of 16 and 8 pixels sweep rows of 16 floats, whose length the kernels fix at compile time; 24 takes their
# general path (rows of 32 floats, the length a run-time value).
@pytest.mark.parametrize(
    "n, channels, seed, opacity_boost, tile",
    [(200, 3, 0, 0.0, 16), (400, 5, 1, 0.0, 16), (600, 1, 2, 0.0, 16), (500, 3, 3, 1.0, 16),
     (400, 5, 1, 0.0, 8), (400, 5, 1, 0.0, 24), (500, 3, 3, 1.0, 24)],
)
def test_tiles_match_dense_reference(n, channels, seed, opacity_boost, tile):
    width, height = 37, 29  # not multiples of the tile size: partial tiles are exercised
    config = RasterConfig(tile_size=tile)
    scene = random_scene(n, channels, seed)
    if opacity_boost:
        # Nearly opaque and large: pixels saturate, so the early-termination path is compared too.
        scene["opacities"] = torch.full_like(scene["opacities"], 0.99)
        scene["scales"] = scene["scales"] * 3
    K = intrinsics(width, height)
    (tiles_out, tiles_grads), (dense_out, dense_grads) = _render_both(scene, K, width, height, config=config)
    for name, a, b in zip(("color", "depth", "alpha"), tiles_out, dense_out):
        assert torch.isfinite(a).all(), name
        assert (a - b).abs().max().item() <= 1e-3, name
    if opacity_boost:
        assert (tiles_out[2] > 0.999).float().mean() > 0.5, "scene meant to saturate pixels does not"
    for name in GRAD_NAMES:
        a, b = tiles_grads[name].flatten(), dense_grads[name].flatten()
        assert b.norm() > 0, name
        assert F.cosine_similarity(a, b, dim=0).item() >= 0.999, name


def test_antialiased_mode_matches_dense_reference():
    """The closed-form compensation from the conics against explicit determinants, forward and backward."""
    width, height = 40, 32
    scene = random_scene(300, 3, seed=4)
    scene["scales"] = scene["scales"] * 0.3  # many sub-pixel Gaussians, where the compensation matters
    config = RasterConfig(eps2d=0.1, antialiased=True)
    (tiles, tiles_grads), (dense, dense_grads) = _render_both(scene, intrinsics(width, height), width, height,
                                                              config=config)
    for a, b in zip(tiles, dense):
        assert (a - b).abs().max().item() < 1e-4
    for name in GRAD_NAMES:
        scale = dense_grads[name].abs().max().item() + 1e-8
        assert (tiles_grads[name] - dense_grads[name]).abs().max().item() / scale < 2e-3, name
    classic = rasterize(*scene.values(), intrinsics(width, height), width, height, config=RasterConfig(eps2d=0.1))
    assert classic.alpha.sum() > tiles[2].sum() * 1.2  # the compensation is not a no-op here


def test_antialiased_splat_keeps_its_energy_at_any_resolution():
    """A sub-pixel Gaussian drawn at 1x and at 4x box-averaged down: the antialiased mode covers the same
    area (its 2D integral opacity * 2 pi sigma^2); the classic filter inflates it at the coarse size. (With the
    filter the footprint is 0.62 px wide, enough for pixel-centre samples to sum to the integral.)"""
    sigma_px = 0.3  # the Gaussian's footprint at 1x, in pixels
    focal, depth = 40.0, 2.0
    means, quats = torch.tensor([[0.0, 0.0, depth]]), torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    scales, opacity = torch.full((1, 3), sigma_px * depth / focal), torch.tensor([0.5])

    def coverage(config: RasterConfig, factor: int) -> float:
        size = 16 * factor
        K = torch.tensor([[focal * factor, 0, (7.5 + 0.5) * factor - 0.5], [0, focal * factor, (7.5 + 0.5) * factor - 0.5],
                          [0, 0, 1.0]])
        out = rasterize(means, quats, scales, opacity, torch.ones(1, 3), torch.eye(4), K, size, size, config=config)
        return float(out.alpha.sum()) / factor**2  # in 1x pixels

    exact = 0.5 * 2 * torch.pi * sigma_px**2
    aa, classic = RasterConfig(eps2d=0.3, antialiased=True), RasterConfig(eps2d=0.3)
    assert coverage(aa, 1) == pytest.approx(exact, rel=0.02)
    assert coverage(aa, 4) == pytest.approx(exact, rel=0.02)
    assert coverage(classic, 1) > 2.5 * coverage(classic, 4)


def test_background_and_its_gradient():
    width, height = 24, 20
    scene = random_scene(50, 3, seed=4)
    background = torch.tensor([0.2, 0.4, 0.9], requires_grad=True)
    K = intrinsics(width, height)
    out = rasterize(*scene.values(), K, width, height, background=background)
    expected = rasterize(*scene.values(), K, width, height).color + (1 - out.alpha)[..., None] * background.detach()
    assert torch.allclose(out.color, expected, atol=1e-6)
    out.color.sum().backward()
    assert torch.allclose(background.grad, (1 - out.alpha).sum().expand(3), rtol=1e-4)


def test_single_gaussian_lands_at_projected_pixel():
    width, height = 64, 48
    K = torch.tensor([[55.0, 0, 30.2], [0, 57.0, 21.7], [0, 0, 1]])
    camera_from_world = torch.eye(4)
    camera_from_world[:3, 3] = torch.tensor([0.1, -0.2, 0.5])
    point = torch.tensor([0.3, 0.25, 2.5])
    cam = point + camera_from_world[:3, 3]
    u = K[0, 0] * cam[0] / cam[2] + K[0, 2]
    v = K[1, 1] * cam[1] / cam[2] + K[1, 2]
    out = rasterize(point[None], torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.03), torch.tensor([0.8]),
                    torch.ones(1, 1), camera_from_world, K, width, height)
    assert torch.allclose(out.means2d[0], torch.stack([u, v]), atol=1e-4)
    # The alpha-weighted centroid of the footprint is the projected centre (pixel (i, j) centred at (j, i)).
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
    weight = out.alpha / out.alpha.sum()
    centroid = torch.stack([(weight * cols).sum(), (weight * rows).sum()])
    assert torch.allclose(centroid, torch.stack([u, v]), atol=0.02)
    peak = torch.nonzero(out.alpha == out.alpha.max())[0]
    assert abs(peak[1].item() - u.item()) <= 0.5 and abs(peak[0].item() - v.item()) <= 0.5
    assert abs(out.depth[peak[0], peak[1]].item() - cam[2].item()) < 1e-5
    assert out.radii[0] > 0


@pytest.mark.parametrize("case", ["empty", "behind"])
def test_nothing_visible_renders_background(case):
    width, height = 20, 16
    n = 0 if case == "empty" else 30
    scene = random_scene(max(n, 1), 3, seed=5)
    scene = {k: v[:n] if k != "camera_from_world" else v for k, v in scene.items()}
    if case == "behind":
        scene["means"] = scene["means"] * torch.tensor([1.0, 1.0, -1.0]) - torch.tensor([0, 0, 1.0])
    params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
    background = torch.tensor([0.1, 0.2, 0.3])
    out = rasterize(*params.values(), intrinsics(width, height), width, height, background=background)
    assert torch.equal(out.color, background.expand(height, width, 3))
    assert torch.equal(out.alpha, torch.zeros(height, width)) and torch.equal(out.depth, torch.zeros(height, width))
    assert out.means2d.shape == (n, 2) and out.radii.shape == (n,) and (out.radii == 0).all()
    (out.color.sum() + out.depth.sum()).backward()
    for name, value in params.items():
        if value.grad is not None:
            assert torch.isfinite(value.grad).all() and (value.grad == 0).all(), name


def test_bad_shapes_raise_input_error():
    scene = random_scene(10, 3)
    scene["quats"] = scene["quats"][:, :3]
    with pytest.raises(InputError, match="quats"):
        rasterize(*scene.values(), intrinsics(16, 16), 16, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and gsplat")
@pytest.mark.parametrize("config", [RasterConfig(), RasterConfig(eps2d=0.1, antialiased=True)])
def test_gsplat_matches_cpu_backend(config):
    width, height = 96, 64
    scene = random_scene(2000, 3, seed=6)
    K = intrinsics(width, height)
    cpu = rasterize(*scene.values(), K, width, height, config=config)
    gpu = rasterize(*(v.cuda() for v in scene.values()), K.cuda(), width, height, config=config)
    for name in ("color", "depth", "alpha"):
        assert (getattr(cpu, name) - getattr(gpu, name).cpu()).abs().max().item() <= 1e-3, name
    assert torch.allclose(cpu.means2d, gpu.means2d.cpu(), atol=1e-3)
