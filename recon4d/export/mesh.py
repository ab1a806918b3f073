"""Coloured triangle meshes of a scene by TSDF fusion of rendered RGB-D views.

A frame's mesh is the union of two parts fused separately: the still part (every Gaussian that is not a
moving thing, as the static export sees it) and the moving part (the moving Gaussians at that frame). The
still part does not depend on the frame, so a clip export fuses it once and shares it with every frame; per
frame only the moving Gaussians are rendered, each view cropped to their footprint (so a frame costs what
its moving object covers, not the whole scene). Fused apart, the wall behind a moving ball is meshed too.

For one set of Gaussians:

1-3. Render RGB-D views of clean surface pixels (`recon4d.export.mesh_views`: input and orbit cameras,
   depth of the blended Gaussian planes, no depth edges or soft silhouettes), above the input resolution.
4. Fuse them in an open3d ``VoxelBlockGrid`` TSDF (sparse blocks, so far background costs no dense volume;
   ``ScalableTSDFVolume`` returns an empty volume in open3d 0.20).
5. Marching cubes; drop connected components smaller than a fraction of the frame's triangles (both parts
   together); write PLY from binary records (a clip's shared still part encoded once per window, not once
   per frame as trimesh would), OBJ / GLB with trimesh.

Two layouts of a clip's meshes (`export_meshes`): one whole mesh per frame (``frame_0000.ply`` ...: what mesh
sequence importers read), or split (``split=True``): each temporal window's still part written once
(``still_0000.ply``, named by the window's first exported frame) and per frame only its moving part
(``moving_0000.ply``; none for a frame without moving surface). A frame's mesh is then the latest still file
at or before it plus its moving file; `recon4d view` reads both layouts. A long clip's frames are mostly
their window's still part, so split is far smaller (backpack's 450-frame fit: 0.75 against 22.5 MB per
frame; README, "A long clip's meshes in a thirtieth of the space").

Conventions: open3d centres pixel (0, 0) at (0.5, 0.5), recon4d at (0, 0); the shift is applied when the
intrinsics are handed to open3d. Scale: the voxel size defaults to the median rendered depth of the input
views / 200; units are the scene's.

The views and render scale are planned once per temporal window of the scene (once per export for a clip
fitted in one window), on the Gaussians of the export's first frame in it; the voxel size once per export.

Example:
    >>> stats = export_mesh(load_scene("out"), "out/mesh.glb", frame=0)   # doctest: +SKIP
    >>> stats.num_triangles > 0                                            # doctest: +SKIP
    True
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from recon4d.device import release_freed_memory, side_by_side
from recon4d.errors import BackendError, InputError, SceneError
from recon4d.export.mesh_views import (
    MeshConfig,
    RGBDView,
    ViewPlan,
    plan_views,
    render_scale,
    render_views,
    thin_views,
)
from recon4d.io.atomic import atomic_path, write_bytes_atomic
from recon4d.io.frames import (FRAME_STEM, STILL_SCENE_STEM, FrameSelection, frame_file_name, frame_indices,
                               one_file_for_all)
from recon4d.io.scene import Gaussians, Scene4D
from recon4d.progress import progress_bar

MESH_SUFFIXES = (".ply", ".obj", ".glb")
# File names of a clip's meshes (`export_meshes`): frame_0000.ply whole; split: still_0000.ply per window (its
# first exported frame), moving_0000.ply per frame.
WHOLE_FRAME_PREFIX, STILL_PART_PREFIX, MOVING_PART_PREFIX = FRAME_STEM, "still", "moving"
OPEN3D_PIXEL_CENTER_OFFSET = 0.5  # open3d's TSDF kernels centre pixel (0, 0) at (0.5, 0.5)


@dataclass(frozen=True)
class MeshStats:
    """What one mesh export did.

    Attributes:
        path: the written file; in a split export the frame's moving part, None when it has no moving surface.
        frame: the frame whose Gaussians were meshed.
        static_only: whether only still Gaussians were meshed.
        num_gaussians: Gaussians meshed (still and moving).
        num_moving_gaussians: of those, the moving ones at this frame (0 for a static export).
        num_views: RGB-D views planned (each part is fused from those of them it appears in).
        voxel_size: TSDF voxel edge in scene units.
        render_size: (width, height) of the fused views in pixels.
        num_vertices, num_triangles: of the written mesh.
        removed_triangles: triangles in dropped small components.
        seconds: wall time of this mesh's own work (a clip's frames are meshed side by side, so theirs
            overlap).
        shared_seconds: on the first frame of each temporal window of a clip export, the wall time of the
            planning and the still part, which the window's frames share (done before them, one window at
            a time); 0 on its other frames. A single mesh (`export_mesh`) counts all in `seconds`.
        still_path: in a split export, the window's still part this frame shares (None when it has no still
            surface, and in a whole-frame export). The counts above are of both files together.
    """

    path: Path | None
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
    still_path: Path | None = None
    shared_seconds: float = 0.0


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


def still_gaussians(scene: Scene4D, t: int) -> Gaussians:
    """The Gaussians alive at frame t that are not moving things, in their frame-t state. At the last frame
    of a temporal window (`Scene4D.window_at`), the static world that the meshes of the window's frames
    share (background Gaussians with a residual drift, dynamic but not moving, in their state then)."""
    return scene.gaussians_at(t).select(~scene.is_moving[scene.alive_at(t)])


def moving_gaussians(scene: Scene4D, t: int) -> Gaussians:
    """The moving Gaussians alive at frame t, in their frame-t state."""
    return scene.gaussians_at(t).select(scene.is_moving[scene.alive_at(t)])


def concat_gaussians(a: Gaussians, b: Gaussians) -> Gaussians:
    """The Gaussians of a followed by those of b."""
    return Gaussians(*(torch.cat([getattr(a, f.name), getattr(b, f.name)]) for f in fields(Gaussians)))


def fuse_tsdf(views: Iterable[RGBDView], voxel_size: float, depth_max: float, config: MeshConfig):
    """Fuse RGB-D views into an open3d VoxelBlockGrid -> legacy open3d TriangleMesh with vertex colours
    (empty when no view has a depth to fuse)."""
    o3d = import_open3d()
    o3c = o3d.core
    grid = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"),
        attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
        attr_channels=((1), (1), (3)),
        voxel_size=voxel_size,
        block_resolution=config.block_resolution,
        block_count=config.initial_block_count,
        device=o3c.Device("CPU:0"),
    )
    fused = 0
    for view in views:
        if not (view.depth > 0).any():
            continue  # open3d's block hash map refuses an empty set of blocks
        fused += 1
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
    if fused == 0:
        return o3d.geometry.TriangleMesh()
    return grid.extract_triangle_mesh(weight_threshold=config.weight_threshold).to_legacy()


@dataclass(frozen=True)
class SurfacePart:
    """A separately fused part of a mesh. vertices [V, 3] float64; triangles [F, 3] int64; colors [V, 3] in
    [0, 1]; component_size [F]: triangles in each triangle's connected component (for the floater cut,
    which is made on the parts joined); vertex_component_size [V]: the largest component_size among the
    triangles that use each vertex (0 for none), so that a cut keeps exactly the vertices of the triangles
    it keeps."""

    vertices: np.ndarray
    triangles: np.ndarray
    colors: np.ndarray
    component_size: np.ndarray
    vertex_component_size: np.ndarray


def surface_part(mesh) -> SurfacePart:
    """An open3d legacy TriangleMesh -> SurfacePart (grey where it has no vertex colours)."""
    vertices, triangles = np.asarray(mesh.vertices), np.asarray(mesh.triangles).astype(np.int64)
    colors = np.asarray(mesh.vertex_colors) if mesh.has_vertex_colors() else np.full_like(vertices, 0.5)
    vertex_size = np.zeros(len(vertices), dtype=np.int64)
    if len(triangles) == 0:
        return SurfacePart(vertices, triangles.reshape(0, 3), colors, np.zeros(0, dtype=np.int64), vertex_size)
    clusters, counts, _ = mesh.cluster_connected_triangles()
    sizes = np.asarray(counts)[np.asarray(clusters)]
    np.maximum.at(vertex_size, triangles, sizes[:, None])
    return SurfacePart(vertices, triangles, colors, sizes, vertex_size)


def floater_threshold(parts: list[SurfacePart], min_fraction: float) -> float:
    """The fewest triangles a connected component of the joined `parts` must hold to be kept: `min_fraction`
    of all their triangles."""
    return min_fraction * sum(len(part.triangles) for part in parts)


def cut_part(part: SurfacePart, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The triangles [F] bool of `part` in components of at least `threshold` triangles, exactly the vertices
    [V] bool they use, and each vertex's index [V] among the kept ones (valid where kept).

    The cut reads the sizes the part carries (no search over triangles), so a clip export pays for the shared
    still part's copy alone."""
    keep = part.component_size >= threshold
    used = (part.vertex_component_size >= threshold) & (part.vertex_component_size > 0)  # 0: no triangle
    return keep, used, np.cumsum(used) - 1


