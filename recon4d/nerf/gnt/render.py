"""Rendering whole views of a scene from its source views with a trained GNT."""
from __future__ import annotations

import torch

from recon4d.nerf.data.posed import PosedImages
from recon4d.nerf.gnt.model import GNT, SourceContext
from recon4d.nerf.gnt.rays import image_pixels, nearest_views, pixel_rays

#: Rays rendered per forward pass (bounds memory: tokens = chunk x samples x views).
RENDER_CHUNK = 1024


def target_rays(world_from_camera: torch.Tensor, intrinsics: torch.Tensor, pixels: torch.Tensor):
    """(origins, world directions, camera-frame directions), each [R, 3], of `pixels` [R, 2] of a camera."""
    origins, directions = pixel_rays(world_from_camera, intrinsics, pixels)
    return origins, directions, directions @ world_from_camera[:3, :3]


def source_context(model: GNT, sources: PosedImages, world_from_camera: torch.Tensor, count: int | None = None,
                   cnn_images: torch.Tensor | None = None, blend_images: torch.Tensor | None = None) -> tuple[SourceContext, torch.Tensor]:
    """Encode the `count` (default: the model's K) source views nearest to a target pose.

    cnn_images / blend_images: replacements [V_all, H, W, 3] for `sources.images` (the attack perturbs them).
    Returns (context, chosen indices into `sources`).
    """
    count = count or model.config.source_views
    index = nearest_views(world_from_camera, sources.world_from_camera, count)
    images = sources.images if cnn_images is None else cnn_images
    blend = None if blend_images is None else blend_images[index]
    valid = None if sources.valid is None else sources.valid[index]
    context = model.encode(images[index], sources.world_from_camera[index], sources.intrinsics[index],
                           sources.near, sources.far, blend_images=blend, valid=valid)
    return context, index


def render_pixels(model: GNT, context: SourceContext, world_from_camera: torch.Tensor, intrinsics: torch.Tensor,
                  pixels: torch.Tensor, coarse_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """rgb [R, 3] and depth [R] of `pixels` [R, 2] (chunked; differentiable when grad is enabled)."""
    colours, depths = [], []
    pixels = pixels.to(world_from_camera.device)
    for start in range(0, len(pixels), RENDER_CHUNK):
        origins, directions, camera_directions = target_rays(world_from_camera, intrinsics, pixels[start:start + RENDER_CHUNK])
        out = model.render_rays(origins, directions, camera_directions, context, coarse_grad=coarse_grad)
        colours.append(out.rgb)
        depths.append(out.depth)
    return torch.cat(colours), torch.cat(depths)


@torch.no_grad()
def render_view(model: GNT, sources: PosedImages, world_from_camera: torch.Tensor, intrinsics: torch.Tensor,
                width: int, height: int, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A full novel view: rgb [H, W, 3] and expected depth [H, W] from the nearest `count` sources."""
    context, _ = source_context(model, sources, world_from_camera, count)
    rgb, depth = render_pixels(model, context, world_from_camera, intrinsics, image_pixels(width, height))
    return rgb.reshape(height, width, 3), depth.reshape(height, width)
