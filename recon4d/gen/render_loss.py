"""The rendering loss of a velocity model (TriFlow's perceptual/rendering loss, without LPIPS).

The model's velocity at x_t implies a clean latent x1_hat = x_t + (1 - t) v. Decoding x1_hat and the
true x1 to Gaussians and rendering both from the same random orbit camera compares what a viewer sees,
which the per-channel flow loss does not: a wrong opacity on a visible Gaussian or a stray floater costs
pixels here, while an error on a hidden one costs nothing. LPIPS needs downloaded VGG/AlexNet weights,
so the image distance is L1 + SSIM (`recon4d.fit.losses.photometric_loss`) plus an L1 on alpha.

Samples near t = 0 imply blurry x1_hat (the conditional mean), whose render cannot match any one object,
so in flow training each sample's term is weighted by t. A one-step student (always t = 0) maps noise to
one definite sample, its teacher's, so there every term has weight 1: InstaFlow distils with LPIPS, this is
that loss with L1 + SSIM.
"""
from __future__ import annotations

import torch

from recon4d.fit.losses import photometric_loss
from recon4d.gen.latents import LatentStats, to_gaussians
from recon4d.gen.views import intrinsics, orbit_poses
from recon4d.geometry import invert_pose
from recon4d.render import RasterConfig, rasterize

CAMERA_DISTANCE = 3.4  # canonical objects fill the unit ball: at 40 degrees the ball spans ~70 % of the frame
FOV_X_DEG = 40.0
ELEVATION_RANGE_DEG = (-15.0, 60.0)  # random views cover the corpus's turntable bands and a little more


def random_cameras(count: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """[count, 4, 4] camera_from_world on the canonical orbit at random azimuth/elevation, and K [3, 3]."""
    draws = torch.rand(count, 2, generator=generator)
    low, high = ELEVATION_RANGE_DEG
    poses = [orbit_poses(1, CAMERA_DISTANCE, (low + float(e) * (high - low),), azimuth_offset_deg=360.0 * float(a))[0]
             for a, e in draws]
    return torch.stack([invert_pose(p) for p in poses]), intrinsics(FOV_X_DEG, size, size)


def render_latent(latent: torch.Tensor, camera_from_world: torch.Tensor, K: torch.Tensor, size: int,
                  raster: RasterConfig = RasterConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical latent [G, 14] -> premultiplied RGB [size, size, 3] and alpha [size, size] (differentiable),
    drawn with the filter the latents were encoded under (`raster`)."""
    g = to_gaussians(latent)
    out = rasterize(g.means, g.quats, g.scales, g.opacities, g.colors, camera_from_world, K, size, size,
                    background=latent.new_zeros(3), config=raster)
    return out.color, out.alpha.reshape(size, size)


def rendering_loss(predicted_velocity: torch.Tensor, x_t: torch.Tensor, x1: torch.Tensor, t: torch.Tensor,
                   weights: torch.Tensor, stats: LatentStats, camera_from_world: torch.Tensor, K: torch.Tensor,
                   greys: torch.Tensor, size: int, ssim_share: float = 0.2) -> torch.Tensor:
    """SUM over the R rows of weights * (photometric + alpha L1) between renders of x1_hat and of x1.

    predicted_velocity, x_t, x1: standardised latents [R, G, 14]; t, weights [R]; camera_from_world [R, 4, 4] and K
    [3, 3] (`random_cameras`); greys [R] background levels: both renders are composited on the same grey,
    so that transparency must be matched too. A sum, so that ranks holding different numbers of rows add up
    to the loss of the whole batch.
    """
    x1_hat = x_t + (1 - t).reshape(-1, 1, 1) * predicted_velocity
    predicted, target = stats.destandardize(x1_hat), stats.destandardize(x1)
    weight = predicted.new_ones(size, size)
    camera_from_world, K, greys = camera_from_world.to(predicted), K.to(predicted), greys.to(predicted)
    total = predicted.new_zeros(())
    for i in range(predicted.shape[0]):
        color, alpha = render_latent(predicted[i], camera_from_world[i], K, size, stats.raster)
        with torch.no_grad():
            true_color, true_alpha = render_latent(target[i], camera_from_world[i], K, size, stats.raster)
        image = color + (1 - alpha[..., None]) * greys[i]
        true_image = true_color + (1 - true_alpha[..., None]) * greys[i]
        term = photometric_loss(image, true_image, weight, ssim_share) + (alpha - true_alpha).abs().mean()
        total = total + weights[i] * term
    return total
