"""Splat export: 3DGS PLY round trip through plyfile and gsply, SPZ / compressed PLY, clear errors."""

from __future__ import annotations

import gsply
import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement
from test_scene import make_scene

from recon4d.errors import InputError, SceneError
from recon4d.export.ply import PLY_PROPERTIES, SH_C0, export_ply, read_3dgs_ply
from recon4d.io.scene import NEVER

FIELDS = ("means", "quats", "scales", "opacities", "colors")


def wide_range_scene():
    """A random scene whose scales span 1e-4..10 and opacities 1e-3..0.999 (where logit/log are stiff)."""
    scene = make_scene(num_frames=3, n=400, seed=3)
    g = torch.Generator().manual_seed(7)
    n = len(scene.gaussians)
    scene.gaussians.scales = 10.0 ** (torch.rand(n, 3, generator=g) * 5 - 4)
    scene.gaussians.opacities = 1e-3 + torch.rand(n, generator=g) * (0.999 - 1e-3)
    return scene


def expected_at(scene, t):
    current = scene.gaussians_at(t)
    current.quats = current.quats / current.quats.norm(dim=-1, keepdim=True)
    return current


def assert_close(actual, expected, **tolerance):
    for name in FIELDS:
        torch.testing.assert_close(getattr(actual, name), getattr(expected, name), **tolerance, msg=name)


def test_ply_round_trip_plyfile_and_gsply(tmp_path):
    scene = wide_range_scene()
    paths = export_ply(scene, tmp_path)
    assert [p.name for p in paths] == ["frame_0000.ply", "frame_0001.ply", "frame_0002.ply"]
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"
    for t, path in enumerate(paths):
        expected = expected_at(scene, t)
        # float32 storage of logit/log/SH values: measured worst relative error 2.2e-7 (scales),
        # absolute 1.5e-8 (colours); means are stored exactly.
        ours = read_3dgs_ply(path)
        assert torch.equal(ours.means, expected.means)
        assert_close(ours, expected, rtol=1e-6, atol=1e-7)

        # gsply reads the same file independently; activate with gsply's own helpers.
        data = gsply.plyread(path)
        assert data.shN.shape == (len(expected), 15, 3) and not data.shN.any()
        via_gsply = type(ours)(
            torch.from_numpy(np.asarray(data.means)),
            torch.from_numpy(np.asarray(data.quats)),
            torch.from_numpy(np.exp(data.scales)),
            torch.from_numpy(np.asarray(gsply.sigmoid(data.opacities))),
            torch.from_numpy(np.asarray(gsply.sh2rgb(data.sh0), dtype=np.float32)),
        )
        assert_close(via_gsply, expected, rtol=1e-6, atol=1e-7)


