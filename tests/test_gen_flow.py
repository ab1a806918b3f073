"""Rectified-flow generator: learning colour on a tiny corpus, solvers, reflow pairs, BOSS, one-step, CLI."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recon4d.gen.boss import optimal_path
from recon4d.gen.corpus import CorpusConfig, render_object_views
from recon4d.gen.data import load_flow_data, text_table
from recon4d.gen.encode import EncodeConfig, encode_views
from recon4d.gen.flow import euler, sample_timesteps, uniform_times
from recon4d.gen.latents import compute_stats, save_latent, save_stats, to_gaussians
from recon4d.gen.mmdit import ModelConfig
from recon4d.gen.pipeline import PipelineConfig, run_pipeline
from recon4d.gen.reflow import PairConfig, make_pairs
from recon4d.gen.sample import Generator, SampleRequest, onestep_sample, write_scene_dirs
from recon4d.gen.shapes import Part
from recon4d.gen.text import TextEncoder
from recon4d.gen.train import TrainConfig, global_batch_indices
from recon4d.geometry import invert_pose
from recon4d.io.scene import load_scene
from recon4d.render import rasterize

TINY_MODEL = ModelConfig(num_gaussians=64, patch=8, width=64, depth=2, heads=2, mlp_ratio=2.0)
OBJECTS = {"a red ball": ("sphere", [0.6], (0.85, 0.1, 0.1)), "a blue ball": ("sphere", [0.6], (0.15, 0.3, 0.9)),
           "a red box": ("cube", [0.4, 0.4, 0.4], (0.85, 0.1, 0.1)), "a blue box": ("cube", [0.4, 0.4, 0.4], (0.15, 0.3, 0.9))}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_latents(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latents")
    views_config = CorpusConfig(views=16, width=24, height=24)
    latents = []
    for index, (caption, (shape, size, color)) in enumerate(OBJECTS.items()):
        views = render_object_views([Part(shape, size, [0.0, 0.0, 0.0], list(color))], views_config)
        latent = encode_views(views, EncodeConfig(num_gaussians=64, steps=30, holdout_every=0), {"caption": caption})
        save_latent(latent, out / f"obj_{index}.r4dlat")
        latents.append(latent.gaussians)
    save_stats(compute_stats(latents), out)
    return out


@pytest.fixture(scope="module")
def tiny_model(tiny_latents, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model")
    config = PipelineConfig(stages=("rf1", "boss"), model=TINY_MODEL, boss_fine_steps=16, boss_samples=4,
                            rf1=TrainConfig(steps=250, batch=8, lr=2e-3, warmup=20, ema_decay=0.99, log_every=50))
    run_pipeline(tiny_latents, out, config)
    return out


def _rendered_color(latent: torch.Tensor) -> torch.Tensor:
    """Mean RGB of the object's pixels in a front view of a canonical latent [G, 14]."""
    from recon4d.gen.views import intrinsics, orbit_poses

    g = to_gaussians(latent)
    pose = orbit_poses(1, 3.0, (20.0,))[0]
    out = rasterize(g.means, g.quats, g.scales, g.opacities, g.colors, invert_pose(pose),
                    intrinsics(40.0, 32, 32), 32, 32)
    mask = out.alpha > 0.5
    assert int(mask.sum()) > 20, "the sample renders as an object"
    return (out.color / out.alpha.clamp_min(1e-6)[..., None])[mask].mean(0)


def test_a_few_hundred_steps_learn_the_colour(tiny_model):
    generator = Generator(tiny_model)
    for prompt, channel in (("a red ball", 0), ("a blue box", 2)):
        latents = generator.generate(SampleRequest(prompt, steps=8, cfg=3.0, seed=1, num=2))
        for latent in latents:
            color = _rendered_color(latent)
            assert int(color.argmax()) == channel, f"{prompt}: rendered colour {color.tolist()}"


def test_sampling_writes_scene_dirs_and_boss_schedules(tiny_model, tmp_path):
    generator = Generator(tiny_model)
    latents = generator.generate(SampleRequest("a red box", steps=4, solver="boss", seed=0, num=2))
    paths = write_scene_dirs(latents, tmp_path / "out", "a red box")
    assert [p.parent.name for p in paths] == ["sample_000", "sample_001"]
    scene = load_scene(paths[0])
    assert len(scene.gaussians) == 64 and (paths[0].parent / "preview.mp4").is_file()
    assert float(scene.gaussians.means.norm(dim=-1).median()) < 1.0  # canonical frame: inside the unit ball


