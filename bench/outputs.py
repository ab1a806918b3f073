"""Benchmark of the scene outputs: point tracks and masks against synthetic ground truth, and the time of
`recon4d track`, `recon4d render` and `recon4d export --format mesh` on fitted clips.

Usage: python bench/outputs.py [--synthetic translate,static] [--frames 16] [--preset fast]
       [--real bear] [--real-frames 10] [--out /tmp/recon4d-bench-outputs] [--reuse-fits]
       python bench/outputs.py --mesh-scene OUT [--mesh-frames 70] [--mesh-split]

Synthetic clips (recon4d.eval.synthetic, 160x90) are fitted with `recon4d fit --preset fast` in a subprocess.
Their ground-truth tracks (256 points picked on frame 0, scaled to the fitted resolution) are the queries of
`recon4d.export.tracks.export_tracks`; the table reports the median 2D error over the frames where the true
point is visible, the share within 2 px, and visibility accuracy over all (frame, point) entries
(`recon4d.eval.metrics.track_errors`), plus moving-mask IoU and camera ATE from `recon4d eval`. fit_s is the
fit's own total from metrics.json; the output commands are timed as subprocesses (wall seconds, including
~3 s of Python/torch start-up).

`--mesh-scene OUT` instead meshes the first `--mesh-frames` frames of an existing fit as a clip export does
(`recon4d.export.mesh.export_meshes`, in this process; `--mesh-split`: as `recon4d export --split` does) and
prints one row: wall seconds per frame against the fit's own seconds per frame (metrics.json), of them the
windows' shared planning and still parts in all (shared_s) and the rest per frame, megabytes written
per frame (all files) and triangles per frame's mesh, and the process's peak RSS (the scene loaded included).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from table import print_markdown_table  # bench/table.py (scripts run from bench/)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_CLIPS = {
    "bear": SHARED / "davis-cotracker" / "bear.mp4",
    "apple": SHARED / "davis-cotracker" / "apple.mp4",
    "cup": SHARED / "opencv-doc" / "cup.mp4",
}
ENV = {**os.environ, "RECON4D_NO_PROGRESS": "1"}


def run(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    """Run `recon4d ARGS` -> (wall seconds, result); raises with the last stderr line on failure."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "recon4d", *args], capture_output=True, text=True, env=ENV,
                            check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise RuntimeError(f"recon4d {' '.join(args)} failed: {lines[-1] if lines else result.returncode}")
    return seconds, result


def fit(source: Path, out: Path, args: argparse.Namespace, frames: int) -> float:
    """Fit (or, with --reuse-fits, keep an existing OUT) -> the fit's own total seconds from metrics.json."""
    if not (args.reuse_fits and (out / "scene.r4d").is_file()):
        run("fit", str(source), "--out", str(out), "--preset", args.preset, "--max-frames", str(frames), "--restart")
    return float(json.loads((out / "metrics.json").read_text())["seconds_total"])


def output_timings(out: Path) -> dict:
    """Wall seconds of the track, render and mesh commands on a fitted OUT."""
    row = {}
    row["track_s"], _ = run("track", str(out), "--grid", "10")
    row["render_orbit_s"], _ = run("render", str(out), "--path", "orbit", "--depth")
    row["render_bullet_s"], _ = run("render", str(out), "--path", "bullet-time", "--motion")
    row["mesh_s"], _ = run("export", str(out), "--format", "mesh", "--frame", "0")
    return row


