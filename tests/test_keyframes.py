"""Keyframe selection by accumulated flow magnitude, on synthetic clips ray-cast with exact geometry."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from recon4d.errors import InputError
from recon4d.eval.metrics import ate_rpe
from recon4d.eval.synthetic import SyntheticConfig, make_intrinsics, make_synthetic
from recon4d.eval.synthetic.raycast import cast_rays, pixel_directions
from recon4d.eval.synthetic.scene import build_scene
from recon4d.eval.synthetic.shading import shade
from recon4d.fit.keyframes import (
    KeyframeConfig,
    choose_keyframes,
    consecutive_motion,
    select_keyframes,
    sequential_keyframes,
)
from recon4d.geometry import look_at
from recon4d.geometry.lie import fill_poses

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_FRAMES = 40
WORKING_SHORT_SIDE = 180  # the motion is measured in pixels of a 180 px short side, the fit's working size


def speed_change_path(num_frames: int = NUM_FRAMES, slow: float = 0.05) -> torch.Tensor:
    """world_from_camera [T, 4, 4]: the camera slides sideways on a parabola (z = 0.15 x^2) looking at a fixed
    point, at `slow` units per frame in the first half and smoothly (over ~8 frames) 3x faster in the second."""
    steps = np.arange(num_frames - 1) + 0.5 - num_frames / 2
    speed = slow * (1 + 2 / (1 + np.exp(-steps / 2.0)))
    xs = np.concatenate([[0.0], np.cumsum(speed)])
    xs -= xs.mean()
    target = torch.tensor([0.0, 0.4, 6.0], dtype=torch.float64)
    up = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)
    return torch.stack([look_at(torch.tensor([x, 0.0, 0.15 * x * x], dtype=torch.float64), target, up) for x in xs])


def render_static_scene(world_from_camera: torch.Tensor, width: int = 64, height: int = 48) -> np.ndarray:
    """Frames [T, H, W, 3] uint8 of the synthetic still scene (textured wall, floor, box, sphere) ray-cast
    from each pose (one ray per pixel centre)."""
    config = SyntheticConfig(supersample=1)
    scene = build_scene("static_scene", 0, config)
    object_poses = [prim.pose(0.0) for prim in scene.primitives]
    directions = pixel_directions(width, height, make_intrinsics(width, height, config.horizontal_fov_deg), 0.0, 0.0)
    frames = []
    for pose in world_from_camera.numpy():
        rays = directions @ pose[:3, :3].T
        depth, index = cast_rays(scene, object_poses, pose[:3, 3], rays)
        colour = shade(scene, object_poses, pose[:3, 3], rays, depth, index, config)
        frames.append(np.clip(np.round(colour * 255), 0, 255).astype(np.uint8).reshape(height, width, 3))
    return np.stack(frames)


@pytest.fixture(scope="module")
def speed_change_clip():
    poses = speed_change_path()
    return poses, render_static_scene(poses)


def test_faster_camera_gets_denser_keyframes(speed_change_clip):
    poses, frames = speed_change_clip
    motion = consecutive_motion(frames, WORKING_SHORT_SIDE)
    half = NUM_FRAMES // 2
    # Measured: 1.6 px per frame in the slow half, 4.1 in the fast half (at 180 px).
    assert motion[half:].mean() > 2 * motion[: half - 1].mean() > 2.0
    config = KeyframeConfig(motion_budget_px=8.0, max_gap_frames=8)
    keys = select_keyframes(motion, config)
    assert keys == choose_keyframes(frames, WORKING_SHORT_SIDE, config)
    assert keys[0] == 0 and keys[-1] == NUM_FRAMES - 1 and keys == sorted(set(keys))
    assert max(np.diff(keys)) <= config.max_gap_frames
    for before, after in itertools.pairwise(keys):
        assert after - before == 1 or motion[before:after].sum() <= config.motion_budget_px
    slow_keys, fast_keys = sum(k < half for k in keys), sum(k >= half for k in keys)
    # Measured: 5 keyframes in the slow half, 17 in the fast half.
    assert fast_keys > 2 * slow_keys, keys

    # In-between cameras interpolated from the true keyframe poses (the pipeline's fill_poses).
    filled = fill_poses(poses, keys)
    assert torch.equal(filled[keys], poses[keys])
    errors = ate_rpe(filled.numpy(), poses.numpy())
    # Measured: ATE 0.0021, 0.05 % of the 4.1-unit path.
    assert errors["ate_rmse"] < 0.0025 * errors["path_length"], errors
    # The bar is not loose: interpolating the whole path between its ends misses it by far.
    coarse = ate_rpe(fill_poses(poses, [0, NUM_FRAMES - 1]).numpy(), poses.numpy())
    assert coarse["ate_rmse"] > 10 * 0.0025 * coarse["path_length"], coarse


def test_still_camera_with_a_moving_object():
    """A static camera filming moving objects: the median flow is ~0, the 90th percentile sees them."""
    clip = make_synthetic("static", num_frames=5, width=64, height=48)
    frames = clip.frames
    median = consecutive_motion(frames, 48, KeyframeConfig(motion_percentile=50.0))
    high = consecutive_motion(frames, 48, KeyframeConfig())
    exact = np.percentile(np.linalg.norm(clip.flow_forward, axis=-1).reshape(4, -1), 90, axis=1)
    # Measured: median below 0.002 px; 90th percentile 0.38-0.42 px, exact 0.49-0.62 px (DIS on 64x48 frames
    # smooths the small objects' motion into the still background around them).
    assert median.max() < 0.05 and exact.min() > 0.3, (median, exact)
    assert (high > 0.6 * exact).all() and (high < 1.2 * exact).all(), (high, exact)
    # The motion is in pixels of the working resolution: twice the short side, twice the pixels.
    assert np.allclose(consecutive_motion(frames, 96), 2 * high)


def test_select_keyframes_rules():
    config = KeyframeConfig(motion_budget_px=3.0, max_gap_frames=4)
    assert select_keyframes(np.zeros(9), config) == [0, 4, 8, 9]  # nothing moves: the max gap
    assert select_keyframes(np.ones(9), config) == [0, 3, 6, 9]  # 3 px between keyframes, never 4
    assert select_keyframes(np.array([0.5, 5.0, 0.5, 0.5]), config) == [0, 1, 2, 4]  # one pair over budget
    assert select_keyframes(np.array([0.1, np.nan, 0.1]), config) == [0, 1, 2, 3]  # unknown motion: keep
    assert select_keyframes(np.array([7.0]), config) == [0, 1]
    with pytest.raises(InputError, match="motion_budget_px"):
        select_keyframes(np.ones(3), KeyframeConfig(motion_budget_px=0.0))
    with pytest.raises(InputError, match="max_gap_frames"):
        select_keyframes(np.ones(3), KeyframeConfig(max_gap_frames=0))
    with pytest.raises(InputError, match="keyframes need uint8 frames"):
        consecutive_motion(np.zeros((1, 32, 32, 3), np.uint8), 180)


def test_max_share_caps_keyframes_and_keeps_them_where_motion_is():
    # 400 pairs: a still first half (0.2 px per pair), then a fast second half (3 px per pair).
    motion = np.concatenate([np.full(200, 0.2), np.full(200, 3.0)])
    free = select_keyframes(motion, KeyframeConfig(motion_budget_px=6.0, max_gap_frames=6))
    assert len(free) == 135  # 34 in the still half (the gap), 101 in the fast one (the budget: one per 2 pairs)
    capped = select_keyframes(motion, KeyframeConfig(motion_budget_px=6.0, max_gap_frames=6, max_share=0.1))
    assert len(capped) <= 41 and len(capped) >= 35  # ceil(0.1 * 401); the bisection lands within 1 % of the cap
    keys = np.asarray(capped)
    still, fast = (keys < 200).sum(), (keys >= 200).sum()
    assert fast > 2 * still, (still, fast)  # budget and gap grew together: keyframes stay where the motion is
    gaps = np.diff(keys)
    assert gaps[keys[1:] > 200].max() < gaps[keys[1:] <= 200].min()
    assert select_keyframes(motion, KeyframeConfig(motion_budget_px=6.0, max_share=1.0)) == free
    with pytest.raises(InputError, match="max_share"):
        select_keyframes(motion, KeyframeConfig(max_share=0.0))


def test_sequential_keyframes_follow_the_motion_and_spare_short_clips():
    fitted = list(range(0, 40, 2))  # every second frame is a keyframe
    motion = np.r_[np.full(20, 2.0), np.full(19, 6.0)]  # pixels per frame: 3x faster in the second half
    config = KeyframeConfig(motion_budget_px=4.0, sequential_budget_px=12.0, max_gap_frames=100)
    keys = sequential_keyframes(fitted, motion, config)
    assert keys[0] == 0 and keys[-1] == 38 and set(keys) < set(fitted)
    slow, fast = [k for k in keys if k < 20], [k for k in keys if k >= 20]
    assert len(fast) >= 2 * len(slow), keys  # every pair of the fast half is over half the budget
    gaps = np.diff(keys)
    assert gaps[: len(slow) - 1].min() >= 6 and gaps[len(slow):-1].max() <= 4, keys
    # No subset for clips with few keyframes, nor without a budget.
    assert sequential_keyframes(fitted, motion, KeyframeConfig(sequential_budget_px=12.0, sequential_min_keyframes=20)) == fitted
    assert sequential_keyframes(fitted, motion, KeyframeConfig()) == fitted


def test_sequential_keyframes_within_a_cap_keep_following_the_motion():
    """`sequential_max_keyframes`: a pick over the cap is taken again at a larger budget and gap, so it fits the
    cap with both ends and still puts more keyframes where the motion is faster; a cap over the free pick
    changes nothing."""
    fitted = list(range(0, 400, 2))
    motion = np.r_[np.full(200, 2.0), np.full(199, 6.0)]
    config = KeyframeConfig(motion_budget_px=4.0, sequential_budget_px=12.0, max_gap_frames=100)
    free = sequential_keyframes(fitted, motion, config)
    assert len(free) > 60
    for cap in (40, 20, 2):
        keys = sequential_keyframes(fitted, motion, dataclasses.replace(config, sequential_max_keyframes=cap))
        assert 0.75 * cap <= len(keys) <= cap and keys[0] == 0 and keys[-1] == 398, (cap, keys)
        assert set(keys) <= set(fitted)
        if cap > 2:
            slow, fast = [k for k in keys if k < 200], [k for k in keys if k >= 200]
            assert len(fast) >= 2 * len(slow), keys
    assert sequential_keyframes(fitted, motion, dataclasses.replace(config, sequential_max_keyframes=len(free))) == free
