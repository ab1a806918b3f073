"""BOSS straightening benchmark: K-step path error before and after finetuning v on the BOSS schedule.

    nice -n 10 .venv/bin/python bench/gen_boss.py --latents out/gen/latents --count 60 --out /tmp/boss_bench

Trains a small 1-RF model (`recon4d.gen.pipeline`, stages rf1, boss, boss_finetune) on the first COUNT
latents of a `recon4d gen encode` folder, then measures on held-out noise and training captions the mean
squared difference between the K-step sample and reference samples from the same noise: the fine Euler
path the schedule and the finetune use, and an accurate torchdiffeq dopri5 solve. Rows: uniform Euler,
BOSS schedule with the base model, BOSS schedule with the finetuned model (what `--solver boss` samples).
"""
from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from table import print_markdown_table  # noqa: E402

from recon4d.gen.boss import FinetuneConfig, load_finetuned, load_schedule, reference_states  # noqa: E402
from recon4d.gen.flow import euler, guided, uniform_times  # noqa: E402
from recon4d.gen.latents import latent_files, load_latent  # noqa: E402
from recon4d.gen.pipeline import PipelineConfig, run_pipeline  # noqa: E402
from recon4d.gen.reflow import PairConfig, solve  # noqa: E402
from recon4d.gen.sample import Generator  # noqa: E402
from recon4d.gen.train import TrainConfig  # noqa: E402


def subset_latents(source: Path, count: int, out: Path) -> Path:
    """The first `count` latents of a folder (and its stats.json) copied to out."""
    out.mkdir(parents=True, exist_ok=True)
    for path in latent_files(source)[:count]:
        if not (out / path.name).exists():
            shutil.copyfile(path, out / path.name)
    shutil.copyfile(source / "stats.json", out / "stats.json")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latents", type=Path, required=True, help="a `recon4d gen encode` folder")
    parser.add_argument("--out", type=Path, required=True, help="work folder (latents subset, model)")
    parser.add_argument("--count", type=int, default=60, help="latents trained on (default: 60)")
    parser.add_argument("--steps", type=int, default=300, help="1-RF steps (default: 300)")
    parser.add_argument("--finetune-steps", type=int, default=200, help="BOSS finetune steps per K (default: 200)")
    parser.add_argument("--budgets", default="2,4", help="step budgets K (default: 2,4)")
    parser.add_argument("--fine-steps", type=int, default=32, help="BOSS fine grid (default: 32)")
    parser.add_argument("--eval-paths", type=int, default=32, help="held-out noise draws (default: 32)")
    args = parser.parse_args()
    torch.manual_seed(0)
    budgets = tuple(int(k) for k in args.budgets.split(","))
    latents = subset_latents(args.latents, args.count, args.out / "latents")
    config = PipelineConfig(stages=("rf1", "boss", "boss_finetune"), boss_fine_steps=args.fine_steps,
                            rf1=TrainConfig(steps=args.steps, batch=16, lr=5e-4, warmup=30, ema_decay=0.99),
                            boss_finetune=FinetuneConfig(budgets=budgets, paths=48, eval_paths=16,
                                                         steps=args.finetune_steps, batch=16))
    began = time.process_time()
    summary = run_pipeline(latents, args.out / "model", config)
    train_cpu = time.process_time() - began
    print({k: summary[k] for k in ("rf1", "boss_finetune") if k in summary})

    generator = Generator(args.out / "model")
    cfg = generator.default_cfg("rf1")
    prompts = sorted({load_latent(p).caption for p in latent_files(latents)})
    prompts = [prompts[i % len(prompts)] for i in range(args.eval_paths)]
    x0 = torch.randn((len(prompts), generator.model_config.num_gaussians, 14), generator=torch.Generator().manual_seed(777))
    base = generator.velocity("rf1", prompts, cfg)
    fine = reference_states(base, x0, args.fine_steps, [args.fine_steps])[:, 0]
    accurate = solve(base, x0, PairConfig(solver="dopri5", rtol=1e-5, atol=1e-5))
    rows = [{"method": f"{args.fine_steps}-step Euler (reference)", "K": args.fine_steps, "MSE vs fine": 0.0,
             "MSE vs dopri5": float((fine - accurate).pow(2).mean())}]
    cond, uncond = generator.conditions(prompts)

    for steps in budgets:
        schedule = load_schedule(args.out / "model", steps)
        tuned = guided(load_finetuned(args.out / "model", "rf1", steps), cond, uncond, cfg)
        for name, velocity, times in (("uniform Euler", base, uniform_times(steps)), ("BOSS schedule", base, schedule),
                                      ("BOSS + finetune", tuned, schedule)):
            sample = euler(velocity, x0, times)
            rows.append({"method": name, "K": steps, "MSE vs fine": float((sample - fine).pow(2).mean()),
                         "MSE vs dopri5": float((sample - accurate).pow(2).mean()),
                         "schedule": " ".join(f"{t:.3f}" for t in times.tolist())})
    for row in rows:  # MSEs are small: more digits than the shared table's 2 decimals
        row.update({k: f"{row[k]:.5f}" for k in ("MSE vs fine", "MSE vs dopri5")})
    print_markdown_table(rows, ["method", "K", "MSE vs fine", "MSE vs dopri5", "schedule"], key="method")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finetune = summary["boss_finetune"]["rf1"]
    print(f"{summary['objects']} latents (train split of {args.count}), 1-RF {args.steps} steps, finetune {args.finetune_steps} steps x {len(budgets)} "
          f"budgets; training CPU {train_cpu:.0f} s (2 shared cores: wall times noisy), peak RSS {peak:.0f} MB; "
          f"pipeline's own held-out numbers: "
          + ", ".join(f"K={k} {v['error_before']:.4f} -> {v['error_after']:.4f}" for k, v in finetune.items()))


if __name__ == "__main__":
    main()
