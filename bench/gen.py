"""Text-to-3D benchmark: attribute accuracy by an independent judge, Fréchet distance, quality vs NFE.

    .venv/bin/python bench/gen.py --corpus CORPUS --latents LATENTS --judge-file WORK/judge.safetensors \
        [--model recon4d/gen/models/text2splat]

The judge (bench/gen_judge.py) is a small CNN trained here on TRUE objects of the train/val splits only
(never on generated data): the corpus's ray-cast views and, with --latents, their encoded latents splatted
by the same camera that renders the samples, so the splat look does not count against the generator. Its
accuracy on the test split (corpus views and splatted encoded latents) is printed first: the ceiling of
every row. Its penultimate features give the Fréchet distance between renders of samples and renders of
test-split objects. Colour is also judged without learning, by the hue histogram of the sample's pixels.
Prompts are fresh captions of the corpus grammar (their attributes known); those whose colour x shape pair
is held out of training are reported separately (compositional). `--prompt-split train` scores the model's
own training captions instead: failing those too means under-fitting, not poor generalisation.
LPIPS/Inception networks are not available offline, hence this judge.
"""
from __future__ import annotations

import argparse
import colorsys
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from gen_judge import (  # noqa: E402
    COLOR_NAMES,
    Judge,
    JudgeConfig,
    accuracy,
    corpus_views,
    latent_views,
    load_or_train_judge,
    on_white,
    predict,
    render_canonical,
    sample_poses,
)
from table import print_markdown_table  # noqa: E402

from recon4d.gen.corpus import HELDOUT_PAIRS  # noqa: E402
from recon4d.gen.objects import COLORS, SHAPES, sample_object  # noqa: E402
from recon4d.gen.sample import Generator, SampleRequest  # noqa: E402
from recon4d.render.config import RasterConfig  # noqa: E402

SAMPLE_VIEWS = 4  # render_latents' view index runs over this many azimuths of the sample camera


def render_latents(latents: torch.Tensor, raster: RasterConfig, view: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical latents [N, G, 14] -> RGB on white [N, 64, 64, 3] and alpha [N, 64, 64] at a corpus-like view
    (the sample camera of the judge: `gen_judge.sample_poses`), drawn with the filter of the model's latents."""
    pose = sample_poses(SAMPLE_VIEWS)[view:view + 1]
    rendered = [render_canonical(latent, pose, raster) for latent in latents]
    premultiplied, alphas = torch.cat([r[0] for r in rendered]), torch.cat([r[1] for r in rendered])
    return on_white(premultiplied, alphas), alphas


def hue_color(image: torch.Tensor, alpha: torch.Tensor) -> int:
    """Colour index from the hue histogram of the object's pixels (no learning): chromatic pixels vote by
    hue for the nearest palette hue; mostly grey pixels decide between white, gray and black by value."""
    pixels = image[alpha > 0.5].numpy()
    if len(pixels) == 0:
        return -1
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in pixels])
    chromatic = hsv[:, 1] > 0.35
    palette = {n: colorsys.rgb_to_hsv(*c) for n, c in COLORS.items()}
    if chromatic.mean() < 0.3:
        value = float(np.median(hsv[:, 2]))
        name = "white" if value > 0.75 else "black" if value < 0.25 else "gray"
        return COLOR_NAMES.index(name)
    histogram = np.histogram(hsv[chromatic, 0], bins=36, range=(0, 1))[0]
    hue = (np.argmax(histogram) + 0.5) / 36
    value = float(np.median(hsv[chromatic, 2]))
    candidates = [n for n, (h, s, v) in palette.items() if s > 0.35]

    def distance(name: str) -> float:
        h, _, v = palette[name]
        dh = min(abs(h - hue), 1 - abs(h - hue))
        return dh + 0.3 * abs(v * 0.8 - value)  # shading darkens: compare with 0.8 of the palette value

    return COLOR_NAMES.index(min(candidates, key=distance))


def frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy import linalg

    mu_a, mu_b = a.mean(0).numpy(), b.mean(0).numpy()
    cov_a, cov_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def prompts(count: int) -> list[dict]:
    """Fresh captions of the grammar (seeds far from the corpus) with their labels; primitives + composites."""
    out = []
    for seed in range(900_000, 900_000 + count):
        spec = sample_object(seed)
        out.append({"caption": spec.caption, "color": spec.labels["color"], "shape": spec.labels["shape"],
                    "compositional": (spec.labels["color"], spec.labels["shape"]) in HELDOUT_PAIRS})
    return out


