"""Python half of bench/gpu.sh: CUDA-vs-CPU rasterizer parity and the one summary table.

    python bench/gpu_check.py parity --device cuda [--cases 320x180x5000,854x480x50000] [--json parity.json]
    python bench/gpu_check.py table --stages stages.tsv [--parity parity.json] [--fit-metrics metrics.json]

`parity --device cuda` renders the same scene through `recon4d.render.rasterize` with CPU tensors (the C++
tile kernel) and CUDA tensors (gsplat) and compares images and the gradients of one random linear loss.
`parity --device cpu` is the dry run for machines without a GPU: the candidate is the dense PyTorch
reference (`recon4d.render.reference.rasterize_dense`) instead of gsplat, so only small cases fit in memory.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render import make_scene  # noqa: E402  (bench/render.py: the rasterizer benchmark's scene)

PARAM_NAMES = ("means", "quats", "scales", "opacities", "colors", "camera_from_world", "K")
GRAD_NAMES = ("means", "quats", "scales", "opacities", "colors")
# Agreement asked of the two backends (gsplat and the CPU kernel share the math, not the float order).
IMAGE_TOLERANCE = 2e-3
GRAD_MIN_COSINE = 0.99
TIMED_STEPS = 5


def _render_and_backprop(scene: dict, width: int, height: int, device: str, dense: bool) -> tuple[dict, float]:
    """Forward + backward of a fixed random linear loss; returns images, gradients (on CPU) and median ms."""
    from recon4d.render import rasterize
    from recon4d.render.reference import rasterize_dense

    g = torch.Generator().manual_seed(1)
    weights_color = torch.randn(height, width, 3, generator=g).to(device)
    weights_alpha = torch.randn(height, width, generator=g).to(device)
    params = {k: v.to(device).clone().requires_grad_(k in GRAD_NAMES) for k, v in scene.items()}
    args = [params[k] for k in PARAM_NAMES]

    def step() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for name in GRAD_NAMES:
            params[name].grad = None
        if dense:
            color, depth, alpha = rasterize_dense(*args, width, height)
        else:
            out = rasterize(*args, width, height)
            color, depth, alpha = out.color, out.depth, out.alpha
        ((color * weights_color).sum() + (alpha * weights_alpha).sum() + 0.1 * (depth * alpha).sum()).backward()
        return color, depth, alpha

    step()  # warm-up: builds/loads kernels
    times = []
    for _ in range(TIMED_STEPS):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        color, depth, alpha = step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - t0))
    result = {"color": color.detach().cpu(), "depth": depth.detach().cpu(), "alpha": alpha.detach().cpu(),
              **{name: params[name].grad.detach().cpu() for name in GRAD_NAMES}}
    return result, statistics.median(times)


def parity_case(width: int, height: int, n: int, device: str) -> dict:
    """One scene through both backends: image differences, gradient agreement and fwd+bwd times."""
    scene = make_scene(n, width, height, "cpu", seed=n)
    reference, cpu_ms = _render_and_backprop(scene, width, height, "cpu", dense=False)
    candidate, cand_ms = _render_and_backprop(scene, width, height, device, dense=device == "cpu")
    row = {"case": f"{width}x{height}x{n}", "candidate": "gsplat (cuda)" if device == "cuda" else "dense reference (cpu)",
           "cpu_ms": cpu_ms, "candidate_ms": cand_ms, "coverage": float(reference["alpha"].mean())}
    for name in ("color", "depth", "alpha"):
        row[f"max_abs_{name}"] = float((reference[name] - candidate[name]).abs().max())
    for name in GRAD_NAMES:
        a, b = reference[name].flatten(), candidate[name].flatten()
        row[f"grad_{name}_cosine"] = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
        row[f"grad_{name}_rel_max"] = float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
    # Depth is alpha-normalised, so pixels at the edge of coverage amplify tiny alpha differences: the
    # check uses colour and alpha, and reports depth.
    row["pass"] = (max(row["max_abs_color"], row["max_abs_alpha"]) <= IMAGE_TOLERANCE
                   and min(row[f"grad_{n}_cosine"] for n in GRAD_NAMES) >= GRAD_MIN_COSINE)
    return row


def _cmd_parity(args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        print("parity: --device cuda but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, cuda {torch.version.cuda}, {torch.get_num_threads()} CPU threads", flush=True)
    rows = []
    for case in args.cases.split(","):
        width, height, n = map(int, case.split("x"))
        rows.append(parity_case(width, height, n, args.device))
        r = rows[-1]
        print(f"{r['case']}: max |d color| {r['max_abs_color']:.1e}, |d alpha| {r['max_abs_alpha']:.1e}, "
              f"|d depth| {r['max_abs_depth']:.1e}; min grad cosine "
              f"{min(r[f'grad_{g}_cosine'] for g in GRAD_NAMES):.4f}; fwd+bwd cpu {r['cpu_ms']:.1f} ms, "
              f"{r['candidate']} {r['candidate_ms']:.1f} ms; {'PASS' if r['pass'] else 'FAIL'}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["pass"] for r in rows) else 1


def _read_stages(path: Path) -> list[tuple[str, str, float, str]]:
    rows = []
    for line in path.read_text().splitlines():
        name, status, seconds, note = (line.split("\t") + ["", "", "", ""])[:4]
        rows.append((name, status, float(seconds or 0), note))
    return rows


def _cmd_table(args: argparse.Namespace) -> int:
    print("| stage | status | seconds | result |")
    print("|---|---|---|---|")
    parity = json.loads(Path(args.parity).read_text()) if args.parity and Path(args.parity).is_file() else []
    metrics = json.loads(Path(args.fit_metrics).read_text()) if args.fit_metrics and Path(args.fit_metrics).is_file() else None
    for name, status, seconds, note in _read_stages(Path(args.stages)):
        result = note
        if name == "parity" and parity:
            result = "; ".join(
                f"{r['case']}: max|dC| {r['max_abs_color']:.1e} max|dA| {r['max_abs_alpha']:.1e} "
                f"grad cos>={min(r[f'grad_{g}_cosine'] for g in GRAD_NAMES):.4f} "
                f"fwd+bwd {r['candidate_ms']:.1f} ms vs cpu {r['cpu_ms']:.1f} ms {'PASS' if r['pass'] else 'FAIL'}"
                for r in parity)
        if name == "fit" and metrics:
            held = metrics.get("held_out") or {}
            held_text = f", held-out PSNR {held['psnr']:.2f} dB" if held.get("psnr") is not None else ""
            stages = ", ".join(f"{k} {v:.0f}" for k, v in (metrics.get("seconds") or {}).items())
            gpu = f", peak GPU {metrics['peak_gpu_mb']:.0f} MB" if metrics.get("peak_gpu_mb") else ""
            result = (f"{metrics['frames']} frames at {metrics['resolution'][0]}x{metrics['resolution'][1]} on "
                      f"{metrics['device']}: {metrics['seconds_total']:.1f} s in the fit ({stages}); "
                      f"PSNR {metrics['fitted']['psnr']:.2f} dB{held_text}; {metrics['gaussians']} Gaussians; "
                      f"peak RSS {metrics['peak_rss_mb']:.0f} MB{gpu}")
        print(f"| {name} | {status} | {seconds:.0f} | {result} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    parity = sub.add_parser("parity", help="CPU tile kernel vs gsplat (or the dense reference) on one scene")
    parity.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parity.add_argument("--cases", default="320x180x5000,854x480x50000", help="WxHxN,... scenes to compare")
    parity.add_argument("--json", help="write the rows here")
    table = sub.add_parser("table", help="the summary table of a gpu.sh run")
    table.add_argument("--stages", required=True, help="TSV: stage, status, seconds, note")
    table.add_argument("--parity", help="JSON written by `parity`")
    table.add_argument("--fit-metrics", help="metrics.json of the timed fit")
    args = parser.parse_args()
    return _cmd_parity(args) if args.command == "parity" else _cmd_table(args)


if __name__ == "__main__":
    sys.exit(main())
