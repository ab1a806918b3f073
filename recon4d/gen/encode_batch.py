"""`recon4d gen encode`: many objects to latent files in parallel, resumable, plus statistics and a contact
sheet; or the moving object / still part of a `recon4d fit` result to one latent.

Output folder:
    LATENTS/<object>.r4dlat   one latent per object (same stem as its folder)
    LATENTS/stats.json        per-channel standardisation statistics (train split when the corpus has one)
    LATENTS/encode.json       per-object metrics (held-out PSNR/SSIM/IoU, seconds) and failures
    LATENTS/contact.png       random objects: ground-truth held-out view | decoded latent at that view
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict
from pathlib import Path

import torch

from recon4d.errors import InputError
from recon4d.gen.corpus import CorpusConfig
from recon4d.gen.decode import PreviewConfig, contact_sheet, write_png
from recon4d.gen.encode import EncodeConfig, composite, encode_views
from recon4d.gen.latents import (LATENT_SUFFIX, compute_stats, latent_files, latent_raster, load_latent, save_latent,
                                 save_stats, to_gaussians)
from recon4d.gen.sources import corpus_objects, is_fit_dir, object_info, select_gaussians, train_names, views_of_fit
from recon4d.gen.views import read_view_set
from recon4d.geometry import invert_pose
from recon4d.io.atomic import atomic_path
from recon4d.io.scene import load_scene
from recon4d.render import rasterize

log = logging.getLogger(__name__)
CONTACT_OBJECTS = 8


def encode_object(job: dict) -> dict:
    """One object folder -> one latent file (a `recon4d.cluster` job: {"key", "folder", "out", "config"}).

    Skips an object whose latent exists. Returns the encoding metrics.
    """
    from recon4d.cluster import JobSkipped

    out = Path(job["out"])
    torch.set_num_threads(1)  # small images do not parallelise; several jobs at a time use the cores
    if out.is_file():
        raise JobSkipped("already encoded")
    folder = Path(job["folder"])
    latent = encode_views(read_view_set(folder), EncodeConfig(**job["config"]), object_info(folder))
    save_latent(latent, out)
    return latent.info["metrics"]


def encode_corpus(source: Path, out: Path, config: EncodeConfig, *, address: str | None = None,
                  workers: int = 1) -> dict:
    """Encode every object folder of `source` into `out`; write stats.json, encode.json and contact.png."""
    from recon4d.cluster import run_jobs

    objects = corpus_objects(source)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [{"key": folder.name, "folder": str(folder), "out": str(out / f"{folder.name}{LATENT_SUFFIX}"),
             "config": asdict(config)} for folder in objects]
    results = run_jobs(encode_object, jobs, address=address, workers=workers, max_retries=1,
                       description="encoding objects")
    failed = {r.key: r.error for r in results if r.status == "failed"}
    for key, error in failed.items():
        log.error("object %s failed: %s", key, error)
    summary = summarize(out, train_names(source if len(objects) > 1 else source.parent), failed)
    write_contact_sheet(out, {folder.name: folder for folder in objects})
    return summary


def summarize(out: Path, train: set[str] | None, failed: dict[str, str]) -> dict:
    """Statistics over the encoded latents (train split if known) and per-object metrics -> files + summary."""
    latents = {path.stem: load_latent(path) for path in latent_files(out)}
    if not latents:
        raise InputError(f"no object could be encoded into {out}", hint=f"first failure: {next(iter(failed.values()), '')}")
    chosen = [lat.gaussians for name, lat in latents.items() if train is None or name in train] or \
        [lat.gaussians for lat in latents.values()]
    filters = {json.dumps(latent_raster(lat.info).filter_dict(), sort_keys=True) for lat in latents.values()}
    if len(filters) > 1:  # e.g. a resumed run of a newer encoder over older latents
        raise InputError(f"the latents in {out} were encoded under different rasterizer filters {sorted(filters)}",
                         hint="encode into a fresh folder")
    stats = compute_stats(chosen, latent_raster(next(iter(latents.values())).info))
    save_stats(stats, out)
    metrics = {name: lat.info.get("metrics", {}) for name, lat in latents.items()}
    psnrs = sorted(m["heldout_psnr"] for m in metrics.values() if "heldout_psnr" in m)
    summary = {"encoded": len(latents), "failed": failed, "stats_objects": len(chosen),
               "heldout_psnr_mean": sum(psnrs) / len(psnrs) if psnrs else None,
               "heldout_psnr_p5": psnrs[int(0.05 * (len(psnrs) - 1))] if psnrs else None,
               "near_transparent_fraction": stats.near_transparent_fraction}
    with atomic_path(out / "encode.json") as tmp:
        tmp.write_text(json.dumps({**summary, "objects": metrics}, indent=1))
    return summary


def write_contact_sheet(out: Path, folders: dict[str, Path], seed: int = 0) -> None:
    """contact.png: for random objects, each held-out ground-truth view beside the decoded latent's render."""
    names = sorted(n for n in folders if (out / f"{n}{LATENT_SUFFIX}").is_file())
    rows = []
    for name in random.Random(seed).sample(names, min(CONTACT_OBJECTS, len(names))):
        latent = load_latent(out / f"{name}{LATENT_SUFFIX}")
        views = read_view_set(folders[name])
        gaussians = to_gaussians(latent.gaussians, latent.center, latent.radius)
        row = []
        for index in latent.info["metrics"].get("holdout_views", [0])[:3]:
            with torch.no_grad():
                rendered = rasterize(gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities,
                                     gaussians.colors, invert_pose(views.world_from_camera[index]), views.K[index],
                                     views.width, views.height, background=torch.ones(3),
                                     config=latent_raster(latent.info)).color.clamp(0, 1)
            row += [composite(views.images[index], torch.ones(3)), rendered]
        rows.append(torch.stack(row))
    if rows:
        write_png(out / "contact.png", contact_sheet(rows))


def encode_fit(fit_dir: Path, out: Path, config: EncodeConfig, which: str, time: float) -> Path:
    """The moving object / still part / everything of a fit at `time` -> OUT/<fit name>_<which>.r4dlat."""
    scene = load_scene(fit_dir)
    select_gaussians(scene, which, time)  # validate before the heavy work
    size = CorpusConfig.width  # the corpus's views, so that a user's object joins the corpus's latents
    views, info = views_of_fit(scene, which, time, PreviewConfig(frames=CorpusConfig.views, width=size, height=size))
    source = fit_dir if fit_dir.is_dir() else fit_dir.parent
    latent = encode_views(views, config, {"source": str(source), "name": source.name, **info})
    path = out / f"{source.name}_{which}{LATENT_SUFFIX}"
    save_latent(latent, path)
    return path


def encode_any(source: Path, out: Path, config: EncodeConfig, *, which: str = "moving", time: float = 0.0,
               address: str | None = None, workers: int = 1) -> dict:
    """Dispatch on what `source` is: a fit directory/scene file, or a corpus/object folder."""
    if not source.exists():
        raise InputError(f"{source} does not exist")
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a directory")
    if is_fit_dir(source):
        path = encode_fit(source, out, config, which, time)
        return {"encoded": 1, "latent": str(path), "metrics": load_latent(path).info["metrics"]}
    return encode_corpus(source, out, config, address=address, workers=workers)
