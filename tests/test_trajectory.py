"""Continuous-time motion model: basis, least-squares fit, scene storage and any-time evaluation."""
from __future__ import annotations

import dataclasses
import math

import torch

from recon4d.geometry.trajectory import basis_size, evaluate_trajectories, fit_trajectories, time_basis
from recon4d.io.scene import Cameras, Gaussians, MotionModel, Scene4D, load_scene, save_scene


def test_basis_columns():
    tau = torch.tensor([0.0, 0.25, 0.5])
    basis = time_basis(tau, poly_degree=2, fourier_terms=1)
    assert basis.shape == (3, basis_size(2, 1)) == (3, 5)
    expected = torch.stack([torch.ones(3), tau, tau**2, torch.sin(2 * math.pi * tau), torch.cos(2 * math.pi * tau)], -1)
    torch.testing.assert_close(basis, expected)


def test_fit_recovers_a_trajectory_and_ignores_unweighted_samples():
    torch.manual_seed(0)
    times = torch.linspace(0, 1, 30)
    basis = time_basis(times, 3, 3)
    truth = torch.randn(50, basis.shape[1], 3) * 0.3
    values = evaluate_trajectories(truth, basis)
    weights = torch.ones(30, 50)
    weights[:10, :25] = 0  # half the trajectories are "born" at sample 10; garbage before
    values[:10, :25] = 1e3
    coeffs = fit_trajectories(values, basis, weights, ridge=0.0)
    fitted = evaluate_trajectories(coeffs, basis)
    assert (fitted[10:] - values[10:]).abs().max() < 1e-3
    assert (fitted[:, 25:] - values[:, 25:]).abs().max() < 1e-3


def test_ridge_keeps_short_trajectories_tame():
    """A Gaussian seen in 4 of 30 frames: with the ridge, evaluating far outside its samples stays bounded."""
    times = torch.linspace(0, 1, 30)
    basis = time_basis(times, 3, 3)
    values = torch.zeros(30, 1, 3)
    values[26:, 0, 0] = torch.tensor([0.0, 0.1, 0.2, 0.3])
    weights = torch.zeros(30, 1)
    weights[26:] = 1
    coeffs = fit_trajectories(values, basis, weights, ridge=1e-3)
    fitted = evaluate_trajectories(coeffs, basis)[:, 0, 0]
    assert (fitted[26:] - values[26:, 0, 0]).abs().max() < 0.05
    assert fitted.abs().max() < 2.0


def _scene_with_motion(num_frames: int = 9) -> Scene4D:
    n, nd = 6, 2
    gaussians = Gaussians(torch.randn(n, 3), torch.nn.functional.normalize(torch.randn(n, 4), dim=-1),
                          torch.rand(n, 3) * 0.1 + 0.01, torch.rand(n), torch.rand(n, 3) * 0.5 + 0.25)
    is_dynamic = torch.tensor([False, True, False, True, False, False])
    count = basis_size(1, 1)
    position = torch.zeros(nd, count, 3)
    position[:, 0] = torch.tensor([[0.0, 0.0, 2.0], [1.0, 0.0, 3.0]])
    position[:, 1, 0] = torch.tensor([1.0, -2.0])  # linear drift in x over the clip
    rotation = torch.zeros(nd, count, 4)
    rotation[:, 0, 0] = 1
    color = torch.zeros(nd, count, 3)
    color[:, 2, 1] = 0.2  # a sine term on green
    motion = MotionModel(position, rotation, color, poly_degree=1, fourier_terms=1, time_span=float(num_frames - 1))
    cameras = Cameras(torch.eye(4, dtype=torch.float64)[None].repeat(num_frames, 1, 1),
                      torch.tensor([[50.0, 50.0, 32.0, 18.0]]).repeat(num_frames, 1),
                      torch.arange(num_frames, dtype=torch.float64) / 10, 64, 36, [str(i) for i in range(num_frames)])
    return Scene4D(gaussians, is_dynamic, torch.zeros(n, dtype=torch.int32), None, None, cameras, motion=motion)


def test_scene_with_motion_round_trip_and_fractional_time(tmp_path):
    scene = _scene_with_motion()
    path = save_scene(scene, tmp_path / "scene.r4d")
    loaded = load_scene(path)
    assert loaded.motion is not None
    torch.testing.assert_close(loaded.dynamic_states()[0], scene.dynamic_states()[0])
    # Any real time: the model's value, including the colour offsets.
    g = loaded.gaussians_at(2.5)
    assert torch.allclose(g.means[1], torch.tensor([2.5 / 8 * 1.0, 0.0, 2.0]), atol=1e-6)
    assert torch.allclose(g.means[3], torch.tensor([1.0 - 2.0 * 2.5 / 8, 0.0, 3.0]), atol=1e-6)
    green = scene.gaussians.colors[1, 1] + 0.2 * math.sin(2 * math.pi * 2.5 / 8)
    assert abs(float(g.colors[1, 1]) - min(max(green, 0.0), 1.0)) < 1e-6
    # Still Gaussians never move.
    torch.testing.assert_close(g.means[0], scene.gaussians.means[0])


