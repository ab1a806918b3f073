"""Settings of the Gaussian rasterizer, shared by every backend."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RasterConfig:
    """Numerical settings; the defaults are gsplat's, so the CPU and CUDA backends agree.

    Attributes:
        near_plane: Gaussians with camera z below this (scene units) are culled.
        far_plane: Gaussians with camera z above this are culled.
        eps2d: added to the diagonal of every 2D covariance (pixels^2) so that a Gaussian covers at least
            about one pixel; this is the low-pass filter of 3DGS.
        tile_size: tile edge of the CPU backend in pixels (16 measured fastest at 160x90 .. 640x360).
    """

    near_plane: float = 0.01
    far_plane: float = 1e10
    eps2d: float = 0.3
    tile_size: int = 16
