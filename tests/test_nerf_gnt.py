"""GNT-MOVE: MoE routing and losses, sampling/projection geometry, training that overfits a scene, NeRFool,
checkpoints and the `recon4d nerf` commands (bad inputs -> one line, exit 2)."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from recon4d.cli import main
from recon4d.errors import InputError
from recon4d.image import psnr
from recon4d.nerf.data import PosedImages, write_transforms
from recon4d.nerf.gnt.attack import AttackConfig, attack, purify
from recon4d.nerf.gnt.checkpoint import load_model, save_model
from recon4d.nerf.gnt.config import GNTConfig, TrainConfig
from recon4d.nerf.gnt.model import GNT
from recon4d.nerf.gnt.moe import (
    CosineGate,
    balance_loss,
    cv_squared,
    probability_in_top_k,
    spatial_consistency_loss,
)
from recon4d.nerf.gnt.procedural import SceneSpec, render_scene
from recon4d.nerf.gnt.rays import (
    importance_depths,
    nearest_views,
    pixel_rays,
    project_points,
    uniform_depths,
)
from recon4d.nerf.gnt.render import render_view
from recon4d.nerf.gnt.train import depth_loss, sample_batch, split_scenes, train

TINY = GNTConfig(feature_dim=8, width=16, blocks=2, heads=2, ffn_ratio=2, dense_odd_ratio=6, experts=4, gate_dim=2,
                 coarse_samples=8, fine_samples=8, source_views=3)
TINY_SPEC = SceneSpec(views=10, size=16)
# A held-out-free overfit of one procedural scene: what a few hundred CPU steps reach comfortably. The colour
# is a blend of source pixels (it cannot memorise colours), so the margin over copying the nearest view
# measures the geometry the model found.
OVERFIT_STEPS, OVERFIT_PSNR, OVERFIT_MARGIN_DB = 300, 17.0, 1.0


pytestmark = pytest.mark.usefixtures("one_thread")


def test_gate_routes_each_token_to_top2_with_weights_summing_to_one():
    torch.manual_seed(0)
    gate = CosineGate(width=16, experts=4, gate_dim=2, top_k=2)
    tokens = torch.randn(500, 16)
    for noise in (None, torch.randn(500, 4)):
        routing = gate(tokens, noise)
        assert torch.equal((routing.gates > 0).sum(-1), torch.full((500,), 2))
        assert torch.allclose(routing.gates.sum(-1), torch.ones(500), atol=1e-6)
        chosen = routing.gates > 0
        top2 = torch.zeros_like(chosen).scatter(-1, routing.probabilities.topk(2, -1).indices, True)
        assert torch.equal(chosen, top2)
        assert torch.allclose(routing.probabilities.sum(-1), torch.ones(500), atol=1e-6)
    assert gate.noise_std == pytest.approx(0.25)


def test_balance_loss_is_minimal_for_uniform_routing():
    uniform = balance_loss(torch.full((4,), 250.0), torch.full((4,), 250.0))
    assert float(uniform) == pytest.approx(0.0, abs=1e-9)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        importance, load = torch.rand(4, generator=g) * 500, torch.rand(4, generator=g) * 500
        assert float(balance_loss(importance, load)) > float(uniform)
    collapsed = balance_loss(torch.tensor([500.0, 500.0, 0.0, 0.0]), torch.tensor([500.0, 500.0, 0.0, 0.0]))
    assert float(collapsed) == pytest.approx(2.0)  # CV^2 of (1, 1, 0, 0) is 1, twice
    assert float(cv_squared(torch.tensor([3.0]))) == 0.0


def test_probability_in_top_k_matches_monte_carlo():
    g = torch.Generator().manual_seed(1)
    clean = torch.tensor([[0.3, 0.1, -0.2, 0.25]])
    std = 0.25
    noisy = clean + torch.randn(1, 4, generator=g) * std
    predicted = probability_in_top_k(clean, noisy, std, 2)[0]
    # the prediction is exact for the threshold set by the current draw of the other experts; average it
    # over draws and compare with the empirical top-2 frequency
    draws = clean + torch.randn(20000, 4, generator=g) * std
    empirical = torch.zeros(4).scatter_add(0, draws.topk(2, -1).indices.flatten(), torch.ones(40000)) / 20000
    averaged = probability_in_top_k(clean.expand(20000, 4), draws, std, 2).mean(0)
    assert torch.allclose(averaged, empirical, atol=0.03), (averaged, empirical)
    assert predicted.shape == (4,) and bool(((predicted >= 0) & (predicted <= 1)).all())


def test_spatial_consistency_is_zero_for_equal_gates_and_weights_near_points():
    points = torch.randn(5, 1, 6, 3).expand(5, 2, 6, 3).clone()
    probabilities = torch.softmax(torch.randn(5, 1, 6, 4), -1).expand(5, 2, 6, 4).clone()
    assert float(spatial_consistency_loss(points, probabilities, scale=0.1)) == pytest.approx(0.0, abs=1e-6)
    probabilities[:, 1] = torch.softmax(torch.randn(5, 6, 4), -1)
    near = spatial_consistency_loss(points, probabilities, scale=0.1)
    assert float(near) > 0.01
    far_points = points.clone()
    far_points[0, 1] += 10.0  # one pair far apart: its KL barely counts
    assert float(spatial_consistency_loss(far_points, probabilities, scale=0.1)) != pytest.approx(float(near))


def test_rays_project_back_to_their_pixels_and_importance_sampling_follows_weights():
    scene = render_scene(0, TINY_SPEC)
    pose, K = scene.world_from_camera[2], scene.intrinsics[2]
    pixels = torch.tensor([[0.0, 0.0], [7.5, 3.0], [15.0, 15.0]])
    origins, directions = pixel_rays(pose, K, pixels)
    points = origins + 3.3 * directions
    projected, visible = project_points(points, scene.world_from_camera[2:3], scene.intrinsics[2:3], 16, 16)
    assert torch.allclose(projected[0], pixels, atol=1e-3) and bool(visible.all())
    local = torch.linalg.inv(pose) @ torch.cat([points, torch.ones(3, 1)], -1).T
    assert torch.allclose(local[2], torch.full((3,), 3.3), atol=1e-4)  # t is z-depth
    depths = uniform_depths(2.0, 6.0, 4, 16)
    weights = torch.zeros(4, 16)
    weights[:, 5] = 1.0
    fine = importance_depths(depths, weights, 32)
    assert bool(((fine > depths[0, 4]) & (fine < depths[0, 6])).float().mean() > 0.95)


def test_global_batch_shards_concatenate_to_the_single_process_batch():
    splits = split_scenes([render_scene(0, TINY_SPEC)], -1, TINY.source_views)
    config = TrainConfig(rays=16)
    model = GNT(TINY)
    full = sample_batch(splits, TINY, config, model.moe_layers, step=7)
    again = sample_batch(splits, TINY, config, model.moe_layers, step=7)
    halves = [full.shard(rank, 2) for rank in range(2)]
    for name in ("origins", "target_rgb", "jitter", "uniforms", "noise"):
        assert torch.equal(getattr(full, name), getattr(again, name))
        assert torch.equal(torch.cat([getattr(h, name) for h in halves]), getattr(full, name))
    pairs = full.origins.shape[0] // 2
    assert pairs == 8 and torch.equal(halves[0].images, full.images)


def test_procedural_depths_are_true_multiview_depths():
    """The ray caster's z-depths: finite exactly on the object, and view 0's surface points, moved into view 1,
    land at view 1's depth (where view 1 sees the same surface: the median over all of them)."""
    scene = render_scene(0, SceneSpec(views=10, size=32))  # even seed: objects on white, alpha known
    assert torch.equal(torch.isfinite(scene.depths), scene.alphas > 0.5)
    v, u = torch.nonzero(torch.isfinite(scene.depths[0]), as_tuple=True)
    origins, directions = pixel_rays(scene.world_from_camera[0], scene.intrinsics[0], torch.stack([u, v], -1).float())
    points = origins + scene.depths[0][v, u][:, None] * directions
    pixels, visible = project_points(points, scene.world_from_camera[1:2], scene.intrinsics[1:2], 32, 32)
    pixels, visible = pixels[0], visible[0]
    z = (points - scene.world_from_camera[1, :3, 3]) @ scene.world_from_camera[1, :3, 2]
    col, row = pixels[:, 0].round().long().clamp(0, 31), pixels[:, 1].round().long().clamp(0, 31)
    seen = visible & torch.isfinite(scene.depths[1][row, col])
    assert int(seen.sum()) > 50
    assert float((scene.depths[1][row, col] - z)[seen].abs().median()) < 0.05  # scene units; objects ~1 across


