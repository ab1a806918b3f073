"""Camera starts from the structure-from-motion prior (`recon4d.priors.sfm`), aligned to the fit.

COLMAP's poses live in their own world frame and unit. The fit's world is camera 0's frame with the depth
prior's unit. Both describe the same physical cameras, so one anchor frame k that both have placed fixes the
alignment: the relative motion k -> t is COLMAP's, its translation scaled by the ratio of the fit's rendered
depth to COLMAP's point depth at frame k.
"""
from __future__ import annotations

import torch

from recon4d.geometry.camera import invert_pose, project_to_pixels


def sfm_scale(points: torch.Tensor, sfm_camera_from_world: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor,
              K: torch.Tensor, min_points: int) -> float | None:
    """Fit units per COLMAP unit at one frame: the median over COLMAP's points that land on `mask` of
    (the fit's rendered depth there) / (the point's COLMAP depth); None with fewer than `min_points`.

    points: [P, 3] COLMAP world points; sfm_camera_from_world: [4, 4] the frame's COLMAP pose;
    depth, mask: [H, W] the fit's rendered depth and where it is trusted (opaque render, still pixels); K: [3, 3].

    Example (the fit's world is COLMAP's at twice the size):
        >>> K = torch.tensor([[20.0, 0, 16], [0, 20, 16], [0, 0, 1]])
        >>> points = torch.tensor([[x, y, 4.0] for x in (-1.0, 0.0, 1.0) for y in (-1.0, 0.0, 1.0)])
        >>> sfm_scale(points, torch.eye(4), torch.full((32, 32), 8.0), torch.ones(32, 32, dtype=torch.bool), K, 5)
        2.0
    """
    pixels, z = project_to_pixels(points, sfm_camera_from_world, K)
    u, v = pixels[:, 0].round().long(), pixels[:, 1].round().long()
    height, width = depth.shape
    inside = (z > 1e-6) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    u, v, z = u[inside], v[inside], z[inside]
    keep = mask[v, u] & (depth[v, u] > 0)
    if int(keep.sum()) < min_points:
        return None
    return float(torch.median(depth[v, u][keep] / z[keep]))


def sfm_start(sfm_camera_from_world_t: torch.Tensor, sfm_camera_from_world_anchor: torch.Tensor,
              camera_from_world_anchor: torch.Tensor, scale: float) -> torch.Tensor:
    """The fit's camera t [4, 4]: COLMAP's motion from the anchor frame to t (translation times `scale`, fit
    units per COLMAP unit) applied to the fit's anchor camera.

        >>> step = torch.eye(4); step[0, 3] = 0.5  # COLMAP: camera t is 0.5 units beside the anchor
        >>> sfm_start(step, torch.eye(4), torch.eye(4), 2.0)[0, 3].item()
        1.0
    """
    relative = sfm_camera_from_world_t.double() @ invert_pose(sfm_camera_from_world_anchor.double())
    relative[:3, 3] *= scale
    return (relative @ camera_from_world_anchor.double()).to(camera_from_world_anchor.dtype)
