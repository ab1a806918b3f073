"""The sequential fitter on a tiny static world with exact priors: camera accuracy and exact resume."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from recon4d.eval.metrics import ate_rpe
from recon4d.fit.config import load_config
from recon4d.fit.model import GaussianParams
from recon4d.fit.sequential import FitState, SequentialFitter
from recon4d.geometry import invert_pose
from recon4d.geometry.camera import project_to_pixels
from fit_scenes import static_world_inputs


def tiny_config():
    return load_config("fast", {"num_gaussians": 1500, "frame0_iters": 80, "camera_iters": 30, "gaussian_iters": 30,
                                "max_new_per_frame": 200})


@pytest.fixture(scope="module")
def world():
    return static_world_inputs(width=64, height=36, num_frames=5)


def test_camera_path_within_two_percent(world):
    inputs, poses = world
    state = SequentialFitter(inputs, tiny_config()).run()
    estimated = torch.stack([invert_pose(p) for p in state.camera_from_world])
    errors = ate_rpe(estimated.double().numpy(), poses.double().numpy())
    # Monocular scale is free: ATE after Sim(3) alignment, against the length of the true path.
    assert errors["ate_rmse"] <= 0.02 * errors["path_length"], errors
    assert errors["rpe_rot_deg"] < 0.5, errors
    assert abs(errors["scale"] - 1) < 0.1, errors  # the exact depth prior of frame 0 fixes the scale
    assert all(s.get("camera_init") == "pnp" for s in state.frame_stats[1:])


@pytest.mark.slow
def test_interrupted_fit_resumes_to_the_same_result(world):
    inputs, _ = world
    config = tiny_config()
    full = SequentialFitter(inputs, config).run()

    saved = {}

    def stop_after_two(state: FitState, t: int) -> None:
        saved["state"] = state.state_dict()
        if t == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        SequentialFitter(inputs, config, on_frame=stop_after_two).run()
    partial = FitState.from_state_dict(saved["state"], torch.device("cpu"))
    assert partial.next_frame == 3
    resumed = SequentialFitter(inputs, config).run(partial)
    assert len(resumed.camera_from_world) == len(full.camera_from_world)
    for a, b in zip(resumed.camera_from_world, full.camera_from_world):
        assert torch.equal(a, b)
    for name in ("means", "color_logits", "opacity_logits"):
        assert torch.equal(getattr(resumed.gaussians, name), getattr(full.gaussians, name))


def test_replay_rows_follow_spawns_retirement_and_replaced_states(world):
    """The replay's row searches are kept per frame; spawned rows, retired rows and a frame's replaced dynamic
    states (a window boundary adds copies) are all seen, as the boolean selections they replace would."""
    inputs, _ = world
    fitter = SequentialFitter(inputs, tiny_config())
    generator = torch.Generator().manual_seed(0)

    def make(dynamic: list[bool], birth: int) -> GaussianParams:
        n = len(dynamic)
        return GaussianParams.create(torch.rand(n, 3, generator=generator), torch.full((n,), 0.1),
                                     torch.rand(n, 3, generator=generator), 0.5, torch.tensor(dynamic), birth)

    def states(ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.tensor(ids), torch.rand(len(ids), 3, generator=generator), torch.rand(len(ids), 4, generator=generator)

    state = FitState(gaussians=make([False, True, False, True], 0))
    state.dynamic_states = [states([1, 3]) for _ in range(3)]
    alive, ids, means, quats = fitter.replay_rows(state, 1)
    assert alive.tolist() == [0, 1, 2, 3] and ids.tolist() == [1, 3]
    assert torch.equal(means, state.dynamic_states[1][1]) and torch.equal(quats, state.dynamic_states[1][2])
    state.gaussians.append(make([True, False], 2))  # spawned at frame 2: not alive at frame 1
    assert fitter.replay_rows(state, 1)[0].tolist() == [0, 1, 2, 3]
    assert fitter.replay_rows(state, 2)[0].tolist() == [0, 1, 2, 3, 4, 5]
    state.dynamic_states[1] = states([1, 3, 4])
    _, ids, means, _ = fitter.replay_rows(state, 1)
    assert ids.tolist() == [1, 3, 4] and torch.equal(means, state.dynamic_states[1][1])
    # Two rows retired: row numbers count them first, and their states are not the active Gaussians'.
    state.retired, state.gaussians = make([False, True], 0), make([True, False, True], 0)
    state.dynamic_states[2] = states([1, 2, 4])
    _, ids, means, _ = fitter.replay_rows(state, 2)
    assert ids.tolist() == [0, 2] and torch.equal(means, state.dynamic_states[2][1][1:])


@pytest.fixture(scope="module")
def first_frame(world):
    """The world's frame 0 fitted, with the Gaussians in a central box of the image marked dynamic (the world
    is still, so carrying them to frame 1 must leave them where they are)."""
    inputs, poses = world
    fitter = SequentialFitter(inputs, tiny_config())
    state, _ = fitter.fit_first_frame(torch.Generator().manual_seed(0))
    pixels, z = project_to_pixels(state.gaussians.means.detach(), torch.eye(4), inputs.K, min_depth=1e-3)
    state.gaussians.is_dynamic = ((pixels[:, 0] - 32).abs() < 10) & ((pixels[:, 1] - 18).abs() < 7) & (z > 0)
    return state, invert_pose(poses[1])


def carried_error(inputs, state, camera_from_world) -> float:
    """Median distance, relative to camera depth, that `move_dynamic` moves the (truly still) dynamic Gaussians
    of `state` from frame 0 to frame 1."""
    g = state.gaussians
    before = g.means.detach()[g.is_dynamic].clone()
    means = g.means.detach().clone()
    moved = FitState(gaussians=g.select(slice(None)))
    SequentialFitter(inputs, tiny_config()).move_dynamic(moved, 1, torch.eye(4), camera_from_world)
    assert torch.equal(moved.gaussians.means[~g.is_dynamic], means[~g.is_dynamic])  # still ones stay
    after = moved.gaussians.means[g.is_dynamic]
    return float(((after - before).norm(dim=1) / before[:, 2]).median())


def test_dynamic_gaussians_follow_a_confident_prior_up_to_its_per_frame_scale(world, first_frame):
    """With exact priors the carried Gaussians stay put; a prior known only up to a scale per frame (frame 1's
    depth x 5) leaves them there too, as the prior is scaled to the scene's still Gaussians first."""
    inputs, _ = world
    state, camera_from_world = first_frame
    assert int(state.gaussians.is_dynamic.sum()) > 50
    assert carried_error(inputs, state, camera_from_world) < 0.01
    scaled = dataclasses.replace(inputs, depth=inputs.depth * torch.tensor([1.0, 5.0, 1, 1, 1])[:, None, None])
    assert carried_error(scaled, state, camera_from_world) < 0.01


def test_dynamic_gaussians_follow_the_prior_only_where_it_agrees_with_the_still_surfaces(world, first_frame):
    """A prior that puts the moving region of frame 1 60 % farther: followed (+60 %) while it matches the still
    surfaces; ignored (the depth camera motion alone gives) when its still depth is off by 30 % (median) too,
    as the video prior's is where the camera stands still."""
    inputs, _ = world
    state, camera_from_world = first_frame
    region = torch.zeros_like(inputs.moving)
    region[1, 8:29, 16:49] = True
    guessed = inputs.depth.where(~region, inputs.depth * 1.6)
    assert carried_error(dataclasses.replace(inputs, depth=guessed), state, camera_from_world) > 0.4
    noise = 0.4 + 1.2 * torch.rand(guessed.shape[1:], generator=torch.Generator().manual_seed(0))  # a fill's error
    wrong = guessed.clone()
    wrong[1] = guessed[1].where(region[1], guessed[1] * noise)
    assert carried_error(dataclasses.replace(inputs, depth=wrong), state, camera_from_world) < 0.01
