"""Coloured triangle meshes of a scene by TSDF fusion of rendered RGB-D views.

A frame's mesh is the union of two parts fused separately: the still part (every Gaussian that is not a
moving thing, as the static export sees it) and the moving part (the moving Gaussians at that frame). The
still part does not depend on the frame, so a clip export fuses it once and shares it with every frame; per
frame only the moving Gaussians are rendered, each view cropped to their footprint (so a frame costs what
its moving object covers, not the whole scene). Fused apart, the wall behind a moving ball is meshed too.

For one set of Gaussians:

1. Views: the input cameras, plus a few extra views on small circles around some of them (surfaces at
   angles the video did not see).
2. Render colour, alpha and a per-pixel depth. The depth is where the pixel's ray meets the
   alpha-blended *plane* of the Gaussians (flat Gaussians: their shortest axis is the normal; round ones
   face the camera). On flat Gaussians this removes the pull towards the camera of the expected centre
   depth (front Gaussians weigh more in the blend): on the test scene the mean surface error drops from
   0.9 to 0.1 voxel.
3. Drop pixels that are not a clean surface: low alpha (holes, soft silhouettes), and depth edges, where
   the blend mixes a foreground and a background surface (second difference of inverse depth, which is
   0 on any plane however slanted).
4. Fuse in an open3d ``VoxelBlockGrid`` TSDF (sparse blocks, so far background costs no dense volume;
   ``ScalableTSDFVolume`` returns an empty volume in open3d 0.20). Views are rendered above the input
   resolution so that a voxel spans >= 1.5 pixels: the TSDF reads the nearest pixel, so coarse pixels
   leave steps on slanted surfaces.
5. Marching cubes; drop connected components smaller than a fraction of the frame's triangles (both parts
   together), write PLY / OBJ / GLB with trimesh.

Conventions: open3d centres pixel (0, 0) at (0.5, 0.5), recon4d at (0, 0); the shift is applied when the
intrinsics are handed to open3d. Scale: the voxel size defaults to the median rendered depth of the input
views / 200; units are the scene's.

The views, voxel size and render scale are planned once per export, on the Gaussians of its first frame.

Example:
    >>> stats = export_mesh(load_scene("out"), "out/mesh.glb", frame=0)   # doctest: +SKIP
    >>> stats.num_triangles > 0                                            # doctest: +SKIP
    True
"""

from __future__ import annotations

import ctypes
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from recon4d.errors import BackendError, InputError, SceneError
from recon4d.geometry import invert_pose, look_at
from recon4d.io.atomic import write_bytes_atomic
from recon4d.io.frames import FrameSelection, frame_file_name, frame_indices
from recon4d.io.scene import Gaussians, Scene4D
from recon4d.progress import track
from recon4d.render.config import RasterConfig
from recon4d.render.projection import MAX_EXTENT_SIGMA

MESH_SUFFIXES = (".ply", ".obj", ".glb")
OPEN3D_PIXEL_CENTER_OFFSET = 0.5  # open3d's TSDF kernels centre pixel (0, 0) at (0.5, 0.5)


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
        moving_view_spacing_deg: the moving part is fused from the planned views that see its centroid at
            least this angle apart (greedily, input views first); 0 keeps them all. Views in between see
            the same side of the object and only re-average its TSDF.
        crop_margin_px: the moving part's views are cropped to its Gaussians' footprint plus this many
            empty pixels (alpha 0 around the object, so the depth-edge test sees the same neighbours).
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
    moving_view_spacing_deg: float = 4.0
    crop_margin_px: int = 2


@dataclass(frozen=True)
class MeshStats:
    """What one mesh export did.

    Attributes:
        path: the written file.
        frame: the frame whose Gaussians were meshed.
        static_only: whether only still Gaussians were meshed.
        num_gaussians: Gaussians meshed (still and moving).
        num_moving_gaussians: of those, the moving ones at this frame (0 for a static export).
        num_views: RGB-D views planned (each part is fused from those of them it appears in).
        voxel_size: TSDF voxel edge in scene units.
        render_size: (width, height) of the fused views in pixels.
        num_vertices, num_triangles: of the written mesh.
        removed_triangles: triangles in dropped small components.
        seconds: wall time of this mesh; in a clip export the first frame also carries the planning and the
            still part, which later frames share.
    """

    path: Path
    frame: int
    static_only: bool
    num_gaussians: int
    num_moving_gaussians: int
    num_views: int
    voxel_size: float
    render_size: tuple[int, int]
    num_vertices: int
    num_triangles: int
    removed_triangles: int
    seconds: float


