"""The 4D scene browser: a viser server showing a fitted `Scene4D` at a time chosen with a slider.

What it shows
  * the Gaussians at the current time as viser Gaussian splats (centres, covariances R diag(s^2) R^T,
    colours and opacities from the scene). Still Gaussians live in nodes that are sent once and never
    change (one node per range of birth frames, shown once the time reaches it); the moving Gaussians live
    in one node whose buffer is the only thing re-sent per time step;
  * the recovered camera path, camera frustums with the input frame as their image, and the camera of the
    current time;
  * optional layers: motion-highlight colouring, point tracks (`recon4d.track.track_points` on a grid of
    query pixels of the current frame) as polylines with their current positions, and meshes exported to
    OUT/export/mesh.

Actions: play/pause with speed and loop, "look through input camera", a full-quality render of the current
view through `recon4d.render.rasterize` saved as PNG under OUT/views/, and a PLY export of the current time.

Large scenes stay interactive: the displayed splats are decimated to a budget (the most opaque and largest
ones are kept); renders and exports always use every Gaussian.

Units: world units of the scene (OpenCV axes, y down). Splat buffers store covariances as float16, so
splats are sent in "display units" (world x `display_unit_scale`) and the node scales them back.
"""
from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recon4d.errors import InputError, Recon4DError, SceneError
from recon4d.geometry.camera import invert_pose
from recon4d.io.frames import scene_fps
from recon4d.io.scene import Scene4D
from recon4d.progress import track
from recon4d.render.highlight import MotionHighlight, motion_highlight

MESH_SUFFIXES = (".ply", ".obj", ".glb")
VIEWS_DIR = "views"
PLY_EXPORT_DIR = Path("export") / "ply"
MESH_EXPORT_DIR = Path("export") / "mesh"


@dataclass(frozen=True)
class ViewerConfig:
    """Settings of the viewer.

    Attributes:
        max_still_gaussians: display budget of still Gaussians (decimated above it; renders use all).
        max_moving_gaussians: display budget of moving Gaussians.
        max_still_nodes: still Gaussians are grouped by birth frame into at most this many nodes; a node
            appears once the time reaches the earliest birth frame in it.
        display_splat_std: median splat standard deviation in display units (keeps float16 covariances in
            their precise range).
        max_frustums: camera frustums drawn along the path (evenly spaced frames).
        frustum_image_long_side: long side in pixels of the frame image shown in a frustum.
        frustum_size_fraction: frustum depth as a fraction of the median scene depth seen from frame 0.
        line_thickness_px: screen thickness of the camera path, frustum and track lines (CSS pixels).
        playback_updates_per_second: how often playback advances the time.
        default_fps: frames per second of playback at speed 1 when the scene has no timestamps.
        time_step: slider resolution in frames (fractional times interpolate the scene).
        max_speed: fastest playback speed (x real time).
        highlight: colours of the motion-highlight mode (`recon4d.render.highlight`, as path videos have it).
        track_grid_columns: columns of the query grid of point tracks (rows follow the aspect ratio).
        track_point_size_fraction: size of track heads as a fraction of the median scene depth.
        render_height: height in pixels of "render view" images; None uses the scene's image height.
        render_background: RGB in [0, 1] behind the Gaussians in rendered views (viser's page is white).
        near_fraction, far_multiple: client camera clipping planes relative to the median scene depth.
        initial_back_fraction, initial_rise_fraction: where a new browser tab's camera starts: behind and above
            input camera 0 by these fractions of the median scene depth, looking where camera 0 looks.
    """

    max_still_gaussians: int = 400_000
    max_moving_gaussians: int = 150_000
    max_still_nodes: int = 32
    display_splat_std: float = 0.05
    max_frustums: int = 40
    frustum_image_long_side: int = 160
    frustum_size_fraction: float = 0.03
    line_thickness_px: float = 2.0
    playback_updates_per_second: float = 20.0
    default_fps: float = 30.0
    time_step: float = 0.05
    max_speed: float = 4.0
    highlight: MotionHighlight = MotionHighlight()
    track_grid_columns: int = 16
    track_point_size_fraction: float = 0.01
    render_height: int | None = None
    render_background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    near_fraction: float = 1e-3
    far_multiple: float = 1e3
    initial_back_fraction: float = 0.3
    initial_rise_fraction: float = 0.08

    def validate(self) -> None:
        """Raise InputError for settings the viewer cannot work with."""
        positive = {"max_still_gaussians": self.max_still_gaussians, "max_moving_gaussians": self.max_moving_gaussians,
                    "max_still_nodes": self.max_still_nodes, "max_frustums": self.max_frustums,
                    "track_grid_columns": self.track_grid_columns}
        for name, value in positive.items():
            if value < 1:
                raise InputError(f"viewer setting {name} must be >= 1, got {value}")
        if self.render_height is not None and self.render_height < 8:
            raise InputError(f"viewer render height must be >= 8 pixels, got {self.render_height}")


