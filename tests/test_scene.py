"""Scene file: bit-exact round trip, per-frame Gaussians, clear errors for bad files."""
from __future__ import annotations

import json
import struct

import pytest
import torch

from recon4d import load_scene
from recon4d.errors import SceneError
from recon4d.io.scene import Cameras, Gaussians, Scene4D, save_scene


def make_scene(num_frames: int = 4, n: int = 50, seed: int = 0) -> Scene4D:
    g = torch.Generator().manual_seed(seed)
    is_dynamic = torch.rand(n, generator=g) < 0.3
    nd = int(is_dynamic.sum())
    poses = torch.eye(4).repeat(num_frames, 1, 1)
    poses[:, 0, 3] = torch.linspace(0, 0.3, num_frames)
    return Scene4D(
        gaussians=Gaussians(torch.randn(n, 3, generator=g), torch.randn(n, 4, generator=g),
                            torch.rand(n, 3, generator=g), torch.rand(n, generator=g), torch.rand(n, 3, generator=g)),
        is_dynamic=is_dynamic,
        birth_frame=torch.randint(0, num_frames, (n,), generator=g, dtype=torch.int32),
        dynamic_means=torch.randn(num_frames, nd, 3, generator=g),
        dynamic_quats=torch.randn(num_frames, nd, 4, generator=g),
        cameras=Cameras(poses.double(), torch.tensor([[60.0, 60.0, 31.5, 23.5]]).repeat(num_frames, 1),
                        torch.arange(num_frames, dtype=torch.float64) / 30, 64, 48,
                        [f"frame_{i:06d}" for i in range(num_frames)]),
        arrays={"moving_masks": torch.rand(num_frames, 48, 64, generator=g) > 0.8},
        config={"preset": "default", "lr": 4e-3},
        metrics={"psnr": 31.25},
    )


def test_round_trip_is_bit_exact(tmp_path):
    scene = make_scene()
    save_scene(scene, tmp_path / "scene.r4d")
    loaded = load_scene(tmp_path)  # a directory resolves to DIR/scene.r4d
    for name in ("means", "quats", "scales", "opacities", "colors"):
        a, b = getattr(scene.gaussians, name), getattr(loaded.gaussians, name)
        assert a.dtype == b.dtype and torch.equal(a, b)
    for name in ("is_dynamic", "is_moving", "birth_frame", "dynamic_means", "dynamic_quats"):
        assert torch.equal(getattr(scene, name), getattr(loaded, name))
    assert loaded.cameras.world_from_camera.dtype == torch.float64
    assert torch.equal(scene.cameras.world_from_camera, loaded.cameras.world_from_camera)
    assert torch.equal(scene.cameras.intrinsics, loaded.cameras.intrinsics)
    assert torch.equal(scene.arrays["moving_masks"], loaded.arrays["moving_masks"])
    assert loaded.cameras.frame_names == scene.cameras.frame_names
    assert (loaded.cameras.width, loaded.cameras.height) == (64, 48)
    assert loaded.config == scene.config and loaded.metrics == scene.metrics
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"


def test_gaussians_at_frame():
    scene = make_scene()
    for t in range(scene.num_frames):
        current = scene.gaussians_at(t)
        alive = scene.birth_frame <= t
        assert len(current) == int(alive.sum())
        dynamic_alive = scene.is_dynamic[alive]
        expected = scene.dynamic_means[t][alive[scene.is_dynamic]]
        assert torch.equal(current.means[dynamic_alive], expected)
        assert torch.equal(current.means[~dynamic_alive], scene.gaussians.means[alive & ~scene.is_dynamic])


def test_truncated_file(tmp_path):
    path = save_scene(make_scene(), tmp_path / "scene.r4d")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SceneError, match="truncated") as info:
        load_scene(path)
    assert "\n" not in info.value.one_line()


def test_foreign_files(tmp_path):
    garbage = tmp_path / "garbage.r4d"
    garbage.write_bytes(b"\x00\x01 definitely not a scene" * 10)
    with pytest.raises(SceneError):
        load_scene(garbage)
    from safetensors.torch import save_file

    other = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(3)}, str(other))
    with pytest.raises(SceneError, match="not a recon4d scene"):
        load_scene(other)
    with pytest.raises(SceneError, match="no scene file"):
        load_scene(tmp_path / "missing.r4d")


def test_newer_version_is_refused(tmp_path):
    path = save_scene(make_scene(), tmp_path / "scene.r4d")
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    header["__metadata__"]["version"] = "99"
    new_header = json.dumps(header).encode()
    new_header += b" " * (-len(new_header) % 8)
    path.write_bytes(struct.pack("<Q", len(new_header)) + new_header + data[8 + header_len :])
    with pytest.raises(SceneError, match="newer recon4d"):
        load_scene(path)


def test_inconsistent_scene_is_not_written(tmp_path):
    scene = make_scene()
    scene.dynamic_means = scene.dynamic_means[:, :-1]
    with pytest.raises(SceneError, match="dynamic_means"):
        save_scene(scene, tmp_path / "scene.r4d")
    assert not any(tmp_path.iterdir())


def test_moving_label_is_a_subset_of_dynamic(tmp_path):
    """is_moving defaults to is_dynamic (files written before it existed read the same way), may leave out
    dynamic Gaussians (background with a residual trajectory) and may not name a still one."""
    from safetensors.torch import load_file, save_file

    scene = make_scene()
    assert torch.equal(scene.is_moving, scene.is_dynamic)
    dynamic = scene.is_dynamic.nonzero().squeeze(1)
    scene.is_moving = scene.is_dynamic.clone()
    scene.is_moving[dynamic[0]] = False
    path = save_scene(scene, tmp_path / "scene.r4d")
    assert int(load_scene(path).is_moving.sum()) == int(scene.is_dynamic.sum()) - 1

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as reader:
        metadata = reader.metadata()
    tensors = load_file(str(path))
    del tensors["is_moving"]
    save_file(tensors, str(tmp_path / "old.r4d"), metadata=metadata)
    assert torch.equal(load_scene(tmp_path / "old.r4d").is_moving, scene.is_dynamic)

    scene.is_moving[(~scene.is_dynamic).nonzero()[0]] = True
    with pytest.raises(SceneError, match="is_moving must be a subset"):
        save_scene(scene, tmp_path / "bad.r4d")