def join_parts(parts: list[SurfacePart], min_fraction: float,
               threshold: float | None = None) -> tuple[SurfacePart, int]:
    """The union of `parts` without the connected components that hold fewer than min_fraction of all its
    triangles (floaters; or fewer than `threshold` triangles when given), and the number of triangles removed.
    Vertices no triangle uses are dropped."""
    threshold = floater_threshold(parts, min_fraction) if threshold is None else threshold
    triangles, vertices, colors, sizes, vertex_sizes, removed, offset = [], [], [], [], [], 0, 0
    for part in parts:
        keep, used, new_index = cut_part(part, threshold)
        triangles.append(new_index[part.triangles[keep]] + offset)
        vertices.append(part.vertices[used])
        colors.append(part.colors[used])
        sizes.append(part.component_size[keep])
        vertex_sizes.append(part.vertex_component_size[used])
        removed += int((~keep).sum())
        offset += int(used.sum())
    joined = SurfacePart(*(np.concatenate(x) for x in (vertices, triangles, colors, sizes, vertex_sizes)))
    return joined, removed


def mesh_suffix(path: Path) -> str:
    """The mesh format of `path` ('.ply', '.obj' or '.glb'); InputError for anything else."""
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise InputError(
            f"cannot write a mesh as {suffix or 'a file without suffix'}", hint=f"use {', '.join(MESH_SUFFIXES)}"
        )
    return suffix