def test_depth_loss_is_l1_in_depth_range_units_on_surface_rays():
    target = torch.tensor([3.0, 4.0, math.inf, 5.0])
    assert float(depth_loss(target.clone().nan_to_num(posinf=2.5), target, 2.0, 6.0)) == 0.0
    assert float(depth_loss(torch.tensor([3.4, 3.6, 0.0, 5.0]), target, 2.0, 6.0)) == pytest.approx(0.8 / 3 / 4)
    assert float(depth_loss(torch.tensor([3.0]), torch.tensor([math.inf]), 2.0, 6.0)) == 0.0  # no surface: no term


@pytest.mark.slow
def test_depth_supervision_teaches_the_readout_depth(tmp_path):
    """The same tiny model and steps, with and without the depth term: the readout depth of a training view
    comes out closer to the ray caster's depth with it."""
    scene = render_scene(3, TINY_SPEC)
    errors = {}
    for weight in (0.0, 1.0):
        config = TrainConfig(steps=150, rays=64, lr=3e-3, holdout_every=-1, eval_every=150, seed=0,
                             depth_weight=weight)
        train([scene], tmp_path / str(weight), TINY, config)
        model, _ = load_model(tmp_path / str(weight))
        others = scene.subset([j for j in range(len(scene)) if j != 0])
        _, depth = render_view(model, others, scene.world_from_camera[0], scene.intrinsics[0], 16, 16)
        hit = torch.isfinite(scene.depths[0])
        errors[weight] = float((depth - scene.depths[0])[hit].abs().mean())
    assert errors[1.0] < 0.7 * errors[0.0], errors


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """A tiny GNT-MOVE trained on one procedural scene; returns (model, scene, model folder, last record)."""
    scene = render_scene(3, TINY_SPEC)
    out = tmp_path_factory.mktemp("gnt")
    config = TrainConfig(steps=OVERFIT_STEPS, rays=64, lr=3e-3, holdout_every=-1,
                         eval_every=OVERFIT_STEPS, seed=0)
    record = train([scene], out, TINY, config)
    model, _ = load_model(out)
    return model, scene, out, record


