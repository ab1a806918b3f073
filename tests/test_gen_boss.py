"""BOSS straightening: finetuning the velocity model on its K-step schedule lowers the K-step path error
against the fine reference path, the finetuned weights are what `--solver boss` samples, bad flags fail in
one line.

The latents are made here (no encoder): red/blue balls and boxes of 64 Gaussians on the shapes' surfaces,
a few jittered copies each, so the tiny model learns a real, curved flow in a few hundred steps.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from recon4d.errors import InputError
from recon4d.gen.boss import (FinetuneConfig, finetuned_file, load_finetuned, load_schedule, optimal_path,
                              reference_states, schedule_error)
from recon4d.gen.latents import Latent, compute_stats, pack, save_latent, save_stats, sort_rows
from recon4d.gen.mmdit import ModelConfig
from recon4d.gen.pipeline import PipelineConfig, run_pipeline
from recon4d.gen.sample import Generator, SampleRequest
from recon4d.gen.train import TrainConfig

G = 64
TINY_MODEL = ModelConfig(num_gaussians=G, patch=8, width=64, depth=2, heads=2, mlp_ratio=2.0)
COLOURS = {"red": (0.85, 0.1, 0.1), "blue": (0.15, 0.3, 0.9)}
FINE = 16
FINETUNE = FinetuneConfig(budgets=(2, 4), paths=24, eval_paths=12, steps=120, batch=16, lr=3e-4, warmup=10,
                          checkpoint_every=60)

pytestmark = pytest.mark.usefixtures("one_thread")


def _shape_points(shape: str, generator: torch.Generator) -> torch.Tensor:
    """G points [G, 3] on the surface of a ball (radius 0.6) or a box (half side 0.4)."""
    direction = torch.nn.functional.normalize(torch.randn(G, 3, generator=generator), dim=-1)
    if shape == "ball":
        return 0.6 * direction
    return 0.4 * direction / direction.abs().amax(-1, keepdim=True)


def write_latents(out: Path, copies: int = 3) -> Path:
    generator = torch.Generator().manual_seed(0)
    latents = []
    for colour, rgb in COLOURS.items():
        for shape in ("ball", "box"):
            for copy in range(copies):
                means = _shape_points(shape, generator)
                quats = torch.randn(G, 4, generator=generator)
                log_scales = torch.full((G, 3), math.log(0.08)) + 0.1 * torch.randn(G, 3, generator=generator)
                opacity = torch.full((G,), 3.0)
                colors = torch.tensor(rgb).expand(G, 3) + 0.05 * torch.randn(G, 3, generator=generator)
                gaussians = sort_rows(pack(means, quats, log_scales, opacity, colors))
                save_latent(Latent(gaussians, torch.zeros(3), 1.0, {"caption": f"a {colour} {shape}"}),
                            out / f"{colour}_{shape}_{copy}.r4dlat")
                latents.append(gaussians)
    save_stats(compute_stats(latents), out)
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> tuple[Path, dict]:
    latents = write_latents(tmp_path_factory.mktemp("boss_latents"))
    out = tmp_path_factory.mktemp("boss_model")
    config = PipelineConfig(stages=("rf1", "boss", "boss_finetune"), model=TINY_MODEL, boss_fine_steps=FINE,
                            boss_samples=4, boss_finetune=FINETUNE,
                            rf1=TrainConfig(steps=200, batch=8, lr=2e-3, warmup=20, ema_decay=0.99, log_every=50))
    summary = run_pipeline(latents, out, config)
    return out, summary


def test_dp_picks_the_cheapest_path_on_a_hand_made_matrix():
    inf = float("inf")
    costs = torch.tensor([[inf, 5.0, 1.0, 9.0], [inf, inf, 1.0, 1.0], [inf, inf, inf, 3.0], [inf] * 4])
    assert optimal_path(costs, 1) == [0, 3]  # the only one-step path
    assert optimal_path(costs, 2) == [0, 2, 3]  # 1 + 3 beats 5 + 1
    assert optimal_path(costs, 3) == [0, 1, 2, 3]


@pytest.mark.slow
def test_finetune_lowers_the_k_step_path_error(tiny_model):
    out, summary = tiny_model
    for steps in FINETUNE.budgets:
        report = summary["boss_finetune"]["rf1"][str(steps)]
        # Measured here: K=2 0.064 -> 0.011, K=4 0.0076 -> 0.0023 (held-out noise; reference: the 16-step path).
        assert report["error_after"] < 0.75 * report["error_before"], report
        assert finetuned_file(out, "rf1", steps).is_file()
        stored = json.loads((out / "training.json").read_text())["boss_finetune"]["rf1"][str(steps)]
        assert stored["error_after"] == pytest.approx(report["error_after"])
    assert not finetuned_file(out, "rf1", 8).exists() and load_finetuned(out, "rf1", 8) is None


@pytest.mark.slow
def test_solver_boss_samples_the_finetuned_model(tiny_model):
    """`--solver boss --steps 4` lands closer to the fine reference sample than the base model on the same
    BOSS schedule does, from noise and prompts of neither the finetune nor its evaluation."""
    out, _ = tiny_model
    generator = Generator(out)
    prompts = ["a red ball", "a blue box", "a blue ball", "a red box"] * 2
    x0 = torch.randn((len(prompts), G, 14), generator=torch.Generator().manual_seed(321))
    request = SampleRequest("unused", steps=4, solver="boss", cfg=3.0)
    sampled = generator.solve(prompts, x0, request)
    base = generator.velocity("rf1", prompts, 3.0)
    reference = reference_states(base, x0, FINE, [FINE])[:, 0]
    schedule = load_schedule(out, 4)
    base_error = schedule_error(base, x0, schedule, reference)
    assert float((sampled - reference).pow(2).mean()) < 0.8 * base_error


@pytest.mark.slow
def test_finetune_resumes_from_its_checkpoint(tiny_model, tmp_path):
    """A rerun of the stage with the same settings restores the finished checkpoint and trains no step."""
    out, summary = tiny_model
    latents = next(p for p in out.parent.iterdir() if p.name.startswith("boss_latents"))
    config = PipelineConfig(stages=("boss_finetune",), model=TINY_MODEL, boss_fine_steps=FINE,
                            boss_finetune=FinetuneConfig(**{**FINETUNE.__dict__, "budgets": (2,)}))
    again = run_pipeline(latents, out, config)["boss_finetune"]["rf1"]["2"]
    assert again["resumed_from"] == FINETUNE.steps
    assert again["error_after"] == pytest.approx(summary["boss_finetune"]["rf1"]["2"]["error_after"], rel=1e-5)


def test_budget_outside_the_fine_grid_fails_before_training(tmp_path):
    config = PipelineConfig(stages=("rf1", "boss_finetune"), boss_fine_steps=8,
                            boss_finetune=FinetuneConfig(budgets=(4, 16)))
    with pytest.raises(InputError, match="between 1 and the 8 fine steps"):
        run_pipeline(tmp_path / "no_latents", tmp_path / "model", config)
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("flags, message", [(["--boss-budgets", "2,x"], "comma list"),
                                            (["--boss-budgets", "0"], "between 1 and 1000"),
                                            (["--boss-finetune-steps", "0"], "between 1 and")])
def test_bad_finetune_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    from recon4d.cli import main

    (tmp_path / "latents").mkdir()
    assert main(["gen", "train", str(tmp_path / "latents"), "-o", str(tmp_path / "m"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err

