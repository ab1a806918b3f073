"""Training data of the generator: standardised latents, their spatial weights and caption embeddings.

`FlowData` holds everything in memory (a corpus of thousands of 1024 x 14 latents is tens of MB). For
reflow and distillation it also holds the fixed noise x0 paired with each target.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from recon4d.errors import InputError
from recon4d.gen.latents import LatentStats, latent_files, load_latent, load_stats, spatial_weight
from recon4d.gen.text import TextEncoder, collate

UNCONDITIONAL = ""  # the caption of classifier-free guidance's unconditional branch


@dataclass
class FlowData:
    """Targets and conditions.

    Attributes:
        x1: [N, G, C] standardised latents (the flow's t = 1 end).
        weight: [N, G] per-Gaussian loss weights.
        caption_index: [N] index into `captions`.
        captions: distinct captions; the last one is UNCONDITIONAL.
        x0: [N, G, C] fixed noise paired with x1 (reflow/distillation), or None (fresh noise each step).
        names: object names (for splits and reports).
    """

    x1: torch.Tensor
    weight: torch.Tensor
    caption_index: torch.Tensor
    captions: list[str]
    x0: torch.Tensor | None = None
    names: list[str] | None = None

    def __len__(self) -> int:
        return self.x1.shape[0]

    def to(self, device: torch.device) -> "FlowData":
        """The tensors on `device` (captions and names stay)."""
        return replace(self, x1=self.x1.to(device), weight=self.weight.to(device),
                       caption_index=self.caption_index.to(device), x0=None if self.x0 is None else self.x0.to(device))

    @property
    def unconditional_index(self) -> int:
        return len(self.captions) - 1


@dataclass
class TextTable:
    """Embeddings of all captions of a FlowData: tokens [K, L, D], mask [K, L], pooled [K, D]."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.tokens[index], self.mask[index], self.pooled[index]

    def to(self, device: torch.device) -> "TextTable":
        return TextTable(self.tokens.to(device), self.mask.to(device), self.pooled.to(device))


def text_table(encoder: TextEncoder, captions: list[str]) -> TextTable:
    return TextTable(*collate(encoder.embed(captions)))


def split_names(latents_dir: Path, split_file: Path | None, split: str) -> set[str] | None:
    """Names in `split` of the corpus splits file (given, or found beside the latents' source corpus)."""
    if split_file is None:
        files = latent_files(latents_dir)
        if not files:
            return None
        source = Path(load_latent(files[0]).info.get("source", ""))
        candidate = source.parent / "splits.json"
        split_file = candidate if candidate.is_file() else None
    if split_file is None:
        return None
    try:
        return set(json.loads(split_file.read_text())[split])
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read split {split!r} from {split_file} ({exc})") from exc


def load_flow_data(latents_dir: Path, names: set[str] | None = None, stats: LatentStats | None = None,
                   num_gaussians: int | None = None) -> tuple[FlowData, LatentStats]:
    """Latents of a folder (only `names` when given), standardised by its stats.json (or `stats`)."""
    files = [f for f in latent_files(latents_dir) if names is None or f.stem in names]
    if not files:
        raise InputError(f"no latents in {latents_dir}" + (" for the chosen split" if names is not None else ""),
                         hint="make them with `recon4d gen encode CORPUS -o LATENTS`")
    stats = stats or load_stats(latents_dir)
    latents = [load_latent(f) for f in files]
    sizes = {lat.gaussians.shape[0] for lat in latents}
    if len(sizes) != 1 or (num_gaussians is not None and sizes != {num_gaussians}):
        raise InputError(f"latents in {latents_dir} have {sorted(sizes)} Gaussians; one size is needed"
                         + (f" ({num_gaussians})" if num_gaussians else ""))
    raw = torch.stack([lat.gaussians for lat in latents])
    captions = sorted({lat.caption for lat in latents}) + [UNCONDITIONAL]
    lookup = {c: i for i, c in enumerate(captions)}
    data = FlowData(x1=stats.standardize(raw), weight=spatial_weight(raw),
                    caption_index=torch.tensor([lookup[lat.caption] for lat in latents]), captions=captions,
                    names=[f.stem for f in files])
    return data, stats
