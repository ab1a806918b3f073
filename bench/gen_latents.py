"""Scene-latent benchmark: encoding fidelity at held-out views, speed, projections, latent statistics, G.

    .venv/bin/python bench/gen_latents.py --corpus out/gen_ship/corpus --latents out/gen_ship/latents
    .venv/bin/python bench/gen_latents.py --work out/bench_latents --count 200   # builds both first

Fidelity is PSNR/SSIM (composited on white) and silhouette IoU of the decoded latent rendered at the views
the encoder never saw (every 6th). Seconds are CPU seconds of the encoding process (robust to a busy
machine) next to wall seconds; projections assume one object per core.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from table import print_markdown_table  # noqa: E402

from recon4d.gen.corpus import CorpusConfig, build_corpus, render_object_views  # noqa: E402
from recon4d.gen.encode import EncodeConfig, composite, encode_views  # noqa: E402
from recon4d.gen.encode_batch import encode_corpus  # noqa: E402
from recon4d.gen.latents import (CHANNELS, LATENT_SUFFIX, latent_files, latent_raster, load_latent,  # noqa: E402
                                 load_stats, spatial_weight, to_gaussians)
from recon4d.fit.pyramid import area_downsample  # noqa: E402
from recon4d.geometry import invert_pose  # noqa: E402
from recon4d.geometry.camera import scale_camera_matrix  # noqa: E402
from recon4d.image import psnr as image_psnr  # noqa: E402
from recon4d.render import RasterConfig, rasterize  # noqa: E402
from recon4d.gen.objects import sample_object  # noqa: E402
from recon4d.gen.views import read_view_set  # noqa: E402

TARGET_OBJECTS = 5000
TARGET_HOURS = 4.0
FINE_FACTOR = 4  # the larger screen of the scale-consistency column


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))]


def filter_name(raster: RasterConfig) -> str:
    return f"{'antialiased' if raster.antialiased else 'classic'} {raster.eps2d:g}"


def fine_psnr(corpus: Path, latents: Path, names: list[str], factor: int = FINE_FACTOR) -> list[float]:
    """Held-out PSNR of latents drawn at `factor` x the views' size with the classic 0.3 filter and box-averaged
    down: what a standard 3DGS viewer shows on a screen larger than the corpus views (no per-size filter)."""
    torch.set_num_threads(1)
    values = []
    white = torch.ones(3)
    for name in names:
        latent, views = load_latent(latents / f"{name}{LATENT_SUFFIX}"), read_view_set(corpus / name)
        g = to_gaussians(latent.gaussians, latent.center, latent.radius)
        for i in latent.info["metrics"]["holdout_views"]:
            with torch.no_grad():
                out = rasterize(g.means, g.quats, g.scales, g.opacities, g.colors, invert_pose(views.world_from_camera[i]),
                                scale_camera_matrix(views.K[i], factor, factor), views.width * factor,
                                views.height * factor, background=white)
            fine = area_downsample(out.color[None], factor)[0]
            values.append(image_psnr(fine.clamp(0, 1), composite(views.images[i], white)))
    return values


def fidelity_rows(latents: Path, corpus: Path, fine_objects: int) -> tuple[list[dict], list[dict]]:
    """Held-out fidelity and encoding seconds, one row per encoder step count and rasterizer filter found in
    encode.json (latents written before these were recorded used 150 steps and the classic filter)."""
    records = json.loads((latents / "encode.json").read_text())["objects"]
    filters = {path.stem: filter_name(latent_raster(load_latent(path).info)) for path in latent_files(latents)}
    groups: dict[tuple[int, str], dict[str, dict]] = {}
    for name, metrics in records.items():
        if "heldout_psnr" in metrics:
            groups.setdefault((int(metrics.get("steps", 150)), filters.get(name, "classic 0.3")), {})[name] = metrics
    fidelity, speed = [], []
    for (steps, raster), named in sorted(groups.items(), reverse=True):
        metrics = list(named.values())
        psnr = [m["heldout_psnr"] for m in metrics]
        classic = [m.get("heldout_psnr_classic_raster", m["heldout_psnr"]) for m in metrics]
        fine = fine_psnr(corpus, latents, sorted(named)[:fine_objects]) if fine_objects else []
        ssim = [m["heldout_ssim"] for m in metrics]
        iou = [m["heldout_iou"] for m in metrics]
        cpu = [m["cpu_seconds"] for m in metrics if "cpu_seconds" in m]
        wall = [m["seconds"] for m in metrics]
        fidelity.append({"encoder_steps": steps, "filter": raster, "objects": len(metrics),
                         "psnr_mean": sum(psnr) / len(psnr), "psnr_p5": percentile(psnr, 0.05),
                         "ssim_mean": sum(ssim) / len(ssim), "ssim_p5": percentile(ssim, 0.05),
                         "iou_mean": sum(iou) / len(iou), "psnr_classic_1x": sum(classic) / len(classic),
                         f"psnr_classic_{FINE_FACTOR}x": sum(fine) / len(fine) if fine else float("nan"),
                         "goal_30dB": "met" if sum(psnr) / len(psnr) >= 30 else "not met"})
        speed.append({"what": f"encode ({steps} steps)", "cpu_s_per_object": sum(cpu) / max(len(cpu), 1),
                      "wall_s_per_object": sum(wall) / len(wall)})
    return fidelity, speed


def render_seconds(count: int = 6) -> float:
    """CPU seconds to ray-cast one corpus object (24 views, 64x64, 2x2 supersampling)."""
    torch.set_num_threads(1)
    start = time.process_time()
    for seed in range(count):
        render_object_views(sample_object(10_000 + seed).parts, CorpusConfig())
    return (time.process_time() - start) / count


def stats_rows(latents: Path) -> list[dict]:
    stats = load_stats(latents)
    raw = torch.stack([load_latent(f).gaussians for f in latent_files(latents)])
    standardized = stats.standardize(raw).reshape(-1, len(CHANNELS))
    rows = [{"channel": name, "raw_mean": float(raw[..., i].mean()), "raw_std": float(raw[..., i].std()),
             "std_mean": float(standardized[:, i].mean()), "std_std": float(standardized[:, i].std())}
            for i, name in enumerate(CHANNELS)]
    weight = spatial_weight(raw)
    rows.append({"channel": "opacity<0.01 share", "raw_mean": float((torch.sigmoid(raw[..., 10]) < 0.01).float().mean())})
    rows.append({"channel": "spatial weight", "raw_mean": float(weight.mean()), "raw_std": float(weight.std())})
    return rows


def gaussian_count_rows(corpus: Path, objects: int, sizes: tuple[int, ...]) -> list[dict]:
    """Held-out PSNR and CPU seconds per object at several G on the same objects."""
    folders = sorted(p for p in corpus.iterdir() if (p / "transforms.json").is_file())
    chosen = random.Random(0).sample(folders, min(objects, len(folders)))
    rows = []
    torch.set_num_threads(1)
    for g in sizes:
        psnr, cpu = [], []
        for folder in chosen:
            start = time.process_time()
            latent = encode_views(read_view_set(folder), EncodeConfig(num_gaussians=g))
            cpu.append(time.process_time() - start)
            psnr.append(latent.info["metrics"]["heldout_psnr"])
        rows.append({"G": g, "objects": len(chosen), "psnr_mean": sum(psnr) / len(psnr), "psnr_p5": percentile(psnr, 0.05),
                     "cpu_s_per_object": sum(cpu) / len(cpu), "latent_floats": g * len(CHANNELS)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=None)
    parser.add_argument("--latents", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("out/bench_latents"), help="where to build when not given")
    parser.add_argument("--count", type=int, default=200, help="objects to build when --corpus is not given")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--g-objects", type=int, default=12, help="objects of the G ablation (0: skip)")
    parser.add_argument("--fine-objects", type=int, default=50,
                        help=f"objects also drawn at {FINE_FACTOR}x with the classic filter (0: skip)")
    args = parser.parse_args()
    corpus = args.corpus or args.work / "corpus"
    latents = args.latents or args.work / "latents"
    if args.corpus is None:
        build_corpus(corpus, CorpusConfig(count=args.count), workers=args.workers)
    if args.latents is None:
        encode_corpus(corpus, latents, EncodeConfig(), workers=args.workers)
    fidelity, speed = fidelity_rows(latents, corpus, args.fine_objects)
    render = render_seconds()
    encode = speed[0]["cpu_s_per_object"]  # the most steps: the default encoder
    cores = os.cpu_count() or 1
    per_object = render + encode
    speed.insert(0, {"what": "corpus render", "cpu_s_per_object": render})
    speed.append({"what": f"render + encode ({fidelity[0]['encoder_steps']} steps)", "cpu_s_per_object": per_object,
                  "objects_per_hour_all_cores": 3600 * cores / per_object,
                  "hours_for_5000": TARGET_OBJECTS * per_object / cores / 3600})
    print(f"## Encoding fidelity at held-out views ({latents})\n")
    print_markdown_table(fidelity, ["encoder_steps", "filter", "objects", "psnr_mean", "psnr_p5", "ssim_mean", "ssim_p5",
                                    "iou_mean", "psnr_classic_1x", f"psnr_classic_{FINE_FACTOR}x", "goal_30dB"],
                         key="encoder_steps")
    print(f"\n## Speed ({cores} cores; goal <= 3 s/object, 5000 objects <= {TARGET_HOURS} h)\n")
    print_markdown_table(speed, ["what", "cpu_s_per_object", "wall_s_per_object", "objects_per_hour_all_cores",
                                 "hours_for_5000"], key="what")
    print("\n## Latent statistics (raw canonical channels and after standardisation)\n")
    print_markdown_table(stats_rows(latents), ["channel", "raw_mean", "raw_std", "std_mean", "std_std"], key="channel")
    if args.g_objects:
        print("\n## Gaussians per object (same objects, default encoder otherwise)\n")
        print_markdown_table(gaussian_count_rows(corpus, args.g_objects, (512, 1024, 2048)),
                             ["G", "objects", "psnr_mean", "psnr_p5", "cpu_s_per_object", "latent_floats"], key="G")
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