def test_reflow_pairs_are_deterministic(tiny_latents, tiny_model):
    data, stats = load_flow_data(tiny_latents)
    text = text_table(TextEncoder(tiny_model / "text_cache.safetensors"), data.captions)
    model = Generator(tiny_model).velocity_model("rf1")
    config = PairConfig(per_caption=2, euler_steps=4, seed=5)
    first, second = make_pairs(model, data, text, stats, config), make_pairs(model, data, text, stats, config)
    assert first.x1.shape == (8, 64, 14) and torch.equal(first.x0, second.x0) and torch.equal(first.x1, second.x1)
    other = make_pairs(model, data, text, stats, PairConfig(per_caption=2, euler_steps=4, seed=6))
    assert not torch.equal(first.x0, other.x0)


def test_boss_dp_finds_the_optimal_path():
    g = torch.Generator().manual_seed(3)
    n = 7
    costs = torch.rand(n + 1, n + 1, generator=g)
    for steps in (1, 2, 3, 5):
        best = min((sum(float(costs[a, b]) for a, b in zip((0, *mid), (*mid, n))), (0, *mid, n))
                   for mid in itertools.combinations(range(1, n), steps - 1))
        path = optimal_path(costs, steps)
        assert tuple(path) == best[1]
    hand = torch.full((4, 4), 10.0)
    hand[0, 2], hand[2, 3], hand[0, 1], hand[1, 3] = 1.0, 1.0, 0.5, 5.0
    assert optimal_path(hand, 2) == [0, 2, 3]


def test_one_step_student_is_one_euler_step_of_itself():
    def velocity(x, t):
        return torch.sin(x) + t[:, None, None]

    x0 = torch.randn(3, 16, 14, generator=torch.Generator().manual_seed(0))
    assert torch.equal(onestep_sample(velocity, x0), euler(velocity, x0, uniform_times(1)))


def test_timestep_samplers_have_their_shapes():
    g = torch.Generator().manual_seed(0)
    uniform, logit, u_shape = (sample_timesteps(k, 20000, g) for k in ("uniform", "logit_normal", "u_shaped"))
    for t in (uniform, logit, u_shape):
        assert 0 < float(t.min()) and float(t.max()) < 1
    middle = [float(((t - 0.5).abs() < 0.25).float().mean()) for t in (uniform, logit, u_shape)]
    assert abs(middle[0] - 0.5) < 0.02 and middle[1] > 0.6 and middle[2] < 0.4


def test_global_batch_split_over_ranks_is_the_single_process_batch():
    for step in (0, 3, 11):
        whole = global_batch_indices(step, 37, 8, seed=4)
        parts = [whole[r::2] for r in range(2)]
        assert sorted(torch.cat(parts).tolist()) == sorted(whole.tolist()) and len(set(whole.tolist())) == 8


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECON4D_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "recon4d", "gen", *args], capture_output=True, text=True, env=env)


def test_bad_sample_requests_give_one_line_and_exit_2(tiny_model, tmp_path):
    from recon4d.errors import InputError
    from recon4d.gen.sample import check_request

    for request in (SampleRequest("   "), SampleRequest("a ball", steps=100000), SampleRequest("a ball", steps=0),
                    SampleRequest("a ball", solver="magic"), SampleRequest("a ball", num=0)):
        with pytest.raises(InputError):
            check_request(request)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not a model")
    with pytest.raises(InputError):
        Generator(tmp_path / "broken")
    run = _cli("sample", "", "-o", str(tmp_path / "a"), "--model", str(tiny_model))
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    run = _cli("sample", "a ball", "-o", str(tmp_path / "e"), "--model", str(tmp_path / "nowhere"))
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and "recon4d gen train" in run.stderr


