"""`recon4d gen corpus`: a captioned multi-view corpus of procedural objects, rendered exactly.

Layout of DIR:
    DIR/<object>/transforms.json   nerfstudio/Blender cameras (OpenGL camera-to-world) of the views
    DIR/<object>/images/NNN.png    RGBA views (straight alpha)
    DIR/<object>/caption.txt       one plain-English caption
    DIR/<object>/labels.json       attribute labels (shape, color, pattern, finish, size), seed and parts
    DIR/splits.json                train / val / test object names; test holds out whole colour x shape
                                   pairs (test_compositional) besides an in-distribution share
    DIR/corpus.json                the settings that made it
Users bring their own data in the same form: a folder of object folders with views + transforms.json +
caption.txt.
"""
from __future__ import annotations

import json
import logging
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from recon4d.errors import InputError
from recon4d.gen.objects import sample_object
from recon4d.gen.raycast import ShadingConfig, render_rgba
from recon4d.gen.views import ViewSet, intrinsics, orbit_poses, write_view_set
from recon4d.io.atomic import atomic_path

log = logging.getLogger(__name__)

CORPUS_FORMAT = "recon4d.gen.corpus"
CORPUS_VERSION = 2  # 2: achromatic colours no longer share a pattern's colour pair (objects.PATTERN_SECONDARY)
# colour x shape pairs that never appear in train/val: the compositional-generalisation test
HELDOUT_PAIRS = (("red", "cone"), ("blue", "torus"), ("green", "cube"), ("yellow", "capsule"),
                 ("purple", "sphere"), ("orange", "cylinder"), ("pink", "pyramid"), ("gray", "mug"),
                 ("brown", "snowman"), ("white", "lamp"))


@dataclass
class CorpusConfig:
    """How the corpus is drawn and rendered.

    Attributes:
        count: number of objects; seed: object i is drawn from seed * 1_000_003 + i.
        views: views per object (32: the encoder fits 27 of them, +0.6 dB held-out over 24 views); width, height:
            pixels; fov_x_deg: horizontal field of view.
        distance: camera distance from the object centre; elevations_deg: elevation bands of the orbit.
        val_share, test_share: in-distribution shares of the val and test splits.
    """

    count: int = 16
    seed: int = 0
    views: int = 32
    width: int = 64
    height: int = 64
    fov_x_deg: float = 40.0
    distance: float = 2.8
    elevations_deg: tuple[float, ...] = (-15.0, 10.0, 30.0, 55.0)
    val_share: float = 0.05
    test_share: float = 0.05
    shading: ShadingConfig = field(default_factory=ShadingConfig)


def object_name(index: int) -> str:
    return f"obj_{index:05d}"


def object_seed(config: CorpusConfig, index: int) -> int:
    return config.seed * 1_000_003 + index


def render_object_views(parts, config: CorpusConfig, azimuth_offset_deg: float = 0.0) -> ViewSet:
    """Ray-cast an object's parts from the corpus cameras -> ViewSet [V, H, W, 4]."""
    poses = orbit_poses(config.views, config.distance, config.elevations_deg, azimuth_offset_deg=azimuth_offset_deg)
    K = intrinsics(config.fov_x_deg, config.width, config.height)
    images = torch.stack([render_rgba(parts, pose, K, config.width, config.height, config.shading) for pose in poses])
    return ViewSet(images, poses, K.expand(config.views, 3, 3).clone())


def build_object(job: dict) -> str:
    """Render one object (a `recon4d.cluster` job: {"key", "folder", "seed", "config"}) into its folder.

    A complete folder (transforms.json is written last) is skipped. Returns the caption.
    """
    from recon4d.cluster import JobSkipped

    folder_path, seed = Path(job["folder"]), int(job["seed"])
    torch.set_num_threads(1)  # small images do not parallelise; several jobs at a time use the cores
    if (folder_path / "transforms.json").is_file() and (folder_path / "labels.json").is_file():
        raise JobSkipped("already rendered")
    spec = sample_object(seed)
    corpus_config = _config_from_dict(job["config"])
    azimuth = (zlib.crc32(folder_path.name.encode()) % 360) * 1.0  # objects are not all seen from the same angles
    folder_path.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder_path / "caption.txt") as tmp:
        tmp.write_text(spec.caption + "\n")
    labels = {**spec.labels, "seed": seed, "parts": [p.to_json() for p in spec.parts]}
    with atomic_path(folder_path / "labels.json") as tmp:
        tmp.write_text(json.dumps(labels, indent=1))
    # transforms.json is written last: a folder with it is a complete object for `gen encode`
    write_view_set(folder_path, render_object_views(spec.parts, corpus_config, azimuth))
    return spec.caption


def _config_from_dict(values: dict) -> CorpusConfig:
    values = dict(values)
    values["elevations_deg"] = tuple(values["elevations_deg"])
    values["shading"] = ShadingConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values["shading"].items()})
    return CorpusConfig(**values)


def assign_split(name: str, labels: dict, config: CorpusConfig) -> str:
    """train | val | test | test_compositional for one object (deterministic from its name and labels)."""
    if (labels["color"], labels["shape"]) in HELDOUT_PAIRS:
        return "test_compositional"
    draw = (zlib.crc32(f"{config.seed}/{name}".encode()) % 10_000) / 10_000
    if draw < config.test_share:
        return "test"
    if draw < config.test_share + config.val_share:
        return "val"
    return "train"


def make_splits(names_and_labels: list[tuple[str, dict]], config: CorpusConfig) -> dict:
    """splits.json content: object names per split and the held-out colour x shape pairs."""
    splits: dict = {"train": [], "val": [], "test": [], "test_compositional": []}
    for name, labels in names_and_labels:
        splits[assign_split(name, labels, config)].append(name)
    return {"format": CORPUS_FORMAT, "version": CORPUS_VERSION, **splits,
            "heldout_pairs": [list(p) for p in HELDOUT_PAIRS]}


def build_corpus(out: Path, config: CorpusConfig, *, address: str | None = None, workers: int = 1) -> dict:
    """Render config.count objects into `out` (resumable: complete objects are kept) and write splits.json.

    Returns a summary: counts per split, failed objects.
    """
    from recon4d.cluster import run_jobs

    if config.count < 1:
        raise InputError(f"--count must be at least 1, got {config.count}")
    out.mkdir(parents=True, exist_ok=True)
    settings = asdict(config)
    with atomic_path(out / "corpus.json") as tmp:
        tmp.write_text(json.dumps({"format": CORPUS_FORMAT, "version": CORPUS_VERSION, "config": settings}, indent=1))
    jobs = [{"key": object_name(i), "folder": str(out / object_name(i)), "seed": object_seed(config, i),
             "config": settings} for i in range(config.count)]
    results = run_jobs(build_object, jobs, address=address, workers=workers, max_retries=1,
                       description="rendering corpus")
    for result in results:
        if result.status == "failed":
            log.error("object %s failed: %s", result.key, result.error)
    done = [(r.key, json.loads((out / r.key / "labels.json").read_text())) for r in results if r.status != "failed"]
    splits = make_splits(done, config)
    with atomic_path(out / "splits.json") as tmp:
        tmp.write_text(json.dumps(splits, indent=1))
    rendered = [r.seconds for r in results if r.status == "ok"]
    return {"objects": len(done), "rendered": len(rendered), "failed": [{"object": r.key, "error": r.error}
            for r in results if r.status == "failed"],
            **{k: len(splits[k]) for k in ("train", "val", "test", "test_compositional")},
            "seconds_per_object": sum(rendered) / max(len(rendered), 1)}