def test_motion_model_file_is_smaller_than_per_frame_states(tmp_path):
    """60 frames, 3 + 3 terms: 10 coefficients x 10 channels per dynamic Gaussian vs 7 values x 60 frames."""
    num_frames, nd = 60, 2000
    base = _scene_with_motion(num_frames)
    position = torch.randn(nd, basis_size(3, 3), 3)
    rotation = torch.randn(nd, basis_size(3, 3), 4)
    color = torch.zeros(nd, basis_size(3, 3), 3)
    motion = MotionModel(position, rotation, color, 3, 3, float(num_frames - 1))
    means, quats, _ = motion.states(torch.arange(num_frames, dtype=torch.float32))
    n = nd
    gaussians = Gaussians(torch.randn(n, 3), torch.nn.functional.normalize(torch.randn(n, 4), dim=-1),
                          torch.rand(n, 3), torch.rand(n), torch.rand(n, 3))
    common = dict(gaussians=gaussians, is_dynamic=torch.ones(n, dtype=torch.bool),
                  birth_frame=torch.zeros(n, dtype=torch.int32), cameras=base.cameras)
    per_frame = save_scene(Scene4D(**common, dynamic_means=means, dynamic_quats=quats),
                           tmp_path / "per_frame.r4d").stat().st_size
    continuous = save_scene(Scene4D(**common, dynamic_means=None, dynamic_quats=None, motion=motion),
                            tmp_path / "continuous.r4d").stat().st_size
    dynamic_part_per_frame = per_frame - 14 * 4 * n  # minus the shared Gaussian attributes
    dynamic_part_continuous = continuous - 14 * 4 * n
    assert dynamic_part_continuous <= dynamic_part_per_frame / 4


def test_windowed_states_match_each_trajectorys_own_basis_and_follow_a_new_window():
    """With windows, `states` groups the trajectories by window (computed once per window tensor); the values
    must be those of each trajectory's own basis, also after the window is replaced."""
    terms, nd = basis_size(2, 2), 12
    position = torch.randn(nd, terms, 3, dtype=torch.float64)
    rotation = torch.randn(nd, terms, 4, dtype=torch.float64)
    color = torch.randn(nd, terms, 3, dtype=torch.float64)
    first = torch.tensor([0.0, 0.0, 5.0, 5.0, 9.0, 0.0, 9.0, 5.0, 0.0, 9.0, 5.0, 0.0], dtype=torch.float64)
    windows = [torch.stack([first, first + 5.0], -1), torch.stack([first * 0, first * 0 + 14.0], -1)]
    motion = MotionModel(position, rotation, color, 2, 2, 14.0, window=windows[0])
    times = torch.tensor([0.0, 3.5, 7.0, 14.0], dtype=torch.float64)
    for window in windows:
        motion = dataclasses.replace(motion, window=window)
        for _ in range(2):  # the second call reads the grouping back
            means, quats, offsets = motion.states(times)
            for i in range(nd):
                tau = (times - window[i, 0]) / (window[i, 1] - window[i, 0])
                basis = time_basis(tau, 2, 2)
                assert torch.allclose(means[:, i], basis @ position[i])
                assert torch.allclose(offsets[:, i], basis @ color[i])
                assert torch.allclose(quats[:, i], torch.nn.functional.normalize(basis @ rotation[i], dim=-1))


def test_states_of_some_rows_skip_other_windows_and_keep_every_bit():
    """`rows` picks trajectories; windows with none of them are not evaluated, and each picked value is
    the one all rows give, bit for bit (what a frame of a long clip renders: its living Gaussians only)."""
    terms, nd = basis_size(3, 2), 3000
    g = torch.Generator().manual_seed(0)
    position, rotation, color = (torch.randn(nd, terms, c, generator=g) for c in (3, 4, 3))
    first = torch.tensor([0.0, 20.0, 40.0])[torch.arange(nd) % 3]
    motion = MotionModel(position, rotation, color, 3, 2, 60.0, window=torch.stack([first, first + 20.0], -1))
    every = motion.states(25.0)
    rows = torch.cat([torch.arange(1, nd, 3)[::2], torch.tensor([nd - 1])])  # window 2 only, and one of window 3
    picked = motion.states(25.0, rows=rows)
    for full, some in zip(every, picked):
        assert some.shape == (1, rows.numel(), full.shape[-1]) and torch.equal(some, full[:, rows])
    # The first window's coefficients are never read: poisoned, the picked values stay the same.
    poisoned = dataclasses.replace(motion, position=position.clone())
    poisoned.position[::3] = float("nan")
    assert torch.equal(poisoned.states(25.0, rows=rows)[0], picked[0])


def test_a_scenes_gaussians_at_a_time_are_its_living_ones_in_their_state_then():
    scene = _scene_with_motion(num_frames=9)
    scene.birth_frame = torch.tensor([0, 3, 0, 0, 5, 0], dtype=torch.int32)
    for t in (0.0, 2.5, 4.0, 7.0):
        alive = scene.alive_at(t)
        means, quats, offsets = scene.dynamic_state_at(t)
        expected = scene.gaussians.means.clone()
        expected[scene.is_dynamic] = means
        got = scene.gaussians_at(t)
        assert len(got) == int(alive.sum()) and torch.equal(got.means, expected[alive])
        colors = scene.gaussians.colors.clone()
        colors[scene.is_dynamic] = (colors[scene.is_dynamic] + offsets).clamp(0, 1)
        assert torch.equal(got.colors, colors[alive]) and torch.equal(got.scales, scene.gaussians.scales[alive])
