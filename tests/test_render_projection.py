"""The C++ EWA projection (forward and hand-written backward) against its PyTorch reference."""
from __future__ import annotations

import pytest
import torch

from recon4d.render.config import RasterConfig
from recon4d.render.cpu import projection_extension
from recon4d.render.projection import project_gaussians
from recon4d.render.reference import project_gaussians_reference
from render_scenes import intrinsics, random_scene

WIDTH, HEIGHT = 61, 43
DIFF_NAMES = ("means", "quats", "scales", "camera_from_world", "K")
OUTPUT_NAMES = ("means2d", "conics", "depths")


def _hard_scene(n: int, seed: int, dtype=torch.float64) -> dict:
    """A random scene in which every case of the projection occurs in some rows.

    Rows [0, n/8): behind the camera or closer than the near plane; [n/8, n/4): far off-screen sideways, so
    their Jacobian direction is clamped (both sides, both axes); [n/4, 5n/16): tiny opacities (culled or
    with a small footprint); the rest: in view. Intrinsics are off-centre with fx != fy.
    """
    scene = random_scene(n, 3, seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 100)
    means, opacities = scene["means"], scene["opacities"]
    e = n // 8
    means[:e, 2] = torch.rand(e, generator=g, dtype=dtype) * 3 - 2.9  # z in (-2.9, 0.1): behind / near the camera
    side = torch.randint(0, 4, (e,), generator=g)
    offset = 3 + 4 * torch.rand(e, generator=g, dtype=dtype)
    means[e:2 * e, 0] += torch.where(side == 0, offset, torch.where(side == 1, -offset, 0))
    means[e:2 * e, 1] += torch.where(side == 2, offset, torch.where(side == 3, -offset, 0))
    opacities[2 * e:2 * e + n // 16] = torch.rand(n // 16, generator=g, dtype=dtype) * 0.01
    scene["K"] = intrinsics(WIDTH, HEIGHT, dtype=dtype) * torch.tensor([[1.0], [1.15], [1.0]], dtype=dtype)
    scene["K"][0, 2] += 2.3
    scene["K"][1, 2] -= 1.7
    return scene


def _project(project, scene: dict, dtype, config=RasterConfig()):
    """Outputs of `project` in `dtype` and the gradients of a random linear loss on them."""
    params = {k: scene[k].to(dtype).clone().requires_grad_(True) for k in DIFF_NAMES}
    out = project(params["means"], params["quats"], params["scales"], scene["opacities"].to(dtype),
                  params["camera_from_world"], params["K"], WIDTH, HEIGHT, config)
    g = torch.Generator().manual_seed(9)
    n = scene["means"].shape[0]
    loss = sum((getattr(out, name) * torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)).sum()
               for name, shape in (("means2d", (n, 2)), ("conics", (n, 3)), ("depths", (n,))))
    loss.backward()
    return out, {k: params[k].grad for k in DIFF_NAMES}


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


@pytest.fixture(scope="module")
def scene() -> dict:
    scene = _hard_scene(4000, seed=1)
    reference, _ = _project(project_gaussians_reference, scene, torch.float64)
    z = (scene["means"] @ scene["camera_from_world"][:3, :3].T + scene["camera_from_world"][:3, 3])[:, 2]
    u = reference.means2d[:, 0] / WIDTH
    # Every case really occurs: culled by depth, clamped, culled by opacity, culled off-screen, drawn.
    assert (z < RasterConfig().near_plane).sum() > 300
    assert ((u < -0.3) | (u > 1.3)).sum() > 300
    assert (scene["opacities"] < 1 / 255).sum() > 50
    assert (reference.radii.amax(-1) > 0).sum() > 2000
    return scene


