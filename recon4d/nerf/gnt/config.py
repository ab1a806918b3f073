"""Configuration of the GNT / GNT-MOVE model and its trainer (dataclasses; JSON in every checkpoint)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from recon4d.errors import InputError


@dataclass(frozen=True)
class GNTConfig:
    """Architecture. Defaults are the CPU-sized shipped model; paper GNT uses width 64, 8 blocks, 4x FFN.

    Attributes:
        feature_dim: channels of the shared CNN's per-pixel features (GNT: 32).
        width: token width of the view and ray transformers (GNT `netwidth`).
        blocks: number of (view transformer, ray transformer) pairs (GNT `trans_depth`).
        heads: heads of the ray transformer's self-attention.
        ffn_ratio: hidden width of a feed-forward network / width (GNT: 4).
        moe: GNT-MOVE: a mixture-of-experts FFN in every odd view and ray block; False = dense GNT.
        experts: experts per MoE layer (E).
        top_k: experts each token is routed to.
        gate_dim: width of the cosine gate's projection (GNT-MOVE: E / 2).
        dense_odd_ratio: FFN ratio of the odd blocks in the dense model; 3 x ffn_ratio gives it the active
            parameters of an MoE layer (two routed experts + the permanent expert).
        coarse_samples, fine_samples: samples per ray: uniform (stratified in training), then importance
            samples drawn from the coarse pass's readout weights.
        source_views: K nearest source views attended per target ray.
    """

    feature_dim: int = 32
    width: int = 32
    blocks: int = 4
    heads: int = 4
    ffn_ratio: int = 2
    moe: bool = True
    experts: int = 4
    top_k: int = 2
    gate_dim: int = 2
    dense_odd_ratio: int = 6
    coarse_samples: int = 12
    fine_samples: int = 12
    source_views: int = 6

    def __post_init__(self) -> None:
        if self.width % self.heads or self.width % 8:
            raise InputError(f"width {self.width} must be divisible by heads {self.heads} and by 8")
        if self.moe and not 1 <= self.top_k < self.experts:
            raise InputError(f"top_k must be in [1, experts), got {self.top_k} of {self.experts}")
        if min(self.blocks, self.coarse_samples, self.source_views) < 1 or self.fine_samples < 0:
            raise InputError("blocks, coarse_samples and source_views must be >= 1")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, content: dict) -> GNTConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in content.items() if k in known})


@dataclass(frozen=True)
class TrainConfig:
    """Training. The global batch of `rays` rays (in neighbouring pairs) is split into equal contiguous
    shards of pairs across torchrun ranks; every random number of a step is drawn for the global batch
    from a generator seeded by (seed, step), so 1 or N processes see the same rays, samples and gate noise.

    Attributes:
        steps: optimisation steps in total (resume continues up to this).
        rays: global batch of target rays per step (even: neighbouring pairs for the consistency loss).
        lr: Adam learning rate (cosine decay to lr_final_fraction x lr).
        balance_weight: weight of the load-balance loss (CV^2 of importance + load), summed over MoE layers.
        consistency_weight: weight of the spatial-consistency KL between neighbouring rays' gates.
        min_source_views: each step attends to a random number of source views in [min_source_views, K]
            (so one model serves K-shot and few-shot; 0 = always K).
        holdout_every: every k-th view of each scene is held out for the periodic PSNR (-1: none).
        eval_every: steps between held-out PSNR evaluations (at the training resolution) and checkpoints.
        seed: seeds the step generator and the initial weights.
        depth_weight: weight of the L1 between the model's readout depth and the true depth where the data
            knows it (`PosedImages.depths`: the procedural scenes), in units of the depth range (0: off).
    """

    steps: int = 3000
    rays: int = 256
    lr: float = 1e-3
    lr_final_fraction: float = 0.05
    balance_weight: float = 0.01
    consistency_weight: float = 0.1
    min_source_views: int = 0
    holdout_every: int = 8
    eval_every: int = 250
    seed: int = 0
    depth_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.rays < 2 or self.rays % 2:
            raise InputError(f"need steps >= 1 and an even ray batch >= 2, got steps={self.steps} rays={self.rays}")
        if self.lr <= 0:
            raise InputError(f"learning rate must be positive, got {self.lr}")
