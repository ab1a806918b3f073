"""Camera paths through a fitted scene: pure functions that return one `PathView` per output frame.

A `PathView` is ``(world_from_camera [4, 4] float64, K [3, 3] float64, time float)``: an OpenCV camera
(x right, y down, z forward), its intrinsics in pixels of the *scene's* stored resolution
(`recon4d.geometry.camera.scale_camera_matrix` converts them for another output size) and the scene time in
frame units (fractional times interpolate the motion, see `Scene4D.gaussians_at`).

Paths:
    input        the recovered cameras, time running (``slowmo`` > 1 adds interpolated in-between frames)
    orbit        a circle around the scene centre at the input cameras' height and distance, looking at it
    spiral       a forward-facing spiral around the input cameras (radii from their spread), looking at the
                 scene centre
    bullet-time  time frozen; the input camera of that time swings along a short arc about the point it looks at
    stabilized   the camera of one frame held fixed while time runs
    zoom         one camera with a focal zoom, a dolly (moving along its axis) or both at once (vertigo)
    custom       read from JSON (below)

Scene centre: the coordinate-wise median of the still Gaussians (all Gaussians if none is still), so a few
far-away floaters do not move it; distances to it use medians and percentiles for the same reason.

Custom path JSON (what `read_camera_path` reads and `write_camera_path` writes): recon4d's camera JSON (schema
in `recon4d.io.camera_json`), a list of cameras each with a ``time``::

    [
      {"world_from_camera": [[r00, r01, r02, tx], [r10, r11, r12, ty], [r20, r21, r22, tz], [0, 0, 0, 1]],
       "fx": 120.0, "fy": 120.0, "cx": 79.5, "cy": 44.5, "time": 3.5},
      ...
    ]

- ``world_from_camera``: 4x4 rigid transform, OpenCV camera axes, mapping camera to world coordinates
  (as in ``cameras.json`` of `recon4d fit`); the rotation must be orthonormal with determinant +1.
- ``fx``, ``fy``: focal lengths in pixels of the scene's resolution (``recon4d info`` shows it); ``cx``,
  ``cy`` (optional): principal point in the same pixels, default the image centre ((W-1)/2, (H-1)/2).
- ``time``: scene time in frame units, 0 .. T-1; fractional values interpolate between frames.
An object ``{"views": [...]}`` is accepted too. Rendering at another size (``--width/--height/--scale``)
scales these intrinsics.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from recon4d.errors import InputError
from recon4d.geometry.camera import intrinsics_matrices, invert_pose, look_at, project_to_pixels
from recon4d.geometry.lie import so3_exp
from recon4d.io.camera_json import camera_entries, finite_number, read_camera_json, write_camera_json
from recon4d.io.scene import Scene4D

PATH_NAMES = ("input", "orbit", "spiral", "bullet-time", "stabilized", "zoom")
ZOOM_MODES = ("focal", "dolly", "vertigo")


class PathView(NamedTuple):
    """One output frame: world_from_camera [4, 4] float64 (OpenCV), K [3, 3] float64 in pixels of the scene's
    resolution, time in frame units."""

    world_from_camera: torch.Tensor
    K: torch.Tensor
    time: float


@dataclass(frozen=True)
class PathConfig:
    """Shape of the generated paths.

    Attributes:
        frozen_time_frames: default number of frames of a path whose time is frozen (bullet-time, or any path
            given a fixed time), and the least default length of an orbit, spiral or zoom on which time runs
            (short clips still get a smooth camera motion; times are then interpolated).
        orbit_degrees: angle an orbit sweeps (360 = full circle).
        orbit_radius_scale: orbit distance to the centre relative to the input cameras' median distance.
        spiral_rotations: turns of the spiral over the path.
        spiral_percentile: percentile of the input cameras' offsets (per camera axis) giving the spiral radii.
        spiral_min_radius: smallest spiral radius as a share of the distance to the centre (a still camera
            still gets a visible spiral).
        bullet_arc_degrees: full swing of the bullet-time arc (the camera goes +-half of it).
        zoom_factor: final magnification of the zoom path (2 = subject twice as large).
        focus_percentile: percentile of the depths of the Gaussians in view taken as the distance to the
            subject (the point bullet-time swings about and the plane a dolly magnifies); 50 = median.
        centre_outlier_percentile: still Gaussians farther from their median than this percentile of
            distances are dropped before the centre is re-estimated.
    """

    frozen_time_frames: int = 48
    orbit_degrees: float = 360.0
    orbit_radius_scale: float = 1.0
    spiral_rotations: float = 2.0
    spiral_percentile: float = 90.0
    spiral_min_radius: float = 0.05
    bullet_arc_degrees: float = 30.0
    zoom_factor: float = 2.0
    focus_percentile: float = 50.0
    centre_outlier_percentile: float = 90.0


# ----------------------------------------------------------------------------------------------------------
# Helpers


def _pose(scene: Scene4D, t: float) -> torch.Tensor:
    return scene.cameras.world_from_camera_at(t).double()


def _scene_K(scene: Scene4D, t: float) -> torch.Tensor:
    return scene.cameras.K(t).double()


def _check_time(scene: Scene4D, time: float, what: str = "--time") -> float:
    last = scene.num_frames - 1
    if not (math.isfinite(time) and 0 <= time <= last):
        raise InputError(f"{what} {time} is outside the scene's time range 0..{last}",
                         hint="times are in frame units; `recon4d info OUT` shows the number of frames")
    return float(time)


def _check_count(count: int) -> int:
    if count < 1:
        raise InputError(f"a camera path needs at least 1 frame, got {count}", hint="pass --frames N with N >= 1")
    return int(count)


def running_times(num_frames: int, count: int | None = None, slowmo: float = 1.0) -> list[float]:
    """Times (frame units) of a path on which time runs from 0 to T-1.

    count: path length; default ``round((T - 1) * slowmo) + 1``, so slowmo 1 gives exactly the input frames
    and slowmo 4 three interpolated frames between each pair.
    """
    if not (math.isfinite(slowmo) and slowmo > 0):
        raise InputError(f"--slowmo must be a positive number, got {slowmo}", hint="e.g. --slowmo 4")
    count = _check_count(round((num_frames - 1) * slowmo) + 1 if count is None else count)
    if count == 1 or num_frames == 1:
        return [0.0] * count
    last = num_frames - 1
    # Exact integers where the grid meets them (k * last / (count - 1) in float64, snapped).
    times = [k * last / (count - 1) for k in range(count)]
    return [float(round(t)) if abs(t - round(t)) < 1e-9 else t for t in times]


def _times(scene: Scene4D, count: int | None, slowmo: float, time: float | None,
           config: PathConfig) -> list[float]:
    """Times of a moving-camera path: running (at least `frozen_time_frames` of them unless `count` is given),
    or `time` repeated (default count `frozen_time_frames`) when time is frozen."""
    if time is None:
        if count is None:
            count = max(len(running_times(scene.num_frames, None, slowmo)), config.frozen_time_frames)
        return running_times(scene.num_frames, count, slowmo)
    time = _check_time(scene, time)
    return [time] * _check_count(config.frozen_time_frames if count is None else count)


def world_up(scene: Scene4D) -> torch.Tensor:
    """Unit up direction [3] float64: the mean of the input cameras' up axes (OpenCV: -y of each camera)."""
    up = -scene.cameras.world_from_camera[:, :3, 1].double().mean(0)
    if up.norm() < 1e-9:
        up = -scene.cameras.world_from_camera[0, :3, 1].double()
    return up / up.norm()