def test_turbo_sampler_keeps_its_evaluation_budget():
    from recon4d.gen.turbo import RefinerConfig, VelocityRefiner, turbo_sample

    calls = []

    def velocity(x, t):
        calls.append(1)
        return -x + t[:, None, None]

    refiner = VelocityRefiner(RefinerConfig(patch=8))
    x0 = torch.randn(2, 16, 14, generator=torch.Generator().manual_seed(0))
    for nfe in (1, 2, 3, 4, 8):
        calls.clear()
        out = turbo_sample(velocity, refiner, x0, nfe)
        assert len(calls) == nfe and torch.isfinite(out).all()


def test_reflow_distillation_and_refiner_stages(tiny_latents, tiny_model, tmp_path):
    import json
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model, model_dir)
    short = TrainConfig(steps=20, batch=8, lr=5e-4, warmup=5, ema_decay=0.9, log_every=10)
    config = PipelineConfig(stages=("rf2", "onestep", "refiner", "boss"), model=TINY_MODEL, rf2=short,
                            onestep=TrainConfig(**{**short.__dict__, "timestep_sampler": "zero", "cfg_drop": 0.0}),
                            pairs=PairConfig(per_caption=2, euler_steps=6), boss_fine_steps=16, boss_samples=4,
                            refiner_steps=20, refiner_batch=8, refiner_paths=4, straightness_samples=4,
                            reflow_cfg=2.0, reflow_guidance_channels=("r", "g", "b"))
    summary = run_pipeline(tiny_latents, model_dir, config)
    assert summary["rf2"]["straightness_rf1"] > 0 and summary["rf2"]["straightness_rf2"] >= 0
    assert 0 < summary["refiner"]["share_of_model"] < 0.5
    assert set(json.loads((model_dir / "boss.json").read_text())) >= {"rf1", "rf2"}
    generator = Generator(model_dir)
    for request in (SampleRequest("a red ball", steps=1), SampleRequest("a red ball", steps=4, solver="turbo"),
                    SampleRequest("a red ball", steps=4, reflow=True), SampleRequest("a red ball", steps=2, solver="boss",
                                                                                    reflow=True)):
        assert generator.generate(request).shape == (1, 64, 14)
    # The 2-RF stores its guidance; the sampler guides its colour channels only, the others stay conditional.
    assert generator.default_cfg("rf2") == 2.0 and generator.guidance_channels("rf2") == [11, 12, 13]
    assert generator.guidance_channels("rf1") is None
    x, t = torch.randn(1, 64, 14, generator=torch.Generator().manual_seed(5)), torch.full((1,), 0.3)
    cond, uncond = generator.conditions(["a red ball"])
    model = generator.velocity_model("rf2")
    v_cond, v_uncond = model(x, t, *cond), model(x, t, *uncond)
    v = generator.velocity("rf2", ["a red ball"], 2.0)(x, t)
    assert float((v_cond[..., 11:] - v_uncond[..., 11:]).abs().max()) > 1e-3, "the text changes the colour velocity"
    torch.testing.assert_close(v[..., :11], v_cond[..., :11], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v[..., 11:], v_uncond[..., 11:] + 2.0 * (v_cond - v_uncond)[..., 11:], atol=1e-5, rtol=1e-5)


def test_a_preset_naming_an_unknown_guidance_channel_is_one_line(tmp_path):
    from recon4d.errors import InputError
    from recon4d.gen.config import load_preset

    preset = tmp_path / "gen.yaml"
    preset.write_text("reflow_cfg: 2.0\nreflow_guidance_channels: [red]\n")
    with pytest.raises(InputError, match="unknown latent channel 'red'"):
        load_preset(preset)
    preset.write_text("reflow_cfg: 2.0\nreflow_guidance_channels: [r, g, b]\n")
    assert load_preset(preset).reflow_guidance_channels == ("r", "g", "b")


