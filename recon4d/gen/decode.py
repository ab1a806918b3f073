"""Latents back to scenes: a static `Scene4D` (scene.r4d) with turntable cameras that `recon4d view`,
`render` and `export` open like any fit, plus a turntable preview video and a contact sheet."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from recon4d.errors import InputError
from recon4d.gen.latents import Latent, latent_raster, to_gaussians
from recon4d.gen.views import intrinsics, orbit_poses
from recon4d.geometry import invert_pose
from recon4d.io.atomic import write_bytes_atomic
from recon4d.io.scene import Cameras, Gaussians, Scene4D, save_scene
from recon4d.render import RasterConfig, rasterize


@dataclass
class PreviewConfig:
    """Cameras of a decoded scene and its previews.

    Attributes:
        frames: frames of the turntable preview video; scene_cameras: cameras stored in the scene (its
            "frames"; the Gaussians are static, so every frame holds the same set); width, height: image size.
        fov_x_deg: field of view; distance: camera distance in object radii; elevation_deg: orbit elevation.
        fps: frame rate of preview.mp4 and of the scene's timestamps.
    """

    frames: int = 48
    scene_cameras: int = 8
    width: int = 128
    height: int = 128
    fov_x_deg: float = 40.0
    distance: float = 3.0
    elevation_deg: float = 20.0
    fps: float = 12.0


def turntable(center: torch.Tensor, radius: float, config: PreviewConfig, count: int | None = None,
              up: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` (default config.frames) OpenCV world_from_camera [T, 4, 4] around an object (world up `up`,
    default +z) and the intrinsics [3, 3]."""
    poses = orbit_poses(count or config.frames, config.distance * radius, (config.elevation_deg,), center=center, up=up)
    return poses, intrinsics(config.fov_x_deg, config.width, config.height)


def static_scene(gaussians: Gaussians, center: torch.Tensor, radius: float, config: PreviewConfig,
                 info: dict | None = None, raster: RasterConfig = RasterConfig()) -> Scene4D:
    """A static Scene4D of `gaussians` with a turntable of cameras about `center`, drawn with `raster`'s filter."""
    n = len(gaussians)
    frames = config.scene_cameras
    poses, K = turntable(center, radius, config, frames)
    scene = Scene4D(
        gaussians=Gaussians(*(t.detach().float().contiguous() for t in
                              (gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.colors))),
        is_dynamic=torch.zeros(n, dtype=torch.bool),
        birth_frame=torch.zeros(n, dtype=torch.int32),
        dynamic_means=torch.zeros(frames, 0, 3),
        dynamic_quats=torch.zeros(frames, 0, 4),
        cameras=Cameras(poses, torch.tensor([[K[0, 0], K[1, 1], K[0, 2], K[1, 2]]]).repeat(frames, 1),
                        torch.arange(frames, dtype=torch.float64) / config.fps, config.width, config.height,
                        [f"turntable_{i:03d}" for i in range(frames)]),
        config={"source": "recon4d.gen", **(info or {}), "raster_filter": raster.filter_dict()},
    )
    scene.validate()
    return scene


def render_turntable(gaussians: Gaussians, center: torch.Tensor, radius: float, config: PreviewConfig,
                     background: torch.Tensor | None = None, raster: RasterConfig = RasterConfig()) -> torch.Tensor:
    """RGB frames [T, H, W, 3] in [0, 1] of the turntable (white background by default)."""
    background = torch.ones(3) if background is None else background
    poses, K = turntable(center, radius, config)
    with torch.no_grad():
        return torch.stack([rasterize(gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities,
                                      gaussians.colors, invert_pose(pose), K, config.width, config.height,
                                      background=background, config=raster).color.clamp(0, 1) for pose in poses])


def contact_sheet(rows: list[torch.Tensor]) -> np.ndarray:
    """Rows of images [k, H, W, 3] in [0, 1] -> one uint8 RGB sheet (rows stacked, images side by side)."""
    width = max(r.shape[0] for r in rows)
    padded = [torch.cat([r, torch.ones(width - r.shape[0], *r.shape[1:])]) if r.shape[0] < width else r for r in rows]
    sheet = torch.cat([torch.cat(list(r), 1) for r in padded], 0)
    return (sheet.numpy() * 255 + 0.5).astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    write_bytes_atomic(path, encoded.tobytes())


def write_scene_dir(out: Path, gaussians: Gaussians, center: torch.Tensor, radius: float, config: PreviewConfig,
                    info: dict | None = None, preview: bool = True, raster: RasterConfig = RasterConfig()) -> Path:
    """OUT/scene.r4d (+ preview.mp4 turntable and contact.png with 8 of its views when `preview`); `raster`: the
    filter the Gaussians were fitted under, stored in the scene and used for the previews."""
    from recon4d.io.video_writer import write_video

    out.mkdir(parents=True, exist_ok=True)
    save_scene(static_scene(gaussians, center, radius, config, info, raster), out / "scene.r4d")
    if preview:
        frames = render_turntable(gaussians, center, radius, config, raster=raster)
        write_video(out / "preview.mp4", (frames.numpy() * 255 + 0.5).astype(np.uint8), config.fps)
        step = max(1, config.frames // 8)
        write_png(out / "contact.png", contact_sheet([frames[::step][:8]]))  # 8 views around the object
    return out / "scene.r4d"


def check_output_dir(out: Path) -> None:
    """InputError if `out` cannot be a scene directory (a file is in the way)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a directory")


def decode_latent(latent: Latent, out: Path, config: PreviewConfig = PreviewConfig(), preview: bool = True) -> Path:
    """Write the scene of a latent in the frame of its source (corpus world or fit world)."""
    check_output_dir(out)
    radius = float(latent.radius)
    gaussians = to_gaussians(latent.gaussians, latent.center, radius)
    info = {"caption": latent.caption, "latent": {k: v for k, v in latent.info.items() if k != "metrics"}}
    return write_scene_dir(out, gaussians, latent.center, radius, config, info, preview, latent_raster(latent.info))