def scene_centre(scene: Scene4D, config: PathConfig = PathConfig()) -> torch.Tensor:
    """Robust centre [3] float64 of the still Gaussians (all Gaussians if none is still; camera path if empty).

    Median, then the median again of the points within the `centre_outlier_percentile` of distances to it.
    """
    means = scene.gaussians.means.double()
    still = means[~scene.is_moving] if bool((~scene.is_moving).any()) else means
    if still.shape[0] == 0:
        return scene.cameras.world_from_camera[:, :3, 3].double().median(0).values
    centre = still.median(0).values
    distance = (still - centre).norm(dim=-1)
    keep = distance <= torch.quantile(distance, config.centre_outlier_percentile / 100)
    return still[keep].median(0).values


def focus_depth(scene: Scene4D, t: float, config: PathConfig = PathConfig()) -> float:
    """Distance along the optical axis to the subject at time t: a percentile of the z of the Gaussians that
    project into the image of the input camera at t (the median by default). Falls back to the distance to
    the scene centre when nothing is in view."""
    pose = _pose(scene, t)
    pixels, z = project_to_pixels(scene.gaussians_at(t).means.double(), invert_pose(pose), _scene_K(scene, t))
    u, v = pixels.unbind(-1)
    inside = (z > 1e-6) & (u > -0.5) & (u < scene.cameras.width - 0.5) & (v > -0.5) & (v < scene.cameras.height - 0.5)
    depths = z[inside]
    if depths.numel() == 0:
        return float((scene_centre(scene, config) - pose[:3, 3]).norm().clamp_min(1e-6))
    return float(torch.quantile(depths, config.focus_percentile / 100))