def _mean_rendering_loss(model_file: Path, latents_dir: Path) -> float:
    """Rendering loss of a stored velocity model on fixed draws (every object, 4 times) of the tiny corpus."""
    from recon4d.gen.data import split_names
    from recon4d.gen.flow import interpolate
    from recon4d.gen.mmdit import MMDiT
    from recon4d.gen.model_io import load_model_file
    from recon4d.gen.train import render_term

    stored = load_model_file(model_file, "rf1")
    model = MMDiT(ModelConfig(**stored.config))
    model.load_state_dict(stored.state)
    data, stats = load_flow_data(latents_dir, split_names(latents_dir, None, "train"), num_gaussians=64)
    text = text_table(TextEncoder(None), data.captions)
    generator = torch.Generator().manual_seed(3)
    x1 = data.x1.repeat(4, 1, 1)
    x0, t = torch.randn(x1.shape, generator=generator), 0.3 + 0.6 * torch.rand(len(x1), generator=generator)
    config = TrainConfig(batch=len(x1), render_weight=1.0, render_samples=len(x1), render_size=24)
    x_t = interpolate(x0, x1, t)
    with torch.no_grad():
        predicted = model(x_t, t, *text.take(data.caption_index.repeat(4)))
        return float(render_term(0, config, predicted, x_t, x1, t, stats, rank=0, world_size=1))


def test_the_render_stage_fine_tunes_the_1rf_towards_lower_rendering_loss(tiny_latents, tiny_model, tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model, model_dir)
    flow_model = (model_dir / "model.safetensors").read_bytes()
    render = TrainConfig(steps=60, batch=8, lr=1e-3, warmup=5, ema_decay=0.9, log_every=20, render_weight=20.0,
                         render_samples=8, render_size=24)
    rf1 = TrainConfig(steps=250, batch=8, lr=2e-3, warmup=20, ema_decay=0.99, log_every=50)
    summary = run_pipeline(tiny_latents, model_dir, PipelineConfig(stages=("render",), model=TINY_MODEL, render=render))
    assert summary["render"]["steps"] == 60
    assert (model_dir / "model_flow.safetensors").read_bytes() == flow_model
    before = _mean_rendering_loss(model_dir / "model_flow.safetensors", tiny_latents)
    after = _mean_rendering_loss(model_dir / "model.safetensors", tiny_latents)
    assert after < 0.8 * before, (before, after)
    # rerunning both stages keeps both files: the 1-RF is model_flow.safetensors once a render stage exists
    fine_tuned = (model_dir / "model.safetensors").read_bytes()
    run_pipeline(tiny_latents, model_dir, PipelineConfig(stages=("rf1", "render"), model=TINY_MODEL, rf1=rf1, render=render))
    assert (model_dir / "model_flow.safetensors").read_bytes() == flow_model
    assert (model_dir / "model.safetensors").read_bytes() == fine_tuned


def test_a_finished_stage_is_not_resaved_on_resume(tiny_latents, tiny_model, tmp_path):
    """Rerunning a finished stage (e.g. `gen.ship` resuming to ship) keeps the saved file and its measured
    summary; re-saving had replaced the final loss with None and the seconds with those of an empty resume."""
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model, model_dir)
    before = (model_dir / "model.safetensors").read_bytes()
    config = PipelineConfig(stages=("rf1",), model=TINY_MODEL,
                            rf1=TrainConfig(steps=250, batch=8, lr=2e-3, warmup=20, ema_decay=0.99, log_every=50))
    summary = run_pipeline(tiny_latents, model_dir, config)
    assert (model_dir / "model.safetensors").read_bytes() == before
    assert summary["rf1"]["resumed_from"] == 0 and summary["rf1"]["final_loss"] > 0


def test_shipped_model_moves_every_number_of_a_token():
    """The shipped velocity model's output layer has full rank over a token's patch x 14 numbers: with
    patch x 14 > width (the earlier patch 16 at width 128) the velocity lived in a width-dim subspace and
    40 % of every sample stayed the initial noise. Measured: smallest / largest singular value 0.017."""
    from recon4d.gen.latents import NUM_CHANNELS
    from recon4d.gen.model_io import SHIPPED_DIR, load_model_file

    stored = load_model_file(SHIPPED_DIR / "model.safetensors", "rf1")
    config = ModelConfig(**stored.config)
    weight = stored.state["latent_out.weight"]  # [patch * 14, width]
    assert weight.shape == (config.patch * NUM_CHANNELS, config.width)
    singular = torch.linalg.svdvals(weight)
    assert len(singular) == config.patch * NUM_CHANNELS and float(singular[-1] / singular[0]) > 1e-3
