"""Point tracks of a fitted scene as files: tracks.npz, tracks.csv and an overlay video.

Queries are pixels (t0, u, v) of a frame (OpenCV pixel centres, in pixels of the scene's resolution); each
is followed through every frame by `recon4d.track.track_points` (attached to the Gaussians under it).

Files written into the output folder:
    tracks.npz   uv [T, P, 2] float32 pixels, xyz [T, P, 3] float32 world, visible [T, P] bool,
                 queries [P, 3] float32 (t0, u, v), timestamps [T] float64 seconds, width, height
    tracks.csv   one row per frame and point: frame, point, u, v, x, y, z, visible (0/1)
    overlay.mp4  the input frames (re-read from the source video when it is still there at the scene's
                 resolution, else the scene's renders) with each track drawn as a polyline that fades over
                 the last frames; a point is drawn where it is visible, a hollow ring where it is hidden
"""
from __future__ import annotations

import colorsys
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from recon4d.errors import InputError
from recon4d.io.atomic import atomic_path, write_bytes_atomic
from recon4d.io.frames import scene_fps
from recon4d.io.scene import Scene4D
from recon4d.io.scene_frames import read_scene_frames
from recon4d.io.video_writer import write_video
from recon4d.progress import track
from recon4d.io.scene_render import render_scene
from recon4d.track import TrackConfig, Tracks, track_points

CSV_HEADER = "frame,point,u,v,x,y,z,visible"


@dataclass(frozen=True)
class TrackExportConfig:
    """Queries and the look of the overlay video.

    Attributes:
        default_grid: points per side of the query grid of `recon4d export --format tracks` (N x N points).
        tail_frames: frames of history a track's polyline shows; older segments fade out linearly.
        overlay_min_short_side: the overlay is upscaled (bilinear) until its short side has at least this many
            pixels, so thin lines stay readable on small working resolutions.
        line_thickness: polyline thickness in overlay pixels.
        point_radius: radius of the current-position dot (ring when hidden), overlay pixels.
        subpixel_bits: fixed-point bits of drawn coordinates (cv2 `shift`), for sub-pixel smooth lines.
        fps: frame rate of the overlay; None = the scene's frame rate.
    """

    default_grid: int = 10
    tail_frames: int = 12
    overlay_min_short_side: int = 360
    line_thickness: int = 2
    point_radius: int = 3
    subpixel_bits: int = 4
    fps: float | None = None


# ----------------------------------------------------------------------------------------------------------
# Queries


#: Most points per side of a query grid: 256^2 = 65,536 tracks, whose per-frame tables (T x P floats,
#: CSV rows and overlay markers) stay in the megabytes for clips of hundreds of frames.
MAX_GRID_SIDE = 256


def grid_queries(width: int, height: int, points_per_side: int, query_frame: int = 0) -> torch.Tensor:
    """An N x N grid of pixel queries [N*N, 3] (t0, u, v), cell centres of an even split of the image."""
    if not 1 <= points_per_side <= MAX_GRID_SIDE:
        raise InputError(f"--grid needs at least 1 point per side and at most {MAX_GRID_SIDE}, got {points_per_side}")
    u = (torch.arange(points_per_side, dtype=torch.float32) + 0.5) * width / points_per_side - 0.5
    v = (torch.arange(points_per_side, dtype=torch.float32) + 0.5) * height / points_per_side - 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    t0 = torch.full_like(uu, float(query_frame))
    return torch.stack([t0, uu, vv], -1).reshape(-1, 3)


def parse_point_queries(texts: Sequence[str], query_frame: int = 0) -> torch.Tensor:
    """["x,y" or "x,y,t", ...] (pixels; t a frame index, default `query_frame`) -> queries [P, 3] (t0, u, v)."""
    rows = []
    for text in texts:
        parts = [p.strip() for p in str(text).split(",")]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) not in (2, 3) or not all(math.isfinite(x) for x in values):
            raise InputError(f"--points expects x,y or x,y,t (pixels, frame index), got {text!r}")
        u, v = values[:2]
        rows.append([values[2] if len(values) == 3 else float(query_frame), u, v])
    if not rows:
        raise InputError("no query points given", hint="pass --points x,y[,t] ... or --grid N")
    return torch.tensor(rows, dtype=torch.float32)