def _rotation_about(axis: torch.Tensor, angle: float) -> torch.Tensor:
    return so3_exp(axis / axis.norm() * angle)


# ----------------------------------------------------------------------------------------------------------
# Paths


def input_path(scene: Scene4D, count: int | None = None, slowmo: float = 1.0) -> list[PathView]:
    """The recovered cameras at running times (interpolated poses and intrinsics at fractional times)."""
    return [PathView(_pose(scene, t), _scene_K(scene, t), t) for t in running_times(scene.num_frames, count, slowmo)]


def stabilized_path(scene: Scene4D, camera_frame: float = 0.0, count: int | None = None,
                    slowmo: float = 1.0) -> list[PathView]:
    """The camera of `camera_frame` held fixed while time runs."""
    camera_frame = _check_time(scene, camera_frame, "--camera-frame")
    pose, K = _pose(scene, camera_frame), _scene_K(scene, camera_frame)
    return [PathView(pose.clone(), K.clone(), t) for t in running_times(scene.num_frames, count, slowmo)]


def orbit_path(scene: Scene4D, count: int | None = None, slowmo: float = 1.0, time: float | None = None,
               config: PathConfig = PathConfig()) -> list[PathView]:
    """A circle about the scene centre and the world up axis, looking at the centre.

    Starts at the median input camera position (its height above the centre and its distance are kept, the
    distance times `orbit_radius_scale`) and sweeps `orbit_degrees`. Intrinsics: those of frame 0.
    """
    times = _times(scene, count, slowmo, time, config)
    centre, up = scene_centre(scene, config), world_up(scene)
    start = scene.cameras.world_from_camera[:, :3, 3].double().median(0).values
    offset = (start - centre) * config.orbit_radius_scale
    if offset.norm() < 1e-9:  # camera at the centre: step back along the first camera's axis
        offset = -scene.cameras.world_from_camera[0, :3, 2].double() * focus_depth(scene, 0.0, config)
    if (offset - (offset @ up) * up).norm() < 1e-6 * offset.norm():  # straight above: tilt the circle's start
        helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        helper = helper if abs(helper @ up) < 0.9 else torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        offset = offset + 1e-3 * offset.norm() * torch.linalg.cross(up, helper)
    K = _scene_K(scene, 0.0)
    # A full circle does not repeat its first view at the end; a partial arc ends at its last angle.
    full_circle = abs(config.orbit_degrees) >= 360
    steps = len(times) if full_circle or len(times) == 1 else len(times) - 1
    views = []
    for k, t in enumerate(times):
        angle = math.radians(config.orbit_degrees) * k / steps
        eye = centre + _rotation_about(up, angle) @ offset
        views.append(PathView(look_at(eye, centre, up), K.clone(), t))
    return views