def split_prompts(corpus: Path, names: list[str], count: int) -> list[dict]:
    """Captions and labels of the first `count` corpus objects of a split (e.g. the training captions: if a
    model fails on its own training prompts, the problem is fitting, not generalisation)."""
    out = []
    for name in names[:count]:
        labels = json.loads((corpus / name / "labels.json").read_text())
        out.append({"caption": (corpus / name / "caption.txt").read_text().strip(), "color": labels["color"],
                    "shape": labels["shape"], "compositional": False})
    return out


def score(judge: Judge, latents: torch.Tensor, items: list[dict], raster: RasterConfig) -> dict:
    """Judge colour/shape from the SAMPLE_VIEWS views of render_latents together, hue from view 0."""
    rendered = [render_latents(latents, raster, view) for view in range(SAMPLE_VIEWS)]
    views = torch.stack([image for image, _ in rendered], 1)  # [N, V, 64, 64, 3]
    images, alphas = rendered[0]
    color, shape = predict(judge, views)
    with torch.no_grad():
        features = judge.features(views.flatten(0, 1))
    color_ok = color == torch.tensor([COLOR_NAMES.index(i["color"]) for i in items])
    shape_ok = shape == torch.tensor([SHAPES.index(i["shape"]) for i in items])
    hue_ok = torch.tensor([hue_color(im, al) == COLOR_NAMES.index(i["color"]) for im, al, i in zip(images, alphas, items)])
    held = torch.tensor([i["compositional"] for i in items])
    row = {"color_acc": float(color_ok[~held].float().mean()) * 100, "shape_acc": float(shape_ok[~held].float().mean()) * 100,
           "hue_color_acc": float(hue_ok[~held].float().mean()) * 100}
    if bool(held.any()):
        row.update({"comp_color_acc": float(color_ok[held].float().mean()) * 100,
                    "comp_shape_acc": float(shape_ok[held].float().mean()) * 100})
    return row, features


def sample_all(generator: Generator, items: list[dict], request: SampleRequest, batch: int) -> tuple[torch.Tensor, float]:
    """Latents for every prompt (one sample each; noise from seed 0, shared by all methods) and seconds per sample."""
    x0 = generator.noise(len(items), seed=0)
    latents, start = [], time.perf_counter()
    for first in range(0, len(items), batch):
        chunk = items[first:first + batch]
        latents.append(generator.solve([i["caption"] for i in chunk], x0[first:first + batch], request))
    return generator.stats.destandardize(torch.cat(latents)), (time.perf_counter() - start) / len(items)


def ablation(args: argparse.Namespace, judge: Judge, reference: torch.Tensor, items: list[dict]) -> list[dict]:
    """Train one 1-RF model per timestep sampler on the same latents and score them at NFE 4 and 16."""
    import dataclasses

    from recon4d.gen.config import load_preset
    from recon4d.gen.pipeline import run_pipeline

    preset = load_preset(Path(__file__).resolve().parents[1] / "configs" / "gen.yaml")
    rows = []
    for sampler in ("uniform", "logit_normal", "u_shaped"):
        config = dataclasses.replace(preset, stages=("rf1",), rf1=dataclasses.replace(
            preset.rf1, steps=args.ablation_steps, timestep_sampler=sampler))
        summary = run_pipeline(args.ablation_latents, args.ablation_work / sampler, config)
        generator = Generator(args.ablation_work / sampler)
        for nfe in (4, 16):
            latents, _ = sample_all(generator, items, SampleRequest("-", steps=nfe), 32)
            row, features = score(judge, latents, items, generator.stats.raster)
            rows.append({"sampler": sampler, "nfe": nfe, **row, "fd": frechet(features, reference),
                         "final_loss": summary["rf1"]["final_loss"]})
            print(rows[-1], flush=True)
    return rows


