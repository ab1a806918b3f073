"""Camera search of unfitted frames (`recon4d.eval.reconstruction.refine_cameras`): it recovers a perturbed
camera, with or without a coarse start at half resolution, and searching frames side by side on two threads
gives exactly the poses of one thread."""
from __future__ import annotations

import pytest
import torch
from view_scenes import moving_patch_scene

from recon4d.eval.reconstruction import refine_cameras
from recon4d.fit.config import FitConfig
from recon4d.geometry.camera import invert_pose
from recon4d.geometry.lie import apply_pose_delta
from recon4d.io.scene_render import render_scene


@pytest.mark.parametrize("coarse_share", [0.0, 0.5])
def test_refine_cameras_recovers_poses_and_ignores_thread_count(coarse_share):
    scene = moving_patch_scene(num_frames=4, width=64, height=36)
    truth = scene.cameras.world_from_camera.clone()
    with torch.no_grad():
        frames = torch.stack([render_scene(scene, t).color.clamp(0, 1) for t in range(4)])
    frames = (frames.numpy() * 255 + 0.5).astype("uint8")
    generator = torch.Generator().manual_seed(0)
    for t in (1, 2, 3):  # about 1 degree and 2 % of the scene depth off
        delta = torch.cat([torch.randn(3, generator=generator) * 0.015, torch.randn(3, generator=generator) * 0.03])
        camera_from_world = apply_pose_delta(delta.double(), invert_pose(truth[t]))
        scene.cameras.world_from_camera[t] = invert_pose(camera_from_world)
    config = FitConfig()
    config.eval.holdout_refine_iters = 100
    config.eval.holdout_refine_coarse_share = coarse_share
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = refine_cameras(scene, frames, [1, 2, 3], config, torch.device("cpu"))
        torch.set_num_threads(2)
        parallel = refine_cameras(scene, frames, [1, 2, 3], config, torch.device("cpu"))
        assert torch.get_num_threads() == 2  # restored after the search
    finally:
        torch.set_num_threads(threads)
    for t in (1, 2, 3):
        assert torch.equal(serial[t], parallel[t])
        target = torch.as_tensor(frames[t]).float() / 255

        def error(camera_from_world: torch.Tensor) -> float:
            with torch.no_grad():
                return float((render_scene(scene, t, camera_from_world=camera_from_world).color - target).abs().mean())

        start, found = error(invert_pose(scene.cameras.world_from_camera[t])), error(serial[t])
        assert found < 0.55 * start, (t, start, found)  # the rest: the moving patch and 8-bit frames
