"""Scene latents: a fixed-size Gaussian set in a canonical frame, as a [G, C] tensor, and its file format.

Channels per Gaussian (C = 14), in the canonical frame (object centred at the origin, inside the unit ball):
    0:3 position, 3:6 log scale, 6:10 rotation quaternion (wxyz, unit, w >= 0), 10 opacity logit, 11:14 RGB.
Rows are sorted along a Morton (Z-order) curve of the positions, so nearby tokens are nearby in space and
the order is a deterministic function of the set (the generator learns rows in this order).

A latent file is safetensors: tensor ``gaussians`` [G, 14] plus metadata ``format``, ``version`` and a JSON
``info`` (canonical transform back to the source frame, caption, labels, source, encoding metrics, and the
rasterizer filter the encoder fitted under, ``raster_filter``: a latent draws right only with it).
Standardisation statistics (per-channel mean/std over a training set, TriFlow's feature standardisation)
live in ``stats.json`` beside the latents, with their own format name and version.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from recon4d.errors import InputError
from recon4d.io.atomic import atomic_path
from recon4d.io.scene import Gaussians
from recon4d.render.config import RasterConfig

LATENT_FORMAT = "recon4d.gen.latent"
LATENT_VERSION = 1
LATENT_SUFFIX = ".r4dlat"
STATS_FORMAT = "recon4d.gen.latent_stats"
STATS_VERSION = 1
STATS_FILE = "stats.json"
CHANNELS = ("x", "y", "z", "log_sx", "log_sy", "log_sz", "qw", "qx", "qy", "qz", "opacity_logit", "r", "g", "b")
NUM_CHANNELS = len(CHANNELS)
OPACITY_CHANNEL = 10
LOG_SCALE_RANGE = (-9.0, 0.5)  # canonical units: below is sub-pixel dust, above is larger than the object
OPACITY_LOGIT_RANGE = (-9.0, 9.0)
MORTON_BITS = 10


def channel_indices(names: Sequence[str]) -> list[int]:
    """Indices into CHANNELS of channel names (e.g. ["r", "g", "b"] -> [11, 12, 13]).

        >>> channel_indices(["r", "g", "b"])
        [11, 12, 13]
    """
    unknown = [n for n in names if n not in CHANNELS]
    if unknown:
        raise InputError(f"unknown latent channel {unknown[0]!r}; the channels are {', '.join(CHANNELS)}")
    return [CHANNELS.index(n) for n in names]


@dataclass
class Latent:
    """One encoded object.

    Attributes:
        gaussians: [G, 14] canonical channels (see module docstring), Morton-sorted.
        center: [3] source-frame position of the canonical origin; radius: source units per canonical unit.
        info: caption, labels, source and metrics (JSON-serialisable).
    """

    gaussians: torch.Tensor
    center: torch.Tensor
    radius: float
    info: dict

    @property
    def caption(self) -> str:
        return self.info.get("caption", "")


def pack(means: torch.Tensor, quats: torch.Tensor, log_scales: torch.Tensor, opacity_logits: torch.Tensor,
         colors: torch.Tensor) -> torch.Tensor:
    """Raw Gaussian parameters [G, ...] -> [G, 14] with unit quaternions on the w >= 0 hemisphere and the
    log scales/opacity logits clamped to the ranges a generator can learn."""
    quats = torch.nn.functional.normalize(quats, dim=-1)
    quats = torch.where(quats[:, :1] < 0, -quats, quats)
    return torch.cat([means, log_scales.clamp(*LOG_SCALE_RANGE), quats,
                      opacity_logits.clamp(*OPACITY_LOGIT_RANGE)[:, None], colors.clamp(0, 1)], -1)


def to_gaussians(latent: torch.Tensor, center: torch.Tensor | None = None, radius: float = 1.0) -> Gaussians:
    """[G, 14] canonical channels -> activated Gaussians in the source frame (x = center + radius x_c)."""
    center = latent.new_zeros(3) if center is None else center.to(latent)
    log_scales = latent[:, 3:6].clamp(*LOG_SCALE_RANGE) + math.log(radius)
    return Gaussians(
        means=center + radius * latent[:, 0:3],
        quats=torch.nn.functional.normalize(latent[:, 6:10], dim=-1),
        scales=log_scales.exp(),
        opacities=torch.sigmoid(latent[:, OPACITY_CHANNEL].clamp(*OPACITY_LOGIT_RANGE)),
        colors=latent[:, 11:14].clamp(0, 1),
    )


def canonical_frame(means: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                    min_opacity: float = 0.1, outlier_share: float = 0.02) -> tuple[torch.Tensor, float]:
    """Centre [3] and radius of the ball that holds the visible Gaussians: the centre of their bounding box
    and the largest 2-sigma extent, both ignoring the `outlier_share` most extreme ones (stray floaters of a
    sparse-view fit would otherwise shift and shrink every object). means/scales [G, 3], opacities [G]."""
    visible = opacities > min_opacity
    if int(visible.sum()) < 4:
        visible = torch.ones_like(visible)
    points = means[visible]
    low, high = torch.quantile(points, outlier_share, dim=0), torch.quantile(points, 1 - outlier_share, dim=0)
    center = (low + high) / 2
    extent = (points - center).norm(dim=-1) + 2 * scales[visible].amax(-1)
    radius = float(torch.quantile(extent, 1 - outlier_share))
    return center, max(radius, 1e-6)


def canonicalize(packed: torch.Tensor, center: torch.Tensor, radius: float) -> torch.Tensor:
    """Source-frame [G, 14] -> canonical [G, 14]: translate by -center, divide lengths by radius."""
    out = packed.clone()
    out[:, 0:3] = (packed[:, 0:3] - center) / radius
    out[:, 3:6] = (packed[:, 3:6] - math.log(radius)).clamp(*LOG_SCALE_RANGE)
    return out


def morton_order(positions: torch.Tensor, bits: int = MORTON_BITS) -> torch.Tensor:
    """Permutation [G] that sorts canonical positions [G, 3] (in [-1, 1]) along a Z-order curve.

    Ties (same cell) keep their input order (stable sort), so the order is a deterministic function of the
    rows.
    """
    cells = ((positions.clamp(-1, 1) + 1) / 2 * (2**bits - 1)).round().long()
    code = torch.zeros(positions.shape[0], dtype=torch.long)
    for bit in range(bits):
        for axis in range(3):
            code |= ((cells[:, axis] >> bit) & 1) << (3 * bit + axis)
    return torch.sort(code, stable=True).indices


def sort_rows(latent: torch.Tensor) -> torch.Tensor:
    """[G, 14] rows in Morton order of their positions."""
    return latent[morton_order(latent[:, 0:3])]


def spatial_weight(latent: torch.Tensor) -> torch.Tensor:
    """Per-Gaussian loss weight [G] in (0, 1]: its opacity, floored so transparent rows still count a little."""
    return torch.sigmoid(latent[..., OPACITY_CHANNEL]).clamp_min(0.05)


def save_latent(latent: Latent, path: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    info = {**latent.info, "center": [float(c) for c in latent.center], "radius": float(latent.radius),
            "channels": list(CHANNELS)}
    metadata = {"format": LATENT_FORMAT, "version": str(LATENT_VERSION), "info": json.dumps(info)}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({"gaussians": latent.gaussians.detach().float().contiguous()}, str(tmp), metadata=metadata)
    return path


def load_latent(path: str | os.PathLike) -> Latent:
    """Read a latent file; InputError (one line) for a missing, truncated, foreign or newer file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no latent file at {path}", hint="make one with `recon4d gen encode`")
    try:
        with safe_open(str(path), framework="pt") as reader:
            metadata = reader.metadata() or {}
            if metadata.get("format") != LATENT_FORMAT:
                raise InputError(f"{path} is not a recon4d scene latent")
            version = int(metadata.get("version", "0"))
            if version > LATENT_VERSION:
                raise InputError(f"{path} has latent format {version}; this recon4d reads <= {LATENT_VERSION}",
                                 hint="pip install -U recon4d")
            gaussians = reader.get_tensor("gaussians")
            info = json.loads(metadata["info"])
    except InputError:
        raise
    except Exception as exc:  # safetensors/JSON errors of truncated or garbage files
        raise InputError(f"cannot read latent file {path}: it is truncated or not a recon4d latent") from exc
    if gaussians.dim() != 2 or gaussians.shape[1] != NUM_CHANNELS or not torch.isfinite(gaussians).all():
        raise InputError(f"latent file {path} holds a tensor of shape {tuple(gaussians.shape)}, "
                         f"expected [G, {NUM_CHANNELS}] finite values")
    return Latent(gaussians, torch.tensor(info["center"]), float(info["radius"]), info)