# ----------------------------------------------------------------------------------------------------------
# Pure helpers (NumPy in, NumPy out; no viser).


def quaternion_rotations(quats: np.ndarray) -> np.ndarray:
    """quats [N, 4] (w, x, y, z, any norm) -> rotation matrices [N, 3, 3] float32.

    The same matrices as `recon4d.geometry.quaternion.rotation_from_quaternion`, in NumPy float32 because
    this runs per time step on every displayed moving Gaussian (about 10x faster here than the torch version).
    """
    q = np.asarray(quats, dtype=np.float32)
    q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
    w, x, y, z = q.T
    rotation = np.empty((q.shape[0], 3, 3), dtype=np.float32)
    rotation[:, 0, 0], rotation[:, 0, 1], rotation[:, 0, 2] = 1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)
    rotation[:, 1, 0], rotation[:, 1, 1], rotation[:, 1, 2] = 2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)
    rotation[:, 2, 0], rotation[:, 2, 1], rotation[:, 2, 2] = 2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)
    return rotation


def splat_covariances(quats: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """quats [N, 4] (w, x, y, z, any norm), scales [N, 3] standard deviations -> covariances [N, 3, 3] float32.

    Sigma = R diag(s^2) R^T = (R S)(R S)^T, the covariance `recon4d.render.rasterize` uses for the same parameters.
    """
    scaled = quaternion_rotations(quats) * np.asarray(scales, dtype=np.float32)[:, None, :]
    return scaled @ scaled.transpose(0, 2, 1)


def splat_importance(opacities: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """How much a splat shows: opacity [N] x area of its two largest axes (scales [N, 3]) -> [N]."""
    largest_two = np.sort(np.asarray(scales, dtype=np.float64), axis=1)[:, 1:]
    return np.asarray(opacities, dtype=np.float64) * largest_two[:, 0] * largest_two[:, 1]


def decimate(importance: np.ndarray, budget: int) -> np.ndarray:
    """Indices (sorted, int64) of the `budget` most important entries of importance [N]; all when N <= budget."""
    count = importance.shape[0]
    if count <= budget:
        return np.arange(count)
    keep = np.argpartition(-importance, budget - 1)[:budget]
    return np.sort(keep)


def display_unit_scale(scales: np.ndarray, target_std: float) -> float:
    """Factor from world to display units so the median splat std (geometric mean of scales [N, 3]) becomes
    `target_std`; 1 when there are no splats or they are degenerate."""
    if scales.shape[0] == 0:
        return 1.0
    typical = float(np.median(np.exp(np.log(np.clip(scales, 1e-30, None)).mean(1))))
    return target_std / typical if typical > 0 and math.isfinite(typical) else 1.0


def birth_groups(birth_frames: np.ndarray, max_groups: int) -> list[tuple[int, np.ndarray]]:
    """Split entries by birth frame [N] into at most `max_groups` groups of consecutive birth frames.

    Returns [(first birth frame of the group, indices into birth_frames)], ordered by birth.
    """
    if birth_frames.shape[0] == 0:
        return []
    frames = np.unique(birth_frames)
    if frames.shape[0] > max_groups:  # merge neighbouring birth frames into max_groups ranges of equal count
        edges = np.quantile(birth_frames, np.linspace(0, 1, max_groups + 1)[1:-1], method="lower")
        frames = np.unique(np.concatenate([frames[:1], edges]))
    group = np.searchsorted(frames, birth_frames, side="right") - 1
    return [(int(frames[g]), np.nonzero(group == g)[0]) for g in range(frames.shape[0]) if (group == g).any()]


def highlight_colors(colors: np.ndarray, is_moving: np.ndarray | bool, config: ViewerConfig) -> np.ndarray:
    """`recon4d.render.highlight.motion_highlight` of colors [N, 3] in [0, 1] as float32 numpy; is_moving [N]
    bool, or one bool for all."""
    colors = torch.from_numpy(np.asarray(colors, dtype=np.float32))
    moving = torch.as_tensor(np.broadcast_to(np.asarray(is_moving, dtype=bool), colors.shape[:1]).copy())
    return motion_highlight(colors, moving, config.highlight).numpy()


def rotation_to_wxyz(rotation: np.ndarray) -> np.ndarray:
    """Rotation matrix [3, 3] -> unit quaternion [4] (w, x, y, z), w >= 0."""
    from recon4d.geometry.quaternion import quaternion_from_rotation

    return quaternion_from_rotation(torch.as_tensor(rotation, dtype=torch.float64)).numpy()


def vertical_fov(fy: float, height: int) -> float:
    """Vertical field of view in radians of a pinhole camera with focal fy and `height` pixel rows."""
    return 2.0 * math.atan(0.5 * height / fy)


def view_camera(wxyz: np.ndarray, position: np.ndarray, fov_y: float, aspect: float, height: int
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A viser camera (OpenCV axes: wxyz, position of world_from_camera; vertical fov in radians; width/height
    aspect) as a pinhole camera of `height` rows -> (world_from_camera [4, 4], K [3, 3], width)."""
    from viser import transforms

    width = max(1, round(height * aspect))
    pose = torch.eye(4, dtype=torch.float32)
    pose[:3, :3] = torch.as_tensor(transforms.SO3(np.asarray(wxyz, np.float64)).as_matrix(), dtype=torch.float32)
    pose[:3, 3] = torch.as_tensor(np.asarray(position), dtype=torch.float32)
    focal = 0.5 * height / math.tan(0.5 * fov_y)
    K = torch.tensor([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])
    return pose, K, width


def track_query_grid(width: int, height: int, columns: int, frame: int) -> torch.Tensor:
    """A grid of query pixels (rows t0=frame, u, v), columns wide, rows by aspect, inset half a cell -> [P, 3]."""
    rows = max(1, round(columns * height / width))
    u = (np.arange(columns) + 0.5) * width / columns - 0.5
    v = (np.arange(rows) + 0.5) * height / rows - 0.5
    uu, vv = np.meshgrid(u, v)
    return torch.tensor(np.stack([np.full(uu.size, frame), uu.ravel(), vv.ravel()], 1), dtype=torch.float32)


def track_segments(tracks_3d: np.ndarray) -> np.ndarray:
    """tracks_3d [T, P, 3] -> polyline segments [(T-1) * P, 2, 3] (frame t to t+1 of each track)."""
    starts, ends = tracks_3d[:-1], tracks_3d[1:]
    return np.stack([starts, ends], axis=2).reshape(-1, 2, 3).astype(np.float32)


def track_colors(count: int) -> np.ndarray:
    """Distinct colours for `count` tracks (hues around the wheel), uint8 [count, 3]."""
    import colorsys

    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(i / max(count, 1), 0.85, 0.95)]
                     for i in range(count)], dtype=np.uint8)


def find_meshes(out_dir: Path) -> dict[int | None, Path]:
    """Meshes exported to OUT/export/mesh: {frame index: path} for frame_NNNN.*, {None: path} for the others
    (static / whole-scene meshes; the first in name order)."""
    folder = out_dir / MESH_EXPORT_DIR
    found: dict[int | None, Path] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in MESH_SUFFIXES or path.name.startswith("."):
            continue
        stem = path.stem
        if stem.startswith("frame_") and stem[len("frame_"):].isdigit():
            found.setdefault(int(stem[len("frame_"):]), path)
        else:
            found.setdefault(None, path)
    return found


def nearest_key(keys: list[int], t: float) -> int | None:
    """The key closest to t (ties: the earlier), or None for no keys."""
    return min(keys, key=lambda k: (abs(k - t), k)) if keys else None


def free_path(folder: Path, stem: str, suffix: str) -> Path:
    """folder/stem_NNN.suffix with the first NNN not taken."""
    index = 0
    while (path := folder / f"{stem}_{index:03d}{suffix}").exists():
        index += 1
    return path


def input_frames(scene: Scene4D) -> np.ndarray | None:
    """The scene's input frames [T, H, W, 3] uint8 read again from its source, or None when the source is
    gone or does not match the scene (frame count or size)."""
    from recon4d.io.video import read_clip

    source = scene.config.get("source")
    if not source:
        return None
    try:
        clip = read_clip(source, stride=int(scene.config.get("stride") or 1), max_frames=scene.num_frames,
                         short_side=min(scene.cameras.width, scene.cameras.height))
    except Recon4DError:
        return None
    frames = np.asarray(clip.frames)
    if frames.shape[:3] != (scene.num_frames, scene.cameras.height, scene.cameras.width):
        return None
    return frames


def resize_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """image [H, W, 3] uint8 -> resized so max(H, W) == long_side (area interpolation when shrinking)."""
    import cv2

    height, width = image.shape[:2]
    factor = long_side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


# ----------------------------------------------------------------------------------------------------------
# The viewer.


@dataclass
class _SplatSet:
    """Display arrays of a decimated set of Gaussians (world units, NumPy)."""

    index: np.ndarray  # [M] indices into the scene's Gaussians
    means: np.ndarray  # [M, 3]
    quats: np.ndarray  # [M, 4]
    scales: np.ndarray  # [M, 3]
    opacities: np.ndarray  # [M]
    colors: np.ndarray  # [M, 3]
    birth: np.ndarray  # [M]


@dataclass
class _Tracks:
    query_frame: int
    tracks_3d: np.ndarray  # [T, P, 3]
    colors: np.ndarray  # [P, 3] uint8


@dataclass
class _Layers:
    still: bool = True
    moving: bool = True
    highlight: bool = False
    tracks: bool = False
    camera_path: bool = True
    frustums: bool = True
    mesh: bool = False


class SceneViewer:
    """Serves one scene on a viser server; holds the display state and the GUI.

    Args:
        scene: the fitted scene.
        out_dir: the scene's output folder (views/ and export/ are written here; meshes read from it).
        server: a running `viser.ViserServer` (the viewer adds its scene nodes and GUI to it).
        config: display budgets and styles.
        frames: input frames [T, H, W, 3] uint8 for the frustum images; None draws frustums without images.
    """

    def __init__(self, scene: Scene4D, out_dir: Path, server, config: ViewerConfig | None = None,
                 frames: np.ndarray | None = None) -> None:
        self.config = config or ViewerConfig()
        self.config.validate()
        if scene.gaussians.colors.dim() != 2 or scene.gaussians.colors.shape[1] != 3:
            raise SceneError(f"the viewer needs RGB colours [N, 3], the scene has {tuple(scene.gaussians.colors.shape)}")
        self.scene = scene
        self.out_dir = Path(out_dir)
        self.server = server
        self.num_frames = scene.num_frames
        self.time = 0.0
        self.layers = _Layers()
        self.playing = False
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._tracks: _Tracks | None = None
        self._mesh_handles: dict[int | None, object] = {}
        self._meshes = find_meshes(self.out_dir)
        self._moving_count = 0

        self._prepare_splats()
        self._prepare_cameras()
        self._frames = frames
        with server.atomic():
            self._add_splat_nodes()
            self._add_camera_nodes()
            self._add_gui()
            self._set_initial_camera()
        self.set_time(0.0)
        self._player = threading.Thread(target=self._play_loop, name="recon4d-view-playback", daemon=True)
        self._player.start()

    # -- setup ----------------------------------------------------------------------------------------------

    def _prepare_splats(self) -> None:
        g = self.scene.gaussians
        dynamic = self.scene.is_dynamic.numpy().astype(bool)
        opacities = g.opacities.detach().float().numpy().reshape(-1)
        scales = g.scales.detach().float().numpy()
        importance = splat_importance(opacities, scales)

        def subset(index: np.ndarray) -> _SplatSet:
            return _SplatSet(index=index, means=g.means[index].detach().float().numpy(),
                             quats=g.quats[index].detach().float().numpy(), scales=scales[index],
                             opacities=opacities[index], colors=g.colors[index].detach().float().clamp(0, 1).numpy(),
                             birth=self.scene.birth_frame[index].numpy())

        still_index = np.nonzero(~dynamic)[0]
        moving_index = np.nonzero(dynamic)[0]
        self.still = subset(still_index[decimate(importance[still_index], self.config.max_still_gaussians)])
        moving_keep = decimate(importance[moving_index], self.config.max_moving_gaussians)
        self.moving = subset(moving_index[moving_keep])
        # Dynamic Gaussians that are not moving things (background with a residual drift) follow their
        # trajectory in the moving node but belong to the still layer and are never highlighted.
        self._moving_is_moving = self.scene.is_moving.numpy().astype(bool)[self.moving.index]
        # The kept dynamic Gaussians' positions in is_dynamic index order (that of Scene4D.dynamic_state_at).
        self._moving_keep = moving_keep
        self.unit = display_unit_scale(np.concatenate([self.still.scales, self.moving.scales]), self.config.display_splat_std)
        self.still_covariances = splat_covariances(self.still.quats, self.still.scales) * self.unit**2

    def _prepare_cameras(self) -> None:
        cams = self.scene.cameras
        self.poses = cams.world_from_camera.detach().double().numpy()  # [T, 4, 4]
        self.intrinsics = cams.intrinsics.detach().double().numpy()  # [T, 4]
        self.fps = scene_fps(self.scene, self.config.default_fps)
        # Median depth of the scene from camera 0: sets the size of frustums, lines and clipping planes.
        means = self.scene.gaussians.means.detach().double().numpy()
        camera0 = invert_pose(torch.as_tensor(self.poses[0])).numpy()
        depth = means @ camera0[:3, :3].T + camera0[:3, 3]
        in_front = depth[:, 2][depth[:, 2] > 0]
        self.depth_scale = float(np.median(in_front)) if in_front.size else 1.0

    def _still_rgbs(self, colors: np.ndarray) -> np.ndarray:
        return highlight_colors(colors, False, self.config) if self.layers.highlight else colors

    def _add_splat_nodes(self) -> None:
        scene_api = self.server.scene
        self.still_nodes: list[tuple[int, object]] = []
        for first_birth, members in birth_groups(self.still.birth, self.config.max_still_nodes):
            handle = scene_api.add_gaussian_splats(
                f"/gaussians/still/{first_birth:05d}",
                centers=self.still.means[members] * self.unit,
                covariances=self.still_covariances[members],
                rgbs=self._still_rgbs(self.still.colors[members]),
                opacities=self.still.opacities[members, None],
                scale=1.0 / self.unit,
                visible=first_birth <= self.time,
            )
            self.still_nodes.append((first_birth, handle))
        self._still_members = [m for _, m in birth_groups(self.still.birth, self.config.max_still_nodes)]
        self.moving_node = None
        if self.moving.index.shape[0]:
            means, quats, _ = self._moving_state(0.0)
            self.moving_node = scene_api.add_gaussian_splats(
                "/gaussians/moving", centers=means * self.unit,
                covariances=splat_covariances(quats, self.moving.scales) * self.unit**2,
                rgbs=self.moving.colors, opacities=self.moving.opacities[:, None], scale=1.0 / self.unit)

    def _frustum_image(self, t: int) -> np.ndarray | None:
        """The input frame t, shrunk for a frustum; None when the source video is gone (plain wireframe)."""
        if self._frames is None:
            return None
        return resize_long_side(self._frames[t], self.config.frustum_image_long_side)

    def _add_camera_nodes(self) -> None:
        scene_api = self.server.scene
        cams = self.scene.cameras
        aspect = cams.width / cams.height
        centres = self.poses[:, :3, 3].astype(np.float32)
        thickness = self.config.line_thickness_px
        self.path_node = None
        if self.num_frames >= 2:
            segments = np.stack([centres[:-1], centres[1:]], axis=1)
            self.path_node = scene_api.add_line_segments("/cameras/path", segments, colors=(40, 110, 230),
                                                         thickness=thickness, thickness_units="screen")
        size = self.config.frustum_size_fraction * self.depth_scale
        self.frustum_nodes = []
        shown = np.unique(np.linspace(0, self.num_frames - 1, min(self.config.max_frustums, self.num_frames)).round().astype(int))
        for t in track(shown.tolist(), "camera frustums"):
            fov = vertical_fov(self.intrinsics[t, 1], cams.height)
            self.frustum_nodes.append(scene_api.add_camera_frustum(
                f"/cameras/frame_{t:05d}", fov=fov, aspect=aspect, scale=size, thickness=thickness, thickness_units="screen",
                color=(90, 90, 90), image=self._frustum_image(int(t)), format="jpeg",
                wxyz=rotation_to_wxyz(self.poses[t, :3, :3]), position=self.poses[t, :3, 3]))
        self.current_frustum = scene_api.add_camera_frustum(
            "/cameras/current", fov=vertical_fov(self.intrinsics[0, 1], cams.height), aspect=aspect,
            scale=size * 1.2, thickness=thickness * 1.5, thickness_units="screen", color=(230, 60, 30),
            wxyz=rotation_to_wxyz(self.poses[0, :3, :3]), position=self.poses[0, :3, 3])
        self.server.scene.set_up_direction(-self.poses[0, :3, 1])

    def _set_initial_camera(self) -> None:
        """New browser tabs open behind and above input camera 0, looking where it looks (so the camera path
        and frustums are in view, not around the eye)."""
        pose = self.poses[0]
        forward, up = pose[:3, 2], -pose[:3, 1]
        initial = self.server.initial_camera
        initial.up = up
        initial.position = pose[:3, 3] + self.depth_scale * (up * self.config.initial_rise_fraction
                                                             - forward * self.config.initial_back_fraction)
        initial.look_at = pose[:3, 3] + forward * self.depth_scale
        initial.fov = vertical_fov(self.intrinsics[0, 1], self.scene.cameras.height)
        initial.near = self.config.near_fraction * self.depth_scale
        initial.far = self.config.far_multiple * self.depth_scale

    def _add_gui(self) -> None:
        gui = self.server.gui
        g = self.scene.gaussians
        gui.add_markdown(
            f"**{self.num_frames} frames**, {self.scene.cameras.width}x{self.scene.cameras.height} px, "
            f"{len(g)} Gaussians ({int(self.scene.is_moving.sum())} moving); showing "
            f"{self.still.index.shape[0]} fixed + {self.moving.index.shape[0]} with a trajectory.")
        with gui.add_folder("Time"):
            last = max(self.num_frames - 1, 1)
            self.time_slider = gui.add_slider("Time (frame)", min=0.0, max=float(last), step=self.config.time_step,
                                              initial_value=0.0, disabled=self.num_frames < 2)
            self.play_button = gui.add_button("Play", disabled=self.num_frames < 2)
            self.speed_slider = gui.add_slider("Speed (x)", min=0.1, max=self.config.max_speed, step=0.1,
                                               initial_value=1.0)
            self.loop_checkbox = gui.add_checkbox("Loop", initial_value=True)
            self.look_button = gui.add_button("Look through input camera")
        with gui.add_folder("Layers"):
            self.still_checkbox = gui.add_checkbox("Still Gaussians", initial_value=True)
            self.moving_checkbox = gui.add_checkbox("Moving Gaussians", initial_value=True,
                                                    disabled=self.moving_node is None)
            self.highlight_checkbox = gui.add_checkbox("Highlight motion", initial_value=False)
            self.tracks_checkbox = gui.add_checkbox("Point tracks", initial_value=False,
                                                    hint="tracks of a grid of pixels of the current frame")
            self.path_checkbox = gui.add_checkbox("Camera path", initial_value=True)
            self.frustum_checkbox = gui.add_checkbox("Camera frustums", initial_value=True)
            self.mesh_checkbox = gui.add_checkbox("Mesh", initial_value=False, disabled=not self._meshes,
                                                  hint="meshes in OUT/export/mesh" if self._meshes else
                                                  "none found: run `recon4d export OUT --format mesh`")
        with gui.add_folder("Save"):
            self.render_button = gui.add_button("Render view (full quality)")
            self.export_button = gui.add_button("Export frame as PLY")
            self.status = gui.add_markdown("")

        self.time_slider.on_update(lambda _: self.set_time(float(self.time_slider.value)))
        self.play_button.on_click(lambda _: self.set_playing(not self.playing))
        self.look_button.on_click(lambda event: self.look_through(self.time, event.client))
        self._layer_checkboxes = {
            "still": self.still_checkbox, "moving": self.moving_checkbox, "highlight": self.highlight_checkbox,
            "tracks": self.tracks_checkbox, "camera_path": self.path_checkbox, "frustums": self.frustum_checkbox,
            "mesh": self.mesh_checkbox,
        }
        for name, checkbox in self._layer_checkboxes.items():
            checkbox.on_update(lambda _, name=name, checkbox=checkbox: self._apply_layer(name, checkbox.value))
        self.render_button.on_click(lambda event: self._report(lambda: self.save_view(event.client)))
        self.export_button.on_click(lambda _: self._report(self.export_frame))

    def _report(self, action) -> None:
        """Run a save action and show its result (or its one-line error) in the GUI."""
        try:
            paths = action()
        except Recon4DError as exc:
            self.status.content = f"**failed:** {exc.one_line()}"
            return
        paths = paths if isinstance(paths, list) else [paths]
        self.status.content = "saved " + ", ".join(f"`{p}`" for p in paths)

    # -- state changes --------------------------------------------------------------------------------------

    def set_time(self, t: float) -> None:
        """Show the scene at time t (frame units, clamped to the clip); only the moving node is re-sent."""
        t = min(max(float(t), 0.0), float(self.num_frames - 1))
        if self.num_frames >= 2 and not math.isclose(self.time_slider.value, t, abs_tol=1e-9):
            self.time_slider.value = t  # the slider shows the time; its callback comes back here
            return
        with self._lock:
            self.time = t
            with self.server.atomic():
                for first_birth, handle in self.still_nodes:
                    handle.visible = self.layers.still and first_birth <= t
                self._update_moving()
                self._update_current_camera()
                self._update_tracks()
                self._update_mesh()

    def _update_moving(self) -> None:
        if self.moving_node is None:
            return
        is_moving = self._moving_is_moving
        alive = (self.moving.birth <= self.time) & np.where(is_moving, self.layers.moving, self.layers.still)
        self._moving_count = int(alive.sum())
        if self._moving_count == 0:
            self.moving_node.visible = False
            return
        means, quats, colors = self._moving_state(self.time)
        colors = colors[alive]
        if self.layers.highlight:
            colors = highlight_colors(colors, is_moving[alive], self.config)
        self.moving_node.set_gaussians(
            centers=means[alive] * self.unit,
            covariances=splat_covariances(quats[alive], self.moving.scales[alive]) * self.unit**2,
            rgbs=colors, opacities=self.moving.opacities[alive, None])
        self.moving_node.visible = True

    def _moving_state(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Means [M, 3], unit quats [M, 4] and colours [M, 3] of the displayed moving Gaussians at time t.

        The scene's own `dynamic_state_at` (interpolated per-frame states, or the continuous motion model
        with its colour offsets), restricted to the displayed subset.
        """
        with torch.no_grad():
            means, quats, offsets = self.scene.dynamic_state_at(float(t))
        keep = self._moving_keep
        means, quats = means[keep].float().numpy(), quats[keep].float().numpy()
        if offsets is None:
            return means, quats, self.moving.colors
        return means, quats, np.clip(self.moving.colors + offsets[keep].float().numpy(), 0.0, 1.0)

    def camera_pose_at(self, t: float) -> np.ndarray:
        """world_from_camera [4, 4] of the input camera at time t (fractional t interpolates)."""
        return self.scene.cameras.world_from_camera_at(t).detach().double().numpy()

    def _update_current_camera(self) -> None:
        pose = self.camera_pose_at(self.time)
        self.current_frustum.wxyz = rotation_to_wxyz(pose[:3, :3])
        self.current_frustum.position = pose[:3, 3]

    def _update_tracks(self) -> None:
        if self._tracks is None:
            return
        heads = self._tracks.tracks_3d
        before = math.floor(self.time)
        after = min(before + 1, heads.shape[0] - 1)
        weight = self.time - before
        points = ((1 - weight) * heads[before] + weight * heads[after]).astype(np.float32)
        self._track_heads.points = points

    def _update_mesh(self) -> None:
        frame_keys = [k for k in self._mesh_handles if k is not None]
        current = nearest_key(frame_keys, self.time)
        for key, handle in self._mesh_handles.items():
            handle.visible = self.layers.mesh and (key is None or key == current)

    def set_playing(self, playing: bool) -> None:
        """Start or pause playback (the time advances at `speed` x the clip's frame rate)."""
        self.playing = bool(playing) and self.num_frames >= 2
        self.play_button.label = "Pause" if self.playing else "Play"

    def _play_loop(self) -> None:
        previous = time.monotonic()
        while not self._stop.wait(1.0 / self.config.playback_updates_per_second):
            now = time.monotonic()
            elapsed, previous = now - previous, now
            if not self.playing:
                continue
            t = self.time + elapsed * float(self.speed_slider.value) * self.fps
            last = self.num_frames - 1
            if t > last:
                if self.loop_checkbox.value:
                    t = t % last
                else:
                    t = float(last)
                    self.set_playing(False)
            step = self.config.time_step
            self.time_slider.value = round(round(t / step) * step, 6)  # the slider's callback calls set_time

    def set_layer(self, name: str, on: bool) -> None:
        """Turn a layer on or off: still, moving, highlight, tracks, camera_path, frustums or mesh (its GUI
        checkbox follows)."""
        checkbox = self._layer_checkboxes[name]
        if checkbox.value != bool(on):
            checkbox.value = bool(on)  # its callback applies the change
        else:
            self._apply_layer(name, on)

    def _apply_layer(self, name: str, on: bool) -> None:
        with self._lock:
            setattr(self.layers, name, bool(on))
            if name == "highlight":
                for (_, handle), members in zip(self.still_nodes, self._still_members):
                    handle.rgbs = self._still_rgbs(self.still.colors[members])
            elif name == "tracks":
                if on and (self._tracks is None or self._tracks.query_frame != round(self.time)):
                    self.status.content = f"computing point tracks from frame {round(self.time)} ..."
                    self._build_tracks(round(self.time))
                    self.status.content = f"point tracks of a {self._tracks.tracks_3d.shape[1]}-pixel grid " \
                                          f"of frame {self._tracks.query_frame}"
                if self._tracks is not None:
                    self._track_lines.visible = on
                    self._track_heads.visible = on
            elif name == "camera_path":
                if self.path_node is not None:
                    self.path_node.visible = on
            elif name == "frustums":
                for handle in self.frustum_nodes:
                    handle.visible = on
                self.current_frustum.visible = on
            elif name == "mesh" and on:
                self._load_meshes()
            self.set_time(self.time)

    def _build_tracks(self, query_frame: int) -> None:
        from recon4d.track import track_points

        cams = self.scene.cameras
        queries = track_query_grid(cams.width, cams.height, self.config.track_grid_columns, query_frame)
        with torch.no_grad():
            tracks = track_points(self.scene, queries)
        tracks_3d = tracks.tracks_3d.numpy()
        colors = track_colors(tracks_3d.shape[1])
        self._tracks = _Tracks(query_frame, tracks_3d, colors)
        segment_colors = np.broadcast_to(colors[None, :, None, :], (tracks_3d.shape[0] - 1, *colors.shape[:1], 2, 3))
        self._track_lines = self.server.scene.add_line_segments(
            "/tracks/lines", track_segments(tracks_3d), colors=segment_colors.reshape(-1, 2, 3),
            thickness=self.config.line_thickness_px, thickness_units="screen")
        self._track_heads = self.server.scene.add_point_cloud(
            "/tracks/heads", tracks_3d[0].astype(np.float32), colors=colors, precision="float32",
            point_size=self.config.track_point_size_fraction * self.depth_scale, point_shape="circle")

    def _load_meshes(self) -> None:
        if self._mesh_handles or not self._meshes:
            return
        try:
            import trimesh
        except ImportError as exc:
            raise InputError("showing meshes needs trimesh", hint="pip install trimesh") from exc
        for key, path in self._meshes.items():
            mesh = trimesh.load(str(path), force="mesh", process=False)
            name = "/mesh/static" if key is None else f"/mesh/frame_{key:05d}"
            self._mesh_handles[key] = self.server.scene.add_mesh_trimesh(name, mesh, visible=False)

    # -- looking and saving ---------------------------------------------------------------------------------

    def look_through(self, t: float, client=None) -> None:
        """Put a browser's camera (or every connected one) at the input camera of time t, with its field of view.

        The frustums are hidden (their lines and frame images would sit right in front of the eye); the
        Layers checkbox brings them back.
        """
        if self.layers.frustums:
            self.set_layer("frustums", False)
            self.status.content = "camera frustums hidden while looking through an input camera (see Layers)"
        pose = self.camera_pose_at(t)
        clients = [client] if client is not None else list(self.server.get_clients().values())
        fov = vertical_fov(float(np.interp(t, np.arange(self.num_frames), self.intrinsics[:, 1])),
                           self.scene.cameras.height)
        for c in clients:
            with c.atomic():
                c.camera.up_direction = -pose[:3, 1]
                c.camera.position = pose[:3, 3]
                c.camera.look_at = pose[:3, 3] + pose[:3, 2] * self.depth_scale
                c.camera.fov = fov

    def render(self, world_from_camera: np.ndarray | torch.Tensor, K: torch.Tensor, width: int, height: int,
               t: float) -> np.ndarray:
        """Render every shown Gaussian (all of them, not the display subset) at time t with
        `recon4d.render.rasterize` -> RGB [height, width, 3] float32 in [0, 1]."""
        from recon4d.render import rasterize

        with torch.no_grad():
            g = self.scene.gaussians_at(t)
            is_moving = self.scene.is_moving[self.scene.birth_frame <= t]
            shown = (is_moving & self.layers.moving) | (~is_moving & self.layers.still)
            g = g.select(shown)
            colors = g.colors.float().clamp(0, 1)
            if self.layers.highlight:
                moving = is_moving[shown].numpy()
                colors = torch.from_numpy(highlight_colors(colors.numpy(), moving, self.config))
            pose = torch.as_tensor(np.asarray(world_from_camera), dtype=torch.float32)
            out = rasterize(g.means.float(), g.quats.float(), g.scales.float(), g.opacities.float(), colors,
                            invert_pose(pose), K.float(), int(width), int(height),
                            background=torch.tensor(self.config.render_background, dtype=torch.float32))
        return out.color.clamp(0, 1).numpy()

    def save_view(self, client=None) -> Path:
        """Render the browser's current view (or input camera at the current time without a browser) at full
        quality and save it as PNG under OUT/views/ -> the path."""
        import cv2

        from recon4d.io.atomic import write_bytes_atomic

        t = self.time
        height = self.config.render_height or self.scene.cameras.height
        camera = _reported_camera(client)
        if camera is not None:
            pose, K, width = view_camera(camera.wxyz, camera.position, camera.fov, camera.aspect, height)
        else:
            pose = torch.as_tensor(self.camera_pose_at(t), dtype=torch.float32)
            K = self.scene.cameras.K(t) * (height / self.scene.cameras.height)
            K[2, 2] = 1.0
            width = round(self.scene.cameras.width * height / self.scene.cameras.height)
        image = self.render(pose, K, width, height, t)
        ok, encoded = cv2.imencode(".png", cv2.cvtColor((image * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))
        if not ok:
            raise InputError("could not encode the rendered view as PNG")
        with self._lock:
            path = free_path(self.out_dir / VIEWS_DIR, f"view_t{t:07.2f}", ".png")
            write_bytes_atomic(path, encoded.tobytes())
        return path

    def export_frame(self) -> list[Path]:
        """Write the Gaussians of the current time as a 3DGS PLY under OUT/export/ply/ -> the written paths
        (frame_NNNN.ply at a whole frame, time_NNNN.NN.ply between frames)."""
        from recon4d.export.ply import export_ply, write_3dgs_ply

        t = self.time
        folder = self.out_dir / PLY_EXPORT_DIR
        if float(t).is_integer():
            return export_ply(self.scene, folder, frames=int(t), format="ply")
        return [write_3dgs_ply(self.scene.gaussians_at(t), folder / f"time_{t:07.2f}.ply")]

    # -- lifetime -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop playback and the server."""
        self._stop.set()
        self._player.join(timeout=5)
        with contextlib.redirect_stdout(sys.stderr):
            self.server.stop()


def _reported_camera(client):
    """The client's camera handle once the browser has reported its view, else None."""
    camera = getattr(client, "camera", None)
    if camera is None:
        return None
    try:
        camera.update_timestamp  # noqa: B018 - viser asserts here until the browser has sent its camera
    except AssertionError:
        return None
    return camera


def start_viewer(scene_path: Path, host: str = "127.0.0.1", port: int = 8080, config: ViewerConfig | None = None,
                 log=print) -> SceneViewer:
    """Load a scene (a `recon4d fit` output folder or a scene file) and serve it -> the running viewer.

    Raises SceneError for a missing or unreadable scene and InputError for a host/port that cannot be used.
    """
    import socket

    from recon4d.io.scene import load_scene

    scene_path = Path(scene_path)
    out_dir = scene_path if scene_path.is_dir() else scene_path.parent
    if not 0 <= port <= 65535:
        raise InputError(f"--port must be in 0..65535, got {port}")
    try:  # fail with one line before viser starts (it retries other ports but not other hosts)
        family = socket.getaddrinfo(host, None)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
    except OSError as exc:
        raise InputError(f"cannot serve on host {host!r}: {exc.strerror or exc}", hint="try --host 127.0.0.1") from exc
    log(f"loading {scene_path}")
    scene = load_scene(scene_path)
    log("reading the input frames for the camera frustums")
    frames = input_frames(scene)
    import viser

    log("building the scene nodes")
    with contextlib.redirect_stdout(sys.stderr):  # viser prints a banner; stdout carries only our URL line
        server = viser.ViserServer(host=host, port=port, verbose=False, label="recon4d")
    try:
        viewer = SceneViewer(scene, out_dir, server, config=config, frames=frames)
    except BaseException:
        server.stop()
        raise
    return viewer