@dataclass
class RGBDView:
    """One rendered view. color [H, W, 3] float32 in [0, 1]; depth [H, W] float32 (0 = not fused);
    camera_from_world [4, 4] float64; K [3, 3] float64."""

    color: np.ndarray
    depth: np.ndarray
    camera_from_world: np.ndarray
    K: np.ndarray


def import_open3d():
    """Import open3d, or raise BackendError with a hint.

    The open3d-cpu wheels link libusb-1.0 (for depth cameras) without shipping it; when the system lacks
    it, the `libusb-package` wheel provides the library and is loaded first.
    """
    try:
        import open3d

        return open3d
    except ImportError as exc:
        if "libusb" not in str(exc):
            raise BackendError("mesh export needs open3d", hint="pip install open3d-cpu (or open3d)") from exc
        try:
            import libusb_package

            ctypes.CDLL(str(libusb_package.get_library_path()), mode=ctypes.RTLD_GLOBAL)
            import open3d

            return open3d
        except (ImportError, OSError, TypeError) as retry_exc:
            raise BackendError(
                "open3d needs libusb-1.0, which this system lacks",
                hint="pip install libusb-package, or apt-get install libusb-1.0-0",
            ) from retry_exc


def still_gaussians(scene: Scene4D, t: int | None = None) -> Gaussians:
    """The Gaussians alive at frame t that are not moving things, in their frame-t state; t None: all of
    them (those of the last frame, since Gaussians are only ever added), the static world that every frame's
    mesh shares (background Gaussians with a residual drift, dynamic but not moving, in their last state)."""
    t = scene.num_frames - 1 if t is None else t
    return scene.gaussians_at(t).select(~scene.is_moving[scene.birth_frame <= t])


def moving_gaussians(scene: Scene4D, t: int) -> Gaussians:
    """The moving Gaussians alive at frame t, in their frame-t state."""
    return scene.gaussians_at(t).select(scene.is_moving[scene.birth_frame <= t])


