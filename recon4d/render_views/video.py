"""Rendering a camera path of a fitted scene into videos: colour, and optionally depth, alpha and motion.

    views = make_path(scene, "orbit")
    rendered = render_path(scene, views, width, height, extras=("depth", "motion"))
    panels = visualise(rendered)                                  # name -> [N, H, W, 3] uint8
    write_outputs(panels, dest, "orbit", fps=30, layout="side-by-side", png=True)

Visualisations:
    depth   inverse depth through a colour map (cv2.applyColorMap, turbo); near is warm. One range for the whole
            video (percentiles of all covered pixels), so colours mean the same depth in every frame; pixels the
            Gaussians do not cover (alpha < threshold) are black.
    alpha   accumulated opacity as grey (white = fully covered).
    motion  the scene re-rendered with every dynamic Gaussian in a highlight colour and the still ones dimmed
            to grey: moving things stand out. Rendered in the same rasterizer call as the colour (6 channels).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from recon4d.errors import InputError
from recon4d.geometry.camera import invert_pose, scale_camera_matrix
from recon4d.io.frames import frame_file_name
from recon4d.io.scene import Scene4D
from recon4d.io.video_writer import write_video
from recon4d.progress import track
from recon4d.io.scene_render import render_scene
from recon4d.render.highlight import MotionHighlight, motion_highlight
from recon4d.render_views.paths import PathView, write_camera_path

EXTRAS = ("depth", "alpha", "motion")
CPU = torch.device("cpu")
LAYOUTS = ("side-by-side", "separate")


@dataclass(frozen=True)
class ViewRenderConfig:
    """How path renders look.

    Attributes:
        background: RGB in [0, 1] behind the Gaussians.
        depth_colormap: OpenCV colour map id for depth (cv2.COLORMAP_TURBO).
        depth_low_percentile, depth_high_percentile: inverse-depth percentiles (over all covered pixels of the
            video) mapped to the ends of the colour map; outside values are clipped.
        coverage_threshold: alpha below which a pixel counts as empty (black in the depth view).
        highlight: colours of the motion view (`recon4d.render.highlight`).
    """

    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    depth_colormap: int = cv2.COLORMAP_TURBO
    depth_low_percentile: float = 2.0
    depth_high_percentile: float = 98.0
    coverage_threshold: float = 0.5
    highlight: MotionHighlight = MotionHighlight()


@dataclass
class RenderedPath:
    """Raw renders of a path of N views at H x W.

    Attributes:
        color: [N, H, W, 3] uint8 RGB.
        depth: [N, H, W] float32 expected camera z (0 where nothing is rendered), or None if not asked for.
        alpha: [N, H, W] float32 accumulated opacity in [0, 1] (kept for depth or alpha), or None.
        motion: [N, H, W, 3] uint8 RGB motion highlight, or None.
    """

    color: np.ndarray
    depth: np.ndarray | None = None
    alpha: np.ndarray | None = None
    motion: np.ndarray | None = None


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[..., 3] float in [0, 1] -> uint8 (round to nearest, as `recon4d fit` writes its comparison video)."""
    return (image.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def render_view(scene: Scene4D, view: PathView, width: int, height: int, motion: bool = False,
                config: ViewRenderConfig = ViewRenderConfig(), device: torch.device = CPU):
    """Render one view at (width, height) -> RenderResult (colour [H, W, 3], or [H, W, 6] with the motion view
    in channels 3..5 when `motion`). Intrinsics are scaled from the scene's size to (width, height)."""
    background = torch.tensor(config.background, dtype=torch.float32)

    def features(gaussians, alive):  # noqa: ANN001, ANN202 - render_scene's feature function
        colors = gaussians.colors[:, :3]
        if not motion:
            return colors
        return torch.cat([colors, motion_highlight(colors, scene.is_moving[alive], config.highlight)], -1)

    K = scale_camera_matrix(view.K, width / scene.cameras.width, height / scene.cameras.height).float()
    camera_from_world = invert_pose(view.world_from_camera).float()
    with torch.no_grad():
        return render_scene(scene, view.time, camera_from_world=camera_from_world, K=K, size=(width, height),
                            colors=features, background=torch.cat([background, background]) if motion else background,
                            device=device)


def render_path(scene: Scene4D, views: Sequence[PathView], width: int, height: int, extras: Sequence[str] = (),
                config: ViewRenderConfig = ViewRenderConfig(), device: torch.device = CPU,
                description: str = "rendering") -> RenderedPath:
    """Render every view (with a progress bar) -> RenderedPath with colour and what the extras need (depth
    also keeps alpha, which marks the empty pixels)."""
    unknown = set(extras) - set(EXTRAS)
    if unknown:
        raise InputError(f"unknown visualisation(s) {sorted(unknown)}", hint=f"use {', '.join(EXTRAS)}")
    count = len(views)
    color = np.empty((count, height, width, 3), np.uint8)
    depth = np.empty((count, height, width), np.float32) if "depth" in extras else None
    alpha = np.empty((count, height, width), np.float32) if {"depth", "alpha"} & set(extras) else None
    motion = np.empty((count, height, width, 3), np.uint8) if "motion" in extras else None
    for k, view in enumerate(track(views, description, total=count)):
        out = render_view(scene, view, width, height, motion is not None, config, device)
        color[k] = to_uint8(out.color[..., :3])
        if motion is not None:
            motion[k] = to_uint8(out.color[..., 3:6])
        if depth is not None:
            depth[k] = out.depth.cpu().numpy()
        if alpha is not None:
            alpha[k] = out.alpha.cpu().numpy()
    return RenderedPath(color=color, depth=depth, alpha=alpha, motion=motion)


def colorize_depth(depth: np.ndarray, covered: np.ndarray, config: ViewRenderConfig = ViewRenderConfig()) -> np.ndarray:
    """depth [N, H, W] camera z, covered [N, H, W] bool -> [N, H, W, 3] uint8 RGB (inverse depth, one range for
    the whole sequence; uncovered pixels black)."""
    valid = covered & (depth > 0) & np.isfinite(depth)
    inverse = np.where(valid, 1.0 / np.where(valid, depth, 1.0), 0.0)
    if valid.any():
        low, high = np.percentile(inverse[valid], [config.depth_low_percentile, config.depth_high_percentile])
    else:
        low, high = 0.0, 1.0
    scaled = np.clip((inverse - low) / max(high - low, 1e-12), 0, 1)
    levels = (scaled * 255 + 0.5).astype(np.uint8)
    out = np.empty((*depth.shape, 3), np.uint8)
    for k in range(depth.shape[0]):
        out[k] = cv2.cvtColor(cv2.applyColorMap(levels[k], config.depth_colormap), cv2.COLOR_BGR2RGB)
    out[~valid] = 0
    return out


def visualise(rendered: RenderedPath, extras: Sequence[str] = EXTRAS,
              config: ViewRenderConfig = ViewRenderConfig()) -> dict[str, np.ndarray]:
    """RenderedPath -> ordered panels "color" then "depth", "alpha", "motion" (those in `extras` that were
    rendered), each [N, H, W, 3] uint8 RGB."""
    panels = {"color": rendered.color}
    if "depth" in extras and rendered.depth is not None:
        panels["depth"] = colorize_depth(rendered.depth, rendered.alpha >= config.coverage_threshold, config)
    if "alpha" in extras and rendered.alpha is not None:
        panels["alpha"] = np.repeat((np.clip(rendered.alpha, 0, 1) * 255 + 0.5).astype(np.uint8)[..., None], 3, -1)
    if "motion" in extras and rendered.motion is not None:
        panels["motion"] = rendered.motion
    return panels


def _write_png_dir(target: Path, frames: np.ndarray) -> Path:
    """Write frames [N, H, W, 3] RGB as target/frame_0000.png ... into a temporary folder, then swap it in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        for k, frame in enumerate(frames):
            path = tmp / frame_file_name("frame", k, ".png")
            if not cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)):
                raise InputError(f"cannot write {path}", hint="check the output folder")
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def write_outputs(panels: dict[str, np.ndarray], dest: str | os.PathLike, stem: str, fps: float,
                  layout: str = "side-by-side", png: bool = False) -> list[Path]:
    """Write panels as mp4 (and PNG frames) into dest -> written paths.

    side-by-side: one `stem.mp4` with the panels left to right (colour, depth, alpha, motion);
    separate: `stem.mp4` (colour) and `stem_<panel>.mp4` for each other panel. With png, each video also gets a
    folder `<video stem>_frames/frame_0000.png ...`. Every file is written atomically.
    """
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}", hint=f"use {' or '.join(LAYOUTS)}")
    dest = Path(dest)
    if layout == "side-by-side":
        videos = {stem: np.concatenate(list(panels.values()), axis=2)}
    else:
        videos = {stem if name == "color" else f"{stem}_{name}": frames for name, frames in panels.items()}
    written = []
    for name, frames in videos.items():
        written.append(write_video(dest / f"{name}.mp4", frames, fps))
        if png:
            written.append(_write_png_dir(dest / f"{name}_frames", frames))
    return written


def render_path_to_files(scene: Scene4D, views: Sequence[PathView], dest: str | os.PathLike, stem: str,
                         width: int, height: int, fps: float, extras: Sequence[str] = (),
                         layout: str = "side-by-side", png: bool = False,
                         config: ViewRenderConfig = ViewRenderConfig(),
                         device: torch.device = CPU, write_cameras: bool = True) -> list[Path]:
    """Render a path and write its videos (see `write_outputs`) plus, with write_cameras, `stem_cameras.json`
    (the path in the custom JSON schema of `recon4d.render_views.paths`, ready to edit and render again)."""
    if not (np.isfinite(fps) and fps > 0):
        raise InputError(f"--fps must be a positive number, got {fps}")
    rendered = render_path(scene, views, width, height, extras, config, device, description=f"rendering {stem}")
    written = write_outputs(visualise(rendered, extras, config), dest, stem, fps, layout, png)
    if write_cameras:
        written.append(write_camera_path(Path(dest) / f"{stem}_cameras.json", list(views)))
    return written