def latent_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{LATENT_SUFFIX}"))


def latent_raster(info: dict) -> RasterConfig:
    """The rasterizer settings a latent was encoded under (classic 0.3 for latents that predate the field)."""
    return RasterConfig.from_filter(info.get("raster_filter"))


@dataclass
class LatentStats:
    """Per-channel mean and std [14] of canonical latents (over all Gaussians of a training set), and the
    rasterizer filter they were all encoded under (what a generator trained on them must draw with)."""

    mean: torch.Tensor
    std: torch.Tensor
    count: int
    near_transparent_fraction: float
    raster: RasterConfig = RasterConfig()

    def standardize(self, latent: torch.Tensor) -> torch.Tensor:
        """[..., G, 14] canonical -> standardised (zero mean, unit std per channel)."""
        return (latent - self.mean.to(latent)) / self.std.to(latent)

    def destandardize(self, standardized: torch.Tensor) -> torch.Tensor:
        return standardized * self.std.to(standardized) + self.mean.to(standardized)

    def to_json(self) -> dict:
        return {"format": STATS_FORMAT, "version": STATS_VERSION, "channels": list(CHANNELS),
                "mean": self.mean.tolist(), "std": self.std.tolist(), "count": self.count,
                "near_transparent_fraction": self.near_transparent_fraction,
                "raster_filter": self.raster.filter_dict()}

    @staticmethod
    def from_json(data: dict, source: str = "statistics") -> "LatentStats":
        if not isinstance(data, dict) or data.get("format") != STATS_FORMAT:
            raise InputError(f"{source} is not a recon4d latent statistics file")
        if int(data.get("version", 0)) > STATS_VERSION:
            raise InputError(f"{source} has statistics format {data['version']}; this recon4d reads <= {STATS_VERSION}")
        try:
            mean, std = torch.tensor(data["mean"], dtype=torch.float32), torch.tensor(data["std"], dtype=torch.float32)
            stats = LatentStats(mean, std, int(data["count"]), float(data["near_transparent_fraction"]),
                                RasterConfig.from_filter(data.get("raster_filter")))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{source} lacks a valid mean/std ({exc})") from exc
        if mean.shape != (NUM_CHANNELS,) or std.shape != (NUM_CHANNELS,) or not bool((std > 0).all()):
            raise InputError(f"{source} holds statistics of the wrong shape or a zero std")
        return stats


NEAR_TRANSPARENT = 0.01  # opacity below which a Gaussian counts as near-transparent in the statistics
MIN_STD = 1e-3


def compute_stats(latents: list[torch.Tensor], raster: RasterConfig = RasterConfig()) -> LatentStats:
    """Statistics over a list of [G, 14] canonical latents, all encoded under `raster`."""
    rows = torch.cat(latents)
    std = rows.std(0).clamp_min(MIN_STD)
    transparent = float((torch.sigmoid(rows[:, OPACITY_CHANNEL]) < NEAR_TRANSPARENT).float().mean())
    return LatentStats(rows.mean(0), std, len(latents), transparent, raster)


def save_stats(stats: LatentStats, folder: Path) -> Path:
    path = folder / STATS_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(stats.to_json(), indent=1))
    return path


def load_stats(path: Path) -> LatentStats:
    if path.is_dir():
        path = path / STATS_FILE
    if not path.is_file():
        raise InputError(f"no latent statistics at {path}", hint="`recon4d gen encode` writes them beside the latents")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON") from exc
    return LatentStats.from_json(data, str(path))