def concat_gaussians(a: Gaussians, b: Gaussians) -> Gaussians:
    """The Gaussians of a followed by those of b."""
    return Gaussians(*(torch.cat([getattr(a, f.name), getattr(b, f.name)]) for f in fields(Gaussians)))


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
    """Render one view of `gaussians` and keep only clean surface pixels (depth 0 elsewhere).

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
    blended = out.color.cpu().numpy() / np.maximum(alpha, 1e-6)[..., None]
    color, normal, offset = blended[..., :3].clip(0.0, 1.0), blended[..., 3:6], blended[..., 6]
    rows, cols = np.mgrid[0:height, 0:width]
    K_np = K.cpu().double().numpy()
    rays = np.stack([(cols - K_np[0, 2]) / K_np[0, 0], (rows - K_np[1, 2]) / K_np[1, 1], np.ones((height, width))], -1)
    agreement = np.linalg.norm(normal, axis=-1)
    cosine = -(normal * rays).sum(-1) / np.maximum(agreement * np.linalg.norm(rays, axis=-1), 1e-12)
    planar = offset / np.minimum((normal * rays).sum(-1), -1e-12)
    expected = out.depth.cpu().numpy()
    use_plane = (agreement >= config.min_normal_agreement) & (cosine >= config.min_plane_cosine)
    depth = np.where(use_plane, planar, expected).astype(np.float32)
    valid = (alpha >= config.min_alpha) & (depth > 0)
    valid &= depth_edge_score(np.where(valid, depth, 0.0)) <= config.max_edge_score
    return RGBDView(
        color.astype(np.float32),
        np.where(valid, depth, 0.0).astype(np.float32),
        camera_from_world.cpu().double().numpy(),
        K_np,
    )


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


def plan_views(scene: Scene4D, gaussians: Gaussians, config: MeshConfig) -> ViewPlan:
    """Input cameras (evenly thinned to max_input_views) plus orbit views around evenly spaced anchors.

    The anchors and a few more input views (depth_probe_views) are rendered at the input resolution first
    to measure the depth of the scene.
    """
    cameras = scene.cameras
    inputs = _evenly_spaced(len(cameras), config.max_input_views)
    anchors = _evenly_spaced(len(cameras), config.orbit_anchors) if config.orbit_views_per_anchor > 0 else []
    probes = sorted(set(_evenly_spaced(len(cameras), config.depth_probe_views)) | set(anchors))
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


def fuse_tsdf(views: Iterable[RGBDView], voxel_size: float, depth_max: float, config: MeshConfig):
    """Fuse RGB-D views into an open3d VoxelBlockGrid -> legacy open3d TriangleMesh with vertex colours."""
    o3d = import_open3d()
    o3c = o3d.core
    # The initial block capacity; open3d's hash map grows when more blocks are touched.
    grid = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"),
        attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
        attr_channels=((1), (1), (3)),
        voxel_size=voxel_size,
        block_resolution=config.block_resolution,
        block_count=50_000,
        device=o3c.Device("CPU:0"),
    )
    for view in views:
        depth = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(view.depth)))
        color = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(view.color)))
        # open3d reads pixel int(u) for a projected u, i.e. pixel j spans [j, j + 1) with its centre at
        # j + 0.5; ours is centred at j, so the principal point shifts by half a pixel.
        K = view.K.copy()
        K[:2, 2] += OPEN3D_PIXEL_CENTER_OFFSET
        intrinsic = o3c.Tensor(K)
        extrinsic = o3c.Tensor(view.camera_from_world)
        blocks = grid.compute_unique_block_coordinates(
            depth, intrinsic, extrinsic, 1.0, depth_max, config.truncation_voxels
        )
        grid.integrate(blocks, depth, color, intrinsic, extrinsic, 1.0, depth_max, config.truncation_voxels)
    return grid.extract_triangle_mesh(weight_threshold=config.weight_threshold).to_legacy()


@dataclass(frozen=True)
class SurfacePart:
    """A separately fused part of a mesh. vertices [V, 3] float64; triangles [F, 3] int64; colors [V, 3] in
    [0, 1]; component_size [F]: triangles in each triangle's connected component (for the floater cut,
    which is made on the parts joined)."""

    vertices: np.ndarray
    triangles: np.ndarray
    colors: np.ndarray
    component_size: np.ndarray


def surface_part(mesh) -> SurfacePart:
    """An open3d legacy TriangleMesh -> SurfacePart (grey where it has no vertex colours)."""
    vertices, triangles = np.asarray(mesh.vertices), np.asarray(mesh.triangles).astype(np.int64)
    colors = np.asarray(mesh.vertex_colors) if mesh.has_vertex_colors() else np.full_like(vertices, 0.5)
    if len(triangles) == 0:
        return SurfacePart(vertices, triangles.reshape(0, 3), colors, np.zeros(0, dtype=np.int64))
    clusters, counts, _ = mesh.cluster_connected_triangles()
    return SurfacePart(vertices, triangles, colors, np.asarray(counts)[np.asarray(clusters)])


def join_parts(parts: list[SurfacePart], min_fraction: float) -> tuple[SurfacePart, int]:
    """The union of `parts` without the connected components that hold fewer than min_fraction of all its
    triangles (floaters), and the number of triangles removed. Vertices no triangle uses are dropped."""
    offsets = np.cumsum([0] + [len(part.vertices) for part in parts])
    triangles = np.concatenate([part.triangles + offset for part, offset in zip(parts, offsets, strict=False)])
    sizes = np.concatenate([part.component_size for part in parts])
    keep = sizes >= min_fraction * len(triangles)
    used, inverse = np.unique(triangles[keep], return_inverse=True)
    vertices = np.concatenate([part.vertices for part in parts])[used]
    colors = np.concatenate([part.colors for part in parts])[used]
    joined = SurfacePart(vertices, inverse.reshape(-1, 3), colors, sizes[keep])
    return joined, int((~keep).sum())


def mesh_suffix(path: Path) -> str:
    """The mesh format of `path` ('.ply', '.obj' or '.glb'); InputError for anything else."""
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise InputError(
            f"cannot write a mesh as {suffix or 'a file without suffix'}", hint=f"use {', '.join(MESH_SUFFIXES)}"
        )
    return suffix


def write_mesh(vertices: np.ndarray, triangles: np.ndarray, colors: np.ndarray, path: str | os.PathLike) -> Path:
    """vertices [V, 3], triangles [F, 3] int, colors [V, 3] in [0, 1] -> PLY / OBJ / GLB by suffix, atomically."""
    import trimesh

    path = Path(path)
    suffix = mesh_suffix(path)
    rgba = np.concatenate([np.clip(colors, 0, 1) * 255, np.full((len(colors), 1), 255.0)], 1).round().astype(np.uint8)
    mesh = trimesh.Trimesh(vertices=vertices, faces=triangles, vertex_colors=rgba, process=False)
    data = mesh.export(file_type=suffix[1:])
    write_bytes_atomic(path, data.encode() if isinstance(data, str) else data)
    return path


@dataclass(frozen=True)
class MeshSetup:
    """What every part of an export's meshes shares: the views, the voxel size (scene units), the render
    scale (x the input resolution) and the farthest depth fused (scene units)."""

    plan: ViewPlan
    voxel_size: float
    scale: float
    depth_max: float


def mesh_setup(
    scene: Scene4D, gaussians: Gaussians, what: str, voxel_size: float | None, config: MeshConfig
) -> MeshSetup:
    """Plan the views on `gaussians` and pick the voxel size (given, or median depth / voxels_per_median_depth)
    and render scale; SceneError when no opaque surface is in view. `what` names them in that error."""
    plan = plan_views(scene, gaussians, config)
    if plan.median_depth <= 0:
        raise SceneError(f"no opaque surface is visible in {what}", hint=f"lower min_alpha (now {config.min_alpha})")
    voxel_size = voxel_size or plan.median_depth / config.voxels_per_median_depth
    scale = render_scale(scene, plan, voxel_size, config)
    return MeshSetup(plan, float(voxel_size), scale, config.max_depth_factor * plan.median_depth)


def fuse_part(scene: Scene4D, gaussians: Gaussians, setup: MeshSetup, config: MeshConfig, moving: bool) -> SurfacePart:
    """TSDF mesh of `gaussians` from the planned views; for the moving part, from views moving_view_spacing_deg
    apart (`thin_views`) cropped to its footprint."""
    plan = setup.plan
    if moving:
        plan = thin_views(plan, gaussians.means.detach().double().mean(0).cpu().numpy(), config.moving_view_spacing_deg)
    views = render_views(scene, gaussians, plan, setup.scale, config, crop=moving)
    return surface_part(fuse_tsdf(views, setup.voxel_size, setup.depth_max, config))


def _write_stats(
    part: SurfacePart, removed: int, path: Path, frame: int, static_only: bool, num_moving: int, setup: MeshSetup,
    scene: Scene4D, num_gaussians: int, start: float, what: str,
) -> MeshStats:
    """Write the joined mesh of one frame (SceneError when it is empty) and describe it."""
    if len(part.triangles) == 0:
        raise SceneError(
            f"TSDF fusion of {what} gave an empty mesh", hint="try a larger voxel size or a lower weight_threshold"
        )
    write_mesh(part.vertices, part.triangles, part.colors, path)
    return MeshStats(
        path=path,
        frame=frame,
        static_only=static_only,
        num_gaussians=num_gaussians,
        num_moving_gaussians=num_moving,
        num_views=len(setup.plan.poses),
        voxel_size=setup.voxel_size,
        render_size=(round(scene.cameras.width * setup.scale), round(scene.cameras.height * setup.scale)),
        num_vertices=len(part.vertices),
        num_triangles=len(part.triangles),
        removed_triangles=removed,
        seconds=time.perf_counter() - start,
    )


def _check_request(paths: Iterable[Path], voxel_size: float | None) -> None:
    for path in paths:
        mesh_suffix(path)
    if voxel_size is not None and not voxel_size > 0:
        raise InputError(f"voxel size must be positive, got {voxel_size}")


def export_frame_meshes(
    scene: Scene4D, paths: dict[int, Path], voxel_size: float | None = None, config: MeshConfig | None = None
) -> list[MeshStats]:
    """Mesh the Gaussians of each frame in `paths` (frame index -> output file): the still part is fused
    once and joined to each frame's moving part. Views and voxel size are planned on the first frame.

    Raises:
        InputError for a bad voxel size or suffix; SceneError when a frame has no surface to mesh.
    """
    start = time.perf_counter()
    config = config or MeshConfig()
    _check_request(paths.values(), voxel_size)
    frames = list(paths)
    still = still_gaussians(scene)
    first = concat_gaussians(still, moving_gaussians(scene, frames[0]))
    if len(first) == 0:
        raise SceneError(f"frame {frames[0]} has no Gaussians to mesh")
    setup = mesh_setup(scene, first, f"frame {frames[0]}'s Gaussians", voxel_size, config)
    still_part = [fuse_part(scene, still, setup, config, moving=False)] if len(still) else []
    stats = []
    for t in track(frames, "meshing frames") if len(frames) > 1 else frames:
        moving = moving_gaussians(scene, t)
        moving_part = [fuse_part(scene, moving, setup, config, moving=True)] if len(moving) else []
        joined, removed = join_parts(still_part + moving_part, config.min_component_fraction)
        what = f"frame {t}'s Gaussians"
        stats.append(
            _write_stats(joined, removed, paths[t], t, False, len(moving), setup, scene, len(still) + len(moving),
                         start, what)
        )
        start = time.perf_counter()
    return stats


def export_mesh(
    scene: Scene4D,
    path: str | os.PathLike,
    frame: int | None = None,
    static_only: bool = False,
    voxel_size: float | None = None,
    config: MeshConfig | None = None,
) -> MeshStats:
    """Mesh the Gaussians of one frame (or only the still ones) and write PLY / OBJ / GLB (by suffix).

    Args:
        scene: the fitted scene.
        path: output file; its suffix picks the format.
        frame: frame index (negative counts from the end); None = the last frame.
        static_only: mesh only the still Gaussians alive at the frame (the background without moving objects).
        voxel_size: TSDF voxel edge in scene units; None = median rendered depth / 200.
        config: the remaining settings.
    Raises:
        InputError for a bad frame, voxel size or suffix; SceneError when there is no surface to mesh.
    """
    start = time.perf_counter()
    config = config or MeshConfig()
    path = Path(path)
    _check_request([path], voxel_size)
    (t,) = frame_indices(scene.num_frames - 1 if frame is None else frame, scene.num_frames)
    if not static_only:
        return export_frame_meshes(scene, {t: path}, voxel_size, config)[0]
    gaussians = still_gaussians(scene, t)
    if len(gaussians) == 0:
        raise SceneError(f"frame {t} has no still Gaussians to mesh")
    what = f"frame {t}'s still Gaussians"
    setup = mesh_setup(scene, gaussians, what, voxel_size, config)
    joined, removed = join_parts([fuse_part(scene, gaussians, setup, config, moving=False)], config.min_component_fraction)
    return _write_stats(joined, removed, path, t, True, 0, setup, scene, len(gaussians), start, what)


def export_meshes(
    scene: Scene4D,
    out_dir: str | os.PathLike,
    frames: FrameSelection = "all",
    suffix: str = ".ply",
    voxel_size: float | None = None,
    config: MeshConfig | None = None,
) -> list[MeshStats]:
    """One mesh per selected frame, ``out_dir/mesh_0000.ply`` ... (see `export_frame_meshes`: one still
    part shared by all, one voxel size fixed by the first frame unless given)."""
    paths = {t: Path(out_dir) / frame_file_name("mesh", t, suffix) for t in frame_indices(frames, scene.num_frames)}
    return export_frame_meshes(scene, paths, voxel_size, config)
