"""Benchmark of the shipped GNT models (recon4d/nerf/models): zero-shot and 3-shot quality on scenes never
trained on, speed, and the NeRFool attack with the purification defence.

Usage: python bench/nerf.py [--short-side 48] [--test-scenes 4] [--attack-steps 5] [--models DIR]

Test data: procedural scenes with seeds >= recon4d.nerf.gnt.ship.TEST_SEED_START (the shipped models saw
seeds 0..63) and NeRF-synthetic lego (../shared/data, CC-BY-3.0; never trained on), at --short-side pixels.
Held-out views: i % 8 == 7; sources: the other views. Metrics: PSNR and SSIM (Gaussian window; LPIPS needs a
downloaded backbone, so it is not reported). "nearest" is the nearest source image copied as the answer.
ms/frame and rays/s are wall time of one held-out render on this machine's CPU (shared and noisy: see the
load average printed below); peak RSS is the process maximum.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch
from table import print_markdown_table  # bench/table.py (scripts run from bench/)

from recon4d.nerf.data import load_posed_images
from recon4d.nerf.gnt.attack import AttackConfig, attack
from recon4d.nerf.gnt.checkpoint import SHIPPED, load_model, read_model_json
from recon4d.nerf.gnt.evaluate import evaluate, split_views
from recon4d.nerf.gnt.procedural import SceneSpec, render_scene
from recon4d.nerf.gnt.render import render_view
from recon4d.nerf.gnt.ship import TEST_SEED_START

LEGO = Path(__file__).resolve().parents[2] / "shared" / "data" / "nerf-synthetic-lego"
HOLDOUT_EVERY = 8


def _datasets(short_side: int, test_scenes: int) -> dict:
    spec = SceneSpec(views=16, size=short_side)
    sets = {f"procedural-{seed}": render_scene(seed, spec) for seed in range(TEST_SEED_START, TEST_SEED_START + test_scenes)}
    if LEGO.is_dir():
        sets["lego"] = load_posed_images(LEGO, short_side=short_side)
    return sets


def _ms_per_frame(model, data, held: int, sources: list[int]) -> float:
    pool = data.subset(sources)
    started = time.perf_counter()
    render_view(model, pool, data.world_from_camera[held], data.intrinsics[held], data.width, data.height)
    return 1000 * (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short-side", type=int, default=48)
    parser.add_argument("--test-scenes", type=int, default=4)
    parser.add_argument("--attack-steps", type=int, default=5)
    parser.add_argument("--models", type=Path, default=None, help="folder with gnt_move.* and gnt_dense.* (default: shipped)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    moe_path = args.models / "gnt_move.safetensors" if args.models else SHIPPED["moe"]
    dense_path = args.models / "gnt_dense.safetensors" if args.models else SHIPPED["dense"]
    moe, _ = load_model(moe_path)
    dense, _ = load_model(dense_path)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}")
    for name, path in (("GNT-MOVE", moe_path), ("dense GNT", dense_path)):
        info = read_model_json(path)
        last = info.get("last", {})
        size = path.stat().st_size / 1e6
        params = sum(p.numel() for p in (moe if name == "GNT-MOVE" else dense).parameters())
        print(f"{name}: {size:.2f} MB, {params} parameters, trained {info.get('step')} steps in "
              f"{last.get('seconds')} s (training held-out PSNR {last.get('held_out_psnr')})")
    rows, attack_rows = [], []
    for name, data in _datasets(args.short_side, args.test_scenes).items():
        held, sources = split_views(len(data), HOLDOUT_EVERY, None)
        zero = evaluate(moe, data, held, sources, baseline=dense)
        few = evaluate(moe, data, held, sources, shots=3, baseline=dense)
        rows.append({"scene": name, "res": f"{data.width}x{data.height}", "held": len(held),
                     "moe_psnr": zero["psnr"], "dense_psnr": zero["dense_psnr"], "nearest_psnr": zero["nearest_view_psnr"],
                     "moe_ssim": zero["ssim"], "dense_ssim": zero["dense_ssim"], "nearest_ssim": zero["nearest_view_ssim"],
                     "moe_3shot": few["psnr"], "dense_3shot": few["dense_psnr"], "nearest_3shot": few["nearest_view_psnr"],
                     "moe_ms": _ms_per_frame(moe, data, held[0], sources), "dense_ms": _ms_per_frame(dense, data, held[0], sources)})
        rows[-1]["moe_rays_s"] = data.width * data.height / rows[-1]["moe_ms"] * 1000
        result = attack(moe, data, held[:2], sources, AttackConfig(steps=args.attack_steps))
        attack_rows.append({"scene": name, "eps": "8/255", "clean": result["clean_psnr"], "attacked": result["attacked_psnr"],
                            "drop": result["psnr_drop"], "defended_clean": result["defended_clean_psnr"],
                            "defended_attacked": result["defended_attacked_psnr"],
                            "clean_cost": result["defence_clean_cost"], "recovery": result["defence_recovery"],
                            "max_delta": result["max_abs_perturbation"] * 255})
    mean = {"scene": "mean"}
    for key in rows[0]:
        if isinstance(rows[0][key], float):
            mean[key] = sum(r[key] for r in rows) / len(rows)
    rows.append(mean)
    print("\nZero-shot and 3-shot quality (PSNR dB / SSIM), speed on CPU")
    print_markdown_table(rows, ["scene", "res", "held", "moe_psnr", "dense_psnr", "nearest_psnr", "moe_ssim", "dense_ssim",
                                "nearest_ssim", "moe_3shot", "dense_3shot", "nearest_3shot", "moe_ms", "dense_ms",
                                "moe_rays_s"], key="scene")
    print("\nNeRFool on GNT-MOVE (view-specific PGD, both paths, adaptive attack on the blur defence; PSNR dB, max_delta in 1/255)")
    print_markdown_table(attack_rows, ["scene", "eps", "clean", "attacked", "drop", "defended_clean", "defended_attacked",
                                       "clean_cost", "recovery", "max_delta"], key="scene")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak_mb:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps({"quality": rows, "attack": attack_rows, "peak_rss_mb": peak_mb}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
