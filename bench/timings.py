"""Wall-clock numbers that used to be asserted in tests (tests bound work, not seconds).

Usage: python bench/timings.py [--repeat 3]

Each row is timed in this run next to a fixed reference workload (a float32 matrix product, 2048^2, on
this process's threads), so a busy machine shows up as a slow reference rather than as a regression:
`ratio` = seconds / reference seconds is what to track across runs. `budget_s` is the bound the test
suite used to assert (on a quiet 2-core machine).

Rows:
- mesh_frame_15: `export_mesh` of frame 15 of the 30-frame, 160x90, ~13k-Gaussian surface scene of
  tests/test_export_mesh.py (54 views, voxel = median depth / 200).
- synthetic_<variant>: `make_synthetic(variant, num_frames=12, width=128, height=96)`.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from table import print_markdown_table  # noqa: E402  (bench/table.py)


def reference_seconds(size: int = 2048, repeat: int = 5) -> float:
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


def best_of(fn, repeat: int) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from recon4d.eval.synthetic import make_synthetic
    from recon4d.export.mesh import export_mesh
    from test_export_mesh import surface_scene  # the exact scene the test measures

    reference = reference_seconds()
    rows = []
    scene, _ = surface_scene()
    with tempfile.TemporaryDirectory() as tmp:
        seconds = best_of(lambda: export_mesh(scene, Path(tmp) / "frame.ply", frame=15), args.repeat)
    rows.append({"clip": "mesh_frame_15", "seconds": seconds, "budget_s": 60.0})
    for variant in ("translate", "fast"):
        seconds = best_of(lambda v=variant: make_synthetic(v, num_frames=12, width=128, height=96), args.repeat)
        rows.append({"clip": f"synthetic_{variant}", "seconds": seconds, "budget_s": 2.5})
    for row in rows:
        row["ratio"] = row["seconds"] / reference
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nreference matmul 2048^2: {reference * 1000:.1f} ms on {torch.get_num_threads()} threads; "
          f"peak RSS {peak_mib:.0f} MiB")
    print_markdown_table(rows, ["clip", "seconds", "budget_s", "ratio"])


if __name__ == "__main__":
    main()
