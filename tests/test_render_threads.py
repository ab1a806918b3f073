"""The CPU tile rasterizer gives the same image and gradients for any torch thread count."""
from __future__ import annotations

import pytest
import torch

from recon4d.render import rasterize
from recon4d.render.cpu import extension
from render_scenes import intrinsics, random_scene

TILE = 16
THREAD_COUNTS = (2, 3)  # 3 > cores here: oversubscription must not change results either
GRAD_NAMES = ["means", "quats", "scales", "opacities", "colors"]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _dense_scene(n: int, width: int, height: int, seed: int) -> dict:
    """N Gaussians of a few pixels each covering the view, like a fit's initialisation."""
    scene = random_scene(n, 3, seed)
    scene["scales"] = scene["scales"] * 0.5
    scene["K"] = intrinsics(width, height)
    return scene


def _kernel_outputs(scene: dict, width: int, height: int) -> list[torch.Tensor]:
    """bin, forward and backward of the C++ kernel called directly on one projected scene."""
    from recon4d.render.config import RasterConfig
    from recon4d.render.projection import project_gaussians

    with torch.no_grad():
        p = project_gaussians(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                              scene["camera_from_world"], scene["K"], width, height, RasterConfig())
    features = torch.cat([scene["colors"], p.depths[:, None]], -1).contiguous()
    radii = p.radii.contiguous()
    ext = extension()
    offsets, ids = ext.bin_gaussians(p.means2d, p.conics, scene["opacities"], radii, p.depths, width, height, TILE)
    args = (p.means2d, p.conics, features, scene["opacities"], radii, offsets, ids)
    color, transmittance, end = ext.rasterize_forward(*args, width, height, TILE)
    g = torch.Generator().manual_seed(3)
    v_features = torch.randn(color.shape, generator=g)
    v_alpha = torch.randn(transmittance.shape, generator=g)
    grads = ext.rasterize_backward(*args, transmittance, end, v_features, v_alpha, width, height, TILE)
    return [offsets, ids, color, transmittance, end, grads]


def _render_with_grads(scene: dict, width: int, height: int) -> dict[str, torch.Tensor]:
    params = {k: v.clone().requires_grad_(k in GRAD_NAMES) for k, v in scene.items()}
    out = rasterize(*(params[k] for k in ("means", "quats", "scales", "opacities", "colors", "camera_from_world", "K")),
                    width, height)
    g = torch.Generator().manual_seed(5)
    loss = (out.color * torch.randn(out.color.shape, generator=g)).sum() + (out.alpha * out.depth).sum()
    loss.backward()
    return {"color": out.color.detach(), "depth": out.depth.detach(), "alpha": out.alpha.detach(),
            **{name: params[name].grad for name in GRAD_NAMES}}


# The last case has enough Gaussians to bin on several threads too.
@pytest.mark.parametrize("n, width, height", [(3000, 160, 90), (4000, 101, 67), (25000, 180, 120)])
def test_kernel_is_bit_identical_for_any_thread_count(restore_threads, n, width, height):
    scene = _dense_scene(n, width, height, seed=n)
    torch.set_num_threads(1)
    reference = _kernel_outputs(scene, width, height)
    entries, tiles = reference[1].numel(), reference[0].numel() - 1
    assert reference[3].lt(0.5).float().mean() > 0.5, "scene meant to cover most pixels does not"
    for threads in THREAD_COUNTS:
        torch.set_num_threads(threads)
        # The scene is large enough that the sweeps really run on several threads.
        assert extension().sweep_threads(tiles, entries) == threads
        if n >= 25000:
            assert extension().bin_threads(n) == threads
        for name, a, b in zip(("offsets", "ids", "color", "transmittance", "end", "grads"),
                              reference, _kernel_outputs(scene, width, height)):
            assert torch.equal(a, b), f"{name} differs at {threads} threads"


def test_small_sweeps_stay_on_one_thread(restore_threads):
    torch.set_num_threads(2)
    assert extension().sweep_threads(4, 100) == 1  # too little work to pay for waking a thread
    assert extension().sweep_threads(1, 10**6) == 1  # one tile cannot be shared
    assert extension().sweep_threads(60, 10**6) == 2


def test_rasterize_and_gradients_match_across_threads(restore_threads):
    width, height = 101, 67  # not multiples of the tile size: partial tiles are exercised
    scene = _dense_scene(2500, width, height, seed=11)
    torch.set_num_threads(1)
    reference = _render_with_grads(scene, width, height)
    assert reference["alpha"].mean() > 0.5
    torch.set_num_threads(2)
    threaded = _render_with_grads(scene, width, height)
    for name, a in reference.items():
        b = threaded[name]
        assert a.abs().max() > 0, name
        # The kernel is bit-identical; PyTorch's own ops around it may round differently with threads.
        assert (a - b).abs().max().item() <= 1e-6 * max(1.0, a.abs().max().item()), name
