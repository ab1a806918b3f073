"""Scene latents: corpus, exact renderer, encoder, canonical form, file formats, decoding, user fits."""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recon4d.errors import InputError
from recon4d.gen.corpus import CorpusConfig, HELDOUT_PAIRS, build_corpus, render_object_views
from recon4d.gen.decode import decode_latent
from recon4d.gen.encode import EncodeConfig, encode_views
from recon4d.gen.encode_batch import encode_any
from recon4d.gen.encode_batch import summarize
from recon4d.gen.latents import (LatentStats, canonicalize, compute_stats, latent_raster, load_latent, load_stats,
                                 morton_order, pack, save_latent, save_stats, sort_rows, to_gaussians)
from recon4d.gen.objects import sample_object
from recon4d.gen.shapes import Part, sdf_primitive
from recon4d.gen.views import read_view_set
from recon4d.io.scene import load_scene
from recon4d.io.scene_render import scene_raster
from recon4d.render import RasterConfig

SMALL = CorpusConfig(count=3, views=12, width=32, height=32)
RED = [0.85, 0.1, 0.1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, SMALL)
    return out


@pytest.fixture(scope="module")
def red_sphere():
    config = CorpusConfig(views=24, width=32, height=32)
    views = render_object_views([Part("sphere", [0.7], [0.0, 0.0, 0.0], RED)], config)
    latent = encode_views(views, EncodeConfig(num_gaussians=256, steps=80), {"caption": "a red ball"})
    return views, latent


def test_sdfs_are_zero_on_known_surface_points():
    points = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.3], [0.7, 0.0, 0.0]])
    assert torch.allclose(sdf_primitive("sphere", [0.5], points[:1]), torch.zeros(1), atol=1e-6)
    assert torch.allclose(sdf_primitive("cube", [0.5, 0.4, 0.3], points[1:2]), torch.zeros(1), atol=1e-6)
    assert torch.allclose(sdf_primitive("torus", [0.5, 0.2], points[2:3]), torch.zeros(1), atol=1e-6)
    assert torch.allclose(sdf_primitive("cylinder", [0.4, 0.3], points[1:2]), torch.zeros(1), atol=1e-6)
    assert float(sdf_primitive("cone", [0.4, 0.3], torch.tensor([[0.0, 0.0, 0.3]]))) == pytest.approx(0, abs=1e-6)
    assert float(sdf_primitive("pyramid", [0.4, 0.3], torch.tensor([[0.0, 0.0, 0.0]]))) < 0  # inside


def test_corpus_layout_is_deterministic_and_blender_compatible(corpus, tmp_path):
    objects = sorted(p for p in corpus.iterdir() if p.is_dir())
    assert len(objects) == 3
    transforms = json.loads((objects[0] / "transforms.json").read_text())
    assert {"camera_angle_x", "fl_x", "fl_y", "cx", "cy"} <= set(transforms)
    assert len(transforms["frames"]) == 12 and (objects[0] / transforms["frames"][0]["file_path"]).is_file()
    labels = json.loads((objects[0] / "labels.json").read_text())
    assert {"shape", "color", "pattern", "finish"} <= set(labels)
    assert (objects[0] / "caption.txt").read_text().strip() == sample_object(labels["seed"]).caption
    views = read_view_set(objects[0])
    assert views.images.shape == (12, 32, 32, 4) and 0.02 < float(views.images[..., 3].mean()) < 0.9
    again = tmp_path / "again"
    build_corpus(again, CorpusConfig(count=1, views=12, width=32, height=32))
    assert (again / "obj_00000/images/003.png").read_bytes() == (corpus / "obj_00000/images/003.png").read_bytes()
    splits = json.loads((corpus / "splits.json").read_text())
    assert sorted(sum((splits[k] for k in ("train", "val", "test", "test_compositional")), [])) == [p.name for p in objects]


def test_splits_hold_out_whole_colour_shape_pairs():
    from recon4d.gen.corpus import make_splits

    names = [(f"o{i}", sample_object(i).labels) for i in range(400)]
    splits = make_splits(names, CorpusConfig())
    labels = dict(names)
    seen = {(labels[n]["color"], labels[n]["shape"]) for n in splits["train"] + splits["val"]}
    assert not seen & set(HELDOUT_PAIRS)
    assert splits["test_compositional"] and splits["test"] and len(splits["train"]) > 300


