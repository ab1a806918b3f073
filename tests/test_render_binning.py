"""Tile binning by each Gaussian's ellipse of alpha >= 1/255 instead of its whole pixel box: fewer tile entries,
the same image and gradients bit for bit (an entry left out would have composited nothing)."""
from __future__ import annotations

import math

import pytest
import torch

from recon4d.render.config import RasterConfig
from recon4d.render.cpu import extension
from recon4d.render.projection import project_gaussians
from render_scenes import intrinsics, random_scene

TILE = 16


def _box_binning(means2d: torch.Tensor, radii: torch.Tensor, order: torch.Tensor, width: int, height: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every tile of each Gaussian's pixel box (the binning before the ellipse test), in depth order."""
    tiles_x, tiles_y = math.ceil(width / TILE), math.ceil(height / TILE)
    lists: list[list[int]] = [[] for _ in range(tiles_x * tiles_y)]
    for g in order.tolist():
        rx, ry = radii[g].tolist()
        if rx <= 0 and ry <= 0:
            continue
        mx, my = means2d[g].tolist()
        x0, x1 = (min(max(math.floor((mx - rx) / TILE), 0), tiles_x), min(max(math.ceil((mx + rx) / TILE), 0), tiles_x))
        y0, y1 = (min(max(math.floor((my - ry) / TILE), 0), tiles_y), min(max(math.ceil((my + ry) / TILE), 0), tiles_y))
        for y in range(y0, y1):
            for x in range(x0, x1):
                lists[y * tiles_x + x].append(g)
    offsets = torch.tensor([0] + [len(entries) for entries in lists], dtype=torch.int32).cumsum(0).to(torch.int32)
    return offsets, torch.tensor([g for entries in lists for g in entries], dtype=torch.int32)


def _needle_scene(n: int, width: int, height: int, seed: int) -> dict:
    """Thin, rotated Gaussians with opacities down to the cut-off: where boxes and ellipses differ most."""
    scene = random_scene(n, 3, seed)
    g = torch.Generator().manual_seed(seed + 1)
    scene["scales"] = scene["scales"] * torch.tensor([3.0, 0.3, 1.0])
    scene["opacities"] = torch.rand(n, generator=g) * 0.99 + 0.002
    scene["K"] = intrinsics(width, height)
    return scene


def _kernel(args: tuple, offsets: torch.Tensor, ids: torch.Tensor, width: int, height: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, transmittance, per-Gaussian gradients) of the kernel over one tile binning."""
    means2d, conics, features, opacities, radii = args
    ext = extension()
    color, transmittance, end = ext.rasterize_forward(means2d, conics, features, opacities, radii, offsets, ids,
                                                      width, height, TILE)
    g = torch.Generator().manual_seed(3)
    v_features, v_alpha = torch.randn(color.shape, generator=g), torch.randn(transmittance.shape, generator=g)
    grads = ext.rasterize_backward(means2d, conics, features, opacities, radii, offsets, ids, transmittance, end,
                                   v_features, v_alpha, width, height, TILE)
    return color, transmittance, grads


@pytest.mark.parametrize("antialiased", [False, True])
def test_ellipse_binning_drops_entries_and_changes_no_bit(antialiased):
    width, height, n = 101, 67, 1500  # partial tiles at the right and bottom edges
    scene = _needle_scene(n, width, height, seed=7)
    config = RasterConfig(antialiased=antialiased)
    with torch.no_grad():
        p = project_gaussians(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                              scene["camera_from_world"], scene["K"], width, height, config)
    opacities = scene["opacities"]
    if antialiased:  # what the rasterizer composites (the box stays that of the raw opacity)
        from recon4d.render import antialias_compensation

        opacities = opacities * antialias_compensation(p.conics, config.eps2d)
    features = torch.cat([scene["colors"], p.depths[:, None]], -1).contiguous()
    radii = p.radii.to(torch.int32).contiguous()
    order = torch.argsort(p.depths, stable=True)
    args = (p.means2d.contiguous(), p.conics.contiguous(), features, opacities.contiguous(), radii)

    offsets, ids = extension().bin_gaussians(p.means2d.contiguous(), p.conics.contiguous(), opacities.contiguous(),
                                             radii, p.depths.contiguous(), width, height, TILE)
    box_offsets, box_ids = _box_binning(p.means2d, radii, order, width, height)
    assert ids.numel() <= 0.8 * box_ids.numel(), (ids.numel(), box_ids.numel())
    for t in range(offsets.numel() - 1):  # each tile keeps a subsequence of its box list, in depth order
        kept, box = ids[offsets[t]:offsets[t + 1]].tolist(), iter(box_ids[box_offsets[t]:box_offsets[t + 1]].tolist())
        assert all(g in box for g in kept), f"tile {t}"

    image, transmittance, grads = _kernel(args, offsets, ids, width, height)
    box_image, box_transmittance, box_grads = _kernel(args, box_offsets, box_ids, width, height)
    assert transmittance.lt(0.9).float().mean() > 0.3, "the scene should cover much of the view"
    assert torch.equal(image, box_image) and torch.equal(transmittance, box_transmittance)
    assert torch.equal(grads, box_grads)
