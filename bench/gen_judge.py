"""The text-alignment judge of bench/gen.py: a small CNN that reads colour and shape from a 64x64 render.

It is trained on TRUE objects only (never on generated data), in the two looks a render can have:
  * the corpus's own ray-cast views at the elevations samples are judged at, and
  * encoded latents of the same objects decoded and splatted by `render_canonical` (canonical frame,
    the camera of `bench/gen.py`'s `render_latents`), so that the splat look and the canonical framing
    are not counted against the generator.
Training objects are the train + val splits; the test split (incl. held-out colour x shape pairs) is kept
for measuring the judge itself. Augmentation: scale, shift, mirror, per-object brightness (hue kept).
LPIPS/Inception networks are not available offline, hence this judge.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from recon4d.gen.latents import latent_raster, load_latent
from recon4d.gen.objects import COLORS, SHAPES
from recon4d.gen.render_loss import CAMERA_DISTANCE, FOV_X_DEG, render_latent
from recon4d.gen.views import intrinsics, orbit_poses, read_view_set
from recon4d.geometry import invert_pose
from recon4d.progress import track
from recon4d.render.config import RasterConfig

COLOR_NAMES, SIZE = list(COLORS), 64
# the sample camera is the rendering loss's canonical orbit camera (CAMERA_DISTANCE 3.4, FOV_X_DEG 40):
# canonical objects have radius 1; corpus objects ~0.8 at distance 2.8
SAMPLE_ELEVATIONS = (10.0, 30.0)  # the elevations samples are judged at (corpus bands 2 and 3)


@dataclass
class JudgeConfig:
    """Judge architecture, data and training recipe (the cache key of the saved judge)."""

    widths: tuple[int, ...] = (32, 64, 96, 128)
    epochs: int = 20
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    latent_views: int = 12  # splat renders per encoded training object (azimuths spread, both elevations)
    scale_range: tuple[float, float] = (0.85, 1.15)  # object size is not an attribute
    shift_px: int = 4
    brightness_range: tuple[float, float] = (0.8, 1.2)  # shading differs between ray-cast and splats
    seed: int = 0


class Judge(nn.Module):
    """Colour and shape classifier over 64x64 RGB renders on white; `features` feeds the Fréchet distance.

    Each stage: a stride-2 3x3 conv, and at 16x16 and below one more 3x3 conv with a residual add."""

    def __init__(self, widths: tuple[int, ...] = JudgeConfig.widths) -> None:
        super().__init__()
        stages, channels = [], 3
        for index, width in enumerate(widths):
            down = nn.Sequential(nn.Conv2d(channels, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
            extra = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU()) if index >= 1 else None
            stages.append(nn.ModuleDict({"down": down, **({"extra": extra} if extra is not None else {})}))
            channels = width
        self.stages = nn.ModuleList(stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.color = nn.Linear(channels, len(COLOR_NAMES))
        self.shape = nn.Linear(channels, len(SHAPES))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 64, 64, 3] -> [N, C]."""
        x = images.permute(0, 3, 1, 2)
        for stage in self.stages:
            x = stage["down"](x)
            if "extra" in stage:
                x = x + stage["extra"](x)
        return self.pool(x)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(images)
        return self.color(f), self.shape(f)


def sample_poses(count: int, azimuth_offset_deg: float = 0.0) -> torch.Tensor:
    """[count, 4, 4] world_from_camera of the sample camera: orbit at SAMPLE_ELEVATIONS about the origin."""
    return orbit_poses(count, CAMERA_DISTANCE, SAMPLE_ELEVATIONS, azimuth_offset_deg=azimuth_offset_deg)


