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


def test_states_stored_at_some_frames_blend_between_them(tmp_path):
    """A scene storing the dynamic states of frames 0, 2 and 6 of 7 (the sequential pass stores its fitted
    frames): a Gaussian moving at constant speed and turning at a constant rate about z is where it should be
    at every frame, also where the stored rotations lie on opposite sides of the quaternion sphere (q and -q
    are one rotation: the blend takes the short arc)."""
    import dataclasses
    import math

    scene = make_scene(num_frames=7)
    nd = int(scene.is_dynamic.sum())
    start, velocity = torch.randn(nd, 3), torch.randn(nd, 3)

    def truth(t: float) -> tuple[torch.Tensor, torch.Tensor]:
        half_angle = 0.1 * t / 2  # 0.1 rad per frame about z
        quat = torch.tensor([math.cos(half_angle), 0.0, 0.0, math.sin(half_angle)])
        return start + t * velocity, quat.repeat(nd, 1)

    stored = [0, 2, 6]
    means, quats = (torch.stack(x) for x in zip(*(truth(t) for t in stored)))
    quats[1] = -quats[1]
    sparse = dataclasses.replace(scene, dynamic_means=means, dynamic_quats=quats, state_frames=torch.tensor(stored))
    sparse.validate()
    loaded = load_scene(save_scene(sparse, tmp_path / "scene.r4d"))
    assert torch.equal(loaded.state_frames, sparse.state_frames) and torch.equal(loaded.dynamic_means, means)
    for t in (0, 1, 2, 3, 4, 5, 6, 4.5):
        position, rotation, _ = loaded.dynamic_state_at(t)
        true_position, true_rotation = truth(t)
        assert torch.allclose(position, true_position, atol=1e-5), t
        # The same rotation up to sign; a normalised lerp at the midpoints (t = 1 and 4) is exact, elsewhere
        # it lags by well under a degree over 0.4 rad.
        cosine = (rotation * true_rotation).sum(-1).abs()
        assert bool((cosine > math.cos(math.radians(0.5) / 2)).all()), (t, cosine.min())
        if t in (1, 4):
            assert torch.allclose(cosine, torch.ones(nd), atol=1e-6)
    every_frame = loaded.dynamic_states()
    assert every_frame[0].shape == (7, nd, 3) and torch.equal(every_frame[0][3], loaded.dynamic_state_at(3)[0])
    rows = torch.tensor([1, 0])
    picked = loaded.dynamic_states([5, 2], rows)
    assert torch.equal(picked[1][0], loaded.dynamic_state_at(5, rows)[1])
    assert loaded.dynamic_states([], rows)[0].shape == (0, 2, 3)
    # A dense copy of the same motion takes 7/3 of the space.
    assert (tmp_path / "scene.r4d").stat().st_size < save_scene(scene, tmp_path / "dense.r4d").stat().st_size


@pytest.mark.parametrize("frames, message", [([0, 2, 5], "state_frames"), ([1, 2, 6], "state_frames"),
                                             ([0, 4, 2, 6], "state_frames"), ([0, 6], "dynamic_means")])
def test_stored_state_frames_must_fit_the_clip(frames, message):
    import dataclasses

    scene = make_scene(num_frames=7)
    picked = torch.tensor([0, 2, 6])
    sparse = dataclasses.replace(scene, dynamic_means=scene.dynamic_means[picked],
                                 dynamic_quats=scene.dynamic_quats[picked], state_frames=torch.tensor(frames))
    with pytest.raises(SceneError, match=message):
        sparse.validate()


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