def test_patterned_objects_of_different_colours_never_show_the_same_two_tones():
    """Half of a striped or checkered surface is its second colour. Two colours whose pairs of tones match up
    to order (version 1: black with white stripes, white with black ones) would make a caption's colour
    unlearnable: the test looks at the parts the grammar really draws."""
    tones: dict[str, list[tuple[float, float]]] = {}
    for seed in range(600):
        spec = sample_object(seed)
        part = spec.parts[0]
        if spec.labels["pattern"] != "plain" and spec.labels["shape"] in ("cube", "sphere", "cone", "pyramid"):
            pair = tuple(sorted((sum(part.color) / 3, sum(part.secondary) / 3)))
            tones.setdefault(spec.labels["color"], []).append(pair)
    achromatic = ("black", "white", "gray")
    assert all(tones.get(c) for c in achromatic)
    for first, second in itertools.combinations(achromatic, 2):
        closest = min(max(abs(a[0] - b[0]), abs(a[1] - b[1])) for a in tones[first] for b in tones[second])
        assert closest > 0.3, (first, second, closest)


def test_red_sphere_encodes_to_a_red_ball(red_sphere):
    views, latent = red_sphere
    metrics = latent.info["metrics"]
    assert metrics["holdout_views"] == [5, 11, 17, 23]
    assert metrics["heldout_psnr"] > 26 and metrics["heldout_iou"] > 0.9
    gaussians = to_gaussians(latent.gaussians, latent.center, latent.radius)
    weight = gaussians.opacities[:, None]
    color = (gaussians.colors * weight).sum(0) / weight.sum()
    assert color[0] > 0.3 and color[0] > 3 * color[1:].max()  # shaded red: red dominates
    # the ball's centre, and its radius 0.7 plus the 2-sigma extent of the surface Gaussians
    assert latent.center.norm() < 0.05 and 0.7 < latent.radius < 0.95
    inside = latent.gaussians[:, :3].norm(dim=-1) <= 1.0
    assert float(inside.float().mean()) > 0.95  # canonical: inside the unit ball but for stray floaters


def test_canonical_form_round_trips_exactly():
    g = torch.Generator().manual_seed(0)
    packed = pack(torch.randn(64, 3, generator=g) * 0.3 + 2, torch.randn(64, 4, generator=g),
                  torch.randn(64, 3, generator=g) - 3, torch.randn(64, generator=g), torch.rand(64, 3, generator=g))
    center, radius = torch.tensor([2.0, 2.0, 2.0]), 1.5
    latent = sort_rows(canonicalize(packed, center, radius))
    assert torch.equal(latent[morton_order(latent[:, :3])], latent)  # the order is a fixed point
    back = to_gaussians(latent, center, radius)
    original = to_gaussians(packed)
    order_a, order_b = back.means[:, 0].argsort(), original.means[:, 0].argsort()
    assert torch.allclose(back.means[order_a], original.means[order_b], atol=1e-5)
    assert torch.allclose(back.scales[order_a], original.scales[order_b], rtol=1e-5)
    stats = compute_stats([latent, latent * 0.5])
    assert torch.allclose(stats.destandardize(stats.standardize(latent)), latent, atol=1e-5)
    standardized = stats.standardize(torch.cat([latent, latent * 0.5]))
    assert torch.allclose(standardized.mean(0), torch.zeros(14), atol=1e-4)


