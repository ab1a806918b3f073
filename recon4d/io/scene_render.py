"""One way to render a Scene4D: the Gaussians alive at time t, through a camera, with optional features.

Every command that draws a scene (fit evaluation and masks, render paths, tracks, the viewer, ground-truth
evaluation) calls :func:`render_scene`, so what "the scene at time t seen from camera k" means is written
once: dynamic Gaussians at their time-t state (`Scene4D.gaussians_at`), unborn ones left out, the frame's
own camera unless another is given.

Example:
    >>> out = render_scene(scene, 0)                                  # doctest: +SKIP
    >>> out.color.shape, out.depth.shape                              # ([H, W, 3], [H, W])  doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from recon4d.geometry.camera import invert_pose
from recon4d.io.scene import Gaussians, Scene4D
from recon4d.render import RasterConfig, RenderResult, rasterize

#: Per-Gaussian features from the alive Gaussians and their indices into the scene's N -> [Na, C].
FeatureFn = Callable[[Gaussians, torch.Tensor], torch.Tensor]


def scene_raster(scene: Scene4D) -> RasterConfig:
    """The rasterizer settings a scene is drawn with: the filter it was fitted under (`raster_filter` in its
    config; fits use 3DGS's classic filter, decoded latents the one they were encoded under)."""
    return RasterConfig.from_filter(scene.config.get("raster_filter"))


def render_scene(scene: Scene4D, t: float, camera_from_world: torch.Tensor | None = None,
                 K: torch.Tensor | None = None, size: tuple[int, int] | None = None,
                 colors: torch.Tensor | FeatureFn | None = None, background: torch.Tensor | None = None,
                 select: torch.Tensor | None = None, device: torch.device | str = "cpu") -> RenderResult:
    """Render the scene at time t (frame units; fractional times blend, see `Scene4D.dynamic_state_at`).

    Args:
        camera_from_world: [4, 4]; default: the camera at t (`Cameras.world_from_camera_at`, interpolated
            between frames at fractional t).
        K: [3, 3] intrinsics in pixels of `size`; default: the camera's at t.
        size: (width, height); default: the scene's.
        colors: [Na, C] features of the alive Gaussians, or a function (alive Gaussians, their indices in
            the scene) -> features; default: their RGB.
        background: [C] colour behind the Gaussians (default: black).
        select: [Na] bool, render only these of the alive Gaussians (e.g. a viewer layer).
    Returns:
        `recon4d.render.RenderResult` (color [H, W, C], depth, alpha, means2d, radii), on `device`.
    """
    gaussians = scene.gaussians_at(t)
    alive = scene.alive_at(t).nonzero().squeeze(1)
    if callable(colors):
        colors = colors(gaussians, alive)
    features = gaussians.colors if colors is None else colors
    if select is not None:
        gaussians, features = gaussians.select(select), features[select]
    if camera_from_world is None:
        camera_from_world = invert_pose(scene.cameras.world_from_camera_at(t))
    width, height = size or (scene.cameras.width, scene.cameras.height)
    K = scene.cameras.K(t) if K is None else K

    def on(x: torch.Tensor) -> torch.Tensor:
        return x.to(device=device, dtype=torch.float32)

    return rasterize(on(gaussians.means), on(gaussians.quats), on(gaussians.scales), on(gaussians.opacities),
                     on(features), on(camera_from_world), on(K), int(width), int(height),
                     background=None if background is None else on(background), config=scene_raster(scene))
