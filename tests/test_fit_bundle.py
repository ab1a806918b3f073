"""Keyframe bundle adjustment and loop closure in the sequential pass (recon4d.fit.bundle, recon4d.fit.loop)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fit_scenes import static_world_inputs

from recon4d.errors import InputError
from recon4d.eval.metrics import ate_rpe
from recon4d.eval.synthetic import SyntheticConfig, make_synthetic
from recon4d.fit.bundle import window_frames
from recon4d.fit.config import load_config
from recon4d.fit.loop import find_revisit, frame_descriptors
from recon4d.fit.sequential import SequentialFitter
from recon4d.geometry import invert_pose

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny fits: OpenMP spin-waiting costs more than it gains

LOOP = {"min_gap": 4, "min_similarity": 0.9, "min_departure": 0.1}


def test_window_frames_and_gauge():
    assert window_frames(7, 4, None) == ([4, 5, 6, 7], {0, 4})
    assert window_frames(2, 5, None) == ([0, 1, 2], {0})
    assert window_frames(9, 3, 1) == ([1, 7, 8, 9], {0, 1})  # the revisited frame holds the gauge
    assert window_frames(9, 3, 8) == ([7, 8, 9], {0, 7})  # inside the window already: nothing to add


def side_to_side_clip(phase: float, num_frames: int = 13, noise: float = 0.03):
    """Still synthetic scene, camera sliding sideways with x = A sin(phase * s / s_max): phase pi goes out to
    one side, back through the start, out to the other side and back (revisits); pi/2 is one sweep. Frames
    get sensor noise so that no revisit is pixel-identical. Returns (frames [T, H, W, 3], centres x [T])."""
    amplitude = 1.5
    config = SyntheticConfig(camera_side_speed=phase * amplitude / ((num_frames - 1) / 2),
                             camera_side_amplitude=amplitude, camera_forward_speed=0.0)
    clip = make_synthetic("static_scene", num_frames=num_frames, width=64, height=48, seed=0, config=config)
    frames = torch.as_tensor(clip.frames).float() / 255
    frames = (frames + noise * torch.randn(frames.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    return frames, clip.world_from_camera[:, 0, 3]


def test_loop_closure_finds_planted_revisit_and_no_other():
    frames, x = side_to_side_clip(math.pi)
    descriptors = frame_descriptors(frames)
    found = {t: find_revisit(descriptors, t, **LOOP) for t in range(len(frames))}
    # The last frame is back where frames 0 and 6 were; frame 5 (x = -0.75) is back where frame 1 was.
    assert found[12] in (0, 6)
    assert found[5] == 1
    for t, k in found.items():
        if k is not None:  # every detection is a true revisit: the same camera centre, many frames back
            assert abs(x[t] - x[k]) < 0.05 and t - k >= LOOP["min_gap"], (t, k, x[t], x[k])
    assert sum(k is not None for k in found.values()) >= 3


def test_loop_closure_ignores_a_path_that_never_returns():
    frames, x = side_to_side_clip(math.pi / 2)
    assert np.all(np.diff(x) > 0)
    descriptors = frame_descriptors(frames)
    assert all(find_revisit(descriptors, t, **LOOP) is None for t in range(len(frames)))
    # A still camera sees the same view all the time but never departed from it: no loop either.
    still = frames[:1].repeat(len(frames), 1, 1, 1)
    still = (still + 0.03 * torch.randn(still.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert all(find_revisit(frame_descriptors(still), t, **LOOP) is None for t in range(len(still)))


def world_with_wrong_depth_prior(num_frames: int = 6, tilt: float = 0.3):
    """The fit tests' static world (exact flow) with a per-frame wrong depth prior: a random smooth tilt and
    bulge of up to exp(+-tilt), as a monocular prior's errors are. Frame 0's prior stays exact."""
    inputs, poses = static_world_inputs(width=64, height=36, num_frames=num_frames, step=0.25)
    generator = torch.Generator().manual_seed(0)
    height, width = inputs.depth.shape[1:]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    for t in range(1, num_frames):
        a, b, c = (torch.rand(3, generator=generator) * 2 - 1) * tilt
        inputs.depth[t] = inputs.depth[t] * torch.exp(a * xx + b * yy + c * (xx**2 + yy**2))
    return inputs, poses


def camera_errors(state, poses) -> dict:
    estimated = torch.stack([invert_pose(p) for p in state.camera_from_world])
    return ate_rpe(estimated.double().numpy(), poses.double().numpy())


@pytest.mark.slow  # two small fits: about 11 CPU s
def test_bundle_adjustment_lowers_the_camera_error():
    inputs, poses = world_with_wrong_depth_prior()
    overrides = {"num_gaussians": 1500, "frame0_iters": 80, "camera_iters": 30, "gaussian_iters": 30,
                 "max_new_per_frame": 200}
    without = SequentialFitter(inputs, load_config("fast", overrides)).run()
    config = load_config("fast", {**overrides, "bundle": {"every": 2, "window": 5, "iters": 20}})
    adjusted = SequentialFitter(inputs, config).run()
    before, after = camera_errors(without, poses), camera_errors(adjusted, poses)
    # Measured: ATE 0.25 -> 0.12 % of the path, RPE rotation 0.12 -> 0.08 degrees.
    assert after["ate_rmse"] < 0.75 * before["ate_rmse"], (before, after)
    assert after["rpe_rot_deg"] < before["rpe_rot_deg"], (before, after)
    ran = [s for s in adjusted.frame_stats if "bundle_frames" in s]
    assert [s["frame"] for s in ran] == [2, 4]
    assert all(s["bundle_loss_after"] < s["bundle_loss_before"] for s in ran)
    assert torch.equal(adjusted.camera_from_world[0], torch.eye(4))  # frame 0 holds the gauge
    assert all("bundle_frames" not in s for s in without.frame_stats)


def test_bundle_settings_are_validated_and_off_by_default():
    assert load_config("default").bundle.every == 0
    assert load_config("default", {"bundle.every": 3}).bundle.every == 3
    for field, value in (("window", 1), ("loop_min_similarity", 1.5), ("every", -1), ("lr_camera", 0.0)):
        with pytest.raises(InputError, match=f"bundle.{field}"):
            load_config("default", {f"bundle.{field}": value})
