"""The RGB-D views a TSDF mesh is fused from (see `recon4d.export.mesh`), and the mesh export's settings.

1. Views: the input cameras, plus a few extra views on small circles around some of them (surfaces at
   angles the video did not see). A moving part is seen from those views at least a few degrees apart,
   each cropped to its footprint.
2. Render colour, alpha and a per-pixel depth. The depth is where the pixel's ray meets the
   alpha-blended *plane* of the Gaussians (flat Gaussians: their shortest axis is the normal; round ones
   face the camera). On flat Gaussians this removes the pull towards the camera of the expected centre
   depth (front Gaussians weigh more in the blend): on the test scene the mean surface error drops from
   0.9 to 0.1 voxel.
3. Drop pixels that are not a clean surface: low alpha (holes, soft silhouettes), and depth edges, where
   the blend mixes a foreground and a background surface (second difference of inverse depth, which is
   0 on any plane however slanted).

Views are rendered above the input resolution so that a voxel spans >= 1.5 pixels: the TSDF reads the
nearest pixel, so coarse pixels leave steps on slanted surfaces.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from recon4d.geometry import invert_pose, look_at
from recon4d.io.scene import Gaussians, Scene4D
from recon4d.render.config import RasterConfig
from recon4d.render.projection import MAX_EXTENT_SIGMA


@dataclass(frozen=True)
class MeshConfig:
    """Settings of the TSDF mesh export (lengths are relative to the voxel size or the median depth).

    Attributes:
        voxels_per_median_depth: default voxel size = median rendered depth / this.
        truncation_voxels: TSDF truncation distance in voxels; thicker than the depth noise of the
            Gaussians' surface, thinner than the gaps between surfaces.
        max_depth_factor: rendered depths beyond this multiple of the median depth are not fused
            (far background would otherwise dominate the voxel count).
        min_alpha: pixels with lower accumulated opacity are not fused (holes, soft silhouettes).
        max_edge_score: pixels whose `depth_edge_score` (relative second difference of inverse depth)
            exceeds this lie beside a depth discontinuity, where the blended depth mixes two surfaces;
            they are not fused. Planes score 0; a depth step from z to 2z scores about 0.5.
        max_input_views: at most this many input cameras (evenly spaced over the clip) are rendered.
        depth_probe_views: input views (evenly spaced, besides the orbit anchors) rendered at the input
            resolution to measure the scene's median depth before the voxel size is chosen.
        orbit_anchors: number of input cameras (evenly spaced) around which extra views are placed.
        orbit_views_per_anchor: extra views per anchor, evenly spaced on a circle in its image plane.
        orbit_radius: radius of that circle as a fraction of the anchor's median depth; the extra views
            look at the anchor's median-depth point and see surfaces at angles the video did not.
        min_pixels_per_voxel: views are rendered above the input resolution (scaled intrinsics) until a
            voxel at the median depth spans this many pixels; TSDF fusion reads the nearest pixel, so
            coarser pixels leave steps on slanted surfaces.
        max_render_pixels: cap on the pixels of one rendered view.
        flat_ratio: a Gaussian whose smallest scale is below this fraction of its middle scale is a
            surface element: its shortest axis is the surface normal used for the pixel depth.
        min_normal_agreement: the length of the alpha-blended unit normals below which a pixel mixes
            differently oriented surfaces and falls back to the expected centre depth.
        min_plane_cosine: below this cosine between the ray and the blended normal (grazing view) the
            pixel falls back to the expected centre depth.
        weight_threshold: voxels observed by fewer views (summed TSDF weight) are not meshed.
        min_component_fraction: connected components with fewer triangles than this fraction of all
            triangles are removed (floaters).
        block_resolution: voxels per edge of one sparse voxel block.
        initial_block_count: voxel blocks allocated up front; open3d's hash map grows as more are touched,
            and a large allocation costs every TSDF (0.6 s for 50k blocks, which a small moving part
            never needs).
        moving_part_threads: torch threads while a moving part is rendered: its small tensors do not
            parallelise, and on a busy CPU the threads' spin-waiting costs more than they gain (measured at
            load 8 on 2 cores: 0.6 s per frame with 1 thread, 4.4 s with 2).
        moving_view_spacing_deg: the moving part is fused from the planned views that see its centroid at
            least this angle apart (greedily, input views first); 0 keeps them all. Views in between see
            the same side of the object and only re-average its TSDF.
        crop_margin_px: the moving part's views are cropped to its Gaussians' footprint plus this many
            empty pixels (alpha 0 around the object, so the depth-edge test sees the same neighbours).
        max_frames_side_by_side: a clip's frames are meshed side by side, one per torch thread, at most this
            many at once: each holds its joined mesh and the file's bytes until written (about 0.1 GB for a
            mesh of 0.8 M triangles), so many cores do not multiply the peak memory without bound.
    """

    voxels_per_median_depth: float = 200.0
    truncation_voxels: float = 4.0
    max_depth_factor: float = 4.0
    min_alpha: float = 0.9
    max_edge_score: float = 0.05
    max_input_views: int = 60
    depth_probe_views: int = 8
    orbit_anchors: int = 6
    orbit_views_per_anchor: int = 4
    orbit_radius: float = 0.1
    min_pixels_per_voxel: float = 1.5
    max_render_pixels: int = 1_000_000
    flat_ratio: float = 0.3
    min_normal_agreement: float = 0.9
    min_plane_cosine: float = 0.2
    weight_threshold: float = 2.0
    min_component_fraction: float = 0.005
    block_resolution: int = 8
    initial_block_count: int = 2_000
    moving_part_threads: int = 1
    moving_view_spacing_deg: float = 4.0
    crop_margin_px: int = 2
    max_frames_side_by_side: int = 4


@dataclass
class RGBDView:
    """One rendered view. color [H, W, 3] float32 in [0, 1]; depth [H, W] float32 (0 = not fused);
    camera_from_world [4, 4] float64; K [3, 3] float64."""

    color: np.ndarray
    depth: np.ndarray
    camera_from_world: np.ndarray
    K: np.ndarray


def _evenly_spaced(count: int, limit: int) -> list[int]:
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / max(limit - 1, 1)) for i in range(limit)})


def surface_normals(gaussians: Gaussians, flat_ratio: float) -> np.ndarray:
    """Gaussians -> world normals [N, 3] float64 of the flat ones (smallest scale < flat_ratio x middle
    scale: a surface element whose normal is its shortest axis), 0 for round ones (they face the camera)."""
    from recon4d.geometry import rotation_from_quaternion

    rotation = rotation_from_quaternion(gaussians.quats.detach().cpu().double()).numpy()  # world_from_local
    scales = gaussians.scales.detach().cpu().double().numpy()
    order = np.argsort(scales, axis=-1)
    sorted_scales = np.take_along_axis(scales, order, -1)
    shortest_axis = np.take_along_axis(rotation, order[:, None, :1], 2)[..., 0]
    flat = sorted_scales[:, 0] < flat_ratio * sorted_scales[:, 1]
    return np.where(flat[:, None], shortest_axis, 0.0)


def surface_planes(means: np.ndarray, normals: np.ndarray, camera_from_world: np.ndarray) -> np.ndarray:
    """World means [N, 3], normals [N, 3] (see `surface_normals`) and camera_from_world [4, 4] -> per
    Gaussian the plane it stands for in camera coordinates [N, 4]: unit normal n facing the camera
    (n . mean < 0) and offset n . mean."""
    rotation, translation = camera_from_world[:3, :3], camera_from_world[:3, 3]
    means = means @ rotation.T + translation
    facing = -means / np.maximum(np.linalg.norm(means, axis=-1, keepdims=True), 1e-12)
    normals = np.where(normals.any(-1, keepdims=True), normals @ rotation.T, facing)
    offsets = (normals * means).sum(-1, keepdims=True)
    normals = np.where(offsets > 0, -normals, normals)
    return np.concatenate([normals, -np.abs(offsets)], -1)


def depth_edge_score(depth: np.ndarray) -> np.ndarray:
    """depth [H, W] (0 = none) -> [H, W] relative second difference of inverse depth, the larger of the
    row and column ones.

    Inverse depth is affine in the pixel coordinates on any plane, so a slanted floor scores 0 however
    fast its depth grows, while a pixel beside (or blended across) a depth discontinuity scores high.
    Missing neighbours are replaced by the pixel itself (no evidence of an edge).
    """
    inverse = np.where(depth > 0, 1.0 / np.maximum(depth, 1e-12), 0.0)
    padded = np.pad(inverse, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    score = np.zeros_like(inverse)
    for before, after in ((padded[1:-1, :-2], padded[1:-1, 2:]), (padded[:-2, 1:-1], padded[2:, 1:-1])):
        before, after = np.where(before > 0, before, centre), np.where(after > 0, after, centre)
        score = np.maximum(score, np.abs(before - 2 * centre + after))
    return np.where(depth > 0, score / np.maximum(centre, 1e-12), 0.0)


def render_rgbd(
    gaussians: Gaussians,
    world_from_camera: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    config: MeshConfig,
    normals: np.ndarray | None = None,
) -> RGBDView:
    """Render one view of `gaussians` and keep only clean surface pixels (colour and depth 0 elsewhere).

    Depth is where the pixel's ray meets the alpha-blended plane of the Gaussians (see `surface_planes`),
    which on flat Gaussians removes the pull towards the camera of the expected centre depth (front
    Gaussians weigh more); `normals` are `surface_normals(gaussians)`, computed here when not given.
    Where the blended normals disagree (|mean normal| < min_normal_agreement)
    or the plane is seen at a grazing angle, the expected centre depth is kept.
    """
    from recon4d.render import rasterize

    camera_from_world = invert_pose(world_from_camera.to(torch.float64)).to(gaussians.means)
    K = K.to(gaussians.means)
    if normals is None:
        normals = surface_normals(gaussians, config.flat_ratio)
    planes = surface_planes(
        gaussians.means.detach().cpu().double().numpy(), normals, camera_from_world.cpu().double().numpy()
    )
    features = torch.cat([gaussians.colors, torch.from_numpy(planes).to(gaussians.colors)], -1)
    with torch.no_grad():
        out = rasterize(
            gaussians.means,
            gaussians.quats,
            gaussians.scales,
            gaussians.opacities,
            features,
            camera_from_world,
            K,
            width,
            height,
        )
    alpha = out.alpha.cpu().numpy()
    K_np = K.cpu().double().numpy()
    color = np.zeros((height, width, 3), dtype=np.float32)
    depth = np.zeros((height, width), dtype=np.float32)
    # Only pixels opaque enough are fused: the rest of the view keeps colour and depth 0, and the work below
    # covers the opaque pixels and their bounding box (a moving part's is often a fraction of its view).
    rows, cols = np.nonzero(alpha >= config.min_alpha)
    if len(rows):
        top, left = int(rows.min()), int(cols.min())
        box = (slice(top, int(rows.max()) + 1), slice(left, int(cols.max()) + 1))
        opaque = (rows - top, cols - left)  # the opaque pixels in the box
        features = out.color[box].cpu().numpy()[opaque] / np.maximum(alpha[rows, cols], 1e-6)[:, None]
        color[rows, cols] = features[:, :3].clip(0.0, 1.0)
        normal, offset = features[:, 3:6], features[:, 6]
        rays = np.stack([(cols - K_np[0, 2]) / K_np[0, 0], (rows - K_np[1, 2]) / K_np[1, 1], np.ones(len(rows))], -1)
        agreement = np.linalg.norm(normal, axis=-1)
        along_ray = (normal * rays).sum(-1)
        cosine = -along_ray / np.maximum(agreement * np.linalg.norm(rays, axis=-1), 1e-12)
        planar = offset / np.minimum(along_ray, -1e-12)
        expected = out.depth[box].cpu().numpy()[opaque]
        use_plane = (agreement >= config.min_normal_agreement) & (cosine >= config.min_plane_cosine)
        fused = np.where(use_plane, planar, expected).astype(np.float32)
        depth[rows, cols] = np.where(fused > 0, fused, 0.0)  # NaN and behind the camera: not fused
        # Outside the box every depth is 0, which the edge score reads as no neighbour, as at the image border.
        depth[box] = np.where(depth_edge_score(depth[box]) <= config.max_edge_score, depth[box], 0.0)
    return RGBDView(color, depth, camera_from_world.cpu().double().numpy(), K_np)


def _median_depth(depth: np.ndarray) -> float:
    """Median of the fused (non-zero) depths, 0 when there are none."""
    values = depth[depth > 0]
    return float(np.median(values)) if values.size else 0.0


def orbit_poses(world_from_camera: torch.Tensor, distance: float, config: MeshConfig) -> list[torch.Tensor]:
    """world_from_camera [4, 4] (OpenCV) -> poses [4, 4] on a circle of radius orbit_radius * distance in
    its image plane, each looking at the point `distance` ahead of the original camera."""
    pose = world_from_camera.to(torch.float64)
    right, down, forward, eye = pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3]
    target = eye + distance * forward
    radius = config.orbit_radius * distance
    poses = []
    for k in range(config.orbit_views_per_anchor):
        angle = 2 * math.pi * k / config.orbit_views_per_anchor
        offset = radius * (math.cos(angle) * right + math.sin(angle) * down)
        poses.append(look_at(eye + offset, target, -down))
    return poses


def _scaled(K: torch.Tensor, scale: float) -> torch.Tensor:
    """Intrinsics of an image resized by `scale` (OpenCV pixel centres: c' = (c + 0.5) * s - 0.5)."""
    K = K.to(torch.float64).clone()
    K[:2, :2] *= scale
    K[:2, 2] = (K[:2, 2] + 0.5) * scale - 0.5
    return K


@dataclass(frozen=True)
class ViewPlan:
    """The views a mesh is fused from. poses: world_from_camera [4, 4] each; frames: the input frame whose
    intrinsics each view uses; median_depth: of the probed input views (scene units)."""

    poses: list[torch.Tensor]
    frames: list[int]
    median_depth: float


def plan_views(scene: Scene4D, gaussians: Gaussians, config: MeshConfig, frames: tuple[int, int]) -> ViewPlan:
    """Input cameras of the frames `frames` (first, last: a temporal window, `Scene4D.window_at`), evenly
    thinned to max_input_views, plus orbit views around evenly spaced anchors among them.

    The anchors and a few more input views (depth_probe_views) are rendered at the input resolution first
    to measure the depth of the scene.
    """
    cameras = scene.cameras
    first, last = frames

    def spaced(limit: int) -> list[int]:
        return [first + k for k in _evenly_spaced(last - first + 1, limit)]

    inputs = spaced(config.max_input_views)
    anchors = spaced(config.orbit_anchors) if config.orbit_views_per_anchor > 0 else []
    probes = sorted(set(spaced(config.depth_probe_views)) | set(anchors))
    normals = surface_normals(gaussians, config.flat_ratio)
    depths = {
        t: render_rgbd(
            gaussians, cameras.world_from_camera[t], cameras.K(t), cameras.width, cameras.height, config, normals
        ).depth
        for t in probes
    }
    median_depth = _median_depth(np.stack(list(depths.values())))
    poses, frames = [cameras.world_from_camera[t] for t in inputs], list(inputs)
    if median_depth > 0:
        for t in anchors:
            for pose in orbit_poses(cameras.world_from_camera[t], _median_depth(depths[t]) or median_depth, config):
                poses.append(pose)
                frames.append(t)
    return ViewPlan(poses, frames, median_depth)


def thin_views(plan: ViewPlan, target: np.ndarray, min_angle_deg: float) -> ViewPlan:
    """The planned views whose directions towards the world point `target` [3] are at least min_angle_deg
    apart, kept greedily in plan order (input views, then orbit views)."""
    kept, directions = [], []
    min_cosine = math.cos(math.radians(min_angle_deg))
    for k, pose in enumerate(plan.poses):
        direction = target - pose[:3, 3].double().numpy()
        direction /= max(np.linalg.norm(direction), 1e-12)
        if min_angle_deg <= 0 or all(direction @ other < min_cosine for other in directions):
            kept.append(k)
            directions.append(direction)
    return ViewPlan([plan.poses[k] for k in kept], [plan.frames[k] for k in kept], plan.median_depth)


def render_scale(scene: Scene4D, plan: ViewPlan, voxel_size: float, config: MeshConfig) -> float:
    """Upscaling of the input resolution that puts min_pixels_per_voxel pixels across a voxel at the
    median depth (TSDF fusion reads the nearest pixel, so coarser pixels leave steps on slanted
    surfaces), capped by max_render_pixels."""
    focal = float(scene.cameras.intrinsics[:, :2].double().mean())
    wanted = config.min_pixels_per_voxel * plan.median_depth / (focal * voxel_size)
    cap = math.sqrt(config.max_render_pixels / (scene.cameras.width * scene.cameras.height))
    return max(1.0, min(wanted, cap))


def footprint_window(
    gaussians: Gaussians, camera_from_world: np.ndarray, K: np.ndarray, width: int, height: int, margin: int
) -> tuple[int, int, int, int] | None:
    """The pixel window (x0, y0, x1, y1), i.e. columns x0..x1-1 and rows y0..y1-1, of a width x height view
    that holds every footprint the rasterizer can draw of `gaussians`, grown by `margin` pixels and clipped
    to the image; None when there is nothing in front of the camera or it misses the image.

    A conservative bound: along u a Gaussian's 2D standard deviation is at most the norm of the projection
    Jacobian's row, f / z * sqrt(1 + (x / z)^2) (the rasterizer clamps x / z, which only shrinks it), times
    its largest scale, widened by the low-pass eps2d; the rasterizer draws MAX_EXTENT_SIGMA of them.
    camera_from_world [4, 4], K [3, 3] (OpenCV pixel centres).
    """
    raster = RasterConfig()
    means = gaussians.means.detach().cpu().double().numpy() @ camera_from_world[:3, :3].T + camera_from_world[:3, 3]
    front = means[:, 2] > raster.near_plane
    if not front.any():
        return None
    x, y, z = means[front].T
    sigma = gaussians.scales.detach().cpu().double().numpy()[front].max(-1)
    bounds = []
    for focal, centre, lateral, size in ((K[0, 0], K[0, 2], x, width), (K[1, 1], K[1, 2], y, height)):
        pixel = focal * lateral / z + centre
        radius = MAX_EXTENT_SIGMA * np.sqrt((focal * sigma / z) ** 2 * (1 + (lateral / z) ** 2) + raster.eps2d)
        low = max(0, math.floor((pixel - radius).min()) - margin)
        high = min(size, math.ceil((pixel + radius).max()) + 1 + margin)
        if low >= high:
            return None
        bounds.append((low, high))
    (x0, x1), (y0, y1) = bounds
    return x0, y0, x1, y1


def render_views(
    scene: Scene4D, gaussians: Gaussians, plan: ViewPlan, scale: float, config: MeshConfig, crop: bool = False
) -> Iterator[RGBDView]:
    """Render the planned views one at a time (so memory holds one view) at `scale` x the input resolution.

    With crop, each view is cut to the Gaussians' `footprint_window` (a camera with a shifted principal
    point: the same pixels, fewer of them) and views they miss are skipped: a small moving object costs its
    footprint, not the whole image.
    """
    width, height = round(scene.cameras.width * scale), round(scene.cameras.height * scale)
    scale = width / scene.cameras.width
    normals = surface_normals(gaussians, config.flat_ratio)
    for pose, t in zip(plan.poses, plan.frames, strict=True):
        K = _scaled(scene.cameras.K(t), scale)
        if not crop:
            yield render_rgbd(gaussians, pose, K, width, height, config, normals)
            continue
        camera_from_world = invert_pose(pose.to(torch.float64)).numpy()
        window = footprint_window(gaussians, camera_from_world, K.numpy(), width, height, config.crop_margin_px)
        if window is None:
            continue
        x0, y0, x1, y1 = window
        K[0, 2] -= x0
        K[1, 2] -= y0
        yield render_rgbd(gaussians, pose, K, x1 - x0, y1 - y0, config, normals)
