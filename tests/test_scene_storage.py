"""Scene file storage: trajectory coefficients that are mostly zero are stored sparse, round trip exact."""
from __future__ import annotations

import pytest
import torch

from recon4d.errors import SceneError
from recon4d.io.scene import MotionModel, load_scene, save_scene
from test_scene import make_scene


def _with_motion(drifting_share: float):
    scene = make_scene(num_frames=6, n=400)
    nd = int(scene.is_dynamic.sum())
    g = torch.Generator().manual_seed(1)
    basis = 1 + 3 + 2 * 3
    position = torch.randn(nd, basis, 3, generator=g)
    rotation = torch.randn(nd, basis, 4, generator=g)
    color = torch.randn(nd, basis, 3, generator=g)
    drifting = torch.arange(nd) < int(drifting_share * nd)
    # Background with a residual drift: constant + linear position, constant rotation, no colour change.
    position[drifting, 2:] = 0
    rotation[drifting, 1:] = 0
    color[drifting] = 0
    scene.motion = MotionModel(position, rotation, color, poly_degree=3, fourier_terms=3, time_span=5.0)
    scene.dynamic_means = scene.dynamic_quats = None  # the model defines the per-frame states
    moving = scene.is_dynamic.clone()
    moving[scene.is_dynamic.nonzero().squeeze(1)[drifting]] = False
    scene.is_moving = moving
    return scene


def test_zero_coefficients_are_not_stored(tmp_path):
    dense = save_scene(_with_motion(0.0), tmp_path / "dense.r4d").stat().st_size
    mostly_drifting = _with_motion(0.9)
    sparse = save_scene(mostly_drifting, tmp_path / "sparse.r4d").stat().st_size
    nd = int(mostly_drifting.is_dynamic.sum())
    # Dense coefficients cost 10 x (3 + 4 + 3) x 4 = 400 bytes per dynamic Gaussian; a drifting one keeps
    # 2 x 3 + 1 x 4 floats (40 bytes) plus 30 mask bytes.
    assert (dense - sparse) / (0.9 * nd) > 300
    loaded = load_scene(tmp_path / "sparse.r4d")
    for name in MotionModel.TENSORS:
        assert torch.equal(getattr(loaded.motion, name), getattr(mostly_drifting.motion, name)), name
    means, quats, offsets = mostly_drifting.motion.states(torch.arange(6.0))
    # A scene with a motion model keeps no per-frame states; evaluated, they are the model's values.
    assert loaded.dynamic_means is None and loaded.dynamic_quats is None
    states = loaded.dynamic_states()
    assert torch.equal(states[0], means) and torch.equal(states[1], quats)
    # A copy beside the model could disagree with it: refused.
    loaded.dynamic_means, loaded.dynamic_quats = states
    with pytest.raises(SceneError, match="keeps no stored states"):
        loaded.validate()
    # Dense states are evaluated without colour offsets (a long clip's would be 0.6 GB), same values.
    without = mostly_drifting.motion.states(torch.arange(6.0), with_colors=False)
    assert torch.equal(without[0], means) and torch.equal(without[1], quats) and without[2] is None
    assert offsets.shape == means.shape