def check_queries(scene: Scene4D, queries: torch.Tensor) -> torch.Tensor:
    """Raise InputError unless every query has an integer frame 0..T-1 and lies inside the image."""
    if queries.dim() != 2 or queries.shape[1] != 3 or queries.shape[0] == 0:
        raise InputError(f"queries must be a non-empty [P, 3] array of (t0, u, v), got {tuple(queries.shape)}")
    width, height, last = scene.cameras.width, scene.cameras.height, scene.num_frames - 1
    for t0, u, v in queries.tolist():
        if t0 != round(t0) or not 0 <= t0 <= last:
            raise InputError(f"query frame {t0:g} is not a frame index 0..{last}",
                             hint="`recon4d info OUT` shows the number of frames")
        if not (-0.5 <= u <= width - 0.5 and -0.5 <= v <= height - 0.5):
            raise InputError(f"query point ({u:g}, {v:g}) is outside the {width}x{height} image of the scene",
                             hint="points are pixels of the scene's resolution (`recon4d info OUT`)")
    return queries.float()


# ----------------------------------------------------------------------------------------------------------
# Input frames


def rendered_frames(scene: Scene4D) -> np.ndarray:
    """Renders of the input cameras [T, H, W, 3] uint8 (stand-in for the input frames)."""
    width, height = scene.cameras.width, scene.cameras.height
    frames = np.empty((scene.num_frames, height, width, 3), np.uint8)
    for t in range(scene.num_frames):
        with torch.no_grad():
            out = render_scene(scene, t, colors=lambda gaussians, alive: gaussians.colors[:, :3])
        frames[t] = (out.color.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    return frames


# ----------------------------------------------------------------------------------------------------------
# Overlay


def track_colors(num_points: int) -> np.ndarray:
    """[P, 3] uint8 RGB, evenly spaced hues (golden-ratio steps, so neighbours differ)."""
    hues = (np.arange(num_points) * 0.618033988749895) % 1.0
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 1.0)] for h in hues], np.uint8).reshape(-1, 3)


def overlay_factor(width: int, height: int, config: TrackExportConfig = TrackExportConfig()) -> int:
    """Integer upscaling of the overlay so its short side reaches `overlay_min_short_side`."""
    return max(1, math.ceil(config.overlay_min_short_side / max(min(width, height), 1)))


def draw_overlay_frame(frame: np.ndarray, uv: np.ndarray, visible: np.ndarray,
                       config: TrackExportConfig = TrackExportConfig()) -> np.ndarray:
    """Draw the tracks' recent history onto one frame.

    frame: [H, W, 3] uint8 RGB, the last of the window; uv: [S, P, 2] pixels and visible: [S, P] bool over
    the window of the last S frames (oldest first, S <= tail_frames + 1) -> [H*f, W*f, 3] uint8, f from
    `overlay_factor`. Segments join positions visible at both ends; older segments are more transparent.
    """
    height, width = frame.shape[:2]
    factor = overlay_factor(width, height, config)
    size = (width * factor, height * factor)
    colors = track_colors(uv.shape[1]).tolist()
    one = 1 << config.subpixel_bits
    # Pixel centres stay centres under the upscaling; then fixed point for cv2's sub-pixel drawing.
    scaled = ((uv + 0.5) * factor - 0.5) * one
    finite = np.isfinite(scaled).all(-1) & (np.abs(np.nan_to_num(scaled)) < 1e6 * one).all(-1)
    points = np.where(finite[..., None], np.round(np.nan_to_num(scaled)), 0).astype(np.int64)
    drawn = visible & finite
    base = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR if factor > 1 else cv2.INTER_NEAREST)
    image = base.astype(np.float32)
    last = uv.shape[0] - 1
    for age in range(last, 0, -1):  # oldest first, so newer segments end on top
        start = last - age
        layer = np.zeros_like(base)  # line colour times coverage (premultiplied), coverage in `mask`
        mask = np.zeros(base.shape[:2], np.uint8)
        for p in np.flatnonzero(drawn[start] & drawn[start + 1]):
            a, b = tuple(map(int, points[start, p])), tuple(map(int, points[start + 1, p]))
            cv2.line(layer, a, b, colors[p], config.line_thickness, cv2.LINE_AA, config.subpixel_bits)
            cv2.line(mask, a, b, 255, config.line_thickness, cv2.LINE_AA, config.subpixel_bits)
        opacity = 1.0 - (age - 1) / max(config.tail_frames, 1)
        image = image * (1 - opacity * mask[..., None] / 255.0) + opacity * layer.astype(np.float32)
    out = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    for p in np.flatnonzero(finite[last]):
        thickness = -1 if drawn[last, p] else 1  # filled dot where visible, ring where hidden
        cv2.circle(out, tuple(map(int, points[last, p])), config.point_radius * one, colors[p], thickness,
                   cv2.LINE_AA, config.subpixel_bits)
    return out