def test_files_are_versioned_and_bad_files_fail_cleanly(tmp_path, red_sphere):
    _, latent = red_sphere
    path = save_latent(latent, tmp_path / "ball.r4dlat")
    loaded = load_latent(path)
    assert torch.equal(loaded.gaussians, latent.gaussians) and loaded.caption == "a red ball"
    stats = compute_stats([latent.gaussians], latent_raster(latent.info))
    data = json.loads(save_stats(stats, tmp_path).read_text())
    assert data["format"] == "recon4d.gen.latent_stats" and data["version"] == 1
    assert torch.allclose(load_stats(tmp_path).std, stats.std)
    # the filter travels latent -> statistics (-> a generator's model files); files without one are classic
    assert latent_raster(loaded.info) == RasterConfig(eps2d=0.1, antialiased=True) == load_stats(tmp_path).raster
    assert LatentStats.from_json({k: v for k, v in data.items() if k != "raster_filter"}).raster == RasterConfig()
    (tmp_path / "garbage.r4dlat").write_bytes(b"\x00" * 100)
    (tmp_path / "truncated.r4dlat").write_bytes(path.read_bytes()[:200])
    from safetensors.torch import save_file
    save_file({"gaussians": torch.zeros(4, 14)}, str(tmp_path / "foreign.r4dlat"), metadata={"format": "other"})
    for name in ("garbage", "truncated", "foreign", "missing"):
        with pytest.raises(InputError):
            load_latent(tmp_path / f"{name}.r4dlat")
    newer = dict(data, version=99)
    with pytest.raises(InputError):
        LatentStats.from_json(newer)
    env = {**os.environ, "RECON4D_NO_PROGRESS": "1"}
    run = subprocess.run([sys.executable, "-m", "recon4d", "gen", "decode", str(tmp_path / "garbage.r4dlat"),
                          "-o", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1


def test_decoded_scene_is_a_renderable_scene(tmp_path, red_sphere):
    _, latent = red_sphere
    decode_latent(latent, tmp_path / "ball", preview=False)
    scene = load_scene(tmp_path / "ball")
    assert len(scene.gaussians) == 256 and scene.num_frames >= 1
    assert torch.allclose(scene.gaussians.means.mean(0), latent.center + latent.radius * latent.gaussians[:, :3].mean(0),
                          atol=1e-5)
    assert scene_raster(scene) == EncodeConfig().raster() == RasterConfig(eps2d=0.1, antialiased=True)


def test_latents_of_different_filters_do_not_share_statistics(tmp_path, red_sphere):
    _, latent = red_sphere
    save_latent(latent, tmp_path / "new.r4dlat")
    older = dataclasses.replace(latent, info={k: v for k, v in latent.info.items() if k != "raster_filter"})
    save_latent(older, tmp_path / "old.r4dlat")  # as written before latents stored their filter
    with pytest.raises(InputError, match="different rasterizer filters"):
        summarize(tmp_path, None, {})


def test_corpus_encodes_with_stats_and_resumes(corpus, tmp_path):
    config = EncodeConfig(num_gaussians=64, steps=8)
    summary = encode_any(corpus, tmp_path, config)
    assert summary["encoded"] == 3 and not summary["failed"] and (tmp_path / "contact.png").is_file()
    assert load_stats(tmp_path).count >= 1
    stamp = (tmp_path / "obj_00001.r4dlat").stat().st_mtime_ns
    (tmp_path / "obj_00002.r4dlat").unlink()
    (corpus / "obj_00000" / "transforms.json").rename(corpus / "obj_00000" / "hidden.json")
    broken = corpus / "broken"
    (broken / "images").mkdir(parents=True)
    (broken / "transforms.json").write_text('{"frames": [{"file_path": "images/none.png", "transform_matrix": []}]}')
    try:
        summary = encode_any(corpus, tmp_path, config)
    finally:
        (corpus / "obj_00000" / "hidden.json").rename(corpus / "obj_00000" / "transforms.json")
    assert "broken" in summary["failed"] and (tmp_path / "obj_00002.r4dlat").is_file()
    assert (tmp_path / "obj_00001.r4dlat").stat().st_mtime_ns == stamp  # skipped, not re-encoded


def test_a_fits_moving_object_encodes_where_it_was(tmp_path):
    from view_scenes import PATCH_HALF, moving_patch_scene, patch_centre

    from recon4d.io.scene import save_scene

    save_scene(moving_patch_scene(num_frames=5), tmp_path / "fit" / "scene.r4d")
    summary = encode_any(tmp_path / "fit", tmp_path / "lat", EncodeConfig(num_gaussians=128, steps=40),
                         which="moving", time=3.0)
    latent = load_latent(Path(summary["latent"]))
    gaussians = to_gaussians(latent.gaussians, latent.center, latent.radius)
    # Where and how large: the 5th-95th percentile box of the opaque Gaussians (their median follows how densely
    # the fit covered each side, not where the patch is).
    opaque = gaussians.means[gaussians.opacities > 0.3]
    low, high = opaque.quantile(0.05, 0), opaque.quantile(0.95, 0)
    assert torch.allclose((low + high) / 2, torch.tensor(patch_centre(3.0), dtype=torch.float32), atol=0.03)
    width = (high - low)[:2]  # the patch is a 2 PATCH_HALF square in z = const
    assert bool(((width > 0.8 * 2 * PATCH_HALF) & (width < 1.1 * 2 * PATCH_HALF)).all()) and (high - low)[2] < 0.05
    with pytest.raises(InputError):
        encode_any(tmp_path / "fit", tmp_path / "lat", EncodeConfig(), which="moving", time=99.0)