def test_ply_layout_is_standard_3dgs(tmp_path):
    scene = make_scene(num_frames=2, n=60)
    (path,) = export_ply(scene, tmp_path, frames=1)
    assert path.name == "frame_0001.ply"
    header = path.read_bytes().split(b"end_header\n")[0].decode()
    assert "format binary_little_endian 1.0" in header
    ply = PlyData.read(str(path))
    vertex = ply["vertex"]
    assert [p.name for p in vertex.properties] == PLY_PROPERTIES
    assert all(p.val_dtype in ("f4", "float32") for p in vertex.properties)
    assert len(PLY_PROPERTIES) == 3 + 3 + 3 + 45 + 1 + 3 + 4
    for name in ["nx", "ny", "nz"] + [f"f_rest_{i}" for i in range(45)]:
        assert not vertex[name].any()
    current = scene.gaussians_at(1)
    # The documented transforms, checked on raw file values.
    np.testing.assert_allclose(vertex["f_dc_0"], (current.colors[:, 0].numpy() - 0.5) / SH_C0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(vertex["scale_2"], np.log(current.scales[:, 2].numpy()), rtol=1e-6, atol=1e-6)
    p = current.opacities.double().numpy()
    np.testing.assert_allclose(vertex["opacity"], np.log(p / (1 - p)), rtol=1e-5, atol=1e-6)
    rot = np.stack([vertex[f"rot_{i}"] for i in range(4)], -1)
    np.testing.assert_allclose(np.linalg.norm(rot, axis=-1), 1.0, atol=1e-6)


def test_extreme_values_stay_finite(tmp_path):
    scene = make_scene(num_frames=1, n=4)
    scene.gaussians.opacities = torch.tensor([0.0, 1.0, 0.5, 0.5])
    scene.gaussians.scales = torch.tensor([[0.0, 1.0, 1.0]] * 4)
    scene.gaussians.quats = torch.tensor([[0.0, 0.0, 0.0, 0.0]] + [[2.0, 0.0, 0.0, 0.0]] * 3)
    scene.birth_frame = torch.zeros(4, dtype=torch.int32)
    scene.is_dynamic = torch.zeros(4, dtype=torch.bool)
    scene.is_moving = scene.is_dynamic.clone()
    scene.dynamic_means, scene.dynamic_quats = torch.zeros(1, 0, 3), torch.zeros(1, 0, 4)
    (path,) = export_ply(scene, tmp_path)
    vertex = PlyData.read(str(path))["vertex"]
    for name in PLY_PROPERTIES:
        assert np.isfinite(vertex[name]).all(), name
    back = read_3dgs_ply(path)
    assert back.opacities[0] < 1e-5 and back.opacities[1] > 1 - 1e-5
    assert torch.equal(back.quats[0], torch.tensor([1.0, 0.0, 0.0, 0.0]))


def test_a_still_scene_is_one_splat_file_for_all_frames(tmp_path):
    """A scene whose Gaussians never move nor appear (a walk-around's fit) is written as one static.ply for all its
    frames, replacing per-frame files left in the folder; one asked-for frame is still its own file. A scene with
    a trajectory, a later birth or a window's end is not still."""
    scene = make_scene(num_frames=3, n=50, seed=1)
    assert not scene.is_still  # make_scene's Gaussians move
    count = len(scene.gaussians)
    scene.is_dynamic = torch.zeros(count, dtype=torch.bool)
    scene.is_moving = scene.is_dynamic.clone()
    scene.birth_frame = torch.zeros(count, dtype=torch.int32)
    scene.dynamic_means, scene.dynamic_quats = torch.zeros(3, 0, 3), torch.zeros(3, 0, 4)
    scene.motion, scene.death_frame = None, None
    assert scene.is_still
    (tmp_path / "frame_0001.ply").write_bytes(b"old")
    (path,) = export_ply(scene, tmp_path)
    assert path.name == "static.ply" and sorted(p.name for p in tmp_path.iterdir()) == ["static.ply"]
    assert_close(read_3dgs_ply(path), expected_at(scene, 2), atol=1e-5, rtol=1e-5)
    (one,) = export_ply(scene, tmp_path, frames=2)
    assert one.name == "frame_0002.ply"
    scene.birth_frame[0] = 1
    assert not scene.is_still
    scene.birth_frame[0] = 0
    scene.death_frame = torch.full((count,), NEVER, dtype=torch.int32)
    scene.death_frame[0] = 2
    assert not scene.is_still


@pytest.mark.slow
def test_spz_and_compressed_ply_through_gsply(tmp_path):
    scene = make_scene(num_frames=2, n=300, seed=5)
    expected = expected_at(scene, 1)
    (spz,) = export_ply(scene, tmp_path, frames=1, format="spz")
    (compressed,) = export_ply(scene, tmp_path, frames=[1], format="compressed_ply")
    assert (spz.name, compressed.name) == ("frame_0001.spz", "frame_0001.compressed.ply")
    export_ply(scene, tmp_path / "plain", frames=1)
    plain = (tmp_path / "plain" / "frame_0001.ply").stat().st_size
    assert spz.stat().st_size < plain / 4 and compressed.stat().st_size < plain / 4
    for path, reader, mean_tol in [(spz, gsply.read_spz, 3e-4), (compressed, gsply.plyread, 5e-3)]:
        data = reader(path)
        # Quantised formats: positions to 2^-12 units (SPZ) or 11 bits of a chunk's box (compressed PLY),
        # colours and opacities to 8 bits.
        np.testing.assert_allclose(data.means, expected.means.numpy(), atol=mean_tol)
        np.testing.assert_allclose(gsply.sigmoid(data.opacities), expected.opacities.numpy(), atol=2 / 255)
        np.testing.assert_allclose(gsply.sh2rgb(data.sh0), expected.colors.numpy(), atol=2 / 255)


def test_errors(tmp_path):
    scene = make_scene(num_frames=2, n=20)
    with pytest.raises(InputError, match="outside the scene"):
        export_ply(scene, tmp_path, frames=5)
    with pytest.raises(InputError, match="unknown splat format"):
        export_ply(scene, tmp_path, format="splat")
    scene.gaussians.colors = torch.rand(20, 8)
    with pytest.raises(SceneError, match="RGB"):
        export_ply(scene, tmp_path)
    mesh_like = tmp_path / "mesh.ply"
    PlyData([PlyElement.describe(np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")]), "vertex")]).write(
        str(mesh_like)
    )
    with pytest.raises(InputError, match="not a 3DGS PLY"):
        read_3dgs_ply(mesh_like)
    with pytest.raises(InputError, match="no PLY file"):
        read_3dgs_ply(tmp_path / "absent.ply")
    assert [p.name for p in tmp_path.iterdir()] == ["mesh.ply"], "failed exports must not leave files"
