"""Synthetic 4D clips with exact ground truth, ray-cast from analytic primitives in NumPy.

Independent of any Gaussian renderer, so it can judge the renderer, the priors and the fit alike.

Scene (world frame = OpenCV axes: x right, y down, z forward; units are arbitrary "metres"):
  * a textured back wall (plane z = 8.5) and floor (plane y = 1.3), a static box and a static sphere
    standing on the floor;
  * a moving sphere and a moving box (rigid motion: an elliptic orbit plus a spin about a tilted axis).
    Their textures live in object-local coordinates, so texture moves with the object (flow is well posed).
Depth ranges over about 2.7 .. 8.7 units.

Camera: pinhole, OpenCV convention, poses as ``world_from_camera`` 4x4, intrinsics fx, fy, cx, cy in pixels.
Pixel convention: the centre of pixel (row i, column j) is at (u=j, v=i); cx = (W-1)/2, cy = (H-1)/2.
A ray through (u, v) has camera-frame direction ((u-cx)/fx, (v-cy)/fy, 1), so its ray parameter *is* the
z-depth; depth, flow, masks and tracks all come from the ray through the pixel centre.
RGB is supersampled (2x2 by default) so frames look like real, anti-aliased video.

Variants (per-frame motion is independent of the clip length; all motions are bounded oscillations, so long
clips stay framed):
  ``translate``    camera slides sideways (+ a little forward) while looking at a fixed point: real parallax;
                   objects move (~1-5 px/frame at 128 px width).
  ``rotate``       camera pans/tilts about its own centre (no translation); objects move.
  ``static``       camera fixed; objects move.
  ``fast``         camera as ``translate``; objects move fast (~8-15 px/frame at 128 px width).
  ``static_scene`` camera as ``translate``; nothing moves (``moving_mask`` is empty).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recon4d.errors import InputError, Recon4DError

VARIANTS: tuple[str, ...] = ("translate", "rotate", "static", "fast", "static_scene")
GT_FORMAT = "recon4d-synthetic"
GT_VERSION = 1
PIXEL_CONVENTION = "centre of pixel (row i, column j) is at (u=j, v=i)"


@dataclass
class SyntheticClip:
    """A synthetic clip of T frames, H x W pixels, with exact ground truth.

    Attributes:
        frames: [T, H, W, 3] uint8 RGB.
        intrinsics: [4] float64 fx, fy, cx, cy in pixels.
        world_from_camera: [T, 4, 4] float64, OpenCV camera convention.
        depth: [T, H, W] float32 z-depth (along the camera axis, not ray length) of the pixel-centre ray.
        flow_forward: [T-1, H, W, 2] float32 pixels; the surface point seen at pixel (u, v) of frame t
            projects to (u + flow[..., 0], v + flow[..., 1]) in frame t+1 (exact, also where occluded).
        occluded_forward: [T-1, H, W] bool; that point is hidden, behind the camera, or outside the image
            (outside [-0.5, W-0.5] x [-0.5, H-0.5]) in frame t+1.
        moving_mask: [T, H, W] bool; the pixel shows an independently moving object.
        tracks_3d: [T, P, 3] float64 world positions of P surface points picked at pixel centres of frame 0,
            carried along with their object.
        tracks_2d: [T, P, 2] float64 their projections (u, v) in pixels.
        track_visible: [T, P] bool; in front of the camera, inside the image, and not occluded (an exact
            ray cast through the projected position hits the same point).
        variant: name of the variant that made the clip (see ``VARIANTS``).
    """

    frames: np.ndarray
    intrinsics: np.ndarray
    world_from_camera: np.ndarray
    depth: np.ndarray
    flow_forward: np.ndarray
    occluded_forward: np.ndarray
    moving_mask: np.ndarray
    tracks_3d: np.ndarray
    tracks_2d: np.ndarray
    track_visible: np.ndarray
    variant: str


@dataclass(frozen=True)
class SyntheticConfig:
    """Tunable numbers of the generator. Distances in scene units, angles in degrees, speeds per frame.

    Attributes:
        horizontal_fov_deg: horizontal field of view; fx = fy = (W/2) / tan(fov/2).
        supersample: RGB samples per pixel along each axis (1 = no anti-aliasing).
        num_tracks: P, the number of tracked surface points.
        track_moving_fraction: share of the tracks put on moving objects (when any are in frame 0).
        ambient: Lambertian shading, colour = albedo * (ambient + (1 - ambient) * max(n.l, 0)).
        light_direction: world direction towards a distant light (y down, so -y is up).
        camera_pitch_deg: fixed downward tilt of every camera so the floor is in view.
        camera_side_speed: sideways camera speed (translating variants), units/frame at the clip middle.
        camera_side_amplitude: the sideways motion is amplitude * sin(speed * s / amplitude), s = t - middle.
        camera_forward_speed: forward speed (translating variants), units/frame.
        camera_forward_amplitude: bound of the forward motion.
        look_at_depth: translating cameras keep looking at the point (0, 0, look_at_depth) rotated by pitch.
        pan_speed_deg: yaw rate of the ``rotate`` variant at the clip middle.
        pan_amplitude_deg: bound of the yaw.
        tilt_speed_deg: pitch rate of the ``rotate`` variant.
        tilt_amplitude_deg: bound of the extra pitch.
        object_speed: orbit speed of moving objects, units/frame (~2-4 px/frame at 128 px width).
        fast_object_speed: the same for the ``fast`` variant (~8-15 px/frame at 128 px width).
        object_spin_deg: spin rate of moving objects.
        fast_object_spin_deg: spin rate in the ``fast`` variant.
        occlusion_rel_tol: a point counts as visible when the ray-cast depth at its projection matches its own
            depth to this relative tolerance (geometry is exact, so this only absorbs rounding).
        texture_octaves: octaves of the value-noise texture.
        fps: frame rate written into the video and gt.json.
        video_crf: x264 constant rate factor of video.mp4 (0 = lossless in YUV).
        video_pix_fmt: pixel format of video.mp4; yuv420p like real footage (needs even W, H; odd sizes fall
            back to yuv444p).
    """

    horizontal_fov_deg: float = 60.0
    supersample: int = 2
    num_tracks: int = 256
    track_moving_fraction: float = 0.5
    ambient: float = 0.65
    light_direction: tuple[float, float, float] = (-0.35, -1.0, -0.55)
    camera_pitch_deg: float = 4.0
    camera_side_speed: float = 0.12
    camera_side_amplitude: float = 1.0
    camera_forward_speed: float = 0.02
    camera_forward_amplitude: float = 0.3
    look_at_depth: float = 6.0
    pan_speed_deg: float = 1.2
    pan_amplitude_deg: float = 12.0
    tilt_speed_deg: float = 0.4
    tilt_amplitude_deg: float = 5.0
    object_speed: float = 0.09
    fast_object_speed: float = 0.36
    object_spin_deg: float = 5.0
    fast_object_spin_deg: float = 12.0
    occlusion_rel_tol: float = 1e-4
    texture_octaves: int = 4
    fps: float = 10.0
    video_crf: int = 10
    video_pix_fmt: str = "yuv420p"


# ----------------------------------------------------------------------------------------------------------
# Small rigid-motion helpers (float64)


def _rotation_from_rotvec(rotvec: np.ndarray) -> np.ndarray:
    """[3] axis * angle (radians) -> [3, 3] rotation (Rodrigues)."""
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-15:
        return np.eye(3)
    k = rotvec / angle
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * kx + (1.0 - np.cos(angle)) * (kx @ kx)


def _rot_x(deg: float) -> np.ndarray:
    return _rotation_from_rotvec(np.array([np.deg2rad(deg), 0.0, 0.0]))


def _rot_y(deg: float) -> np.ndarray:
    return _rotation_from_rotvec(np.array([0.0, np.deg2rad(deg), 0.0]))


def _bounded(speed: float, amplitude: float, s: float) -> float:
    """Oscillation that moves at ``speed`` per frame near s = 0 and never exceeds ``amplitude``."""
    if amplitude <= 0.0 or speed == 0.0:
        return 0.0
    return amplitude * np.sin(speed * s / amplitude)


def _look_at_rotation(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    """world_from_camera rotation [3, 3] of an OpenCV camera at ``centre`` looking at ``target``, no roll."""
    z = target - centre
    z = z / np.linalg.norm(z)
    down = np.array([0.0, 1.0, 0.0])
    x = np.cross(down, z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


# ----------------------------------------------------------------------------------------------------------
# Scene description


@dataclass
class _Primitive:
    """One rigid textured primitive. Local frame: plane = local z=0 (normal +z), sphere/box centred at 0."""

    kind: str  # "plane" | "sphere" | "box"
    size: np.ndarray  # sphere: [1] radius; box: [3] half extents; plane: unused
    rotation0: np.ndarray  # [3, 3] world_from_local rotation at t = 0
    centre0: np.ndarray  # [3] local origin in world at t = 0
    palette: np.ndarray  # [2, 3] albedo colours in [0, 1]
    texture_frequency: float  # noise cycles per unit at the coarsest octave
    texture_offset: np.ndarray  # [3] shifts the noise so primitives don't share a pattern
    checker_frequency: float
    moving: bool = False
    orbit_radii: np.ndarray = field(default_factory=lambda: np.zeros(3))  # [3] ellipse radii
    orbit_rate: float = 0.0  # radians/frame
    orbit_phase: float = 0.0
    spin_axis: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0, 0.0]))
    spin_rate: float = 0.0  # radians/frame

    def pose(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """world_from_local rotation [3, 3] and origin [3] at (fractional) frame t."""
        if not self.moving:
            return self.rotation0, self.centre0
        a = self.orbit_rate * t + self.orbit_phase
        p = self.orbit_phase
        # Orbit offset is zero at t = 0 so centre0 is where the object starts.
        offset = self.orbit_radii * np.array(
            [np.cos(a) - np.cos(p), np.sin(a) - np.sin(p), np.sin(2.0 * a) - np.sin(2.0 * p)]
        )
        rotation = _rotation_from_rotvec(self.spin_axis * (self.spin_rate * t)) @ self.rotation0
        return rotation, self.centre0 + offset


@dataclass
class _Scene:
    primitives: list[_Primitive]
    noise_table: np.ndarray  # [L, L, L] float32 lattice values in [0, 1]


def _orbit_for_speed(radii: np.ndarray, speed: float) -> float:
    """Orbit rate (rad/frame) so that the mean speed along the ellipse is about ``speed`` units/frame."""
    # Speed of (rx cos a, ry sin a, rz sin 2a) averaged over a, approximated by its RMS.
    rms = np.sqrt(0.5 * radii[0] ** 2 + 0.5 * radii[1] ** 2 + 2.0 * radii[2] ** 2)
    return speed / rms


def _build_scene(variant: str, seed: int, config: SyntheticConfig) -> _Scene:
    rng = np.random.default_rng(seed)
    lattice = 64
    noise_table = rng.random((lattice, lattice, lattice), dtype=np.float32)

    def palette(base: tuple[float, float, float]) -> np.ndarray:
        # Two colours around a hue per primitive; a seed-dependent jitter varies the look across seeds.
        c0 = np.clip(np.array(base) + rng.uniform(-0.08, 0.08, 3), 0.05, 0.95)
        c1 = np.clip(c0 * rng.uniform(0.25, 0.45) + rng.uniform(0.0, 0.15, 3), 0.02, 0.95)
        return np.stack([c0, c1])

    def offset() -> np.ndarray:
        return rng.uniform(0.0, float(lattice), 3)

    wall_rotation = np.diag([1.0, -1.0, -1.0])  # local z -> world -z (faces the camera), right-handed
    floor_rotation = np.stack([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]], axis=1)  # local z -> world -y (up)
    primitives = [
        _Primitive("plane", np.zeros(1), wall_rotation, np.array([0.0, 0.0, 8.5]), palette((0.75, 0.68, 0.55)),
                   1.6, offset(), 1.0),
        _Primitive("plane", np.zeros(1), floor_rotation, np.array([0.0, 1.3, 0.0]), palette((0.45, 0.55, 0.7)),
                   1.8, offset(), 1.25),
        _Primitive("box", np.array([0.5, 0.6, 0.45]), _rot_y(30.0), np.array([-1.7, 0.7, 5.2]),
                   palette((0.8, 0.35, 0.25)), 3.0, offset(), 2.5),
        _Primitive("sphere", np.array([0.55]), _rot_x(20.0), np.array([1.9, 0.75, 6.0]),
                   palette((0.35, 0.75, 0.4)), 3.0, offset(), 3.0),
    ]

    objects_move = variant != "static_scene"
    fast = variant == "fast"
    speed = config.fast_object_speed if fast else config.object_speed
    spin = np.deg2rad(config.fast_object_spin_deg if fast else config.object_spin_deg)
    sphere_radii = np.array([0.8, 0.35, 0.15]) * (1.4 if fast else 1.0)
    box_radii = np.array([0.6, 0.3, 0.2]) * (1.4 if fast else 1.0)
    sphere_axis = np.array([0.3, -1.0, 0.2]) / np.linalg.norm([0.3, -1.0, 0.2])
    box_axis = np.array([0.8, 0.5, -0.3]) / np.linalg.norm([0.8, 0.5, -0.3])
    primitives += [
        _Primitive("sphere", np.array([0.5]), _rotation_from_rotvec(rng.normal(size=3)),
                   np.array([0.5, 0.2, 3.9]), palette((0.9, 0.75, 0.2)), 3.5, offset(), 3.0,
                   moving=objects_move, orbit_radii=sphere_radii, orbit_rate=_orbit_for_speed(sphere_radii, speed),
                   orbit_phase=float(rng.uniform(0, 2 * np.pi)), spin_axis=sphere_axis, spin_rate=spin),
        _Primitive("box", np.array([0.33, 0.3, 0.36]), _rotation_from_rotvec(rng.normal(size=3) * 0.5),
                   np.array([-0.7, -0.45, 3.3]), palette((0.3, 0.45, 0.9)), 4.0, offset(), 3.5,
                   moving=objects_move, orbit_radii=box_radii, orbit_rate=-_orbit_for_speed(box_radii, speed),
                   orbit_phase=float(rng.uniform(0, 2 * np.pi)), spin_axis=box_axis, spin_rate=-spin),
    ]
    return _Scene(primitives, noise_table)


def _camera_poses(variant: str, num_frames: int, config: SyntheticConfig) -> np.ndarray:
    """[T, 4, 4] world_from_camera of the variant's camera path."""
    poses = np.tile(np.eye(4), (num_frames, 1, 1))
    pitch = _rot_x(-config.camera_pitch_deg)  # negative about x tilts the view down (y is down)
    middle = 0.5 * (num_frames - 1)
    for t in range(num_frames):
        s = t - middle
        if variant == "static":
            rotation, centre = pitch, np.zeros(3)
        elif variant == "rotate":
            yaw = _bounded(config.pan_speed_deg, config.pan_amplitude_deg, s)
            tilt = _bounded(config.tilt_speed_deg, config.tilt_amplitude_deg, s)
            rotation, centre = _rot_y(yaw) @ pitch @ _rot_x(-tilt), np.zeros(3)
        else:  # translate, fast, static_scene
            centre = np.array([
                _bounded(config.camera_side_speed, config.camera_side_amplitude, s),
                0.0,
                _bounded(config.camera_forward_speed, config.camera_forward_amplitude, s),
            ])
            target = pitch @ np.array([0.0, 0.0, config.look_at_depth])
            rotation = _look_at_rotation(centre, target)
        poses[t, :3, :3] = rotation
        poses[t, :3, 3] = centre
    return poses


