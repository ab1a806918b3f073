"""Light-field students: rays, NeRDF basis and volume rendering, the teacher's density profile, FLOP counts,
ONNX export against PyTorch, resumable training."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from view_scenes import WALL_Z, moving_patch_scene

from recon4d.errors import InputError
from recon4d.geometry.camera import invert_pose, scale_camera_matrix
from recon4d.nerf.nelf.config import DistillConfig, NeRDFConfig, R2LConfig, TrainConfig
from recon4d.nerf.nelf.encoding import RayFrame, flops_per_pixel
from recon4d.nerf.nelf.nerdf import NeRDFStudent, composite, fit_basis_coefficients, trig_basis
from recon4d.nerf.nelf.onnx_export import export_and_verify, onnx_max_difference
from recon4d.nerf.nelf.r2l import R2LStudent
from recon4d.nerf.nelf.rays import disparity_bins, disparity_depths, pixel_rays
from recon4d.nerf.nelf.teacher import render_gaussians, teacher_gaussians
from recon4d.nerf.nelf.views import ViewSet, real_views


@pytest.fixture(autouse=True)
def _quiet_and_one_thread(monkeypatch):
    """No progress bars; one thread (small convolutions run many times faster that way on a shared, busy CPU)."""
    monkeypatch.setenv("RECON4D_NO_PROGRESS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_pixel_rays_reproject_to_their_pixels():
    scene = moving_patch_scene(num_frames=2, width=32, height=24)
    pose, K = scene.cameras.world_from_camera[1], scene.cameras.K(1)
    rays = pixel_rays(pose, K, 32, 24)
    points = rays[:3] + 2.5 * rays[3:]  # depth 2.5 along every ray
    camera = invert_pose(pose).float()
    local = torch.einsum("ij,jhw->ihw", camera[:3, :3], points) + camera[:3, 3, None, None]
    assert torch.allclose(local[2], torch.full_like(local[2], 2.5), atol=1e-5)
    u = local[0] / local[2] * K[0, 0] + K[0, 2]
    v = local[1] / local[2] * K[1, 1] + K[1, 2]
    rows, cols = torch.meshgrid(torch.arange(24.0), torch.arange(32.0), indexing="ij")
    assert torch.allclose(u, cols, atol=1e-3) and torch.allclose(v, rows, atol=1e-3)
    # A coarser grid's pixel centres sit at the centres of the fine pixel blocks.
    low = scale_camera_matrix(K, 0.25, 0.25)
    assert math.isclose(float(low[0, 2]) * 4 + 1.5, float(K[0, 2]), abs_tol=1e-5)


def test_disparity_bins_hold_their_centres():
    depths = disparity_depths(0.5, 8.0, 16)
    assert torch.equal(disparity_bins(depths, 0.5, 8.0, 16), torch.arange(16))
    assert bool((depths[1:] > depths[:-1]).all())


def test_trig_basis_reconstructs_density_profiles():
    s = (torch.arange(16, dtype=torch.float64) + 0.5) / 16
    basis = trig_basis(s, 6)
    assert basis.shape == (16, 13)
    exact = 0.3 + 0.8 * torch.cos(2 * torch.pi * s) - 0.5 * torch.sin(5 * torch.pi * s)  # inside the span
    coeffs = fit_basis_coefficients(exact, basis)
    assert torch.allclose(basis @ coeffs, exact, atol=1e-9)
    assert abs(float(coeffs[0]) - 0.3) < 1e-9  # the constant term is the constant
    bump = torch.exp(-0.5 * ((s - 0.4) / 0.12) ** 2)  # a surface: a smooth peak of density
    error = (basis @ fit_basis_coefficients(bump, basis) - bump).abs().max()
    assert float(error) < 0.02


def test_volume_rendering_weights():
    # Constant density: total opacity 1 - exp(-sigma) and weights decaying geometrically along the ray.
    sigma = torch.full((1, 16, 1, 1), 3.0)
    colors = torch.rand(1, 3, 16, 1, 1)
    rgb, weights = composite(sigma, colors)
    assert math.isclose(float(weights.sum()), 1 - math.exp(-3.0), rel_tol=1e-5)
    ratio = weights[0, 1:, 0, 0] / weights[0, :-1, 0, 0]
    assert torch.allclose(ratio, torch.full_like(ratio, math.exp(-3.0 / 16)), rtol=1e-5)
    assert torch.allclose(rgb[:, :, 0, 0], (weights[:, None] * colors).sum(2)[:, :, 0, 0])
    # One opaque sample: all weight there, nothing behind it.
    sigma = torch.zeros(1, 16, 1, 1)
    sigma[0, 5] = 1e4
    _, weights = composite(sigma, colors)
    assert float(weights[0, 5]) > 0.999 and float(weights[0, 6:].sum()) < 1e-6


def test_teacher_profile_peaks_at_the_wall():
    scene = moving_patch_scene(num_frames=2, width=32, height=24)
    still, state, _ = teacher_gaussians(scene, None)
    assert state == "static" and len(still) == int((~scene.is_moving).sum())
    whole, _, _ = teacher_gaussians(scene, 1.0)
    assert len(whole) == len(scene.gaussians)
    near, far, count = 1.0, 8.0, 16
    view = render_gaussians(still, scene.cameras.world_from_camera[0], scene.cameras.K(0), 32, 24, (near, far, count))
    covered = view.alpha > 0.9
    assert bool(covered.all())  # the wall fills the image
    # Every ray's profile sums to its alpha and sits in the bin of the wall's depth.
    assert torch.allclose(view.profile.sum(-1), view.alpha, atol=1e-4)
    wall_bin = int(disparity_bins(torch.tensor(WALL_Z), near, far, count))
    assert bool((view.profile.argmax(-1) == wall_bin).all())


def test_flops_count_matches_the_architecture():
    config = R2LConfig(num_points=2, pe_freqs=1, width=8, blocks=1, sr_factor=2, sr_width=16)
    model = R2LStudent(config)
    flops = flops_per_pixel(model, torch.zeros(1, 6, 3, 5))
    inputs = 3 * 2 * 3
    per_ray = inputs * 8 + 2 * 8 * 8  # head, one residual block
    per_pixel = per_ray / 4 + 4 * 8 * 16 + 16 * 3  # transposed conv: 2x2 taps per output pixel; last 1x1 conv
    assert math.isclose(flops, 2 * per_pixel, rel_tol=1e-9)


@pytest.mark.parametrize("kind", ["r2l", "nerdf"])
def test_onnx_matches_pytorch_at_several_resolutions(tmp_path, kind):
    torch.manual_seed(0)
    frame = RayFrame(torch.tensor([0.0, 0.0, 3.0]), 3.0, 1.0, 8.0)
    if kind == "r2l":
        model, factor = R2LStudent(R2LConfig(width=16, blocks=2, sr_factor=4, sr_width=16), frame), 4
    else:
        model, factor = NeRDFStudent(NeRDFConfig(width=16, layers=2), frame), 1
    model.eval()
    scene = moving_patch_scene(num_frames=2, width=32, height=24)
    pose, K = scene.cameras.world_from_camera[0], scene.cameras.K(0)
    rays = [pixel_rays(pose, scale_camera_matrix(K * torch.tensor([[s], [s], [1.0]]), 1 / factor, 1 / factor), 32 * s // factor,
                       24 * s // factor)[None] for s in (1, 2)]
    path = tmp_path / "student.onnx"
    worst = export_and_verify(model, path, rays)
    assert worst < 1e-4
    # A resolution the export never saw (dynamic axes), batch of two.
    other = torch.cat([rays[0][:, :, :5, :3], rays[0][:, :, 1:6, 2:5]])
    assert onnx_max_difference(path, model, other) < 1e-4


def _toy_views(count: int = 6) -> ViewSet:
    generator = torch.Generator().manual_seed(0)
    rays = torch.randn(count, 6, 4, 4, generator=generator)
    colors = torch.rand(count, 3, 8, 8, generator=generator)
    return ViewSet(torch.eye(4).repeat(count, 1, 1).double(), torch.eye(3).repeat(count, 1, 1), colors,
                   torch.ones(count, 1, 8, 8), None, rays)


def test_training_resumes_where_it_stopped(tmp_path, monkeypatch):
    from recon4d.nerf.nelf import train

    config = DistillConfig(model="r2l", r2l=R2LConfig(num_points=2, pe_freqs=2, width=8, blocks=1, sr_factor=2,
                                                      sr_width=8),
                           train=TrainConfig(steps=6, finetune_steps=0, batch_views=2, checkpoint_every=3))
    views = _toy_views()

    def fresh() -> R2LStudent:
        torch.manual_seed(0)
        return R2LStudent(config.r2l)

    whole = fresh()
    train.train_student(whole, views, None, config, tmp_path / "whole", "fit")

    save = train.save_checkpoint

    def save_then_stop(folder, model, optimizer, generator, step, *args):
        save(folder, model, optimizer, generator, step, *args)
        if step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train.train_student(fresh(), views, None, config, tmp_path / "run", "fit")
    monkeypatch.setattr(train, "save_checkpoint", save)
    resumed = fresh()
    train.train_student(resumed, views, None, config, tmp_path / "run", "fit")
    for name, value in whole.state_dict().items():
        assert torch.allclose(value.float(), resumed.state_dict()[name].float(), atol=1e-6), name
    # Another fit or other settings do not resume silently.
    with pytest.raises(InputError):
        train.train_student(fresh(), views, None, config, tmp_path / "run", "another fit")


def test_real_views_leave_moving_pixels_out():
    scene = moving_patch_scene(num_frames=3, width=32, height=24)
    masks = torch.zeros(3, 24, 32, dtype=torch.bool)
    masks[:, 5:10, 6:12] = True
    scene.arrays["moving_masks"] = masks
    frames = np.random.default_rng(0).integers(0, 256, (3, 24, 32, 3), dtype=np.uint8)
    static = real_views(scene, frames, None, scene.window_at(0))
    assert len(static) == 3 and float(static.weights[:, 0, 5:10, 6:12].sum()) == 0
    assert float(static.weights.sum()) == 3 * (24 * 32 - 5 * 6)
    at_time = real_views(scene, frames, 2.0, scene.window_at(2))
    assert len(at_time) == 1 and bool((at_time.weights == 1).all())
    assert torch.allclose(at_time.colors[0], torch.from_numpy(frames[2]).permute(2, 0, 1).float() / 255)
    assert real_views(scene, frames, 1.5, scene.window_at(1)) is None


def test_a_long_clips_teacher_is_seen_from_its_own_windows_cameras():
    """A long clip is fitted in temporal windows, each with its own Gaussians: a teacher state belongs to
    one window (the last for the still part, T's for time T), and every camera it is trained or scored from
    is that window's: the input cameras, the interpolated ones, the depth bounds and the real frames."""
    from test_export_mesh import windowed_surface_scene

    from recon4d.nerf.nelf.config import PseudoDataConfig
    from recon4d.nerf.nelf.teacher import input_cameras, make_teacher, sample_cameras

    scene, n_still = windowed_surface_scene()  # windows: frames 0-1 and 2-3; cameras slide along +x
    config = PseudoDataConfig(rotation_jitter_deg=0.0, position_jitter=0.0)
    static, early = make_teacher(scene, None, config), make_teacher(scene, 0.5, config)
    assert static.frames == (2, 3) and len(static.gaussians) == n_still
    assert early.frames == (0, 1) and len(early.gaussians) == len(scene.gaussians) - n_still
    centres = scene.cameras.world_from_camera[:, 0, 3]
    for teacher in (static, early):
        first, last = teacher.frames
        poses, _ = sample_cameras(scene, 64, config, 1.0, torch.Generator().manual_seed(0), teacher.frames)
        x = poses[:, 0, 3]  # between two of the window's cameras (no jitter)
        assert float(x.min()) >= float(centres[first]) - 1e-9 and float(x.max()) <= float(centres[last]) + 1e-9
        assert torch.equal(input_cameras(scene, teacher.frames)[0], scene.cameras.world_from_camera[first:last + 1])
        frames = np.zeros((4, scene.cameras.height, scene.cameras.width, 3), dtype=np.uint8)
        real = real_views(scene, frames, None, teacher.frames)
        assert torch.equal(real.poses, scene.cameras.world_from_camera[first:last + 1])
    # A scene fitted in one window: the whole clip, as before.
    whole = make_teacher(moving_patch_scene(num_frames=3, width=32, height=24), None, config)
    assert whole.frames == (0, 2)