def synthetic_row(variant: str, args: argparse.Namespace) -> dict:
    from recon4d.eval.metrics import track_errors
    from recon4d.eval.synthetic import (
        load_ground_truth,
        make_synthetic,
        write_synthetic,
    )
    from recon4d.export.tracks import export_tracks
    from recon4d.io.scene import load_scene

    gt_dir, out = args.out / f"syn-{variant}_gt", args.out / f"syn-{variant}"
    write_synthetic(make_synthetic(variant, num_frames=args.frames, width=160, height=90, seed=0), gt_dir)
    row = {"clip": f"syn-{variant}", "fit_s": fit(gt_dir / "video.mp4", out, args, args.frames)}
    scene, gt = load_scene(out), load_ground_truth(gt_dir)
    width, height = scene.cameras.width, scene.cameras.height
    num_frames = scene.num_frames
    scale = np.array([width / gt.depth.shape[2], height / gt.depth.shape[1]])
    gt_uv = (gt.tracks_2d[:num_frames] + 0.5) * scale - 0.5  # pixel centres stay centres under resizing
    queries = np.concatenate([np.zeros((gt_uv.shape[1], 1)), gt_uv[0]], 1).astype(np.float32)
    start = time.perf_counter()
    paths = export_tracks(scene, out / "gt_tracks", queries)
    row["export_tracks_s"] = time.perf_counter() - start
    with np.load(paths["npz"]) as data:
        uv, visible = data["uv"], data["visible"]
    gt_visible = gt.track_visible[:num_frames]
    errors = track_errors(uv, gt_uv, gt_visible, visible)
    moving = np.asarray(gt.moving_mask[0])[np.round(gt.tracks_2d[0, :, 1]).astype(int),
                                           np.round(gt.tracks_2d[0, :, 0]).astype(int)]
    on_moving = track_errors(uv[:, moving], gt_uv[:, moving], gt_visible[:, moving]) \
        if moving.any() else {"median_px": float("nan")}
    row.update({"frames": num_frames, "size": f"{width}x{height}", "track_median_px": errors["median_px"],
                "track_moving_median_px": on_moving["median_px"], "track_within_2px": errors["within_2px"],
                "visibility_acc": errors["visibility_accuracy"]})
    _, result = run("eval", str(out), "--gt", str(gt_dir), "--json")
    evaluation = json.loads(result.stdout)
    row.update({"mask_iou": evaluation.get("mask_iou"), "ate_percent": evaluation.get("ate_percent")})
    row.update(output_timings(out))
    return row


def real_row(name: str, args: argparse.Namespace) -> dict:
    from recon4d.io.scene import load_scene

    out = args.out / name
    row = {"clip": name, "fit_s": fit(REAL_CLIPS[name], out, args, args.real_frames)}
    scene = load_scene(out)
    row.update({"frames": scene.num_frames, "size": f"{scene.cameras.width}x{scene.cameras.height}"})
    row.update(output_timings(out))
    return row


def mesh_clip_row(out: Path, frames: int, split: bool = False) -> dict:
    """A clip mesh export of the first `frames` frames of the fit in `out` (see the module docstring)."""
    from recon4d.export.mesh import export_meshes
    from recon4d.io.scene import load_scene

    scene = load_scene(out)
    frames = min(frames, scene.num_frames)
    fit_seconds = float(json.loads((out / "metrics.json").read_text())["seconds_total"])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        stats = export_meshes(scene, tmp, list(range(frames)), split=split)
        seconds = time.perf_counter() - start
        megabytes = sum(path.stat().st_size for path in Path(tmp).iterdir()) / 2**20
    shared = sum(s.shared_seconds for s in stats)
    return {"scene": str(out), "layout": "split" if split else "whole", "frames": frames,
            "windows": len({scene.window_at(t) for t in range(frames)}),
            "mesh_s_per_frame": seconds / frames, "fit_s_per_frame": fit_seconds / scene.num_frames,
            "shared_s": shared, "moving_s_per_frame": (seconds - shared) / frames,
            "mb_per_frame": megabytes / frames, "triangles_per_mesh": float(np.mean([s.num_triangles for s in stats])),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", default="translate,static")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--real", default="bear")
    parser.add_argument("--real-frames", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("/tmp/recon4d-bench-outputs"))
    parser.add_argument("--reuse-fits", action="store_true", help="keep fits already in --out (same settings)")
    parser.add_argument("--mesh-scene", type=Path, help="only time a clip mesh export of this fitted OUT")
    parser.add_argument("--mesh-frames", type=int, default=70)
    parser.add_argument("--mesh-split", action="store_true", help="with --mesh-scene: the split layout")
    args = parser.parse_args()
    if args.mesh_scene:
        row = mesh_clip_row(args.mesh_scene, args.mesh_frames, args.mesh_split)
        print_markdown_table([row], list(row))
        return
    rows = []
    jobs = [(synthetic_row, v) for v in filter(None, args.synthetic.split(","))]
    jobs += [(real_row, c) for c in filter(None, args.real.split(","))]
    for job, name in jobs:
        try:
            rows.append(job(name, args))
        except RuntimeError as exc:
            rows.append({"clip": name, "error": str(exc)})
        print(json.dumps(rows[-1]), flush=True)
    cols = ["clip", "frames", "size", "track_median_px", "track_moving_median_px", "track_within_2px",
            "visibility_acc", "mask_iou", "ate_percent", "fit_s", "export_tracks_s", "track_s", "render_orbit_s",
            "render_bullet_s", "mesh_s"]
    print(f"\npreset={args.preset} synthetic frames={args.frames} real frames={args.real_frames}; "
          "*_s = wall seconds of the command (subprocess, start-up included)")
    print_markdown_table(rows, cols)


if __name__ == "__main__":
    main()