# Binary PLY records as meshes are written: float32 positions, 8-bit RGBA colours, triangles as int32 lists.
VERTEX_RECORD = np.dtype([("position", "<f4", (3,)), ("rgba", "u1", (4,))])
FACE_RECORD = np.dtype([("count", "u1"), ("index", "<i4", (3,))])
PLY_HEADER = (
    "ply\nformat binary_little_endian 1.0\nelement vertex {vertices}\nproperty float x\nproperty float y\n"
    "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
    "element face {faces}\nproperty list uchar int vertex_indices\nend_header\n"
)


def rgba8(colors: np.ndarray) -> np.ndarray:
    """colors [V, 3] in [0, 1] -> [V, 4] uint8, opaque."""
    rgba = np.full((len(colors), 4), 255, dtype=np.uint8)
    rgba[:, :3] = (np.clip(colors, 0, 1) * 255).round()
    return rgba


def ply_records(vertices: np.ndarray, triangles: np.ndarray, colors: np.ndarray,
                first_vertex: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """vertices [V, 3], triangles [F, 3] (indices into vertices), colors [V, 3] in [0, 1] -> ([V] VERTEX_RECORD,
    [F] FACE_RECORD), the indices counted from `first_vertex` (where the vertices start in the file)."""
    vertex = np.empty(len(vertices), dtype=VERTEX_RECORD)
    vertex["position"] = vertices
    vertex["rgba"] = rgba8(colors)
    face = np.empty(len(triangles), dtype=FACE_RECORD)
    face["count"] = 3
    face["index"] = triangles + first_vertex
    return vertex, face


def write_ply_records(path: Path, records: list[tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write the (vertex, face) records of `ply_records`, one pair per part in file order, as one binary PLY,
    atomically: a clip export writes a window's shared still part from records made once."""
    header = PLY_HEADER.format(vertices=sum(len(v) for v, _ in records), faces=sum(len(f) for _, f in records))
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        file.write(header.encode("ascii"))
        for vertex, _ in records:
            file.write(vertex)
        for _, face in records:
            file.write(face)
    return path


def write_mesh(vertices: np.ndarray, triangles: np.ndarray, colors: np.ndarray, path: str | os.PathLike) -> Path:
    """vertices [V, 3], triangles [F, 3] int, colors [V, 3] in [0, 1] -> a mesh file by suffix, atomically, by
    trimesh (OBJ and GLB; `write_parts` writes PLY from records)."""
    import trimesh

    path = Path(path)
    suffix = mesh_suffix(path)
    mesh = trimesh.Trimesh(vertices=vertices, faces=triangles, vertex_colors=rgba8(colors), process=False)
    data = mesh.export(file_type=suffix[1:])
    write_bytes_atomic(path, data.encode() if isinstance(data, str) else data)
    return path


class CutRecords:
    """The PLY records of one part (first in its files) after each floater cut asked of it, made once per
    distinct set of kept components: a window's still part is cut the same way for most of its frames."""

    def __init__(self, part: SurfacePart):
        self.part = part
        self.sizes = np.unique(part.component_size)
        self.made: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
        self.lock = threading.Lock()

    def at(self, threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
        """(vertex records, face records, triangles removed) of the part cut at `threshold`."""
        kept_from = int(np.searchsorted(self.sizes, threshold))  # the components kept are sizes[kept_from:]
        with self.lock:
            if kept_from not in self.made:
                self.made[kept_from] = part_records(self.part, threshold, 0)
            return self.made[kept_from]


def part_records(part: SurfacePart, threshold: float, first_vertex: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(vertex records, face records, triangles removed) of `part` cut at `threshold` (`cut_part`), its vertices
    starting at `first_vertex` in the file."""
    keep, used, new_index = cut_part(part, threshold)
    vertex, face = ply_records(part.vertices[used], new_index[part.triangles[keep]], part.colors[used], first_vertex)
    return vertex, face, int((~keep).sum())


@dataclass(frozen=True)
class MeshSetup:
    """What every part of an export's meshes shares: the views, the voxel size (scene units), the render
    scale (x the input resolution) and the farthest depth fused (scene units)."""

    plan: ViewPlan
    voxel_size: float
    scale: float
    depth_max: float


def mesh_setup(
    scene: Scene4D, gaussians: Gaussians, what: str, voxel_size: float | None, config: MeshConfig,
    frames: tuple[int, int],
) -> MeshSetup:
    """Plan the views of the frames `frames` (first, last) on `gaussians` and pick the voxel size (given, or
    median depth / voxels_per_median_depth) and render scale; SceneError when no opaque surface is in view.
    `what` names them in that error."""
    plan = plan_views(scene, gaussians, config, frames)
    if plan.median_depth <= 0:
        raise SceneError(f"no opaque surface is visible in {what}", hint=f"lower min_alpha (now {config.min_alpha})")
    voxel_size = voxel_size or plan.median_depth / config.voxels_per_median_depth
    scale = render_scale(scene, plan, voxel_size, config)
    return MeshSetup(plan, float(voxel_size), scale, config.max_depth_factor * plan.median_depth)


def fuse_part(scene: Scene4D, gaussians: Gaussians, setup: MeshSetup, config: MeshConfig, moving: bool) -> SurfacePart:
    """TSDF mesh of `gaussians` from the planned views; for the moving part, from views moving_view_spacing_deg
    apart (`thin_views`) cropped to its footprint, rendered on moving_part_threads torch threads."""
    if not moving:
        views = render_views(scene, gaussians, setup.plan, setup.scale, config)
        return surface_part(fuse_tsdf(views, setup.voxel_size, setup.depth_max, config))
    centroid = gaussians.means.detach().double().mean(0).cpu().numpy()
    plan = thin_views(setup.plan, centroid, config.moving_view_spacing_deg)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.moving_part_threads)
    try:
        views = render_views(scene, gaussians, plan, setup.scale, config, crop=True)
        return surface_part(fuse_tsdf(views, setup.voxel_size, setup.depth_max, config))
    finally:
        torch.set_num_threads(threads)


def write_parts(parts: list[SurfacePart], path: Path, min_fraction: float, what: str,
                first_records: CutRecords | None = None, threshold: float | None = None) -> tuple[int, int, int]:
    """Write the union of `parts` without floaters (as `join_parts` cuts them, at `threshold` triangles when
    given) to `path`; returns its vertices, triangles and the triangles removed. A PLY is written from each
    part's records, the first part's taken from `first_records` when given (a window's still part, cut once for
    all its frames); OBJ and GLB from the joined arrays, by trimesh.

    Raises:
        SceneError when no triangle is left (`what` names the Gaussians meshed).
    """
    if mesh_suffix(path) != ".ply":
        joined, removed = join_parts(parts, min_fraction, threshold)
        _check_not_empty(len(joined.triangles), what)
        write_mesh(joined.vertices, joined.triangles, joined.colors, path)
        return len(joined.vertices), len(joined.triangles), removed
    threshold = floater_threshold(parts, min_fraction) if threshold is None else threshold
    records, first_vertex = [], 0
    for i, part in enumerate(parts):
        shared = i == 0 and first_records is not None
        cut = first_records.at(threshold) if shared else part_records(part, threshold, first_vertex)
        records.append(cut)
        first_vertex += len(cut[0])
    num_triangles = sum(len(face) for _, face, _ in records)
    _check_not_empty(num_triangles, what)
    write_ply_records(path, [(vertex, face) for vertex, face, _ in records])
    return first_vertex, num_triangles, sum(removed for *_, removed in records)


def _check_not_empty(num_triangles: int, what: str) -> None:
    if num_triangles == 0:
        raise SceneError(
            f"TSDF fusion of {what} gave an empty mesh", hint="try a larger voxel size or a lower weight_threshold"
        )


def write_moving_part(still_part: list[SurfacePart], moving_part: list[SurfacePart], path: Path,
                      min_fraction: float, has_still_file: bool, what: str) -> tuple[int, int, int]:
    """A split export's moving part of one frame, cut as in the frame's whole mesh (at `min_fraction` of the
    still and moving triangles together), to `path`; nothing is written when no triangle is left (the counts
    are then 0 and the triangles removed). SceneError when neither this nor the still file (`has_still_file`)
    holds a triangle (`what` names the Gaussians meshed)."""
    threshold = floater_threshold(still_part + moving_part, min_fraction)
    kept = sum(int(cut_part(part, threshold)[0].sum()) for part in moving_part)
    if kept == 0:
        if not has_still_file:
            _check_not_empty(0, what)
        return 0, 0, sum(len(part.triangles) for part in moving_part)
    return write_parts(moving_part, path, min_fraction, what, threshold=threshold)


def _mesh_stats(
    counts: tuple[int, int, int], path: Path | None, frame: int, static_only: bool, num_moving: int,
    setup: MeshSetup, scene: Scene4D, num_gaussians: int, start: float, still_path: Path | None = None,
) -> MeshStats:
    """Describe one written mesh of (vertices, triangles, triangles removed) = `counts`."""
    return MeshStats(
        path=path,
        frame=frame,
        static_only=static_only,
        num_gaussians=num_gaussians,
        num_moving_gaussians=num_moving,
        num_views=len(setup.plan.poses),
        voxel_size=setup.voxel_size,
        render_size=(round(scene.cameras.width * setup.scale), round(scene.cameras.height * setup.scale)),
        num_vertices=counts[0],
        num_triangles=counts[1],
        removed_triangles=counts[2],
        seconds=time.perf_counter() - start,
        still_path=still_path,
    )


def _check_request(paths: Iterable[Path], voxel_size: float | None) -> None:
    for path in paths:
        mesh_suffix(path)
    if voxel_size is not None and not voxel_size > 0:
        raise InputError(f"voxel size must be positive, got {voxel_size}")


def export_frame_meshes(
    scene: Scene4D, paths: dict[int, Path], voxel_size: float | None = None, config: MeshConfig | None = None,
    still_paths: Callable[[int], Path] | None = None,
) -> list[MeshStats]:
    """Mesh the Gaussians of each frame in `paths` (frame index -> output file): the still part of a temporal
    window (`Scene4D.window_at`; the whole clip when it was fitted in one) is fused once and joined to each of
    its frames' moving part. A window's views are its own frames' cameras, planned on the Gaussians of its
    first frame in `paths`; the voxel size is planned on the first frame and kept for all.

    Split (`still_paths` given: the window's first frame in `paths` -> its still file): the still part is
    written once per window, to its own file, cut at `min_component_fraction` of its own triangles; `paths`
    receive the moving parts alone, cut as in the whole frame (at the fraction of both parts' triangles), and
    a frame without moving surface gets no file.

    A window's frames are meshed side by side, one per torch thread (`recon4d.device.side_by_side`): each
    renders a small moving part in a chain of small steps, and the rasterizer and NumPy's large operations
    release the GIL (open3d's fusion does not: one frame fuses while another renders). Every frame's mesh is
    the same as when they are meshed one at a time.

    Raises:
        InputError for a bad voxel size or suffix; SceneError when a frame has no surface to mesh.
    """
    config = config or MeshConfig()
    _check_request(paths.values(), voxel_size)
    runs: list[tuple[tuple[int, int], list[int]]] = []  # consecutive requested frames of one window
    for t in paths:
        window = scene.window_at(t)
        if runs and runs[-1][0] == window:
            runs[-1][1].append(t)
        else:
            runs.append((window, [t]))
    stats = []
    with progress_bar("meshing frames") as progress:
        task = progress.add_task("mesh", total=len(paths))
        for window, frames in runs:
            start = time.perf_counter()
            still = still_gaussians(scene, window[1])
            first = concat_gaussians(still, moving_gaussians(scene, frames[0]))
            if len(first) == 0:
                raise SceneError(f"frame {frames[0]} has no Gaussians to mesh")
            setup = mesh_setup(scene, first, f"frame {frames[0]}'s Gaussians", voxel_size, config, window)
            voxel_size = setup.voxel_size
            still_part = [fuse_part(scene, still, setup, config, moving=False)] if len(still) else []
            still_records = CutRecords(still_part[0]) if still_part else None
            still_file, still_counts = None, (0, 0, 0)
            if still_paths is not None and still_part and len(still_part[0].triangles):
                still_file = still_paths(frames[0])
                still_counts = write_parts(still_part, still_file, config.min_component_fraction,
                                           f"frame {frames[0]}'s still Gaussians", still_records)
            shared_seconds = time.perf_counter() - start

            def mesh_frame(t: int) -> MeshStats:
                frame_start = time.perf_counter()
                moving = moving_gaussians(scene, t)
                moving_part = [fuse_part(scene, moving, setup, config, moving=True)] if len(moving) else []
                if not still_part + moving_part:
                    raise SceneError(f"frame {t} has no Gaussians to mesh")
                path = paths[t]
                if still_paths is None:
                    counts = write_parts(still_part + moving_part, path, config.min_component_fraction,
                                         f"frame {t}'s Gaussians", still_records)
                else:
                    counts = write_moving_part(still_part, moving_part, path, config.min_component_fraction,
                                               still_file is not None, f"frame {t}'s Gaussians")
                    path = path if counts[1] else None
                    counts = tuple(a + b for a, b in zip(counts, still_counts))
                done = _mesh_stats(counts, path, t, False, len(moving), setup, scene, len(still) + len(moving),
                                   frame_start, still_file)
                progress.advance(task)
                # Each worker thread allocates its meshes in its own glibc arena, which keeps the freed blocks:
                # over 140 frames of a 900-frame fit, resident memory (sampled every 0.5 s) peaked at 1772 MB
                # without this and 1603 MB with it (one frame at a time: 1550 MB), for 3.6 % more time.
                release_freed_memory()
                return done

            window_stats = side_by_side(mesh_frame, frames, torch.device("cpu"), config.max_frames_side_by_side)
            window_stats[0] = replace(window_stats[0], shared_seconds=shared_seconds)
            stats += window_stats
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
        stats = export_frame_meshes(scene, {t: path}, voxel_size, config)[0]
        return replace(stats, seconds=stats.seconds + stats.shared_seconds, shared_seconds=0.0)
    gaussians = still_gaussians(scene, t)
    if len(gaussians) == 0:
        raise SceneError(f"frame {t} has no still Gaussians to mesh")
    what = f"frame {t}'s still Gaussians"
    setup = mesh_setup(scene, gaussians, what, voxel_size, config, scene.window_at(t))
    counts = write_parts([fuse_part(scene, gaussians, setup, config, moving=False)], path,
                         config.min_component_fraction, what)
    return _mesh_stats(counts, path, t, True, 0, setup, scene, len(gaussians), start)


def export_meshes(
    scene: Scene4D,
    out_dir: str | os.PathLike,
    frames: FrameSelection = "all",
    suffix: str = ".ply",
    voxel_size: float | None = None,
    config: MeshConfig | None = None,
    split: bool = False,
) -> list[MeshStats]:
    """One mesh per selected frame, ``out_dir/frame_0000.ply`` ..., or with `split` each window's still part
    once (``still_0000.ply``) and each frame's moving part (``moving_0000.ply``); see `export_frame_meshes`
    (one still part per window, one voxel size fixed by the first frame unless given).

    A still scene (`Scene4D.is_still`, e.g. a walk-around) shows one surface at every time: all its frames are
    one mesh, ``static.ply`` (as `recon4d export --static` names it), which replaces the folder's per-frame files.

    A frame's file of the other layout in `out_dir` (whole, or moving part) is removed once the new ones are
    written, so that a folder describes each frame one way (`recon4d view` reads either; a whole frame wins
    over a split one). A still file stays while a frame of its window has no whole mesh (that frame may use
    it), and is removed once every frame of its window has one."""
    out_dir = Path(out_dir)
    if not split and one_file_for_all(scene, frames):
        stats = export_mesh(scene, out_dir / f"{STILL_SCENE_STEM}{suffix}", voxel_size=voxel_size, config=config)
        for by_frame in exported_meshes(out_dir)[0].values():
            for paths in by_frame.values():
                for path in paths:
                    path.unlink(missing_ok=True)
        return [stats]
    name = MOVING_PART_PREFIX if split else WHOLE_FRAME_PREFIX
    paths = {t: out_dir / frame_file_name(name, t, suffix) for t in frame_indices(frames, scene.num_frames)}
    still_paths = (lambda t: out_dir / frame_file_name(STILL_PART_PREFIX, t, suffix)) if split else None
    stats = export_frame_meshes(scene, paths, voxel_size, config, still_paths)
    stale = WHOLE_FRAME_PREFIX if split else MOVING_PART_PREFIX
    for t in paths:
        for other in MESH_SUFFIXES:
            (out_dir / frame_file_name(stale, t, other)).unlink(missing_ok=True)
    if not split:
        remove_unused_still_files(scene, out_dir)
    return stats


def exported_meshes(out_dir: Path) -> tuple[dict[str, dict[int, list[Path]]], list[Path]]:
    """The mesh files in `out_dir`, in name order: {prefix: {frame: its files (any mesh suffix)}} for the
    clip layouts' names (`frame_NNNN`, `still_NNNN`, `moving_NNNN`), and the other mesh files (a static mesh).
    Hidden files are left out; a missing folder has none."""
    by_prefix: dict[str, dict[int, list[Path]]] = {p: {} for p in (WHOLE_FRAME_PREFIX, STILL_PART_PREFIX,
                                                                     MOVING_PART_PREFIX)}
    others = []
    for path in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        if path.suffix.lower() not in MESH_SUFFIXES or path.name.startswith("."):
            continue
        prefix, _, index = path.stem.partition("_")
        if prefix in by_prefix and index.isdigit():
            by_prefix[prefix].setdefault(int(index), []).append(path)
        else:
            others.append(path)
    return by_prefix, others


def remove_unused_still_files(scene: Scene4D, out_dir: Path) -> None:
    """Remove the still files (`still_NNNN`) in `out_dir` that no frame can use: every frame of the file's temporal
    window has its whole mesh (`frame_NNNN`), which the viewer shows instead."""
    by_prefix, _ = exported_meshes(out_dir)
    whole = by_prefix[WHOLE_FRAME_PREFIX]
    for start, files in by_prefix[STILL_PART_PREFIX].items():
        first, last = scene.window_at(min(start, scene.num_frames - 1))
        if all(t in whole for t in range(first, last + 1)):
            for path in files:
                path.unlink(missing_ok=True)
