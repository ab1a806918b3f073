"""What the synthetic clips show: textured rigid primitives (wall, floor, two still and two moving objects),
their motion, and the camera of each variant.

World frame = OpenCV axes (x right, y down, z forward); units are arbitrary "metres".
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from recon4d.eval.synthetic.config import SyntheticConfig
from recon4d.geometry import look_at
from recon4d.geometry.lie import so3_exp

# The world's up: y points down in the OpenCV world frame.
WORLD_UP = np.array([0.0, -1.0, 0.0])


def rotation_from_rotvec(rotvec: np.ndarray) -> np.ndarray:
    """[3] axis * angle (radians) -> [3, 3] float64 rotation."""
    return so3_exp(torch.as_tensor(rotvec, dtype=torch.float64)).numpy()


def _look_at_rotation(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    """world_from_camera rotation [3, 3] of an OpenCV camera at ``centre`` [3] looking at ``target`` [3], no roll."""
    eye, target, up = (torch.as_tensor(v, dtype=torch.float64) for v in (centre, target, WORLD_UP))
    return look_at(eye, target, up)[:3, :3].numpy()


def _rot_x(deg: float) -> np.ndarray:
    return rotation_from_rotvec(np.array([np.deg2rad(deg), 0.0, 0.0]))


def _rot_y(deg: float) -> np.ndarray:
    return rotation_from_rotvec(np.array([0.0, np.deg2rad(deg), 0.0]))


def _bounded(speed: float, amplitude: float, s: float) -> float:
    """Oscillation that moves at ``speed`` per frame near s = 0 and never exceeds ``amplitude``."""
    if amplitude <= 0.0 or speed == 0.0:
        return 0.0
    return amplitude * np.sin(speed * s / amplitude)


@dataclass
class Primitive:
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
        rotation = rotation_from_rotvec(self.spin_axis * (self.spin_rate * t)) @ self.rotation0
        return rotation, self.centre0 + offset


@dataclass
class Scene:
    primitives: list[Primitive]
    noise_table: np.ndarray  # [L, L, L] float32 lattice values in [0, 1]


def _orbit_for_speed(radii: np.ndarray, speed: float) -> float:
    """Orbit rate (rad/frame) so that the mean speed along the ellipse is about ``speed`` units/frame."""
    # Speed of (rx cos a, ry sin a, rz sin 2a) averaged over a, approximated by its RMS.
    rms = np.sqrt(0.5 * radii[0] ** 2 + 0.5 * radii[1] ** 2 + 2.0 * radii[2] ** 2)
    return speed / rms


def build_scene(variant: str, seed: int, config: SyntheticConfig) -> Scene:
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
        Primitive("plane", np.zeros(1), wall_rotation, np.array([0.0, 0.0, 8.5]), palette((0.75, 0.68, 0.55)),
                   1.6, offset(), 1.0),
        Primitive("plane", np.zeros(1), floor_rotation, np.array([0.0, 1.3, 0.0]), palette((0.45, 0.55, 0.7)),
                   1.8, offset(), 1.25),
        Primitive("box", np.array([0.5, 0.6, 0.45]), _rot_y(30.0), np.array([-1.7, 0.7, 5.2]),
                   palette((0.8, 0.35, 0.25)), 3.0, offset(), 2.5),
        Primitive("sphere", np.array([0.55]), _rot_x(20.0), np.array([1.9, 0.75, 6.0]),
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
        Primitive("sphere", np.array([0.5]), rotation_from_rotvec(rng.normal(size=3)),
                   np.array([0.5, 0.2, 3.9]), palette((0.9, 0.75, 0.2)), 3.5, offset(), 3.0,
                   moving=objects_move, orbit_radii=sphere_radii, orbit_rate=_orbit_for_speed(sphere_radii, speed),
                   orbit_phase=float(rng.uniform(0, 2 * np.pi)), spin_axis=sphere_axis, spin_rate=spin),
        Primitive("box", np.array([0.33, 0.3, 0.36]), rotation_from_rotvec(rng.normal(size=3) * 0.5),
                   np.array([-0.7, -0.45, 3.3]), palette((0.3, 0.45, 0.9)), 4.0, offset(), 3.5,
                   moving=objects_move, orbit_radii=box_radii, orbit_rate=-_orbit_for_speed(box_radii, speed),
                   orbit_phase=float(rng.uniform(0, 2 * np.pi)), spin_axis=box_axis, spin_rate=-spin),
    ]
    return Scene(primitives, noise_table)


def camera_poses(variant: str, num_frames: int, config: SyntheticConfig) -> np.ndarray:
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


def make_intrinsics(width: int, height: int, horizontal_fov_deg: float = 60.0) -> np.ndarray:
    """[4] fx, fy, cx, cy of a square-pixel pinhole whose image centre is ((W-1)/2, (H-1)/2)."""
    fx = 0.5 * width / np.tan(np.deg2rad(horizontal_fov_deg) / 2.0)
    return np.array([fx, fx, (width - 1) / 2.0, (height - 1) / 2.0])
