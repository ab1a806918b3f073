"""Text-to-3D benchmark: attribute accuracy by an independent judge, Fréchet distance, quality vs NFE.

    .venv/bin/python bench/gen.py --corpus out/gen_ship/corpus --model recon4d/gen/models/text2splat

The judge is a small CNN trained here on the corpus's own renders (train split, never on generated data)
to predict colour and shape; its penultimate features give the Fréchet distance between renders of
samples and renders of test-split objects. Colour is also judged without learning, by the hue histogram
of the sample's pixels. Prompts are fresh captions of the corpus grammar (their attributes known); those
whose colour x shape pair is held out of training are reported separately (compositional).
LPIPS/Inception networks are not available offline, hence this judge.
"""
from __future__ import annotations

import argparse
import colorsys
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from table import print_markdown_table  # noqa: E402

from recon4d.gen.corpus import HELDOUT_PAIRS  # noqa: E402
from recon4d.gen.encode import composite  # noqa: E402
from recon4d.gen.latents import to_gaussians  # noqa: E402
from recon4d.gen.objects import COLORS, SHAPES, sample_object  # noqa: E402
from recon4d.gen.sample import Generator, SampleRequest  # noqa: E402
from recon4d.gen.views import intrinsics, orbit_poses, read_view_set  # noqa: E402
from recon4d.geometry import invert_pose  # noqa: E402
from recon4d.render import rasterize  # noqa: E402

COLOR_NAMES, SIZE = list(COLORS), 64
SAMPLE_CAMERA_DISTANCE = 3.4  # canonical objects have radius 1; corpus objects ~0.8 at distance 2.8