def spiral_path(scene: Scene4D, count: int | None = None, slowmo: float = 1.0, time: float | None = None,
                config: PathConfig = PathConfig()) -> list[PathView]:
    """A forward-facing spiral (as in LLFF renders) about the median input camera, looking at the centre.

    Radii per camera axis: the `spiral_percentile` of the input cameras' offsets from their median, at least
    `spiral_min_radius` times the distance to the centre. Orientation axes come from the middle frame.
    """
    times = _times(scene, count, slowmo, time, config)
    centre, up = scene_centre(scene, config), world_up(scene)
    positions = scene.cameras.world_from_camera[:, :3, 3].double()
    base = positions.median(0).values
    axes = scene.cameras.world_from_camera[scene.num_frames // 2, :3, :3].double()
    spread = torch.quantile(((positions - base) @ axes).abs(), config.spiral_percentile / 100, dim=0)
    radii = spread.clamp_min(config.spiral_min_radius * float((centre - base).norm().clamp_min(1e-6)))
    K = _scene_K(scene, 0.0)
    views = []
    for k, t in enumerate(times):
        theta = 2 * math.pi * config.spiral_rotations * k / max(len(times), 1)
        local = torch.tensor([math.cos(theta), -math.sin(theta), -math.sin(theta / 2)], dtype=torch.float64)
        eye = base + axes @ (radii * local)
        views.append(PathView(look_at(eye, centre, up), K.clone(), t))
    return views


def bullet_time_path(scene: Scene4D, time: float | None = None, count: int | None = None,
                     config: PathConfig = PathConfig()) -> list[PathView]:
    """Time frozen at `time` (default: the middle frame); the input camera of that time swings about the point
    it looks at (at `focus_depth` on its axis), around its own up axis, by +-`bullet_arc_degrees`/2 along a
    sine, so the path starts and ends at the input camera and loops."""
    time = _check_time(scene, (scene.num_frames - 1) / 2 if time is None else time)
    count = _check_count(config.frozen_time_frames if count is None else count)
    pose, K = _pose(scene, time), _scene_K(scene, time)
    pivot = pose[:3, 3] + pose[:3, 2] * focus_depth(scene, time, config)
    up = -pose[:3, 1]
    views = []
    for k in range(count):
        angle = math.radians(config.bullet_arc_degrees) / 2 * math.sin(2 * math.pi * k / count)
        rotation = _rotation_about(up, angle)
        moved = pose.clone()
        moved[:3, :3] = rotation @ pose[:3, :3]
        moved[:3, 3] = pivot + rotation @ (pose[:3, 3] - pivot)
        views.append(PathView(moved, K.clone(), time))
    return views


def zoom_path(scene: Scene4D, camera_frame: float = 0.0, count: int | None = None, slowmo: float = 1.0,
              time: float | None = None, mode: str = "focal", config: PathConfig = PathConfig()) -> list[PathView]:
    """The camera of `camera_frame` zooming linearly from 1x to `zoom_factor` x over the path.

    mode: ``focal`` scales fx, fy; ``dolly`` moves the camera along its axis so the subject plane (at
    `focus_depth`) is magnified by the same factor; ``vertigo`` moves the camera back while zooming in so the
    subject plane keeps its size and the background changes (the dolly zoom).
    """
    if mode not in ZOOM_MODES:
        raise InputError(f"unknown zoom mode {mode!r}", hint=f"use one of {', '.join(ZOOM_MODES)}")
    if not (math.isfinite(config.zoom_factor) and config.zoom_factor > 0):
        raise InputError(f"--zoom must be a positive number, got {config.zoom_factor}", hint="e.g. --zoom 2")
    camera_frame = _check_time(scene, camera_frame, "--camera-frame")
    times = _times(scene, count, slowmo, time, config)
    pose, K = _pose(scene, camera_frame), _scene_K(scene, camera_frame)
    depth = focus_depth(scene, camera_frame, config)
    views = []
    for k, t in enumerate(times):
        magnification = 1 + (config.zoom_factor - 1) * (k / (len(times) - 1) if len(times) > 1 else 0.0)
        moved, zoomed = pose.clone(), K.clone()
        if mode in ("focal", "vertigo"):
            zoomed[0, 0], zoomed[1, 1] = K[0, 0] * magnification, K[1, 1] * magnification
        if mode == "dolly":  # subject distance depth -> depth / m magnifies it m times
            moved[:3, 3] = pose[:3, 3] + pose[:3, 2] * depth * (1 - 1 / magnification)
        elif mode == "vertigo":  # distance depth -> depth * m cancels the focal zoom on the subject plane
            moved[:3, 3] = pose[:3, 3] - pose[:3, 2] * depth * (magnification - 1)
        views.append(PathView(moved, zoomed, t))
    return views


def make_path(scene: Scene4D, name: str, *, count: int | None = None, slowmo: float = 1.0,
              time: float | None = None, camera_frame: float = 0.0, zoom_mode: str = "focal",
              config: PathConfig = PathConfig()) -> list[PathView]:
    """Path by name (see `PATH_NAMES`) or, for anything ending in ``.json``, read from that file.

    time: freezes time on orbit/spiral/zoom; the frozen time of bullet-time (default: middle frame).
    camera_frame: the held camera of stabilized/zoom. slowmo and count: see `running_times`.
    """
    if name.endswith(".json") or name not in PATH_NAMES and Path(name).is_file():
        return read_camera_path(name, scene)
    if name == "input":
        return input_path(scene, count, slowmo)
    if name == "stabilized":
        return stabilized_path(scene, camera_frame, count, slowmo)
    if name == "orbit":
        return orbit_path(scene, count, slowmo, time, config)
    if name == "spiral":
        return spiral_path(scene, count, slowmo, time, config)
    if name == "bullet-time":
        return bullet_time_path(scene, time, count, config)
    if name == "zoom":
        return zoom_path(scene, camera_frame, count, slowmo, time, zoom_mode, config)
    raise InputError(f"unknown camera path {name!r}", hint=f"use one of {', '.join(PATH_NAMES)} or a .json file")


# ----------------------------------------------------------------------------------------------------------
# Resolution


#: Bounds of a rendered frame: 8K a side, 32 MP (8192 x 4096); beyond that one frame's float buffers
#: (colour, depth, alpha, tiles) need gigabytes.
MAX_OUTPUT_SIDE = 8192
MAX_OUTPUT_PIXELS = 8192 * 4096


def output_size(scene_width: int, scene_height: int, width: int | None = None, height: int | None = None,
                scale: float | None = None) -> tuple[int, int]:
    """Output (width, height): given sizes win; one given side keeps the aspect ratio; else scale (default 1)."""
    if scale is not None and (width is not None or height is not None):
        raise InputError("give either --scale or --width/--height, not both")
    if scale is not None:
        if not (math.isfinite(scale) and scale > 0):
            raise InputError(f"--scale must be a positive number, got {scale}")
        width, height = round(scene_width * scale), round(scene_height * scale)
    elif width is None and height is None:
        width, height = scene_width, scene_height
    elif width is None:
        width = round(scene_width * height / scene_height)
    elif height is None:
        height = round(scene_height * width / scene_width)
    if width < 1 or height < 1:
        raise InputError(f"output size {width}x{height} must be at least 1x1 pixels")
    if max(width, height) > MAX_OUTPUT_SIDE or width * height > MAX_OUTPUT_PIXELS:
        raise InputError(f"output size {width}x{height} is too large",
                         hint=f"at most {MAX_OUTPUT_SIDE} px a side and {MAX_OUTPUT_PIXELS // 10**6} MP a frame "
                              "(each frame's buffers grow with the pixels)")
    return int(width), int(height)


# ----------------------------------------------------------------------------------------------------------
# JSON


def read_camera_path(path: str | os.PathLike, scene: Scene4D) -> list[PathView]:
    """Read a custom path JSON file (schema in the module docstring); InputError (one line) when it is bad."""
    cameras = read_camera_json(path, image_size=(scene.cameras.width, scene.cameras.height))
    views = []
    for index, (pose, intrinsics, fields) in enumerate(zip(cameras.world_from_camera, cameras.intrinsics, cameras.fields)):
        where = f"{path}, camera {index}"
        time = _check_time(scene, finite_number(fields, "time", where), f"{where}: time")
        views.append(PathView(pose, intrinsics_matrices(intrinsics), time))
    return views


def camera_path_json(views: list[PathView]) -> list[dict]:
    """Views -> the JSON value of the custom path schema (intrinsics in pixels of the scene's size)."""
    poses = torch.stack([view.world_from_camera.double() for view in views])
    intrinsics = torch.stack([view.K.double()[[0, 1, 0, 1], [0, 1, 2, 2]] for view in views])  # fx, fy, cx, cy
    return camera_entries(poses, intrinsics, time=[float(view.time) for view in views])


def write_camera_path(path: str | os.PathLike, views: list[PathView]) -> Path:
    """Write views as a custom path JSON file (atomically); `read_camera_path` reads it back."""
    return write_camera_json(path, camera_path_json(views))
