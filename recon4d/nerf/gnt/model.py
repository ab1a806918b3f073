"""GNT / GNT-MOVE: render target rays from K posed source views without per-scene optimisation.

Per ray: coarse uniform samples -> the network's readout weights -> importance samples; per sample and
source view, the projected CNN feature and RGB (the "blending" colour) plus the relative viewing direction
feed the view transformer (subtraction attention over views); the ray transformer attends over the ray's
samples; a learned readout query attends over the samples and its weights both blend the per-sample
colours into the pixel (GNT's attention-based "volume rendering") and give the sampling pdf and an expected
depth.

Colour is a blend of the source views' RGB, as in IBRNet (GNT's readout, rgb_fc on the pooled tokens, has
to learn to carry colour through every block, which a ~100 k-parameter model trained for CPU minutes does
not): per sample, a softmax over the views of an MLP of (view token, final sample token, relative
direction) weighs the projected source colours. The view tokens see, besides their own feature + RGB, the
mean and variance of all views' feature + RGB at that sample (IBRNet's multi-view consistency cue: low
variance = a surface), so depth is found by matching across views rather than memorised.

Deviation from GNT, on purpose: the positional input fused after even blocks is the normalised sample
depth and the ray direction in the target camera frame (not world xyz), so it means the same in every scene.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from recon4d.nerf.gnt.config import GNTConfig
from recon4d.nerf.gnt.features import FeatureNet
from recon4d.nerf.gnt.moe import Routing
from recon4d.nerf.gnt.rays import (
    direction_difference,
    importance_depths,
    project_points,
    sample_maps,
    uniform_depths,
)
from recon4d.nerf.gnt.transformer import RayBlock, ViewBlock

_EMBED_DIM = 4  # normalised depth + unit direction in the target camera frame
_MASKED = -1e9  # blend logit of a view that does not see the sample


@dataclass
class SourceContext:
    """The source views of one target, encoded once.

    features: [V, F, h, w] CNN features (coarser than the images); colours: [V, 3, H, W] RGB used for
    blending; valid: [V, 1, H, W]
    float (1 = static pixel) or None; world_from_camera [V, 4, 4]; intrinsics [V, 4]; near, far.
    """

    features: torch.Tensor
    colours: torch.Tensor
    valid: torch.Tensor | None
    world_from_camera: torch.Tensor
    intrinsics: torch.Tensor
    near: float
    far: float


@dataclass
class RenderOutput:
    """rgb [R, 3], depth [R], weights [R, S], depths [R, S], points [R, S, 3], routings of the MoE layers."""

    rgb: torch.Tensor
    depth: torch.Tensor
    weights: torch.Tensor
    depths: torch.Tensor
    points: torch.Tensor
    routings: list[Routing] = field(default_factory=list)


class GNT(nn.Module):
    def __init__(self, config: GNTConfig) -> None:
        super().__init__()
        self.config = config
        c = config.width
        moe_args = (config.experts, config.gate_dim, config.top_k) if config.moe else None
        self.features = FeatureNet(config.feature_dim)
        sampled_dim = config.feature_dim + 3
        self.rgbfeat_fc = nn.Sequential(nn.Linear(3 * sampled_dim, c), nn.ReLU(), nn.Linear(c, c))
        self.view_blocks, self.ray_blocks, self.q_fcs = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in range(config.blocks):
            odd = i % 2 == 1
            hidden = c * (config.dense_odd_ratio if odd and not config.moe else config.ffn_ratio)
            block_moe = moe_args if odd else None
            self.view_blocks.append(ViewBlock(c, hidden, block_moe))
            self.ray_blocks.append(RayBlock(c, hidden, config.heads, block_moe))
            self.q_fcs.append(nn.Sequential(nn.Linear(c + _EMBED_DIM, c), nn.ReLU(), nn.Linear(c, c)) if i % 2 == 0 else nn.Identity())
        self.norm = nn.LayerNorm(c)
        self.readout = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, 1))
        self.blend_fc = nn.Sequential(nn.Linear(2 * c + 4, c), nn.ReLU(), nn.Linear(c, 1))

    @property
    def moe_layers(self) -> int:
        return sum(b.is_moe for b in [*self.view_blocks, *self.ray_blocks])

    def encode(self, cnn_images: torch.Tensor, world_from_camera: torch.Tensor, intrinsics: torch.Tensor,
               near: float, far: float, blend_images: torch.Tensor | None = None,
               valid: torch.Tensor | None = None) -> SourceContext:
        """Source images [V, H, W, 3] (into the CNN; `blend_images` for blending, default the same) -> context."""
        colours = (cnn_images if blend_images is None else blend_images).permute(0, 3, 1, 2)
        return SourceContext(self.features(cnn_images.permute(0, 3, 1, 2)), colours,
                             None if valid is None else valid[:, None].float(), world_from_camera, intrinsics, near, far)

    def _aggregate(self, points, depths, origins, directions, context, noise):
        """points [R, S, 3] -> (rgb [R, 3], weights [R, S], routings)."""
        height, width = context.colours.shape[-2:]
        pixels, visible = project_points(points, context.world_from_camera, context.intrinsics, width, height)
        colours = context.colours if context.valid is None else torch.cat([context.colours, context.valid], 1)
        sampled = torch.cat([sample_maps(context.features, pixels, width, height),
                             sample_maps(colours, pixels, width, height)], -1).permute(1, 2, 0, 3)  # [R, S, V, F + 3 (+1)]
        mask = visible.permute(1, 2, 0)
        if context.valid is not None:
            mask = mask & (sampled[..., -1] > 0.5)
            sampled = sampled[..., :-1]
        source_rgb = sampled[..., -3:]  # [R, S, V, 3]
        tokens = self.rgbfeat_fc(torch.cat([sampled, *masked_mean_variance(sampled, mask)], -1))  # [R, S, V, C]
        pos = direction_difference(points, origins, context.world_from_camera[:, :3, 3])
        q = tokens.masked_fill(~mask[..., None], float("-inf")).amax(2)
        q = torch.where(torch.isfinite(q), q, torch.zeros_like(q))
        embed = self._embed(depths, directions, context)
        routings, layer = [], 0
        for view_block, q_fc, ray_block in zip(self.view_blocks, self.q_fcs, self.ray_blocks):
            q, routing = view_block(q, tokens, pos, mask, routing_noise(noise, layer) if view_block.is_moe else None)
            if routing is not None:
                routings.append(routing)
                layer += 1
            if not isinstance(q_fc, nn.Identity):
                q = q_fc(torch.cat([q, embed], -1))
            q, routing = ray_block(q, routing_noise(noise, layer) if ray_block.is_moe else None)
            if routing is not None:
                routings.append(routing)
                layer += 1
        h = self.norm(q)
        weights = torch.softmax(self.readout(h)[..., 0], -1)
        blend_in = torch.cat([tokens, h[:, :, None].expand_as(tokens), pos], -1)
        view_weights = torch.softmax(self.blend_fc(blend_in)[..., 0].masked_fill(~mask, _MASKED), -1)  # [R, S, V]
        sample_rgb = (view_weights[..., None] * source_rgb).sum(2)  # [R, S, 3]
        rgb = (weights[..., None] * sample_rgb).sum(1)
        return rgb, weights, routings

    def _embed(self, depths: torch.Tensor, directions: torch.Tensor, context: SourceContext) -> torch.Tensor:
        """[R, S, 4]: depth mapped to [-1, 1] over [near, far], and the ray's unit direction in the
        target camera (`directions` are already target-camera-relative, see render_rays)."""
        normalised = (depths - context.near) / (context.far - context.near) * 2 - 1
        unit = F.normalize(directions, dim=-1)[:, None].expand(*depths.shape, 3)
        return torch.cat([normalised[..., None], unit], -1)

    def forward(self, images: torch.Tensor, world_from_camera: torch.Tensor, intrinsics: torch.Tensor, near: float,
                far: float, origins: torch.Tensor, directions: torch.Tensor, camera_directions: torch.Tensor,
                jitter: torch.Tensor | None = None, uniforms: torch.Tensor | None = None,
                noise: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> RenderOutput:
        """Encode the source views and render rays in one call (what DistributedDataParallel wraps)."""
        context = self.encode(images, world_from_camera, intrinsics, near, far, valid=valid)
        return self.render_rays(origins, directions, camera_directions, context, jitter, uniforms, noise)

    def render_rays(self, origins: torch.Tensor, directions: torch.Tensor, camera_directions: torch.Tensor,
                    context: SourceContext, jitter: torch.Tensor | None = None, uniforms: torch.Tensor | None = None,
                    noise: torch.Tensor | None = None, coarse_grad: bool = False) -> RenderOutput:
        """Render R rays.

        Args:
            origins, directions: [R, 3] world rays with z-depth-1 directions (see `rays.pixel_rays`).
            camera_directions: [R, 3] the same directions in the target camera frame.
            jitter: [R, coarse_samples] uniforms for stratified coarse samples (None: bin centres).
            uniforms: [R, fine_samples] uniforms for importance sampling (None: even quantiles).
            noise: [R, coarse + fine, L, E] standard-normal gate noise of the L MoE layers (training), or None.
            coarse_grad: keep the coarse pass in the autograd graph (the attack needs it; training saves
                the time and memory, as the same network is trained on the final samples).
        """
        cfg = self.config
        depths = uniform_depths(context.near, context.far, origins.shape[0], cfg.coarse_samples, jitter).to(origins)
        if cfg.fine_samples:
            with torch.set_grad_enabled(coarse_grad and torch.is_grad_enabled()):
                points = origins[:, None] + depths[..., None] * directions[:, None]
                _, coarse_weights, _ = self._aggregate(points, depths, origins, camera_directions, context, None)
            fine = importance_depths(depths, coarse_weights, cfg.fine_samples, uniforms)
            depths = torch.sort(torch.cat([depths, fine], -1), -1).values
        points = origins[:, None] + depths[..., None] * directions[:, None]
        rgb, weights, routings = self._aggregate(points, depths, origins, camera_directions, context, noise)
        return RenderOutput(rgb, (weights * depths).sum(-1), weights, depths, points, routings)


def masked_mean_variance(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IBRNet's global features: values [R, S, V, D], mask [R, S, V] -> (mean, variance) over the views that
    see each sample, both [R, S, V, D] (broadcast back to every view; zeros where no view sees it)."""
    weight = mask[..., None].float()
    count = weight.sum(2, keepdim=True).clamp(min=1)
    mean = (values * weight).sum(2, keepdim=True) / count
    variance = ((values - mean) ** 2 * weight).sum(2, keepdim=True) / count
    return mean.expand_as(values), variance.expand_as(values)


def routing_noise(noise: torch.Tensor | None, layer: int) -> torch.Tensor | None:
    """The noise of MoE layer `layer` if noise is given."""
    return None if noise is None else noise[:, :, layer]
