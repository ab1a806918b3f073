"""GNT-MOVE's mixture-of-experts feed-forward layer, with dense routing in plain PyTorch (no FastMoE).

Gate (V-MoE style, as GNT-MOVE): the token is projected to a small space and compared with one learned
embedding per expert by cosine similarity; Gaussian noise of std 1/E is added in training; a softmax with
a learned per-expert temperature gives the routing distribution; each token goes to its top-k experts with
those probabilities renormalised to sum to 1. A permanent expert sees every token, and the layer returns
the mean of the routed mixture and the permanent expert. Every expert is evaluated on every token
("dense routing") and the unrouted outputs are weighted by zero: exact, simple, and fast at this size.

Losses: load balance = CV^2(importance) + CV^2(load) (Shazeer et al.; load is the differentiable
probability of being in the top k under the gate noise), spatial consistency = distance-weighted KL between
the gate distributions of nearest 3D points on neighbouring rays.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-10


@dataclass
class Routing:
    """What one MoE layer did with its tokens [..., ]: probabilities [..., E] over all experts, sparse
    top-k gates [..., E] (zeros elsewhere, rows sum to 1), and the expected load per expert [E]."""

    probabilities: torch.Tensor
    gates: torch.Tensor
    load: torch.Tensor


class FeedForward(nn.Module):
    """x [..., C] -> [..., C]: Linear, GELU, Linear."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class CosineGate(nn.Module):
    """Cosine-similarity top-k gate with learned temperature and training noise of std 1/E."""

    def __init__(self, width: int, experts: int, gate_dim: int, top_k: int) -> None:
        super().__init__()
        self.project = nn.Linear(width, gate_dim, bias=False)
        self.expert_embeddings = nn.Parameter(torch.empty(gate_dim, experts))
        nn.init.kaiming_uniform_(self.expert_embeddings, a=math.sqrt(5))
        self.log_temperature = nn.Parameter(torch.zeros(experts))
        self.experts, self.top_k = experts, top_k

    @property
    def noise_std(self) -> float:
        return 1.0 / self.experts

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> Routing:
        """x [N, C], noise [N, E] standard normal (training) or None -> Routing of the N tokens."""
        cosine = F.normalize(self.project(x), dim=-1, eps=1e-6) @ F.normalize(self.expert_embeddings, dim=0, eps=1e-6)
        temperature = self.log_temperature.exp()
        noisy = cosine if noise is None else cosine + noise * self.noise_std
        probabilities = torch.softmax(noisy / temperature, -1)
        top_values, top_index = probabilities.topk(self.top_k, dim=-1)
        top_values = top_values / top_values.sum(-1, keepdim=True)
        gates = torch.zeros_like(probabilities).scatter(-1, top_index, top_values)
        if noise is None:
            load = (gates > 0).float().sum(0)
        else:
            load = probability_in_top_k(cosine, noisy, self.noise_std, self.top_k).sum(0)
        return Routing(probabilities, gates, load)


def probability_in_top_k(clean: torch.Tensor, noisy: torch.Tensor, noise_std: float, top_k: int) -> torch.Tensor:
    """[N, E]: probability that each expert is among the top k under fresh gate noise (Shazeer et al. 2017).

    The threshold of expert e is the k-th largest noisy logit of the others: the k-th overall if e is in
    the top k now, else the (k)-th largest (e ranks below it)."""
    top = noisy.topk(top_k + 1, dim=-1).values
    in_now = noisy >= top[:, top_k - 1: top_k]
    threshold = torch.where(in_now, top[:, top_k: top_k + 1], top[:, top_k - 1: top_k])
    normal = torch.distributions.Normal(0.0, 1.0)
    return normal.cdf((clean - threshold) / noise_std)


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation of a 1-D tensor (0 for a constant one)."""
    if x.numel() < 2:
        return x.new_zeros(())
    return x.float().var(unbiased=False) / (x.float().mean() ** 2 + _EPS)


def balance_loss(importance: torch.Tensor, load: torch.Tensor) -> torch.Tensor:
    """CV^2(importance) + CV^2(load); both [E] summed over tokens. Zero exactly when routing is uniform."""
    return cv_squared(importance) + cv_squared(load)


class MoEFeedForward(nn.Module):
    """x [..., C] -> ([..., C], Routing): mean of the top-k routed experts' mixture and a permanent expert."""

    def __init__(self, width: int, hidden: int, experts: int, gate_dim: int, top_k: int) -> None:
        super().__init__()
        self.gate = CosineGate(width, experts, gate_dim, top_k)
        scale = 1 / math.sqrt(width)
        self.w1 = nn.Parameter(torch.empty(experts, width, hidden).uniform_(-scale, scale))
        self.b1 = nn.Parameter(torch.zeros(experts, hidden))
        self.w2 = nn.Parameter(torch.empty(experts, hidden, width).uniform_(-1 / math.sqrt(hidden), 1 / math.sqrt(hidden)))
        self.b2 = nn.Parameter(torch.zeros(experts, width))
        self.permanent = FeedForward(width, hidden)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, Routing]:
        """x [..., C]; noise [..., E] standard normal or None."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        routing = self.gate(flat, None if noise is None else noise.reshape(flat.shape[0], -1))
        hidden = F.gelu(torch.einsum("nc,ech->neh", flat, self.w1) + self.b1)
        outputs = torch.einsum("neh,ehc->nec", hidden, self.w2) + self.b2  # every expert, every token
        mixture = (routing.gates[..., None] * outputs).sum(1)
        out = 0.5 * (mixture + self.permanent(flat))
        routing.probabilities = routing.probabilities.reshape(*shape[:-1], -1)
        routing.gates = routing.gates.reshape(*shape[:-1], -1)
        return out.reshape(shape), routing


def consistency_terms(points: torch.Tensor, probabilities: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of weight x KL, sum of weights) of :func:`spatial_consistency_loss`, so that data-parallel
    ranks can add both over the global batch before dividing."""
    distance = torch.cdist(points[:, 0], points[:, 1])  # [P, S, S]
    nearest_distance, nearest = distance.min(-1)
    first = probabilities[:, 0].clamp(min=_EPS)
    second = probabilities[:, 1].gather(1, nearest[..., None].expand_as(first)).clamp(min=_EPS)
    kl = (first * (first.log() - second.log())).sum(-1)
    weight = torch.exp(-nearest_distance.detach() / scale)
    return (weight * kl).sum(), weight.sum()


def spatial_consistency_loss(points: torch.Tensor, probabilities: torch.Tensor, scale: float) -> torch.Tensor:
    """Gate agreement of neighbouring rays.

    points [P, 2, S, 3]: samples of P pairs of neighbouring rays; probabilities [P, 2, S, E] their gate
    distributions. For each sample of the first ray of a pair, its nearest sample on the second ray
    (distance d) contributes KL(p_first || p_second) with weight exp(-d / scale); returns the weighted mean.
    """
    numerator, denominator = consistency_terms(points, probabilities, scale)
    return numerator / denominator.clamp(min=_EPS)
