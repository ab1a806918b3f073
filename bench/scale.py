"""Benchmark of scale-out: the Ray runner's overhead, `recon4d fit-batch` with 1 vs 2 workers, DDP with 1 vs
2 gloo processes, and projections to a cluster from the measured per-unit costs.

Usage: python bench/scale.py [--clips bear,apple,backpack,cup] [--frames 8] [--preset PATH|fast]
       [--projection-frames 8] [--skip batch,ddp,projection] [--out /tmp/recon4d-scale]

Sections (each prints a markdown table):
1. Runner overhead: cold start of a local Ray (init + first task, worker start included), warm seconds per
   no-op task at 2 workers against the serial in-process runner, and the pickled size of a fit-batch job.
2. fit-batch on real clips, serial (--workers 1, no Ray; 2 and 1 torch threads per fit) vs local Ray (--workers
   2, 1 thread per fit): wall time and its ratio; "job - fit's own" = seconds of a job outside the fit's own
   stages (argument parsing, imports in a fresh worker, writing outputs); "overhead/fit" = slot-seconds not
   spent inside a job, per fit (Ray start-up, worker start, scheduling, idle slots at the end) =
   (wall x workers - sum of job seconds) / fits.
3. DDP (torchrun, gloo, CPU): the same training run (a conv regressor, Adam, global batch 64) in 1 process x 2
   threads and 2 processes x 1 thread: largest loss difference over the run, largest parameter difference at
   the end, samples per second and their ratio.
4. Projections from measured per-unit costs: a default-preset fit of --projection-frames frames with a short
   refinement gives seconds per fitted frame and per refinement step; the table scales them to 10,000
   one-minute videos on a stated CPU cluster. The generator projection counts the FLOPs per training sample of
   the gen model (when `recon4d gen train` exists; see --help of the section) and assumes a stated GPU cluster.

The CPU of this machine is shared with other jobs: wall times are noisy (say so when quoting them); the
loss/parameter agreement and FLOP counts are exact.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from table import print_markdown_table  # bench/table.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CLIPS = {
    "bear": SHARED / "davis-cotracker" / "bear.mp4",
    "apple": SHARED / "davis-cotracker" / "apple.mp4",
    "backpack": SHARED / "davis-cotracker" / "backpack.mp4",
    "pillow": SHARED / "davis-cotracker" / "pillow.mp4",
    "cup": ROOT / "data" / "cup.mp4",
}
# A small fit so the batch comparison finishes in minutes on 2 cores; --preset fast/default for real sizes.
SMALL_PRESET = """short_side: 36
num_gaussians: 800
frame0_iters: 40
camera_iters: 15
gaussian_iters: 15
max_new_per_frame: 100
holdout_refine_iters: 5
"""
NOOP_TASKS = 40
DDP_STEPS, DDP_GLOBAL_BATCH, DDP_SAMPLES = 30, 64, 640
DDP_WARMUP_STEPS = 3  # not timed: first-step allocations and gloo connection set-up
# Projection assumptions (stated in the output).
VIDEO_SECONDS, FIT_FPS, VIDEOS = 60, 10, 10_000
CPU_CLUSTER_NODES, CPU_CLUSTER_CORES = 50, 64
REFINE_ITERS_DEFAULT = 1500
GEN_LATENTS, GEN_EPOCHS, GEN_TEXT_TOKENS = 1_000_000, 50, 16
GPUS, GPU_PEAK_FLOPS, GPU_MFU = 8, 989e12, 0.3  # H100 SXM dense bf16 peak; utilisation is an assumption


def noop(job: dict) -> int:
    return job["x"]


def run(command: list[str], env: dict | None = None,
        timeout: float = 3600) -> tuple[float, subprocess.CompletedProcess]:
    """(wall seconds, result) of a subprocess; its CPU seconds (user + system) in result.cpu_seconds."""
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, check=False, capture_output=True, text=True, env={**os.environ, **(env or {})},
                            timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - start, result


# ----------------------------------------------------------------------------------------------------------
# 1. runner overhead


def runner_overhead() -> list[dict]:
    import ray

    from recon4d.cluster import ray_session, run_jobs

    os.environ["RECON4D_NO_PROGRESS"] = "1"
    jobs = [{"key": str(i), "x": i} for i in range(NOOP_TASKS)]
    start = time.perf_counter()
    run_jobs(noop, jobs[:NOOP_TASKS // 4])
    serial = (time.perf_counter() - start) / (NOOP_TASKS // 4)
    start = time.perf_counter()
    with ray_session(None, 2, 1, 0):
        run_jobs(noop, jobs[:1], workers=2)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        run_jobs(noop, jobs, workers=2)
        warm = (time.perf_counter() - start) / NOOP_TASKS
    job = {"key": "bear", "input": str(CLIPS["bear"]), "out": "/data/out/bear", "log": "/data/out/batch_logs/bear.log",
           "device": "cpu", "flags": ["--preset", "fast", "--max-frames", "30"]}
    result = {"psnr": 30.0, "held_out_psnr": 28.0, "frames": 30, "gaussians": 12000, "fit_seconds": 200.0}
    return [{"measure": "local Ray start + first task (s)", "value": cold},
            {"measure": "Ray, warm, per no-op task at 2 workers (ms)", "value": warm * 1e3},
            {"measure": "serial in-process, per no-op job (ms)", "value": serial * 1e3},
            {"measure": "pickled fit-batch job + result (bytes)",
             "value": len(ray.cloudpickle.dumps(job)) + len(ray.cloudpickle.dumps(result))}]


# ----------------------------------------------------------------------------------------------------------
# 2. fit-batch 1 vs 2 workers


#: (label, --workers, extra environment): serial with the default 2 torch threads per fit, serial with 1 thread
#: (the threads a Ray fit gets with --cpus-per-fit 1), local Ray with 2 workers of 1 thread.
BATCH_RUNS = (("serial, 2 threads", 1, {}), ("serial, 1 thread", 1, {"OMP_NUM_THREADS": "1"}),
              ("Ray, 2 workers x 1 thread", 2, {}))


def batch_comparison(clips: list[str], frames: int, preset: str, out: Path) -> list[dict]:
    rows = []
    inputs = [str(CLIPS[name]) for name in clips]
    for label, workers, env in BATCH_RUNS:
        dest = out / f"batch_{label.split(',')[0].lower()}_{workers}_{len(env)}"
        wall, result = run([sys.executable, "-m", "recon4d", "fit-batch", *inputs, "-o", str(dest), "--preset", preset,
                            "--max-frames", str(frames), "--workers", str(workers), "--restart"],
                           env={"RECON4D_NO_PROGRESS": "1", **env})
        entries = json.loads((dest / "batch.json").read_text())["inputs"]
        ok = [e for e in entries if e["status"] == "ok"]
        jobs = sum(e["seconds"] for e in entries)
        own = sum(e["fit_seconds"] for e in ok)
        rows.append({"run": label, "fits ok": f"{len(ok)}/{len(entries)}", "wall s": wall,
                     "mean job s": jobs / len(entries), "job - fit's own s": (jobs - own) / max(len(ok), 1),
                     "overhead/fit s": (wall * workers - jobs) / len(entries),
                     "mean PSNR": sum(e["psnr"] for e in ok) / max(len(ok), 1), "exit": result.returncode})
    for row in rows:
        row["wall / Ray wall"] = row["wall s"] / rows[-1]["wall s"]
    return rows


# ----------------------------------------------------------------------------------------------------------
# 3. DDP


def ddp_worker(out: Path, steps: int, global_batch: int) -> None:
    """The training run of section 3, in one process or under torchrun (then each rank runs this)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from recon4d import distributed

    ctx = distributed.init_from_env("cpu")
    torch.manual_seed(0)
    images = torch.randn(DDP_SAMPLES, 3, 32, 32)
    targets = torch.stack([images.mean(dim=(1, 2, 3)), images[:, 1, 8:24, 8:24].std(dim=(1, 2))], dim=1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.GroupNorm(4, 32), torch.nn.GELU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.GroupNorm(8, 64), torch.nn.GELU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64 * 8 * 8, 128), torch.nn.GELU(), torch.nn.Linear(128, 2))
    wrapped = distributed.wrap_model(model, ctx)
    optimizer = torch.optim.Adam(wrapped.parameters(), lr=1e-3)
    dataset = TensorDataset(images, targets)
    sampler = distributed.make_sampler(dataset, ctx, seed=1)
    loader = DataLoader(dataset, batch_size=distributed.local_batch_size(global_batch, ctx), sampler=sampler,
                        drop_last=True)
    losses, step, epoch, train_seconds = [], 0, 0, 0.0
    while step < steps:
        sampler.set_epoch(epoch)
        for x, y in loader:
            start = time.perf_counter()
            loss = torch.nn.functional.mse_loss(wrapped(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step >= DDP_WARMUP_STEPS:
                train_seconds += time.perf_counter() - start
            losses.append(float(distributed.all_reduce_mean(loss.detach())))
            step += 1
            if step == steps:
                break
        epoch += 1
    if distributed.is_rank0():
        params = torch.cat([p.detach().flatten() for p in distributed.unwrap_model(wrapped).parameters()])
        torch.save(params, out / "params.pt")
        (out / "log.json").write_text(json.dumps({"losses": losses, "train_seconds": train_seconds,
                                                  "parameters": int(params.numel())}))
    distributed.shutdown()


def ddp_comparison(out: Path) -> list[dict]:
    import torch

    runs = {}
    for procs, threads in ((1, 2), (2, 1)):
        dest = out / f"ddp_{procs}"
        dest.mkdir(parents=True, exist_ok=True)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
        args = [__file__, "--ddp-worker", str(dest), "--ddp-steps", str(DDP_STEPS)]
        command = launcher + args if procs > 1 else [sys.executable, *args]
        _, result = run(command, env={"OMP_NUM_THREADS": str(threads)})
        if result.returncode:
            raise RuntimeError(result.stderr[-2000:])
        runs[procs] = (json.loads((dest / "log.json").read_text()), torch.load(dest / "params.pt", weights_only=True))
    (log1, params1), (log2, params2) = runs[1], runs[2]
    rows = []
    for procs, (log, params) in runs.items():
        rows.append({"processes x threads": f"{procs} x {2 // procs}", "parameters": log["parameters"],
                     "samples/s": (DDP_STEPS - DDP_WARMUP_STEPS) * DDP_GLOBAL_BATCH / log["train_seconds"],
                     "final loss": log["losses"][-1], "first loss": log["losses"][0]})
    rows[1]["max loss diff"] = f"{max(abs(a - b) for a, b in zip(log1['losses'], log2['losses'])):.1e}"
    rows[1]["max param diff"] = f"{float((params1 - params2).abs().max()):.1e}"
    rows[1]["throughput ratio 2/1"] = rows[1]["samples/s"] / rows[0]["samples/s"]
    return rows


# ----------------------------------------------------------------------------------------------------------
# 4. projections


def fit_unit_costs(frames: int, out: Path) -> dict:
    """Core-seconds per fitted frame (decode + priors + sequential fit + evaluation) and per refinement step of
    a default-preset fit in one thread. CPU time, not wall time: it barely depends on what else runs on the
    machine. The process's CPU seconds are split over the stages in proportion to their wall seconds."""
    dest = out / "projection_fit"
    refine_iters = 100
    wall, result = run([sys.executable, "-m", "recon4d", "fit", str(CLIPS["bear"]), "-o", str(dest), "--restart",
                        "--max-frames", str(frames), "--refine-iters", str(refine_iters)],
                       env={"RECON4D_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"})
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    metrics = json.loads((dest / "metrics.json").read_text())
    seconds = metrics["seconds"]
    cpu_per_wall = result.cpu_seconds / wall
    per_frame_wall = sum(seconds.get(k, 0) for k in ("decode", "priors", "fit", "evaluate")) / frames
    return {"per_frame": per_frame_wall * cpu_per_wall, "per_refine_step": seconds.get("refine", 0) / refine_iters
            * cpu_per_wall, "resolution": metrics["resolution"], "psnr": metrics["fitted"]["psnr"],
            "cpu_share": cpu_per_wall}


def projections(costs: dict, overhead_per_fit: float | None) -> list[dict]:
    frames = VIDEO_SECONDS * FIT_FPS
    core_seconds = frames * costs["per_frame"] + REFINE_ITERS_DEFAULT * costs["per_refine_step"]
    cores = CPU_CLUSTER_NODES * CPU_CLUSTER_CORES
    hours = VIDEOS * (core_seconds + (overhead_per_fit or 0.0)) / cores / 3600
    size = f"{costs['resolution'][0]}x{costs['resolution'][1]}"
    return [
        {"quantity": f"measured: core-s per fitted frame at {size}, default preset, 1 thread (the process got "
                     f"{costs['cpu_share']:.0%} of a core)", "value": costs["per_frame"]},
        {"quantity": "measured: core-s per refinement step", "value": costs["per_refine_step"]},
        {"quantity": f"core-hours per one-minute video ({frames} frames at {FIT_FPS} fps, "
                     f"{REFINE_ITERS_DEFAULT} refinement steps)", "value": core_seconds / 3600},
        {"quantity": f"wall hours for {VIDEOS:,} one-minute videos on {CPU_CLUSTER_NODES} nodes x "
                     f"{CPU_CLUSTER_CORES} cores (1 core per fit, per-frame cost constant, + measured Ray "
                     "overhead per fit)", "value": hours},
    ]


def _denoiser_step(model, optimizer, batch: int) -> None:
    """One training step of the gen denoiser on random inputs of its shapes (cost, not learning)."""
    import torch

    config = model.config
    x = torch.randn(batch, config.num_gaussians, model.latent_in.in_features // config.patch)
    tokens = torch.randn(batch, GEN_TEXT_TOKENS, config.text_dim)
    out = model(x, torch.rand(batch), tokens, torch.ones(batch, GEN_TEXT_TOKENS, dtype=torch.bool),
                torch.randn(batch, config.text_dim))
    optimizer.zero_grad()
    out.pow(2).mean().backward()
    optimizer.step()


def generator_unit_costs(batch: int = 32, timed_steps: int = 3) -> list[dict]:
    """Training FLOPs per sample (counted) of the gen denoiser, CPU and GPU configs, and measured CPU samples/s
    of the CPU config (forward + backward + AdamW at `batch`)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from recon4d.gen.mmdit import MMDiT, ModelConfig

    torch.manual_seed(0)
    costs = []
    for name, config in (("cpu", ModelConfig()), ("gpu", ModelConfig.gpu())):
        model = MMDiT(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        with FlopCounterMode(display=False) as counter:
            _denoiser_step(model, optimizer, 2)
        row = {"config": name, "parameters": sum(p.numel() for p in model.parameters()),
               "train GFLOP/sample": counter.get_total_flops() / 2 / 1e9}
        if name == "cpu":
            _denoiser_step(model, optimizer, batch)  # warm-up
            start = time.perf_counter()
            for _ in range(timed_steps):
                _denoiser_step(model, optimizer, batch)
            row["CPU samples/s"] = timed_steps * batch / (time.perf_counter() - start)
        costs.append(row)
    return costs


def generator_projection(costs: list[dict]) -> list[dict]:
    samples = GEN_LATENTS * GEN_EPOCHS
    rows = []
    for cost in costs:
        seconds = samples * cost["train GFLOP/sample"] * 1e9 / (GPUS * GPU_PEAK_FLOPS * GPU_MFU)
        rows.append({"quantity": f"generator ({cost['config']} config, {cost['parameters'] / 1e6:.1f} M parameters): "
                                 f"minutes for {GEN_LATENTS:,} latents x {GEN_EPOCHS} epochs on {GPUS} x H100 "
                                 f"({GPU_PEAK_FLOPS / 1e12:.0f} TFLOP/s bf16 at {GPU_MFU:.0%} utilisation; a FLOP "
                                 "bound: small models are launch- and input-bound below it)",
                     "value": seconds / 60})
        if "CPU samples/s" in cost:
            rows.append({"quantity": "  the same on this 2-core CPU at the measured samples/s (hours)",
                         "value": samples / cost["CPU samples/s"] / 3600})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", default="bear,apple,backpack,cup")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--preset", default=None, help="fit preset for section 2 (default: a small YAML written here)")
    parser.add_argument("--projection-frames", type=int, default=8)
    parser.add_argument("--skip", default="", help="comma-separated: overhead,batch,ddp,projection")
    parser.add_argument("--out", type=Path, default=Path("/tmp/recon4d-scale"))
    parser.add_argument("--ddp-worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-steps", type=int, default=DDP_STEPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ddp_worker is not None:
        ddp_worker(args.ddp_worker, args.ddp_steps, DDP_GLOBAL_BATCH)
        return
    skip = set(args.skip.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"# recon4d scale-out benchmark ({os.cpu_count()} CPUs, shared with other jobs: wall times are noisy)\n")
    if "overhead" not in skip:
        print("## Runner overhead\n")
        print_markdown_table(runner_overhead(), ["measure", "value"], key="measure")
    overhead = None
    if "batch" not in skip:
        preset = args.preset
        if preset is None:
            preset = str(args.out / "small.yaml")
            Path(preset).write_text(SMALL_PRESET)
        clips = args.clips.split(",")
        print(f"\n## fit-batch: {len(clips)} clips x {args.frames} frames, preset {Path(preset).name}\n")
        rows = batch_comparison(clips, args.frames, preset, args.out)
        overhead = rows[-1]["overhead/fit s"]
        print_markdown_table(rows, ["run", "fits ok", "wall s", "mean job s", "job - fit's own s", "overhead/fit s",
                                    "mean PSNR", "wall / Ray wall", "exit"], key="run")
    if "ddp" not in skip:
        print(f"\n## DDP on CPU (gloo): {DDP_STEPS} steps, global batch {DDP_GLOBAL_BATCH}\n")
        print_markdown_table(ddp_comparison(args.out), ["processes x threads", "parameters", "samples/s", "first loss",
                                                        "final loss", "max loss diff", "max param diff",
                                                        "throughput ratio 2/1"], key="processes x threads")
    if "projection" not in skip:
        print("\n## Projections from measured per-unit costs\n")
        gen_costs = generator_unit_costs()
        print_markdown_table(gen_costs, ["config", "parameters", "train GFLOP/sample", "CPU samples/s"], key="config")
        print()
        rows = projections(fit_unit_costs(args.projection_frames, args.out), overhead) + generator_projection(gen_costs)
        print_markdown_table(rows, ["quantity", "value"], key="quantity")


if __name__ == "__main__":
    main()
