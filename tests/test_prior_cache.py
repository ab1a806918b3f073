"""Disk cache of priors: hits, misses, key sensitivity, atomic writes, corrupt entries."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from recon4d.errors import PriorError
from recon4d.priors.cache import CACHE_ENV_VAR, PriorCache, canonical_json, default_cache_root
from recon4d.priors.flow import DISFlow, DISFlowConfig

SETTINGS = {"estimator": "dis", "preset": "medium", "finest_scale": 0, "alpha": 0.01, "scales": (1, 2)}


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "flow_forward": rng.normal(size=(3, 8, 10, 2)).astype(np.float32),
        "valid_forward": rng.random((3, 8, 10)) > 0.2,
    }


def test_miss_then_hit(tmp_path):
    cache = PriorCache(tmp_path)
    assert cache.get("flow", "clip-a", SETTINGS) is None
    arrays = _arrays()
    assert cache.put("flow", "clip-a", SETTINGS, arrays)
    loaded = cache.get("flow", "clip-a", SETTINGS)
    assert loaded is not None and set(loaded) == set(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array)
    # One file under <root>/<kind>/, and no temporary file left behind.
    assert [p.name for p in (tmp_path / "flow").iterdir()] == [cache.path("flow", "clip-a", SETTINGS).name]


def test_key_depends_on_clip_kind_and_settings(tmp_path):
    cache = PriorCache(tmp_path)
    cache.put("flow", "clip-a", SETTINGS, _arrays())
    assert cache.get("flow", "clip-b", SETTINGS) is None
    assert cache.get("depth", "clip-a", SETTINGS) is None
    assert cache.get("flow", "clip-a", {**SETTINGS, "finest_scale": 1}) is None
    assert cache.get("flow", "clip-a", {**SETTINGS, "estimator": "farneback"}) is None
    # Key order and tuple-vs-list do not matter: the key is canonical JSON.
    reordered = {key: SETTINGS[key] for key in reversed(list(SETTINGS))}
    reordered["scales"] = [1, 2]
    assert cache.get("flow", "clip-a", reordered) is not None


def test_estimator_settings_make_keys(tmp_path):
    cache = PriorCache(tmp_path)
    medium, fast = DISFlow().settings(), DISFlow(DISFlowConfig(preset="fast")).settings()
    cache.put("flow", "clip", medium, _arrays())
    assert cache.get("flow", "clip", fast) is None
    assert cache.get("flow", "clip", DISFlow(DISFlowConfig(num_threads=1)).settings()) is not None


def test_canonical_json_handles_numpy_and_dataclasses():
    @dataclass
    class Config:
        size: tuple = (3, 4)
        scale: float = 0.5

    text = canonical_json({"b": np.float32(0.5), "a": Config(), "c": np.int64(3), "p": Path("/x"), "n": np.arange(2)})
    assert text.startswith('{"a":{"scale":0.5,"size":[3,4]},"b":0.5,"c":3,')
    with pytest.raises(TypeError):
        canonical_json({"f": object()})


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated", "flipped"])
def test_corrupt_entry_is_a_miss_and_recomputed(tmp_path, damage):
    cache = PriorCache(tmp_path)
    cache.put("flow", "clip", SETTINGS, _arrays())
    path = cache.path("flow", "clip", SETTINGS)
    data = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"not an npz file" * 10)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # flip bytes inside the array data: the zip CRC check catches it
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 16]) + data[middle + 16 :])
    assert cache.get("flow", "clip", SETTINGS) is None
    assert not path.exists()  # removed, so the next put starts clean
    assert cache.put("flow", "clip", SETTINGS, _arrays())
    assert cache.get("flow", "clip", SETTINGS) is not None


def test_entry_with_foreign_key_is_a_miss(tmp_path):
    cache = PriorCache(tmp_path)
    cache.put("flow", "clip-a", SETTINGS, _arrays())
    # A file copied to another entry's name (e.g. by hand) does not pass the stored-key check.
    os.replace(cache.path("flow", "clip-a", SETTINGS), cache.path("flow", "clip-b", SETTINGS))
    assert cache.get("flow", "clip-b", SETTINGS) is None


def test_unwritable_root_returns_false(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = PriorCache(blocker)  # its "flow" subfolder cannot be created
    assert cache.put("flow", "clip", SETTINGS, _arrays()) is False
    assert cache.get("flow", "clip", SETTINGS) is None


def test_bad_names_raise(tmp_path):
    cache = PriorCache(tmp_path)
    with pytest.raises(PriorError):
        cache.put("../flow", "clip", SETTINGS, _arrays())
    with pytest.raises(PriorError):
        cache.put("flow", "", SETTINGS, _arrays())
    with pytest.raises(PriorError):
        cache.put("flow", "clip", SETTINGS, {"bad name": np.zeros(2)})
    with pytest.raises(PriorError):
        cache.put("flow", "clip", SETTINGS, {"objects": np.array([object()], dtype=object)})
    with pytest.raises(PriorError):
        cache.put("flow", "clip", {"f": object()}, _arrays())


def test_default_root_and_env_override(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV_VAR, raising=False)
    assert default_cache_root() == Path.home() / ".cache" / "recon4d" / "priors"
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    assert default_cache_root() == tmp_path / "priors"
    assert PriorCache().root == tmp_path / "priors"


def test_compute_priors_second_call_reads_every_prior_from_the_cache(tmp_path, monkeypatch):
    """Flow, moving masks and depth are all cached: a second call of the same clip computes none of them and
    returns the same arrays (the masks' camera models included)."""
    import recon4d.priors.pipeline as prior_pipeline
    from recon4d.eval.synthetic import make_synthetic

    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    clip = make_synthetic("fast", num_frames=6, width=64, height=48, seed=0)
    settings = prior_pipeline.PriorSettings()
    first = prior_pipeline.compute_priors(clip.frames, clip.intrinsics, settings, clip_hash="clip", log=lambda _: None)
    assert {p.name for p in tmp_path.joinpath("priors").iterdir()} == {"flow", "motion", "depth"}

    def no_split(*args, **kwargs):
        raise AssertionError("the moving masks were computed again")

    monkeypatch.setattr(prior_pipeline, "estimate_moving_masks", no_split)
    second = prior_pipeline.compute_priors(clip.frames, clip.intrinsics, settings, clip_hash="clip", log=lambda _: None)
    assert np.array_equal(second.moving_masks, first.moving_masks) and second.moving_masks.dtype == bool
    assert second.camera_models == first.camera_models
    assert np.array_equal(second.depth.depth, first.depth.depth)
    assert np.array_equal(second.flow.flow_forward, first.flow.flow_forward)
    assert first.moving_masks.any()  # the clip has a mover: the cached masks are not trivially empty


def test_static_scene_priors_skip_the_split_and_give_depth_empty_masks(tmp_path, monkeypatch):
    """`static_scene`: no still/moving split is computed, the masks are empty, and the depth is the depth prior
    of empty masks (cached apart from the split's depth, whose key names other masks)."""
    import recon4d.priors.pipeline as prior_pipeline
    from recon4d.eval.synthetic import make_synthetic
    from recon4d.priors.depth import make_depth_estimator

    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    clip = make_synthetic("fast", num_frames=6, width=64, height=48, seed=0)
    settings = prior_pipeline.PriorSettings()
    split = prior_pipeline.compute_priors(clip.frames, clip.intrinsics, settings, clip_hash="clip", log=lambda _: None)

    def no_split(*args, **kwargs):
        raise AssertionError("a static scene computed the still/moving split")

    monkeypatch.setattr(prior_pipeline, "estimate_moving_masks", no_split)
    static = prior_pipeline.compute_priors(clip.frames, clip.intrinsics, settings, clip_hash="clip",
                                           log=lambda _: None, static_scene=True)
    assert static.moving_masks.shape == split.moving_masks.shape and not static.moving_masks.any()
    assert static.camera_models == []
    expected = make_depth_estimator(settings.depth)(clip.frames, split.flow, clip.intrinsics, static.moving_masks)
    assert np.array_equal(static.depth.depth, expected.depth)
    assert not np.array_equal(static.depth.depth, split.depth.depth)  # the mover's masks changed the split's depth
