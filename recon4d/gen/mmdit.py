"""A multi-stream transformer in the style of Stable Diffusion 3's MM-DiT, for scene latents.

Two token streams with their own weights (latent tokens: patches of `patch` consecutive Gaussians in the
canonical Morton order; text tokens: MiniLM per-token embeddings) meet in joint attention over both
sequences. The timestep and the pooled text embedding modulate every block through adaLN-Zero (shift,
scale and gate per sub-layer, gates initialised to zero so each block starts as the identity), and
queries/keys are RMS-normalised per head (QK-norm) for stable attention logits.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recon4d.gen.latents import NUM_CHANNELS
from recon4d.gen.text import TEXT_DIM


@dataclass
class ModelConfig:
    """Size of the denoiser.

    Attributes:
        num_gaussians: G of the latents; patch: Gaussians per latent token (G must be a multiple). Keep
            patch x 14 <= width: the output layer maps width features to patch x 14 numbers, so a wider
            token leaves its velocity in a width-dim subspace and the rest of the noise is never removed
            (patch 16 at width 128 left 40 % of every sample's energy as the initial noise).
        width, depth, heads, mlp_ratio: transformer size (the CPU default is a few M parameters; `gpu()`
            gives a larger one).
        text_dim: MiniLM embedding width; frequency_dim: sinusoidal timestep features.
    """

    num_gaussians: int = 1024
    patch: int = 8
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 3.0
    text_dim: int = TEXT_DIM
    frequency_dim: int = 128

    @staticmethod
    def gpu(num_gaussians: int = 1024) -> "ModelConfig":
        return ModelConfig(num_gaussians=num_gaussians, patch=8, width=384, depth=12, heads=6, mlp_ratio=4.0)

    def to_json(self) -> dict:
        return asdict(self)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [B, dim] of times t [B] in [0, 1] (scaled by 1000 as in DiT)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = 1000.0 * t.float()[:, None] * frequencies[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], -1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class RMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class StreamLayers(nn.Module):
    """The per-stream weights of one block: adaLN modulation, QKV with QK-norm, output and MLP.

    `pre_only`: the stream only contributes keys/values (and queries) to the joint attention and has no
    output path; SD3 uses this for the text stream of the last block, whose outputs nothing reads.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float, pre_only: bool = False) -> None:
        super().__init__()
        self.heads, self.pre_only = heads, pre_only
        self.modulation = nn.Linear(width, (2 if pre_only else 6) * width)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm, self.k_norm = RMSNorm(width // heads), RMSNorm(width // heads)
        if not pre_only:
            self.out = nn.Linear(width, width)
            self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
            hidden = int(width * mlp_ratio)
            self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def pre_attention(self, x: torch.Tensor, c: torch.Tensor):
        """x [B, N, W], c [B, W] -> q, k, v [B, heads, N, W/heads] and the modulation for later."""
        mods = self.modulation(F.silu(c)).chunk(2 if self.pre_only else 6, -1)
        h = modulate(self.norm1(x), mods[0], mods[1])
        b, n, w = h.shape
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        return self.q_norm(q), self.k_norm(k), v, mods

    def post_attention(self, x: torch.Tensor, attended: torch.Tensor, mods) -> torch.Tensor:
        x = x + mods[2][:, None] * self.out(attended)
        return x + mods[5][:, None] * self.mlp(modulate(self.norm2(x), mods[3], mods[4]))


class JointBlock(nn.Module):
    """One MM-DiT block: both streams attend jointly over [latent tokens, text tokens]."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, last: bool = False) -> None:
        super().__init__()
        self.latent = StreamLayers(width, heads, mlp_ratio)
        self.text = StreamLayers(width, heads, mlp_ratio, pre_only=last)

    def forward(self, x: torch.Tensor, y: torch.Tensor, c: torch.Tensor, text_mask: torch.Tensor):
        """x [B, N, W] latent tokens, y [B, L, W] text tokens, c [B, W], text_mask [B, L] (True = real).
        Returns the new (x, y); y is None after the last block."""
        qx, kx, vx, mx = self.latent.pre_attention(x, c)
        qy, ky, vy, my = self.text.pre_attention(y, c)
        q, k, v = torch.cat([qx, qy], 2), torch.cat([kx, ky], 2), torch.cat([vx, vy], 2)
        keep = torch.cat([torch.ones(x.shape[0], x.shape[1], dtype=torch.bool, device=x.device), text_mask], 1)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        attended = attended.transpose(1, 2).reshape(x.shape[0], -1, x.shape[2])
        n = x.shape[1]
        y = None if self.text.pre_only else self.text.post_attention(y, attended[:, n:], my)
        return self.latent.post_attention(x, attended[:, :n], mx), y


class MMDiT(nn.Module):
    """Velocity model v(x_t, t, text): x_t [B, G, 14] standardised latents -> [B, G, 14]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.num_gaussians % config.patch:
            raise ValueError(f"num_gaussians {config.num_gaussians} is not a multiple of patch {config.patch}")
        self.config = config
        w, tokens = config.width, config.num_gaussians // config.patch
        self.latent_in = nn.Linear(config.patch * NUM_CHANNELS, w)
        self.position = nn.Parameter(torch.randn(1, tokens, w) * 0.02)
        self.text_in = nn.Linear(config.text_dim, w)
        self.time_mlp = nn.Sequential(nn.Linear(config.frequency_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.pooled_mlp = nn.Sequential(nn.Linear(config.text_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.blocks = nn.ModuleList(JointBlock(w, config.heads, config.mlp_ratio, last=i == config.depth - 1)
                                    for i in range(config.depth))
        self.final_modulation = nn.Linear(w, 2 * w)
        self.final_norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.latent_out = nn.Linear(w, config.patch * NUM_CHANNELS)
        for layer in (self.final_modulation, self.latent_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                pooled: torch.Tensor) -> torch.Tensor:
        """x [B, G, 14], t [B] in [0, 1], text_tokens [B, L, 384], text_mask [B, L] bool, pooled [B, 384]."""
        b, g, channels = x.shape
        p = self.config.patch
        h = self.latent_in(x.reshape(b, g // p, p * channels)) + self.position
        y = self.text_in(text_tokens)
        c = self.time_mlp(timestep_features(t, self.config.frequency_dim)) + self.pooled_mlp(pooled)
        for block in self.blocks:
            h, y = block(h, y, c, text_mask)
        shift, scale = self.final_modulation(F.silu(c)).chunk(2, -1)
        return self.latent_out(modulate(self.final_norm(h), shift, scale)).reshape(b, g, channels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
