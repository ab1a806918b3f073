"""Benchmark of recon4d.render.rasterize: forward+backward time and peak memory.

Usage: python bench/render.py [--device cpu|cuda] [--threads 1,2] [--repeat 5] [--sizes 160x90,320x180,640x360]
       [--counts 5000,20000,100000] [--cases 64x64x1000,160x90x20000] [--omp-wait-policy passive]
       [--projection cpp|python] [--scene OUT [--frame T]]

`--cases` replaces the sizes x counts grid by the listed WxHxN cases; `--scene OUT` replaces it by the Gaussians
of a fitted scene (a `recon4d fit` output folder) at frame `--frame` (default: its middle frame), seen from that
frame's camera at the working resolution: the sizes, shapes and opacities of a real fit. `tile entries` counts
the (Gaussian, tile) pairs the rasterizer sweeps. On the CPU every row also times the EWA projection alone
(forward + backward of a random linear loss on its outputs): the C++ kernel of
`recon4d.render.projection` and the PyTorch reference (`recon4d.render.reference`). `--projection python`
renders the whole rasterize() with the PyTorch projection instead, for a before/after comparison.

Each (size, count, threads) runs in a fresh subprocess so that peak RSS belongs to that case alone. On a
shared machine wall-clock times depend on the load, so every row also gives the process CPU time per
step and the 1-minute load average when the case ran. The scene
mimics a frame-0 initialisation: Gaussians spread over the view frustum at depths 2-6 with a footprint of
about two sampling distances, opacities 0.5-1. Quality column: max abs difference of the image against
the dense reference where it fits in memory (smallest size only), to show the fast path is exact.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time


def make_scene(n: int, width: int, height: int, device: str, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    fx = 0.5 * width / math.tan(math.radians(30))
    K = torch.tensor([[fx, 0, (width - 1) / 2], [0, fx, (height - 1) / 2], [0, 0, 1]])
    depth = 2 + 4 * torch.rand(n, generator=g)
    u = torch.rand(n, generator=g) * width
    v = torch.rand(n, generator=g) * height
    means = torch.stack([(u - K[0, 2]) / fx * depth, (v - K[1, 2]) / fx * depth, depth], -1)
    spacing_px = math.sqrt(width * height / n)
    scales = (spacing_px * depth / fx)[:, None] * torch.exp(0.3 * torch.randn(n, 3, generator=g))
    scene = dict(
        means=means, quats=torch.randn(n, 4, generator=g), scales=scales,
        opacities=0.5 + 0.5 * torch.rand(n, generator=g), colors=torch.rand(n, 3, generator=g),
        camera_from_world=torch.eye(4), K=K,
    )
    return {k: v.to(device) for k, v in scene.items()}


def load_fitted(path: str, frame: int | None, device: str) -> tuple[dict, int, int]:
    """rasterize() inputs of a fitted scene's Gaussians at `frame` (default: the middle one) from its camera."""
    import torch

    from recon4d.geometry.camera import invert_pose
    from recon4d.io.scene import load_scene

    scene = load_scene(path)
    t = scene.num_frames // 2 if frame is None else frame
    g = scene.gaussians_at(t)
    inputs = dict(means=g.means, quats=g.quats, scales=g.scales, opacities=g.opacities, colors=g.colors[:, :3],
                  camera_from_world=invert_pose(scene.cameras.world_from_camera[t]), K=scene.cameras.K(t))
    return ({k: v.to(device=device, dtype=torch.float32).contiguous() for k, v in inputs.items()},
            scene.cameras.width, scene.cameras.height)


def kernel_vectors() -> str:
    """The hardware vectors the CPU rasterizer's row loops were compiled for (its build uses -march=native)."""
    from recon4d.render.cpu import extension

    names = {64: "AVX-512", 32: "AVX2", 16: "SSE/NEON"}
    width = extension().vector_bytes()
    return f"{width}-byte vectors ({names.get(width, '?')}), {width // 4} floats per row loop step"


