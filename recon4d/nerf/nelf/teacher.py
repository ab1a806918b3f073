"""The teacher: a fitted Gaussian scene frozen at one state, rendered by recon4d's rasterizer.

The state is either the still part of the scene (every Gaussian that is not labelled moving, the dynamic
background at the last frame, when all Gaussians are born) or the whole scene at a time T. A long clip is
fitted in temporal windows, each with its own Gaussians that only its frames' cameras saw: a state then
belongs to one window (the last one for the still part, T's for time T), and its cameras are that window's.

Besides colour, depth and opacity, the teacher renders a density profile along every ray: each Gaussian also carries a one-hot
feature of the inverse-depth bin its centre falls in (in the rendering camera), so alpha compositing sums,
per bin, the blending weights of the Gaussians in it — the splat analogue of NeRF's weights along a ray.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from recon4d.errors import InputError
from recon4d.geometry.camera import invert_pose
from recon4d.geometry.lie import so3_exp
from recon4d.io.scene import Gaussians, Scene4D
from recon4d.nerf.nelf.config import PseudoDataConfig
from recon4d.nerf.nelf.rays import disparity_bins
from recon4d.render import rasterize


@dataclass
class TeacherView:
    """One teacher render: color [H, W, 3], depth [H, W], alpha [H, W], profile [H, W, S] or None."""

    color: torch.Tensor
    depth: torch.Tensor
    alpha: torch.Tensor
    profile: torch.Tensor | None


@dataclass
class Teacher:
    """A frozen Gaussian state and the ray bounds of its scene.

    Attributes:
        gaussians: what is rendered.
        state: "static" or "time T".
        near, far: camera-depth bounds of the ray samples (scene units).
        centre: [3] centre of the region the rays sample; radius: its half-extent (points are normalised by it).
        frames: first and last frame of the temporal window the state belongs to (`Scene4D.window_at`; the
            whole clip for a scene fitted in one window): the input cameras that saw its Gaussians.
    """

    gaussians: Gaussians
    state: str
    near: float
    far: float
    centre: torch.Tensor
    radius: float
    frames: tuple[int, int]


def teacher_gaussians(scene: Scene4D, time: float | None) -> tuple[Gaussians, str, tuple[int, int]]:
    """The still part of the scene (time None) or the whole scene at `time` (frame units), its name, and the
    temporal window it belongs to (first, last frame)."""
    if time is None:
        last = scene.num_frames - 1
        alive = scene.alive_at(last)
        still = ~scene.is_moving[alive]
        return scene.gaussians_at(last).select(still), "static", scene.window_at(last)
    if not (math.isfinite(time) and 0 <= time <= scene.num_frames - 1):
        raise InputError(f"--time {time} is outside the scene's time range 0..{scene.num_frames - 1}",
                         hint="times are in frame units; `recon4d info OUT` shows the number of frames")
    return scene.gaussians_at(float(time)), f"time {float(time):g}", scene.window_at(math.floor(time))


def render_gaussians(gaussians: Gaussians, world_from_camera: torch.Tensor, K: torch.Tensor, width: int,
                     height: int, profile_bins: tuple[float, float, int] | None = None) -> TeacherView:
    """Render colour, depth, alpha and (with profile_bins = (near, far, S)) the density profile [H, W, S]."""
    camera_from_world = invert_pose(world_from_camera.double()).float()
    colors = gaussians.colors[:, :3]
    if profile_bins is not None:
        near, far, count = profile_bins
        z = gaussians.means @ camera_from_world[2, :3] + camera_from_world[2, 3]
        one_hot = torch.nn.functional.one_hot(disparity_bins(z, near, far, count), count).to(colors.dtype)
        colors = torch.cat([colors, one_hot], -1)
    with torch.no_grad():
        out = rasterize(gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, colors,
                        camera_from_world, K.float(), width, height)
    profile = out.color[..., 3:] if profile_bins is not None else None
    return TeacherView(out.color[..., :3].clamp(0, 1), out.depth, out.alpha, profile)


def make_teacher(scene: Scene4D, time: float | None, config: PseudoDataConfig) -> Teacher:
    """Teacher of `scene` (see `teacher_gaussians`) with near/far from its depth at the input cameras of its
    temporal window."""
    gaussians, state, (first, last) = teacher_gaussians(scene, time)
    if len(gaussians) == 0:
        raise InputError(f"the scene has no Gaussians in its {state} state", hint="try --time T instead of --static")
    cams = scene.cameras
    frames = torch.linspace(first, last, min(last - first + 1, 8)).round().long().unique()
    depths = []
    for t in frames.tolist():
        view = render_gaussians(gaussians, cams.world_from_camera[t], cams.K(t), cams.width, cams.height)
        depths.append(view.depth[view.alpha > config.coverage_threshold])
    depth = torch.cat(depths)
    if depth.numel() == 0:
        raise InputError("the teacher covers no pixel of the input cameras", hint="check the fit")
    near = float(torch.quantile(depth, config.near_percentile / 100)) / config.bound_margin
    far = float(torch.quantile(depth, config.far_percentile / 100)) * config.bound_margin
    near, far = max(near, 1e-3), max(far, near * 1.5)
    # The sampled region: camera centres and the points at near and far through the image corners.
    positions = cams.world_from_camera[first:last + 1, :3, 3].float()
    forward = cams.world_from_camera[first:last + 1, :3, 2].float()
    extent = torch.cat([positions, positions + near * forward, positions + far * forward])
    low, high = extent.amin(0), extent.amax(0)
    return Teacher(gaussians, state, near, far, (low + high) / 2, max(float((high - low).norm() / 2), 1e-6),
                   (first, last))


def median_scene_depth(teacher: Teacher) -> float:
    """Geometric mean of near and far: the typical distance to the scene."""
    return math.sqrt(teacher.near * teacher.far)


def sample_cameras(scene: Scene4D, count: int, config: PseudoDataConfig, scene_depth: float, generator: torch.Generator,
                   frames: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cameras around the recovered path of the frames `frames` (first, last: `Teacher.frames`): the
    pose at a random (fractional) time, its centre moved to a random point between it and another input
    camera (inside the path's hull), then jittered in position and direction.

    Returns:
        world_from_camera [count, 4, 4] float64, K [count, 3, 3] float32 in pixels of the scene's size.
    """
    cams = scene.cameras
    first, last = frames
    poses, Ks = [], []
    for _ in range(count):
        t, other = (first + torch.rand(2, generator=generator, dtype=torch.float64) * (last - first)).tolist()
        pose = cams.world_from_camera_at(t).double()
        mix = float(torch.rand((), generator=generator, dtype=torch.float64))
        centre = torch.lerp(pose[:3, 3], cams.world_from_camera_at(other).double()[:3, 3], mix)
        offset = torch.randn(3, generator=generator, dtype=torch.float64)
        centre = centre + offset * config.position_jitter * scene_depth
        turn = torch.randn(3, generator=generator, dtype=torch.float64) * math.radians(config.rotation_jitter_deg)
        pose[:3, :3] = pose[:3, :3] @ so3_exp(turn)
        pose[:3, 3] = centre
        poses.append(pose)
        Ks.append(cams.K(t).float())
    return torch.stack(poses), torch.stack(Ks)


def input_cameras(scene: Scene4D, frames: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The recovered cameras of the frames `frames` (first, last: `Teacher.frames`): world_from_camera
    [F, 4, 4] float64, K [F, 3, 3] float32."""
    cams = scene.cameras
    first, last = frames
    return (cams.world_from_camera[first:last + 1].double(),
            torch.stack([cams.K(t).float() for t in range(first, last + 1)]))
