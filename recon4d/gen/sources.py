"""What `recon4d gen encode` reads: a corpus (folder of object folders), one object folder, or the output
directory of `recon4d fit` (its moving object or its still part, re-rendered into posed views)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from recon4d.errors import InputError
from recon4d.gen.decode import PreviewConfig
from recon4d.gen.latents import canonical_frame
from recon4d.gen.views import ViewSet, intrinsics, orbit_poses
from recon4d.geometry import invert_pose
from recon4d.io.scene import Gaussians, Scene4D
from recon4d.io.scene_render import scene_raster
from recon4d.render import rasterize

OBJECT_CHOICES = ("moving", "still", "all")
OBJECT_VIEW_ELEVATIONS = (-15.0, 10.0, 30.0, 55.0)  # bands of the turntable around a fit's moving object


def is_fit_dir(path: Path) -> bool:
    return (path / "scene.r4d").is_file() or (path.is_file() and path.suffix == ".r4d")


def corpus_objects(path: Path) -> list[Path]:
    """Object folders under `path` (each with transforms.json), sorted; `path` itself if it is one."""
    if (path / "transforms.json").is_file():
        return [path]
    objects = sorted(p for p in path.iterdir() if (p / "transforms.json").is_file()) if path.is_dir() else []
    if not objects:
        raise InputError(f"{path} holds no object folders with transforms.json and no scene.r4d",
                         hint="give a corpus from `recon4d gen corpus` or a `recon4d fit` output directory")
    return objects


def object_info(folder: Path) -> dict:
    """Caption and labels of an object folder (empty when absent), and where it came from."""
    info: dict = {"source": str(folder), "name": folder.name}
    if (folder / "caption.txt").is_file():
        info["caption"] = (folder / "caption.txt").read_text().strip()
    if (folder / "labels.json").is_file():
        labels = json.loads((folder / "labels.json").read_text())
        info["labels"] = {k: v for k, v in labels.items() if k != "parts"}
    return info


def train_names(corpus: Path) -> set[str] | None:
    """Object names of the train split of a corpus (None when it has no splits.json)."""
    splits = corpus / "splits.json"
    if not splits.is_file():
        return None
    return set(json.loads(splits.read_text()).get("train", []))


def select_gaussians(scene: Scene4D, which: str, time: float) -> Gaussians:
    """The Gaussians of a fit at `time` (frame units): its moving object, its still part or all of them."""
    if which not in OBJECT_CHOICES:
        raise InputError(f"--object must be one of {', '.join(OBJECT_CHOICES)}, got {which!r}")
    if not 0 <= time <= scene.num_frames - 1:
        raise InputError(f"--time {time} is outside the fit's frames 0..{scene.num_frames - 1}")
    alive = scene.alive_at(time)
    current = scene.gaussians_at(time)
    moving = scene.is_moving[alive]
    mask = {"moving": moving, "still": ~moving, "all": torch.ones_like(moving)}[which]
    if int(mask.sum()) < 4:
        raise InputError(f"the fit has no {which} Gaussians at time {time}",
                         hint="try --object all or another --time")
    return current.select(mask)


def views_of_fit(scene: Scene4D, which: str, time: float, config: PreviewConfig) -> tuple[ViewSet, dict]:
    """Posed RGBA views of the selected Gaussians of a fit, rendered with the fit's renderer.

    The moving object is seen from a turntable around it (it is an object; up is the first camera's up);
    the still part from the fit's own cameras (where its reconstruction is supported by the video).
    """
    gaussians = select_gaussians(scene, which, time)
    if which == "moving":
        center, radius = canonical_frame(gaussians.means, gaussians.scales, gaussians.opacities)
        up = -scene.cameras.world_from_camera[0, :3, 1].float()  # the first camera's up (OpenCV y is down)
        poses = orbit_poses(config.frames, config.distance * radius, OBJECT_VIEW_ELEVATIONS, center=center, up=up)
        Ks = intrinsics(config.fov_x_deg, config.width, config.height).expand(poses.shape[0], 3, 3)
        width, height = config.width, config.height
    else:
        poses = scene.cameras.world_from_camera.float()
        Ks = torch.stack([scene.cameras.K(t) for t in range(scene.num_frames)]).float()
        width, height = scene.cameras.width, scene.cameras.height
    images = []
    with torch.no_grad():
        for pose, K in zip(poses, Ks):
            out = rasterize(gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.colors,
                            invert_pose(pose), K, width, height, config=scene_raster(scene))
            alpha = out.alpha.clamp(0, 1)
            color = torch.where(alpha[..., None] > 1e-6, out.color / alpha.clamp_min(1e-6)[..., None], out.color)
            images.append(torch.cat([color.clamp(0, 1), alpha[..., None]], -1))
    return ViewSet(torch.stack(images), poses, Ks.clone()), {"object": which, "time": time, "gaussians": len(gaussians)}