def draw_overlay(frames: np.ndarray, uv: np.ndarray, visible: np.ndarray,
                 config: TrackExportConfig = TrackExportConfig()) -> np.ndarray:
    """frames [T, H, W, 3] uint8 RGB, uv [T, P, 2] pixels, visible [T, P] bool -> overlay [T, H*f, W*f, 3] uint8
    (see `draw_overlay_frame`), with a progress bar."""
    out = None
    for t in track(range(frames.shape[0]), "drawing tracks", total=frames.shape[0]):
        start = max(0, t - config.tail_frames)
        image = draw_overlay_frame(frames[t], uv[start:t + 1], visible[start:t + 1], config)
        if out is None:
            out = np.empty((frames.shape[0], *image.shape), np.uint8)
        out[t] = image
    return out


# ----------------------------------------------------------------------------------------------------------
# Files


def tracks_csv(tracks: Tracks) -> str:
    """Tracks -> CSV text: header `CSV_HEADER`, rows ordered by frame then point."""
    uv, xyz, visible = tracks.tracks_2d.numpy(), tracks.tracks_3d.numpy(), tracks.visible.numpy()
    num_frames, num_points = visible.shape
    frame, point = np.meshgrid(np.arange(num_frames), np.arange(num_points), indexing="ij")
    table = np.column_stack([frame.ravel(), point.ravel(), uv.reshape(-1, 2), xyz.reshape(-1, 3),
                             visible.reshape(-1).astype(np.int64)])
    buffer = io.StringIO()
    buffer.write(CSV_HEADER + "\n")
    np.savetxt(buffer, table, fmt=["%d", "%d", "%.6g", "%.6g", "%.8g", "%.8g", "%.8g", "%d"], delimiter=",")
    return buffer.getvalue()


def read_tracks_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """tracks.csv -> {"uv" [T, P, 2], "xyz" [T, P, 3], "visible" [T, P] bool} (the inverse of `tracks_csv`)."""
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    num_frames, num_points = int(table[:, 0].max()) + 1, int(table[:, 1].max()) + 1
    table = table.reshape(num_frames, num_points, 8)
    return {"uv": table[..., 2:4], "xyz": table[..., 4:7], "visible": table[..., 7] > 0.5}


def export_tracks(scene: Scene4D, out_dir: str | os.PathLike, queries: torch.Tensor | None = None,
                  config: TrackExportConfig = TrackExportConfig(), frames_rgb: np.ndarray | None = None,
                  track_config: TrackConfig | None = None) -> dict[str, Path]:
    """Track `queries` [P, 3] (t0, u, v) (default: a `default_grid` grid on frame 0) and write tracks.npz,
    tracks.csv and overlay.mp4 into out_dir (each atomically) -> {"npz", "csv", "overlay"} paths.

    frames_rgb: [T, H, W, 3] uint8 background of the overlay; default the source video (see
    `read_scene_frames`), else renders of the input cameras. track_config: see `recon4d.track.TrackConfig`.
    Everything is computed before the first file is written.
    """
    width, height = scene.cameras.width, scene.cameras.height
    if queries is None:
        queries = grid_queries(width, height, config.default_grid)
    queries = check_queries(scene, torch.as_tensor(queries, dtype=torch.float32))
    tracks = track_points(scene, queries, track_config or TrackConfig())
    if frames_rgb is None:
        frames_rgb = read_scene_frames(scene)
    if frames_rgb is None:
        frames_rgb = rendered_frames(scene)
    if frames_rgb.shape != (scene.num_frames, height, width, 3):
        raise InputError(f"overlay frames have shape {frames_rgb.shape}, expected ({scene.num_frames}, {height}, {width}, 3)")
    overlay = draw_overlay(frames_rgb, tracks.tracks_2d.numpy(), tracks.visible.numpy(), config)
    out_dir = Path(out_dir)
    paths = {"npz": out_dir / "tracks.npz", "csv": out_dir / "tracks.csv", "overlay": out_dir / "overlay.mp4"}
    with atomic_path(paths["npz"]) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(
            handle, uv=tracks.tracks_2d.numpy().astype(np.float32), xyz=tracks.tracks_3d.numpy().astype(np.float32),
            visible=tracks.visible.numpy(), queries=queries.numpy(),
            timestamps=scene.cameras.timestamps.double().numpy(), width=width, height=height,
        )
    write_bytes_atomic(paths["csv"], tracks_csv(tracks).encode())
    write_video(paths["overlay"], overlay, config.fps or scene_fps(scene))
    return paths

