"""Slow movers: the prior's masks mark an object only once its motion has accumulated, after the Gaussians on
it were born still; the sequential pass relabels those Gaussians dynamic (and moving), and nothing else."""
from __future__ import annotations

import pytest
import torch

from recon4d.fit.config import load_config
from recon4d.fit.sequential import SequentialFitter
from recon4d.geometry.camera import project_to_pixels
from fit_scenes import static_world_inputs

pytestmark = pytest.mark.usefixtures("one_thread")

REGION = (slice(10, 20), slice(20, 35))  # rows, columns of the late-masked object


@pytest.fixture(scope="module")
def fitted():
    inputs, _ = static_world_inputs(width=64, height=36, num_frames=6)
    config = load_config("fast", {"num_gaussians": 1500, "frame0_iters": 60, "camera_iters": 20, "gaussian_iters": 20,
                                  "max_new_per_frame": 200})
    fitter = SequentialFitter(inputs, config)
    return fitter, fitter.run()


def _in_region(means: torch.Tensor, camera_from_world: torch.Tensor, K: torch.Tensor, margin: int) -> torch.Tensor:
    pixels, _ = project_to_pixels(means, camera_from_world, K)
    u, v = pixels[:, 0], pixels[:, 1]
    return ((v >= REGION[0].start - margin) & (v < REGION[0].stop + margin)
            & (u >= REGION[1].start - margin) & (u < REGION[1].stop + margin))


def test_nothing_is_relabelled_without_moving_masks(fitted):
    fitter, state = fitted
    assert not fitter.inputs.moving.any()
    before = state.gaussians.is_dynamic.clone()
    assert fitter.label_slow_movers(state) == 0 and torch.equal(state.gaussians.is_dynamic, before)


def test_late_masked_gaussians_become_dynamic(fitted):
    fitter, state = fitted
    fitter.inputs.moving[3:, REGION[0], REGION[1]] = True  # masks on half the frames, from frame 3 on
    try:
        count = fitter.label_slow_movers(state)
    finally:
        fitter.inputs.moving[:] = False
    g = state.gaussians
    masked_frames = state.camera_from_world[3:]
    on_object_once = torch.stack([_in_region(g.means, c, fitter.K, margin=1) for c in masked_frames]).any(0)
    on_object_always = torch.stack([_in_region(g.means, c, fitter.K, margin=0) for c in masked_frames]).all(0)
    assert count == int(g.is_dynamic.sum()) and count >= 20
    # Every relabelled Gaussian sits on the masked object in some masked frame (a pixel of rounding aside) ...
    assert bool(on_object_once[g.is_dynamic].all())
    # ... and most of those always on it were relabelled (the rest are occluded or seen in too few frames).
    relabelled = int((g.is_dynamic & on_object_always).sum())
    assert relabelled >= 0.7 * int(on_object_always.sum()), (relabelled, int(on_object_always.sum()))
