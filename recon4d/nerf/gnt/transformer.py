"""GNT's two transformers: the view transformer (subtraction attention across source views, per sample)
and the ray transformer (self-attention across the samples of a ray), with an optional MoE FFN.

Shapes: R rays, S samples per ray, V source views, C token width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recon4d.nerf.gnt.moe import FeedForward, MoEFeedForward, Routing

_MASKED = -1e9


class SubtractionAttention(nn.Module):
    """Vector attention of GNT: weights = softmax over views of MLP(k - q + pos), per channel.

    q [R, S, C], k [R, S, V, C], pos [R, S, V, 4] (relative view direction), mask [R, S, V] bool.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.q_fc = nn.Linear(width, width, bias=False)
        self.k_fc = nn.Linear(width, width, bias=False)
        self.v_fc = nn.Linear(width, width, bias=False)
        self.pos_fc = nn.Sequential(nn.Linear(4, width // 8), nn.ReLU(), nn.Linear(width // 8, width))
        self.attn_fc = nn.Sequential(nn.Linear(width, width // 8), nn.ReLU(), nn.Linear(width // 8, width))
        self.out_fc = nn.Linear(width, width)

    def forward(self, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        query, key, value = self.q_fc(q), self.k_fc(k), self.v_fc(k)
        position = self.pos_fc(pos)
        logits = self.attn_fc(key - query[:, :, None] + position)
        logits = logits.masked_fill(~mask[..., None], _MASKED)
        weights = torch.softmax(logits, dim=2)
        return self.out_fc(((value + position) * weights).sum(2))


def _feed_forward(width: int, hidden: int, moe_args: tuple[int, int, int] | None) -> nn.Module:
    if moe_args is None:
        return FeedForward(width, hidden)
    experts, gate_dim, top_k = moe_args
    return MoEFeedForward(width, hidden, experts, gate_dim, top_k)


class _Block(nn.Module):
    """Pre-norm residual attention + FFN; the FFN may be an MoE layer (then its Routing is returned)."""

    def __init__(self, width: int, hidden: int, moe_args: tuple[int, int, int] | None) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(width, eps=1e-6)
        self.ff_norm = nn.LayerNorm(width, eps=1e-6)
        self.ff = _feed_forward(width, hidden, moe_args)

    @property
    def is_moe(self) -> bool:
        return isinstance(self.ff, MoEFeedForward)

    def _feed(self, x: torch.Tensor, noise: torch.Tensor | None) -> tuple[torch.Tensor, Routing | None]:
        if self.is_moe:
            out, routing = self.ff(self.ff_norm(x), noise)
            return x + out, routing
        return x + self.ff(self.ff_norm(x)), None


class ViewBlock(_Block):
    """View transformer block: q [R, S, C] attends over its V source-view tokens."""

    def __init__(self, width: int, hidden: int, moe_args: tuple[int, int, int] | None = None) -> None:
        super().__init__(width, hidden, moe_args)
        self.attn = SubtractionAttention(width)

    def forward(self, q, k, pos, mask, noise=None):
        q = q + self.attn(self.attn_norm(q), k, pos, mask)
        return self._feed(q, noise)


class RayBlock(_Block):
    """Ray transformer block: multi-head self-attention over the S samples of each ray, x [R, S, C]."""

    def __init__(self, width: int, hidden: int, heads: int, moe_args: tuple[int, int, int] | None = None) -> None:
        super().__init__(width, hidden, moe_args)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out_fc = nn.Linear(width, width)
        self.heads = heads

    def forward(self, x, noise=None):
        rays, samples, width = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).reshape(rays, samples, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(rays, samples, width)
        return self._feed(x + self.out_fc(attended), noise)