def tile_entries(scene: dict, width: int, height: int) -> int:
    """(Gaussian, tile) pairs of the CPU rasterizer's binning of `scene`."""
    import torch

    from recon4d.render.config import RasterConfig
    from recon4d.render.cpu import extension
    from recon4d.render.projection import project_gaussians

    with torch.no_grad():
        p = project_gaussians(*(scene[k].cpu() for k in ("means", "quats", "scales", "opacities", "camera_from_world", "K")),
                              width, height, RasterConfig())
        _, ids = extension().bin_gaussians(p.means2d.contiguous(), p.conics.contiguous(), scene["opacities"].cpu().contiguous(),
                                           p.radii.to(torch.int32).contiguous(), p.depths.contiguous(),
                                           width, height, RasterConfig().tile_size)
    return ids.numel()


def time_projection(project, scene: dict, width: int, height: int, repeat: int) -> tuple[float, float]:
    """Median wall and process-CPU ms of one projection forward + backward of a random linear loss."""
    import torch

    from recon4d.render.config import RasterConfig

    names = ("means", "quats", "scales", "camera_from_world", "K")
    params = {k: scene[k].clone().requires_grad_(True) for k in names}
    g = torch.Generator().manual_seed(1)
    n = scene["means"].shape[0]
    weights = [torch.randn(n, 2, generator=g), torch.randn(n, 3, generator=g), torch.randn(n, generator=g)]
    times, cpu_times = [], []
    for _ in range(repeat + 1):  # the first call loads the extension
        for p in params.values():
            p.grad = None
        c0 = time.process_time()
        t0 = time.perf_counter()
        out = project(params["means"], params["quats"], params["scales"], scene["opacities"],
                      params["camera_from_world"], params["K"], width, height, RasterConfig())
        loss = (out.means2d * weights[0]).sum() + (out.conics * weights[1]).sum() + (out.depths * weights[2]).sum()
        loss.backward()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return 1000 * sorted(times[1:])[repeat // 2], 1000 * sorted(cpu_times[1:])[repeat // 2]


def run_case(width: int, height: int, n: int, device: str, repeat: int, threads: int, projection: str,
             fitted: str | None = None, frame: int | None = None) -> dict:
    import torch

    import recon4d.render.projection
    from recon4d.render import rasterize
    from recon4d.render.reference import project_gaussians_reference

    cpp_projection = recon4d.render.projection.project_gaussians
    if projection == "python":  # rasterize() looks the projection up in this module at every call
        recon4d.render.projection.project_gaussians = project_gaussians_reference
    torch.set_num_threads(threads)
    if fitted:
        scene, width, height = load_fitted(fitted, frame, device)
        n = scene["means"].shape[0]
    else:
        scene = make_scene(n, width, height, device)
    params = {k: v.clone().requires_grad_(k != "K") for k, v in scene.items()}
    args = [params[k] for k in ("means", "quats", "scales", "opacities", "colors", "camera_from_world", "K")]
    target = torch.rand(height, width, 3, device=device)

    def step() -> tuple[float, float, float]:
        for p in params.values():
            p.grad = None
        if device == "cuda":
            torch.cuda.synchronize()
        c0 = time.process_time()
        t0 = time.perf_counter()
        out = rasterize(*args, width, height)
        if device == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        ((out.color - target).abs().mean() + 0.01 * out.depth.mean()).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return t1 - t0, time.perf_counter() - t0, time.process_time() - c0

    step()  # warm-up: loads the extension / compiles CUDA kernels
    times = sorted(step() for _ in range(repeat))
    fwd = sorted(t[0] for t in times)
    both = sorted(t[1] for t in times)
    cpu = sorted(t[2] for t in times)
    result = {
        "size": f"{width}x{height}", "gaussians": n, "threads": threads, "fwd_ms": 1000 * fwd[len(fwd) // 2],
        "fwd_bwd_ms": 1000 * both[len(both) // 2], "fwd_bwd_min_ms": 1000 * both[0],
        "cpu_ms": 1000 * cpu[len(cpu) // 2], "load": os.getloadavg()[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "entries": tile_entries(scene, width, height) if device == "cpu" else None,
    }
    if device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["projection_cpp_ms"] = time_projection(cpp_projection, scene, width, height, repeat)
        result["projection_python_ms"] = time_projection(project_gaussians_reference, scene, width, height, repeat)
    with torch.no_grad():
        out = rasterize(*args, width, height)
        result["coverage"] = float(out.alpha.mean())
        if width * height * n <= 160 * 90 * 5000:
            from recon4d.render.reference import rasterize_dense

            ref, _, _ = rasterize_dense(*(a.cpu() for a in args), width, height)
            result["max_abs_diff_vs_dense"] = float((out.color.cpu() - ref).abs().max())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sizes", default="160x90,320x180,640x360")
    parser.add_argument("--counts", default="5000,20000,100000")
    parser.add_argument("--cases", help="comma-separated WxHxN cases instead of the sizes x counts grid")
    parser.add_argument("--projection", default="cpp", choices=["cpp", "python"],
                        help="projection used inside rasterize(): the C++ kernel or the PyTorch reference")
    parser.add_argument("--omp-wait-policy", choices=["active", "passive"],
                        help="OMP_WAIT_POLICY for the cases (default: the environment's)")
    parser.add_argument("--scene", help="a fitted scene (recon4d fit output folder) instead of random Gaussians")
    parser.add_argument("--frame", type=int, help="frame of --scene to render (default: the middle one)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        width, height, n = map(int, args.case.split(","))
        print(json.dumps(run_case(width, height, n, args.device, args.repeat, int(args.threads), args.projection,
                                  args.scene, args.frame)))
        return
    env = dict(os.environ)
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    if args.scene:
        cases = [(0, 0, 0)]  # size and count come from the scene
    elif args.cases:
        cases = [tuple(map(int, case.split("x"))) for case in args.cases.split(",")]
    else:
        cases = [(*map(int, size.split("x")), n) for size in args.sizes.split(",") for n in map(int, args.counts.split(","))]
    rows = []
    for width, height, n in cases:
        for threads in map(int, args.threads.split(",")):
            cmd = [sys.executable, __file__, "--device", args.device, "--threads", str(threads), "--repeat",
                   str(args.repeat), "--projection", args.projection, "--case", f"{width},{height},{n}"]
            if args.scene:
                cmd += ["--scene", args.scene] + ([] if args.frame is None else ["--frame", str(args.frame)])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            rows.append(json.loads(out))
    print(f"device={args.device} repeat={args.repeat} projection={args.projection} "
          f"OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY', 'unset')} cores={os.cpu_count()} "
          "(median; min in brackets; load = 1-min load average after the case)")
    if args.device == "cpu":
        print(f"rasterizer kernel: {kernel_vectors()}")
    header = "| size | Gaussians | threads | forward ms | forward+backward ms | CPU ms/step | peak RSS MB |"
    extra = " peak GPU MB |" if args.device == "cuda" else " projection fwd+bwd ms (CPU ms) C++ | PyTorch |"
    print(header + extra + " load | coverage | max diff vs dense | tile entries |")
    print("|---" * (header.count("|") - 1 + extra.count("|") + 4) + "|")
    for r in rows:
        if args.device == "cuda":
            more = f" {r['peak_gpu_mb']:.0f} |"
        else:
            (cpp, cpp_cpu), (python, python_cpu) = r["projection_cpp_ms"], r["projection_python_ms"]
            more = f" {cpp:.2f} ({cpp_cpu:.2f}) | {python:.2f} ({python_cpu:.2f}) |"
        diff = f"{r['max_abs_diff_vs_dense']:.1e}" if "max_abs_diff_vs_dense" in r else "-"
        print(f"| {r['size']} | {r['gaussians']} | {r['threads']} | {r['fwd_ms']:.1f} "
              f"| {r['fwd_bwd_ms']:.1f} ({r['fwd_bwd_min_ms']:.1f}) | {r['cpu_ms']:.1f} | {r['peak_rss_mb']:.0f} |{more} "
              f"{r['load']:.1f} | {r['coverage']:.2f} | {diff} | {r['entries'] or '-'} |")


if __name__ == "__main__":
    main()