@pytest.mark.slow
def test_tiny_model_overfits_one_scene(overfit):
    model, scene, _, record = overfit
    values, nearest = [], []
    for i in (0, 4):
        others = scene.subset([j for j in range(len(scene)) if j != i])
        rgb, depth = render_view(model, others, scene.world_from_camera[i], scene.intrinsics[i], 16, 16)
        values.append(psnr(rgb, scene.images[i]))
        nearest.append(psnr(others.images[nearest_views(scene.world_from_camera[i], others.world_from_camera, 1)[0]],
                            scene.images[i]))
        assert bool(((depth >= scene.near) & (depth <= scene.far)).all())
    assert sum(values) / 2 > OVERFIT_PSNR, values
    assert sum(values) > sum(nearest) + 2 * OVERFIT_MARGIN_DB, (values, nearest)
    assert record["step"] == OVERFIT_STEPS and math.isfinite(record["mse"])


@pytest.mark.slow
def test_attack_lowers_psnr_within_eps_and_defence_is_measured(overfit):
    model, scene, _, _ = overfit
    config = AttackConfig(eps=8 / 255, steps=10, rays=256, seed=0)
    result = attack(model, scene, held=[4], source_index=[j for j in range(len(scene)) if j != 4], config=config)
    assert result["attacked_psnr"] < result["clean_psnr"] - 0.2  # bounded by the clean error of a 16 px toy
    assert result["max_abs_perturbation"] <= config.eps + 1e-6
    assert math.isfinite(result["defended_clean_psnr"]) and math.isfinite(result["defended_attacked_psnr"])
    universal = attack(model, scene, [4, 9], [0, 1, 2, 3, 5, 6, 7, 8], dataclasses.replace(config, universal=True, steps=2))
    assert universal["max_abs_perturbation"] <= config.eps + 1e-6 and universal["psnr_drop"] > 0