def render_canonical(latent: torch.Tensor, poses: torch.Tensor,
                     raster: RasterConfig = RasterConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical latent [G, 14] -> premultiplied RGB [V, 64, 64, 3] and alpha [V, 64, 64] for poses [V, 4, 4],
    drawn with the filter the latent was encoded under (`raster`)."""
    K = intrinsics(FOV_X_DEG, SIZE, SIZE)
    colors, alphas = [], []
    with torch.no_grad():
        for pose in poses:
            color, alpha = render_latent(latent, invert_pose(pose), K, SIZE, raster)
            colors.append(color.clamp(0, 1))
            alphas.append(alpha.clamp(0, 1))
    return torch.stack(colors), torch.stack(alphas)


def on_white(premultiplied: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Premultiplied RGB [..., H, W, 3] and alpha [..., H, W] -> RGB on white."""
    return (premultiplied + (1 - alpha[..., None])).clamp(0, 1)


def _labels(corpus: Path, name: str) -> tuple[int, int]:
    labels = json.loads((corpus / name / "labels.json").read_text())
    return COLOR_NAMES.index(labels["color"]), SHAPES.index(labels["shape"])


def corpus_views(corpus: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Ray-cast views of the named objects at the sample elevations: premult [M, 64, 64, 3], alpha, labels."""
    rgb, alpha, colors, shapes = [], [], [], []
    for name in names:
        views = read_view_set(corpus / name)
        elevation = torch.rad2deg(torch.asin(views.world_from_camera[:, 2, 3] / views.world_from_camera[:, :3, 3].norm(dim=-1)))
        keep = (elevation.unsqueeze(-1) - torch.tensor(SAMPLE_ELEVATIONS)).abs().min(-1).values < 1.0
        images = views.images[keep]
        rgb.append(images[..., :3] * images[..., 3:])
        alpha.append(images[..., 3])
        color, shape = _labels(corpus, name)
        colors += [color] * len(images)
        shapes += [shape] * len(images)
    return {"rgb": torch.cat(rgb), "alpha": torch.cat(alpha), "color": torch.tensor(colors), "shape": torch.tensor(shapes)}


def latent_views(corpus: Path, latents: Path, names: list[str], views: int, seed: int | None) -> dict[str, torch.Tensor]:
    """Encoded latents of the named objects splatted by `render_canonical` at `views` sample-camera poses each
    (a random azimuth offset per object from `seed`; None: the poses of bench/gen.py's `render_latents`);
    objects without a latent file are skipped."""
    generator = torch.Generator().manual_seed(seed or 0)
    rgb, alpha, colors, shapes = [], [], [], []
    present = [n for n in names if (latents / f"{n}.r4dlat").is_file()]
    for name in track(present, description="splat renders"):
        offset = 0.0 if seed is None else float(torch.rand(1, generator=generator)) * 360.0
        latent = load_latent(latents / f"{name}.r4dlat")
        premultiplied, a = render_canonical(latent.gaussians, sample_poses(views, offset), latent_raster(latent.info))
        rgb.append(premultiplied)
        alpha.append(a)
        color, shape = _labels(corpus, name)
        colors += [color] * views
        shapes += [shape] * views
    return {"rgb": torch.cat(rgb), "alpha": torch.cat(alpha), "color": torch.tensor(colors), "shape": torch.tensor(shapes)}


def concat(*sets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: torch.cat([s[key] for s in sets]) for key in sets[0]}


def augment(rgb: torch.Tensor, alpha: torch.Tensor, config: JudgeConfig, generator: torch.Generator) -> torch.Tensor:
    """Random scale, shift, mirror and object brightness of a batch -> RGB on white [B, 64, 64, 3]."""
    n = len(rgb)
    u = torch.rand(n, 5, generator=generator)
    brightness = config.brightness_range[0] + (config.brightness_range[1] - config.brightness_range[0]) * u[:, 0]
    x = torch.cat([rgb * brightness[:, None, None, None], alpha[..., None]], -1).permute(0, 3, 1, 2)
    scale = config.scale_range[0] + (config.scale_range[1] - config.scale_range[0]) * u[:, 1]
    shift = (2 * u[:, 2:4] - 1) * config.shift_px * 2 / SIZE
    mirror = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = mirror / scale, 1 / scale
    theta[:, :, 2] = shift
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).permute(0, 2, 3, 1)
    return on_white(x[..., :3], x[..., 3])


def train_judge(data: dict[str, torch.Tensor], config: JudgeConfig) -> Judge:
    """Cross-entropy (label-smoothed) on colour + shape, AdamW with a cosine schedule, batches augmented."""
    torch.manual_seed(config.seed)
    judge = Judge(config.widths)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(data["rgb"]) / config.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(config.seed)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    judge.train()
    for _ in track(range(config.epochs), description="judge epochs"):
        for index in torch.randperm(len(data["rgb"]), generator=generator).split(config.batch):
            batch = augment(data["rgb"][index], data["alpha"][index], config, generator)
            color_logits, shape_logits = judge(batch)
            loss = loss_fn(color_logits, data["color"][index]) + loss_fn(shape_logits, data["shape"][index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return judge.eval()


def predict(judge: Judge, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of N objects from V views each [N, V, 64, 64, 3] -> colour and shape indices [N] of the
    view-averaged class probabilities (one view can hide a shape's telling part: a handle, a corner)."""
    n, v = images.shape[:2]
    with torch.no_grad():
        color_logits, shape_logits = judge(images.reshape(n * v, *images.shape[2:]))
    return (color_logits.softmax(-1).reshape(n, v, -1).mean(1).argmax(-1),
            shape_logits.softmax(-1).reshape(n, v, -1).mean(1).argmax(-1))


def accuracy(judge: Judge, data: dict[str, torch.Tensor], views: int = 1) -> dict[str, float]:
    """Colour and shape accuracy (%) of the judge on un-augmented images on white; `views` consecutive
    images per object are judged together (`predict`)."""
    images = on_white(data["rgb"], data["alpha"])
    color, shape = predict(judge, images.reshape(-1, views, *images.shape[1:]))
    return {"color_acc": float((color == data["color"][::views]).float().mean()) * 100,
            "shape_acc": float((shape == data["shape"][::views]).float().mean()) * 100,
            "images": len(images)}


def load_or_train_judge(path: Path | None, corpus: Path, latents: Path | None, train_names: list[str],
                        config: JudgeConfig) -> Judge:
    """The judge saved at `path` (safetensors; reused only when its recorded config and data match), else trained
    on corpus views (+ splat renders of `latents`) of `train_names` and saved there."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from recon4d.io.atomic import atomic_path

    key = json.dumps({"config": dataclasses.asdict(config), "corpus": str(corpus.resolve()),
                      "latents": str(latents.resolve()) if latents else None, "objects": len(train_names)}, sort_keys=True)
    if path is not None and path.is_file():
        with safe_open(str(path), framework="pt") as reader:
            if (reader.metadata() or {}).get("key") == key:
                judge = Judge(config.widths)
                judge.load_state_dict({k: reader.get_tensor(k) for k in reader.keys()})  # noqa: SIM118 (safe_open is not iterable)
                return judge.eval()
    data = corpus_views(corpus, train_names)
    if latents is not None:
        data = concat(data, latent_views(corpus, latents, train_names, config.latent_views, config.seed))
    judge = train_judge(data, config)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(tmp), metadata={"key": key})
    return judge