class Judge(nn.Module):
    """Colour and shape classifier over 64x64 RGB renders on white; `features` feeds the Fréchet distance."""

    def __init__(self) -> None:
        super().__init__()
        layers, channels = [], 3
        for width in (32, 64, 96, 128):
            layers += [nn.Conv2d(channels, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.color = nn.Linear(128, len(COLOR_NAMES))
        self.shape = nn.Linear(128, len(SHAPES))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images.permute(0, 3, 1, 2))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(images)
        return self.color(f), self.shape(f)


def corpus_images(corpus: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All views of the named objects on white [M, 64, 64, 3], colour and shape labels [M]."""
    import json

    images, colors, shapes = [], [], []
    for name in names:
        labels = json.loads((corpus / name / "labels.json").read_text())
        views = read_view_set(corpus / name)
        images.append(composite(views.images, torch.ones(3)))
        colors += [COLOR_NAMES.index(labels["color"])] * len(views.images)
        shapes += [SHAPES.index(labels["shape"])] * len(views.images)
    return torch.cat(images), torch.tensor(colors), torch.tensor(shapes)


def train_judge(images: torch.Tensor, colors: torch.Tensor, shapes: torch.Tensor, epochs: int) -> Judge:
    torch.manual_seed(0)
    judge = Judge()
    optimizer = torch.optim.Adam(judge.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    generator = torch.Generator().manual_seed(0)
    judge.train()
    for _ in range(epochs):
        for index in torch.randperm(len(images), generator=generator).split(64):
            batch = images[index]
            scale = 0.8 + 0.4 * torch.rand(1, generator=generator).item()  # object size is not an attribute
            batch = nn.functional.interpolate(batch.permute(0, 3, 1, 2), scale_factor=scale, mode="bilinear")
            pad = SIZE - batch.shape[-1]
            batch = nn.functional.pad(batch, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2), value=1.0) if pad > 0 \
                else batch[..., -pad // 2:-pad // 2 + SIZE, -pad // 2:-pad // 2 + SIZE]
            color_logits, shape_logits = judge(batch.permute(0, 2, 3, 1))
            loss = nn.functional.cross_entropy(color_logits, colors[index]) + nn.functional.cross_entropy(shape_logits, shapes[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
    return judge.eval()


def render_latents(latents: torch.Tensor, view: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical latents [N, G, 14] -> RGB on white [N, 64, 64, 3] and alpha [N, 64, 64] at a corpus-like view."""
    pose = orbit_poses(4, SAMPLE_CAMERA_DISTANCE, (10.0, 30.0))[view]
    K = intrinsics(40.0, SIZE, SIZE)
    images, alphas = [], []
    with torch.no_grad():
        for latent in latents:
            g = to_gaussians(latent)
            out = rasterize(g.means, g.quats, g.scales, g.opacities, g.colors, invert_pose(pose), K, SIZE, SIZE,
                            background=torch.ones(3))
            images.append(out.color.clamp(0, 1))
            alphas.append(out.alpha)
    return torch.stack(images), torch.stack(alphas)


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


def score(judge: Judge, latents: torch.Tensor, items: list[dict]) -> dict:
    images, alphas = render_latents(latents)
    with torch.no_grad():
        color_logits, shape_logits = judge(images)
        features = judge.features(images)
    color_ok = color_logits.argmax(-1) == torch.tensor([COLOR_NAMES.index(i["color"]) for i in items])
    shape_ok = shape_logits.argmax(-1) == torch.tensor([SHAPES.index(i["shape"]) for i in items])
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
            row, features = score(judge, latents, items)
            rows.append({"sampler": sampler, "nfe": nfe, **row, "fd": frechet(features, reference),
                         "final_loss": summary["rf1"]["final_loss"]})
            print(rows[-1], flush=True)
    return rows


def load_or_train_judge(args: argparse.Namespace, train_names: list[str]) -> Judge:
    from safetensors.torch import load_file, save_file

    if args.judge_file is not None and args.judge_file.is_file():
        judge = Judge()
        judge.load_state_dict(load_file(str(args.judge_file)))
        return judge.eval()
    images, colors, shapes = corpus_images(args.corpus, train_names)
    judge = train_judge(images, colors, shapes, args.judge_epochs)
    if args.judge_file is not None:
        save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(args.judge_file))
    return judge


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True, help="corpus with splits.json (judge training, FD reference)")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--nfe", default="1,2,4,8,16,32")
    parser.add_argument("--judge-epochs", type=int, default=10)
    parser.add_argument("--judge-file", type=Path, default=None,
                        help="safetensors of the judge: loaded when it exists, else trained and saved there")
    parser.add_argument("--judge-only", action="store_true", help="train (and save) the judge, then stop")
    parser.add_argument("--methods", default="rf1-euler,rf2-euler,boss,turbo,onestep")
    parser.add_argument("--ablation-latents", type=Path, default=None,
                        help="latents to train the timestep-sampler ablation on (1-RF, uniform/logit-normal/U-shaped)")
    parser.add_argument("--ablation-steps", type=int, default=600, help="1-RF steps of each ablation model")
    parser.add_argument("--ablation-work", type=Path, default=Path("out/bench_gen_ablation"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    import json

    splits = json.loads((args.corpus / "splits.json").read_text())
    judge = load_or_train_judge(args, splits["train"])
    if args.judge_only:
        return 0
    test_names = splits["test"] + splits["test_compositional"]
    test_images, test_colors, test_shapes = corpus_images(args.corpus, test_names)
    with torch.no_grad():
        c_logits, s_logits = judge(test_images)
        reference = judge.features(test_images[::6])
    print(f"judge on test-split corpus renders: colour {float((c_logits.argmax(-1) == test_colors).float().mean()) * 100:.1f} %, "
          f"shape {float((s_logits.argmax(-1) == test_shapes).float().mean()) * 100:.1f} % ({len(test_images)} views)\n")
    generator, items = Generator(args.model), prompts(args.prompts)
    rows = []
    for method in args.methods.split(","):
        for nfe in [int(n) for n in args.nfe.split(",")]:
            settings = {"rf1-euler": {"solver": "euler"}, "rf2-euler": {"solver": "euler", "reflow": True},
                        "boss": {"solver": "boss"}, "turbo": {"solver": "turbo"}, "onestep": {"solver": "onestep"}}[method]
            request = SampleRequest("-", steps=nfe, **settings)
            if method == "onestep" and nfe != 1:
                continue
            try:
                latents, seconds = sample_all(generator, items, request, 32)
            except Exception as exc:  # a stage the model lacks: report it, go on
                rows.append({"method": method, "error": str(exc).splitlines()[0]})
                break
            row, features = score(judge, latents, items)
            rows.append({"method": method, "nfe": nfe, **row, "fd": frechet(features, reference), "s_per_sample": seconds})
            print(rows[-1], flush=True)
    print(f"\n## Text alignment and Fréchet distance ({len(items)} prompts, {sum(i['compositional'] for i in items)} "
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