# ----------------------------------------------------------------------------------------------------------
# Ray casting


def _intersect(kind: str, size: np.ndarray, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Ray parameter of the first hit in front of the origin, inf on a miss.

    origin: [N, 3] or [3] local-frame ray origins; dirs: [N, 3] local directions. Returns [N] float64.
    """
    eps = 1e-9
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "plane":
            t = -origin[..., 2] / dirs[:, 2]
        elif kind == "sphere":
            a = np.einsum("ij,ij->i", dirs, dirs)
            b = 2.0 * (dirs @ origin) if origin.ndim == 1 else 2.0 * np.einsum("ij,ij->i", dirs, origin)
            c = float(origin @ origin) if origin.ndim == 1 else np.einsum("ij,ij->i", origin, origin)
            c = c - size[0] ** 2
            disc = b * b - 4.0 * a * c
            t = (-b - np.sqrt(disc)) / (2.0 * a)  # cameras are never inside a sphere: near root
        elif kind == "box":
            t1 = (-size - origin) / dirs
            t2 = (size - origin) / dirs
            t_near = np.max(np.minimum(t1, t2), axis=1)
            t_far = np.min(np.maximum(t1, t2), axis=1)
            t = np.where(t_near <= t_far, t_near, np.inf)
        else:  # pragma: no cover - internal
            raise ValueError(kind)
    return np.where(np.isfinite(t) & (t > eps), t, np.inf)


def _local_normal(kind: str, size: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[N, 3] outward unit normals at local surface points [N, 3]."""
    if kind == "plane":
        return np.tile(np.array([0.0, 0.0, 1.0]), (len(points), 1))
    if kind == "sphere":
        return points / size[0]
    scaled = np.abs(points) / size
    axis = np.argmax(scaled, axis=1)
    normal = np.zeros_like(points)
    normal[np.arange(len(points)), axis] = np.sign(points[np.arange(len(points)), axis])
    return normal


def _cast(
    scene: _Scene, object_poses: list[tuple[np.ndarray, np.ndarray]], origin: np.ndarray, dirs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Closest hit of rays origin + s * dirs. origin [3] world, dirs [N, 3] world.

    Returns ray parameter [N] (inf on a miss) and primitive index [N] int (-1 on a miss).
    """
    hits = np.empty((len(scene.primitives), len(dirs)))
    for k, (prim, (rotation, centre)) in enumerate(zip(scene.primitives, object_poses)):
        local_origin = rotation.T @ (origin - centre)
        hits[k] = _intersect(prim.kind, prim.size, local_origin, dirs @ rotation)
    index = np.argmin(hits, axis=0)
    param = hits[index, np.arange(len(dirs))]
    index = np.where(np.isfinite(param), index, -1)
    return param, index


def _value_noise(points: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Smooth trilinear value noise in [0, 1] at [N, 3] points (lattice spacing 1, periodic in table size)."""
    size = table.shape[0]
    base = np.floor(points)
    frac = points - base
    frac = frac * frac * (3.0 - 2.0 * frac)  # smoothstep: C1 across lattice cells
    i0 = base.astype(np.int64) % size
    i1 = (i0 + 1) % size
    fx, fy, fz = frac[:, 0], frac[:, 1], frac[:, 2]
    out = np.zeros(len(points))
    for cx, wx in ((i0[:, 0], 1.0 - fx), (i1[:, 0], fx)):
        for cy, wy in ((i0[:, 1], 1.0 - fy), (i1[:, 1], fy)):
            for cz, wz in ((i0[:, 2], 1.0 - fz), (i1[:, 2], fz)):
                out += wx * wy * wz * table[cx, cy, cz]
    return out


def _albedo(prim: _Primitive, local_points: np.ndarray, table: np.ndarray, octaves: int) -> np.ndarray:
    """[N, 3] albedo of local surface points: multi-octave value noise mixed with a soft checker."""
    q = local_points * prim.texture_frequency + prim.texture_offset
    total = np.zeros(len(q))
    norm = 0.0
    for octave in range(octaves):
        weight = 0.55**octave
        # Each octave is shifted and rotated-by-permutation so lattice axes don't line up across octaves.
        qo = q[:, [octave % 3, (octave + 1) % 3, (octave + 2) % 3]] * (2.0**octave) + 17.3 * octave
        total += weight * _value_noise(qo, table)
        norm += weight
    noise = total / norm
    noise = np.clip((noise - 0.5) * 2.2 + 0.5, 0.0, 1.0)  # stretch contrast: fbm bunches around 0.5
    checker_cells = np.floor(local_points * prim.checker_frequency).astype(np.int64).sum(axis=1)
    checker = 0.82 + 0.18 * (checker_cells % 2)
    mix = noise[:, None]
    return (prim.palette[0] * (1.0 - mix) + prim.palette[1] * mix) * checker[:, None]


def _shade(
    scene: _Scene,
    object_poses: list[tuple[np.ndarray, np.ndarray]],
    origin: np.ndarray,
    dirs: np.ndarray,
    param: np.ndarray,
    index: np.ndarray,
    config: SyntheticConfig,
) -> np.ndarray:
    """[N, 3] linear RGB in [0, 1] of the hits of rays ``dirs`` (Lambertian, one distant light)."""
    light = np.asarray(config.light_direction, dtype=np.float64)
    light = light / np.linalg.norm(light)
    colour = np.zeros((len(dirs), 3))
    for k, (prim, (rotation, centre)) in enumerate(zip(scene.primitives, object_poses)):
        sel = np.nonzero(index == k)[0]
        if len(sel) == 0:
            continue
        world_points = origin + param[sel, None] * dirs[sel]
        local_points = (world_points - centre) @ rotation
        normal = _local_normal(prim.kind, prim.size, local_points) @ rotation.T
        # Face the viewer (planes are seen from one side only, but be safe).
        facing = np.einsum("ij,ij->i", normal, dirs[sel]) > 0
        normal[facing] = -normal[facing]
        lambert = np.clip(normal @ light, 0.0, None)
        albedo = _albedo(prim, local_points, scene.noise_table, config.texture_octaves)
        colour[sel] = albedo * (config.ambient + (1.0 - config.ambient) * lambert)[:, None]
    return colour


def _move_points(
    points: np.ndarray,
    index: np.ndarray,
    poses_from: list[tuple[np.ndarray, np.ndarray]],
    poses_to: list[tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """Carry world points [N, 3] lying on primitives ``index`` [N] from one time to another."""
    moved = points.copy()
    for k, ((r0, c0), (r1, c1)) in enumerate(zip(poses_from, poses_to)):
        sel = index == k
        if np.any(sel):
            moved[sel] = ((points[sel] - c0) @ r0) @ r1.T + c1
    return moved


def _project(
    points: np.ndarray, world_from_camera: np.ndarray, intrinsics: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """World points [N, 3] -> pixels [N, 2] (u, v) and z-depth [N] in the camera."""
    rotation, centre = world_from_camera[:3, :3], world_from_camera[:3, 3]
    cam = (points - centre) @ rotation
    z = cam[:, 2]
    fx, fy, cx, cy = intrinsics
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([fx * cam[:, 0] / z + cx, fy * cam[:, 1] / z + cy], axis=1)
    return uv, z


def _visible(
    scene: _Scene,
    object_poses: list[tuple[np.ndarray, np.ndarray]],
    world_from_camera: np.ndarray,
    intrinsics: np.ndarray,
    uv: np.ndarray,
    z: np.ndarray,
    index: np.ndarray,
    width: int,
    height: int,
    rel_tol: float,
) -> np.ndarray:
    """[N] bool: points (projected to uv [N, 2] at depth z [N], on primitives index [N]) are seen.

    In view means z > 0 and uv inside the image rectangle [-0.5, W-0.5] x [-0.5, H-0.5]; seen means the ray
    through uv hits the same primitive at the same depth (exact ray cast, not an interpolated depth map).
    """
    fx, fy, cx, cy = intrinsics
    in_view = (z > 1e-9) & (uv[:, 0] >= -0.5) & (uv[:, 0] <= width - 0.5)
    in_view &= (uv[:, 1] >= -0.5) & (uv[:, 1] <= height - 0.5)
    visible = np.zeros(len(z), dtype=bool)
    sel = np.nonzero(in_view)[0]
    if len(sel) == 0:
        return visible
    dirs_cam = np.stack([(uv[sel, 0] - cx) / fx, (uv[sel, 1] - cy) / fy, np.ones(len(sel))], axis=1)
    dirs = dirs_cam @ world_from_camera[:3, :3].T
    param, hit = _cast(scene, object_poses, world_from_camera[:3, 3], dirs)
    visible[sel] = (hit == index[sel]) & (np.abs(param - z[sel]) <= rel_tol * z[sel] + 1e-9)
    return visible


def _pixel_directions(width: int, height: int, intrinsics: np.ndarray, du: float, dv: float) -> np.ndarray:
    """[H*W, 3] camera-frame ray directions (z = 1) through (u=j+du, v=i+dv), row-major."""
    fx, fy, cx, cy = intrinsics
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([((u + du) - cx) / fx, ((v + dv) - cy) / fy, np.ones_like(u)], axis=-1).reshape(-1, 3)


def make_intrinsics(width: int, height: int, horizontal_fov_deg: float = 60.0) -> np.ndarray:
    """[4] fx, fy, cx, cy of a square-pixel pinhole whose image centre is ((W-1)/2, (H-1)/2)."""
    fx = 0.5 * width / np.tan(np.deg2rad(horizontal_fov_deg) / 2.0)
    return np.array([fx, fx, (width - 1) / 2.0, (height - 1) / 2.0])


def make_synthetic(
    variant: str = "translate",
    num_frames: int = 12,
    width: int = 128,
    height: int = 96,
    seed: int = 0,
    config: SyntheticConfig | None = None,
) -> SyntheticClip:
    """Render a synthetic clip with exact depth, flow, occlusion, motion masks and point tracks.

    Args:
        variant: one of ``VARIANTS``.
        num_frames: T >= 2.
        width, height: image size in pixels (>= 16 each).
        seed: picks colours, texture and motion phases; the same seed gives the same clip.
        config: generator settings (``SyntheticConfig()`` when None).
    """
    config = config or SyntheticConfig()
    if variant not in VARIANTS:
        raise InputError(f"unknown synthetic variant {variant!r}", hint=f"use one of {', '.join(VARIANTS)}")
    if num_frames < 2:
        raise InputError(f"num_frames must be >= 2, got {num_frames}", hint="flow needs two frames")
    if width < 16 or height < 16:
        raise InputError(f"image size {width}x{height} is too small", hint="use at least 16x16 pixels")
    if config.supersample < 1:
        raise InputError("supersample must be >= 1", hint="1 disables anti-aliasing")

    scene = _build_scene(variant, seed, config)
    intrinsics = make_intrinsics(width, height, config.horizontal_fov_deg)
    poses = _camera_poses(variant, num_frames, config)
    object_poses = [[prim.pose(float(t)) for prim in scene.primitives] for t in range(num_frames)]
    moving_ids = np.array([k for k, prim in enumerate(scene.primitives) if prim.moving], dtype=np.int64)

    n_pix = width * height
    centre_dirs_cam = _pixel_directions(width, height, intrinsics, 0.0, 0.0)
    ss = config.supersample
    sub_offsets = [((a + 0.5) / ss - 0.5, (b + 0.5) / ss - 0.5) for b in range(ss) for a in range(ss)]
    sub_dirs_cam = np.concatenate([_pixel_directions(width, height, intrinsics, du, dv) for du, dv in sub_offsets])

    frames = np.empty((num_frames, height, width, 3), np.uint8)
    depth = np.empty((num_frames, height, width), np.float32)
    moving_mask = np.empty((num_frames, height, width), bool)
    hit_points: list[np.ndarray] = []
    hit_index: list[np.ndarray] = []
    for t in range(num_frames):
        rotation, origin = poses[t, :3, :3], poses[t, :3, 3]
        dirs = centre_dirs_cam @ rotation.T
        param, index = _cast(scene, object_poses[t], origin, dirs)
        if np.any(index < 0):
            raise Recon4DError("synthetic camera looks past the scene", hint="reduce camera motion amplitudes")
        depth[t] = param.reshape(height, width)
        moving_mask[t] = np.isin(index, moving_ids).reshape(height, width)
        hit_points.append(origin + param[:, None] * dirs)
        hit_index.append(index)

        sub_dirs = sub_dirs_cam @ rotation.T
        sub_param, sub_index = _cast(scene, object_poses[t], origin, sub_dirs)
        colour = _shade(scene, object_poses[t], origin, sub_dirs, sub_param, sub_index, config)
        colour = colour.reshape(len(sub_offsets), n_pix, 3).mean(axis=0)
        frames[t] = np.clip(np.round(colour * 255.0), 0, 255).astype(np.uint8).reshape(height, width, 3)

    # Exact forward flow: carry each pixel's surface point with its object to t+1 and project it there.
    pixel_uv = centre_dirs_cam[:, :2] * intrinsics[:2] + intrinsics[2:]
    flow = np.empty((num_frames - 1, height, width, 2), np.float32)
    occluded = np.empty((num_frames - 1, height, width), bool)
    for t in range(num_frames - 1):
        moved = _move_points(hit_points[t], hit_index[t], object_poses[t], object_poses[t + 1])
        uv, z = _project(moved, poses[t + 1], intrinsics)
        flow[t] = (uv - pixel_uv).reshape(height, width, 2)
        seen = _visible(scene, object_poses[t + 1], poses[t + 1], intrinsics, uv, z, hit_index[t], width, height,
                        config.occlusion_rel_tol)
        occluded[t] = ~seen.reshape(height, width)

    tracks_3d, tracks_2d, track_visible = _make_tracks(
        scene, object_poses, poses, intrinsics, hit_points[0], hit_index[0], moving_mask[0], width, height, seed,
        config,
    )
    return SyntheticClip(
        frames=frames,
        intrinsics=intrinsics,
        world_from_camera=poses,
        depth=depth,
        flow_forward=flow,
        occluded_forward=occluded,
        moving_mask=moving_mask,
        tracks_3d=tracks_3d,
        tracks_2d=tracks_2d,
        track_visible=track_visible,
        variant=variant,
    )


def _make_tracks(
    scene: _Scene,
    object_poses: list[list[tuple[np.ndarray, np.ndarray]]],
    poses: np.ndarray,
    intrinsics: np.ndarray,
    points0: np.ndarray,
    index0: np.ndarray,
    moving0: np.ndarray,
    width: int,
    height: int,
    seed: int,
    config: SyntheticConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick P pixel centres of frame 0 (a share on moving objects) and follow their surface points."""
    rng = np.random.default_rng(seed + 7919)  # independent of the scene's stream, still seeded
    n_pix = width * height
    num_tracks = min(config.num_tracks, n_pix)
    moving_pixels = np.flatnonzero(moving0.reshape(-1))
    still_pixels = np.flatnonzero(~moving0.reshape(-1))
    n_moving = min(len(moving_pixels), int(round(num_tracks * config.track_moving_fraction)))
    picked = np.concatenate([
        rng.choice(moving_pixels, n_moving, replace=False),
        rng.choice(still_pixels, num_tracks - n_moving, replace=False),
    ])
    index = index0[picked]
    num_frames = len(poses)
    tracks_3d = np.empty((num_frames, num_tracks, 3))
    tracks_2d = np.empty((num_frames, num_tracks, 2))
    visible = np.empty((num_frames, num_tracks), bool)
    for t in range(num_frames):
        tracks_3d[t] = _move_points(points0[picked], index, object_poses[0], object_poses[t])
        uv, z = _project(tracks_3d[t], poses[t], intrinsics)
        tracks_2d[t] = uv
        visible[t] = _visible(scene, object_poses[t], poses[t], intrinsics, uv, z, index, width, height,
                              config.occlusion_rel_tol)
    # Frame 0 projections are the picked pixel centres up to rounding; make them exact.
    tracks_2d[0] = np.stack([picked % width, picked // width], axis=1).astype(np.float64)
    return tracks_3d, tracks_2d, visible


# ----------------------------------------------------------------------------------------------------------
# Files


_ARRAY_FIELDS = (
    "frames", "intrinsics", "world_from_camera", "depth", "flow_forward", "occluded_forward", "moving_mask",
    "tracks_3d", "tracks_2d", "track_visible",
)


def _write_video(frames: np.ndarray, path: Path, fps: float, crf: int, pix_fmt: str) -> None:
    """H.264 via PyAV. frames [T, H, W, 3] uint8 RGB."""
    import av  # local: only writing needs it
    from fractions import Fraction

    height, width = frames.shape[1:3]
    if pix_fmt == "yuv420p" and (width % 2 or height % 2):
        pix_fmt = "yuv444p"  # 4:2:0 needs even sizes
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {"crf": str(crf), "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_synthetic(clip: SyntheticClip, out_dir: str | Path, config: SyntheticConfig | None = None) -> None:
    """Write ``out_dir/``: video.mp4 (H.264), frames/000000.png.., gt.npz (all arrays), gt.json (cameras).

    gt.json holds format/version, variant, T, W, H, fps, intrinsics [fx, fy, cx, cy], world_from_camera
    (T nested 4x4 lists, OpenCV) and the pixel convention. ``config`` supplies fps and video settings.
    """
    import cv2

    config = config or SyntheticConfig()
    out = Path(out_dir)
    frames_dir = out / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    num_frames, height, width = clip.frames.shape[:3]
    for t, frame in enumerate(clip.frames):
        if not cv2.imwrite(str(frames_dir / f"{t:06d}.png"), frame[:, :, ::-1]):
            raise InputError(f"cannot write {frames_dir / f'{t:06d}.png'}", hint="check the output folder")
    _write_video(clip.frames, out / "video.mp4", config.fps, config.video_crf, config.video_pix_fmt)
    np.savez_compressed(out / "gt.npz", **{name: getattr(clip, name) for name in _ARRAY_FIELDS})
    meta = {
        "format": GT_FORMAT,
        "version": GT_VERSION,
        "variant": clip.variant,
        "num_frames": int(num_frames),
        "width": int(width),
        "height": int(height),
        "fps": float(config.fps),
        "intrinsics": [float(x) for x in clip.intrinsics],
        "world_from_camera": clip.world_from_camera.tolist(),
        "camera_convention": "opencv world_from_camera (x right, y down, z forward)",
        "pixel_convention": PIXEL_CONVENTION,
        "depth": "z-depth along the camera axis",
    }
    (out / "gt.json").write_text(json.dumps(meta, indent=1))


def load_ground_truth(directory: str | Path) -> SyntheticClip:
    """Read a folder written by :func:`write_synthetic` back into a :class:`SyntheticClip`."""
    folder = Path(directory)
    json_path, npz_path = folder / "gt.json", folder / "gt.npz"
    for path in (json_path, npz_path):
        if not path.is_file():
            raise InputError(f"no synthetic ground truth at {path}", hint="write it with write_synthetic first")
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{json_path} is not valid JSON ({exc.msg})", hint="re-generate the clip") from exc
    if meta.get("format") != GT_FORMAT:
        raise InputError(
            f"{json_path} is not a recon4d synthetic ground truth", hint="point at a folder from write_synthetic"
        )
    if int(meta.get("version", 0)) > GT_VERSION:
        raise InputError(f"{json_path} has version {meta['version']} > {GT_VERSION}", hint="upgrade recon4d")
    with np.load(npz_path) as data:
        missing = [name for name in _ARRAY_FIELDS if name not in data.files]
        if missing:
            raise InputError(f"{npz_path} lacks {', '.join(missing)}", hint="re-generate the clip")
        arrays = {name: data[name] for name in _ARRAY_FIELDS}
    return SyntheticClip(variant=str(meta["variant"]), **arrays)


__all__ = [
    "GT_FORMAT", "GT_VERSION", "VARIANTS", "SyntheticClip", "SyntheticConfig", "load_ground_truth",
    "make_intrinsics", "make_synthetic", "write_synthetic",
]