def judge_ceiling(judge: Judge, corpus: Path, latents: Path | None, names: list[str]) -> tuple[list[dict], torch.Tensor]:
    """The judge's accuracy on true test-split renders (rows) and the Fréchet reference features: splatted
    encoded latents at the sample views when latents are given (the samples' look), else corpus views."""
    reference = corpus_views(corpus, names)
    rows = [{"judged": "corpus views (elev. 10/30)", **accuracy(judge, reference)}]
    if latents is not None:
        splats = latent_views(corpus, latents, names, SAMPLE_VIEWS, seed=None)
        view0 = {k: v[::SAMPLE_VIEWS] for k, v in splats.items()}
        rows += [{"judged": "encoded latents, render_latents view 0", **accuracy(judge, view0)},
                 {"judged": f"encoded latents, views 0-{SAMPLE_VIEWS - 1} one by one", **accuracy(judge, splats)},
                 {"judged": f"encoded latents, views 0-{SAMPLE_VIEWS - 1} together (as samples)",
                  **accuracy(judge, splats, SAMPLE_VIEWS)}]
        reference = splats
    with torch.no_grad():
        features = judge.features(on_white(reference["rgb"], reference["alpha"]))
    return rows, features


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True, help="corpus with splits.json (judge training, FD reference)")
    parser.add_argument("--latents", type=Path, default=None,
                        help="encoded latents of the corpus (judge training on splat renders, ceiling, FD reference)")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--prompt-split", default="fresh",
                        help="fresh: new captions of the grammar (the goal's test prompts); or a corpus split "
                             "(train, val, test): the captions of its objects")
    parser.add_argument("--nfe", default="1,2,4,8,16,32")
    parser.add_argument("--judge-epochs", type=int, default=JudgeConfig.epochs)
    parser.add_argument("--judge-file", type=Path, default=None,
                        help="safetensors of the judge: loaded when it exists (same recipe and data), else trained and saved there")
    parser.add_argument("--judge-only", action="store_true", help="train (and save) the judge, report its ceiling, then stop")
    parser.add_argument("--methods", default="rf1-euler,rf2-euler,boss,turbo,onestep")
    parser.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the one stored with each model)")
    parser.add_argument("--ablation-latents", type=Path, default=None,
                        help="latents to train the timestep-sampler ablation on (1-RF, uniform/logit-normal/U-shaped)")
    parser.add_argument("--ablation-steps", type=int, default=600, help="1-RF steps of each ablation model")
    parser.add_argument("--ablation-work", type=Path, default=Path("out/bench_gen_ablation"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    splits = json.loads((args.corpus / "splits.json").read_text())
    if args.prompt_split != "fresh" and args.prompt_split not in splits:
        parser.error(f"--prompt-split must be fresh or one of {', '.join(splits)}")
    items = prompts(args.prompts) if args.prompt_split == "fresh" else split_prompts(args.corpus, splits[args.prompt_split],
                                                                                     args.prompts)
    config = dataclasses.replace(JudgeConfig(), epochs=args.judge_epochs)
    start = time.process_time()
    judge = load_or_train_judge(args.judge_file, args.corpus, args.latents, splits["train"] + splits["val"], config)
    ceiling, reference = judge_ceiling(judge, args.corpus, args.latents, splits["test"] + splits["test_compositional"])
    print(f"\n## Judge accuracy on true test-split renders ({len(splits['test']) + len(splits['test_compositional'])} "
          f"objects; judge ready in {time.process_time() - start:.0f} CPU s)\n")
    print_markdown_table(ceiling, ["judged", "color_acc", "shape_acc", "images"], key="judged")
    if args.judge_only:
        return 0
    generator = Generator(args.model)
    rows = []
    for method in args.methods.split(","):
        for nfe in [int(n) for n in args.nfe.split(",")]:
            settings = {"rf1-euler": {"solver": "euler"}, "rf2-euler": {"solver": "euler", "reflow": True},
                        "boss": {"solver": "boss"}, "turbo": {"solver": "turbo"}, "onestep": {"solver": "onestep"}}[method]
            request = SampleRequest("-", steps=nfe, cfg=args.cfg, **settings)
            if method == "onestep" and nfe != 1:
                continue
            try:
                latents, seconds = sample_all(generator, items, request, 32)
            except Exception as exc:  # a stage the model lacks: report it, go on
                rows.append({"method": method, "error": str(exc).splitlines()[0]})
                break
            row, features = score(judge, latents, items, generator.stats.raster)
            rows.append({"method": method, "nfe": nfe, **row, "fd": frechet(features, reference), "s_per_sample": seconds})
            print(rows[-1], flush=True)
    print(f"\n## Text alignment and Fréchet distance ({len(items)} {args.prompt_split} prompts, {sum(i['compositional'] for i in items)} "
          "compositional; goals: colour >= 90 %, shape >= 80 % at 4 steps)\n")
    print_markdown_table(rows, ["method", "nfe", "color_acc", "hue_color_acc", "shape_acc", "comp_color_acc",
                                "comp_shape_acc", "fd", "s_per_sample"], key="method")
    if args.ablation_latents is not None:
        print("\n## Timestep sampler ablation (1-RF, Euler; same recipe otherwise)\n")
        print_markdown_table(ablation(args, judge, reference, items), ["sampler", "nfe", "color_acc", "shape_acc", "fd",
                                                                        "final_loss"], key="sampler")
    training, recipe = generator.model_dir / "training.json", generator.model_dir / "recipe.json"
    summary = json.loads(training.read_text()) if training.is_file() else \
        json.loads(recipe.read_text()).get("training", {}) if recipe.is_file() else {}
    if summary.get("rf2"):
        rf2 = summary["rf2"]
        print(f"\nstraightness: 1-RF {rf2.get('straightness_rf1')}, 2-RF {rf2.get('straightness_rf2')}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