def test_purification_blurs_and_keeps_constant_images():
    images = torch.rand(2, 12, 12, 3)
    blurred = purify(images, 1.0)
    assert blurred.shape == images.shape and float(blurred.std()) < float(images.std())
    flat = torch.full((1, 8, 8, 3), 0.4)
    assert torch.allclose(purify(flat, 1.5), flat, atol=1e-6)


def test_checkpoint_round_trip_and_foreign_files(tmp_path):
    torch.manual_seed(0)
    model = GNT(TINY).eval()
    save_model(model, tmp_path / "m")
    loaded, content = load_model(tmp_path / "m")
    assert content["model"] == TINY.to_json()
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    save_model(model, tmp_path / "flat.safetensors")
    load_model(tmp_path / "flat.safetensors")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InputError, match="not a recon4d GNT model"):
        load_model(tmp_path / "foreign")
    with pytest.raises(InputError, match="no GNT model"):
        load_model(tmp_path / "missing")


def _scene_folder(tmp_path, seed=3):
    folder = tmp_path / "scene"
    write_transforms(render_scene(seed, TINY_SPEC), folder)
    return folder


def test_cli_eval_writes_the_interface_json(tmp_path, capsys):
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    save_model(GNT(TINY).eval(), model_dir)  # untrained: this checks the interface, the overfit test the quality
    folder = _scene_folder(tmp_path)
    out = tmp_path / "res" / "eval.json"
    code = main(["nerf", "eval", str(folder), "--model", str(model_dir), "--holdout-every", "5", "--short-side", "16",
                 "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert [v["index"] for v in result["views"]] == [4, 9]
    for key in ("psnr", "ssim", "nearest_view_psnr"):
        assert math.isfinite(result[key])
    assert result["resolution"] == [16, 16] and "dense_psnr" not in result
    assert result["psnr"] == pytest.approx(sum(v["psnr"] for v in result["views"]) / 2)
    code = main(["nerf", "eval", str(folder), "--model", str(model_dir), "--dense-model", str(model_dir),
                 "--views", "2", "--shots", "3", "--short-side", "16", "--json", str(out)])
    result = json.loads(out.read_text())
    assert code == 0 and result["shots"] == 3 and result["dense_psnr"] == pytest.approx(result["psnr"])


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    folder = _scene_folder(tmp_path)
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(b"not a model")
    foreign.with_suffix(".json").write_text("{}")
    cases = [
        ["nerf", "eval", str(tmp_path / "nothing"), "--no-dense"],
        ["nerf", "eval", str(folder), "--model", str(foreign)],
        ["nerf", "eval", str(folder), "--holdout-every", "1", "--no-dense"],
        ["nerf", "render", str(folder), "-o", str(tmp_path / "video.avi")],
        ["nerf", "attack", str(folder), "--steps", "0"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("recon4d: error:") and len(err.splitlines()) == 1, (argv, err)


def test_eval_refuses_views_without_overlap(tmp_path):
    from recon4d.nerf.gnt.evaluate import evaluate

    scene = render_scene(3, TINY_SPEC)
    away = scene.world_from_camera.clone()
    away[5, :3, :3] = away[5, :3, :3] @ torch.diag(torch.tensor([-1.0, 1.0, -1.0]))  # turn around: looks away
    turned = PosedImages(scene.images, None, None, away, scene.intrinsics, scene.names, scene.near, scene.far)
    with pytest.raises(InputError, match="shares no content"):
        evaluate(GNT(TINY).eval(), turned, [5], [0, 1, 2, 3, 4, 6])
