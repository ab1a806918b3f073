"""The sequential fitter on a tiny static world with exact priors: camera accuracy and exact resume."""
from __future__ import annotations

import pytest
import torch

from recon4d.eval.metrics import ate_rpe
from recon4d.fit.config import load_config
from recon4d.fit.sequential import FitState, SequentialFitter
from recon4d.geometry import invert_pose
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