@pytest.mark.parametrize("dtype, tolerance, row_tolerance", [(torch.float64, 1e-12, 1e-12), (torch.float32, 1e-5, 5e-5)])
def test_forward_matches_reference(scene, dtype, tolerance, row_tolerance):
    ours, _ = _project(project_gaussians, scene, dtype)
    reference, _ = _project(project_gaussians_reference, scene, dtype)
    for name in OUTPUT_NAMES:
        a, b = getattr(ours, name), getattr(reference, name)
        assert a.dtype == dtype and torch.isfinite(a).all(), name
        assert _relative_error(a, b) <= tolerance, name
        # Row by row too, so that a few wrong small rows cannot hide under the largest value (in float32 the
        # conics of Gaussians right in front of the camera lose ~1e-5 to cancellation in either version).
        assert ((a - b).abs() <= row_tolerance * (b.abs() + b.abs().median())).all(), name
    assert ours.radii.dtype == torch.int32
    assert torch.equal(ours.radii, reference.radii)


def test_backward_matches_reference_autograd_in_double(scene):
    _, ours = _project(project_gaussians, scene, torch.float64)
    _, reference = _project(project_gaussians_reference, scene, torch.float64)
    for name in DIFF_NAMES:
        assert reference[name].abs().max() > 0, name
        assert _relative_error(ours[name], reference[name]) <= 1e-10, name


def test_float32_backward_is_close_to_double_reference(scene):
    _, ours = _project(project_gaussians, scene, torch.float32)
    _, reference = _project(project_gaussians_reference, scene, torch.float64)
    for name in DIFF_NAMES:
        assert ours[name].dtype == torch.float32
        assert _relative_error(ours[name], reference[name]) <= 1e-4, name


def test_gradients_match_finite_differences():
    """Checks the hand-written backward (and so the reference it matches) against the forward itself."""
    scene = _hard_scene(48, seed=5)
    opacities = scene["opacities"]

    def outputs(means, quats, scales, camera_from_world, K):
        p = project_gaussians(means, quats, scales, opacities, camera_from_world, K, WIDTH, HEIGHT, RasterConfig())
        return p.means2d, p.conics, p.depths

    inputs = tuple(scene[k].clone().requires_grad_(True) for k in DIFF_NAMES)
    assert torch.autograd.gradcheck(outputs, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_opacities_get_no_gradient_through_the_projection(scene):
    opacities = scene["opacities"].float().clone().requires_grad_(True)
    out = project_gaussians(scene["means"].float(), scene["quats"].float(), scene["scales"].float(), opacities,
                            scene["camera_from_world"].float(), scene["K"].float(), WIDTH, HEIGHT, RasterConfig())
    assert not out.radii.requires_grad
    (out.means2d.sum() + out.conics.sum() + out.depths.sum()).backward()
    assert opacities.grad is None


def test_empty_input():
    scene = _hard_scene(8, seed=2, dtype=torch.float32)
    params = {k: scene[k][:0].clone().requires_grad_(True) if k not in ("camera_from_world", "K")
              else scene[k].clone().requires_grad_(True) for k in DIFF_NAMES}
    out = project_gaussians(params["means"], params["quats"], params["scales"], scene["opacities"][:0],
                            params["camera_from_world"], params["K"], WIDTH, HEIGHT, RasterConfig())
    assert out.means2d.shape == (0, 2) and out.conics.shape == (0, 3) and out.radii.shape == (0, 2)
    (out.means2d.sum() + out.conics.sum() + out.depths.sum()).backward()
    assert torch.equal(params["camera_from_world"].grad, torch.zeros(4, 4))


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bit_identical_for_any_thread_count(restore_threads):
    n = 50000  # enough work for three threads
    scene = _hard_scene(n, seed=3, dtype=torch.float32)

    def run():
        out, grads = _project(project_gaussians, scene, torch.float32)
        return [*(getattr(out, name) for name in (*OUTPUT_NAMES, "radii")), *grads.values()]

    torch.set_num_threads(1)
    reference = run()
    for threads in (2, 3):  # 3 > cores here: oversubscription must not change results either
        torch.set_num_threads(threads)
        assert projection_extension().project_threads(n) == threads  # the sweep really is shared
        for name, a, b in zip((*OUTPUT_NAMES, "radii", *DIFF_NAMES), reference, run()):
            assert torch.equal(a, b), f"{name} differs at {threads} threads"
    assert projection_extension().project_threads(2000) == 1  # too little work to wake a second thread
