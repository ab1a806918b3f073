"""Settings of the synthetic clips: the variants and every tunable number of the generator."""
from __future__ import annotations

from dataclasses import dataclass

VARIANTS: tuple[str, ...] = ("translate", "rotate", "static", "fast", "static_scene")


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
