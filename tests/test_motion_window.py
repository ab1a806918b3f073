"""The motion window of the still/moving split: slow movers that no consecutive pair shows, without new false
positives on a still scene seen by a moving camera."""

from __future__ import annotations

import numpy as np
import pytest

from recon4d.eval.metrics import mask_iou
from recon4d.eval.synthetic import SyntheticConfig, make_synthetic
from recon4d.priors.flow import DISFlow
from recon4d.priors.motion import MotionConfig, estimate_moving_masks
from recon4d.priors.motion.window import BACKWARD, FORWARD, WindowResiduals, window_baselines, window_thresholds

pytestmark = pytest.mark.usefixtures("one_thread")

# The synthetic objects orbit at ~0.31 px/frame (median over their pixels; 10-90 %: 0.23-0.42) at 128x96.
SLOW = SyntheticConfig(object_speed=0.015, object_spin_deg=0.3)


@pytest.fixture(scope="module")
def slow_clip():
    """(SyntheticClip, MotionResult) of a static camera watching two slow objects, 24 frames at 128x96."""
    clip = make_synthetic("static", num_frames=24, width=128, height=96, seed=0, config=SLOW)
    return clip, estimate_moving_masks(DISFlow()(clip.frames), frames=clip.frames)


def test_slow_objects_are_slow(slow_clip):
    clip, _ = slow_clip
    speed = np.linalg.norm(clip.flow_forward, axis=-1)[clip.moving_mask[:-1]]
    assert 0.2 < np.median(speed) < 0.4


def test_per_pair_score_misses_slow_motion(slow_clip):
    # Why the window is needed: no pair threshold can sit below 0.3 px without flagging flow noise.
    clip, motion = slow_clip
    pair_on_objects = motion.pair_score[clip.moving_mask]
    assert np.median(pair_on_objects) < 0.5  # measured 0.31
    assert np.mean(pair_on_objects > 1.0) < 0.02


def test_window_finds_slow_objects(slow_clip):
    clip, motion = slow_clip
    # Measured IoU 0.885 and 1.2 % of the background moving (the mask is a little wider than the objects,
    # where flow blurs their edges); without the window, IoU 0.
    assert mask_iou(motion.moving_masks, clip.moving_mask) > 0.75
    assert motion.moving_masks[~clip.moving_mask].mean() < 0.03
    # Every frame, the first and last included (they borrow a two-sided judgement from a reference frame).
    per_frame = (motion.moving_masks & clip.moving_mask).sum((1, 2)) / clip.moving_mask.sum((1, 2))
    assert per_frame.min() > 0.8  # measured 0.92 (frame 0) to 0.98
    assert np.array_equal(motion.motion_score, np.maximum(motion.pair_score, motion.window_score))


def test_window_off_is_the_per_pair_split(slow_clip):
    clip, motion = slow_clip
    flow = DISFlow()(clip.frames)
    without = estimate_moving_masks(flow, MotionConfig(window_frames=0), frames=clip.frames)
    assert not without.window_score.any()
    assert np.array_equal(without.pair_score, motion.pair_score)
    assert (without.moving_masks & clip.moving_mask).sum() < 0.02 * clip.moving_mask.sum()


def test_still_scene_with_moving_camera_stays_still():
    # Parallax over 16 frames is large; the window judges it with the camera model of the window pair.
    clip = make_synthetic("static_scene", num_frames=20, width=128, height=96, seed=0)
    motion = estimate_moving_masks(DISFlow()(clip.frames), frames=clip.frames)
    assert motion.has_parallax.mean() > 0.5  # the camera slows down to turn at both ends of the clip
    # Measured 0.0 % (0.02 % at 160x120 over 30 frames, the same as without the window).
    assert motion.moving_masks.mean() < 0.005


def test_window_baselines_and_reference_frames():
    config = MotionConfig(window_frames=16, baselines=(1, 2, 4, 8))
    ks, baseline, reference = window_baselines(24, config)
    assert ks == [1, 2, 4, 8, 16]
    assert baseline[FORWARD].tolist()[:9] == [16] * 8 + [8]
    assert baseline[FORWARD, 23] == 0 and baseline[BACKWARD, 0] == 0
    assert baseline[BACKWARD, 5] == 4 and baseline[BACKWARD, 16] == 16
    # Frames 8..15 have both directions (8 + 16 or 8 + 8); the others borrow the nearest of them.
    assert reference.tolist() == [8] * 9 + list(range(9, 16)) + [15] * 8
    assert window_baselines(2, config)[2].tolist() == [-1, -1]  # one pair: no two-sided frame
    assert window_baselines(24, MotionConfig(window_frames=0))[0] == []


def test_noise_threshold_survives_slow_movers_among_still_pixels():
    # Window residuals at one baseline: still pixels are Rayleigh noise of scale 0.1 px (4.5 sigma = 0.45 px),
    # and 60 % of the pixels that pass the per-pair test are slow movers with residuals around 1.5 px.
    rng = np.random.default_rng(0)
    frames, height, width = 4, 40, 50
    windows = WindowResiduals.empty(np.full((2, frames), 8), np.arange(frames), height, width)
    shape = windows.residual.shape
    slow = rng.random(shape) < 0.6
    windows.residual[:] = np.where(slow, 1.5 + 0.2 * rng.standard_normal(shape), rng.rayleigh(0.1, shape))
    windows.valid[:] = True
    threshold = window_thresholds(windows, np.ones((frames, height, width), bool), MotionConfig(window_floor_px=0.0))[8]
    # The low quantile is biased up by the movers (0.83 px: it reads the still pixels' 62 % quantile), but
    # stays below them; median + 6 MAD of the same pixels lands above them.
    assert 0.45 <= threshold < 1.0
    values = windows.residual.ravel()
    median = np.median(values)
    assert median + 6 * 1.4826 * np.median(np.abs(values - median)) > 1.5
