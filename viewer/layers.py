"""Optional layers of the viewer: still / moving Gaussians, motion highlight, point tracks, camera path,
frustums and exported meshes, each switched by a checkbox of the Layers panel."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recon4d.errors import InputError
from recon4d.export.mesh import MOVING_PART_PREFIX, STILL_PART_PREFIX, WHOLE_FRAME_PREFIX, exported_meshes
from viewer.config import MESH_EXPORT_DIR


@dataclass
class TrackLayer:
    query_frame: int
    tracks_3d: np.ndarray  # [T, P, 3]
    colors: np.ndarray  # [P, 3] uint8


@dataclass
class Layers:
    still: bool = True
    moving: bool = True
    highlight: bool = False
    tracks: bool = False
    camera_path: bool = True
    frustums: bool = True
    mesh: bool = False


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


@dataclass(frozen=True)
class MeshFiles:
    """Meshes exported to OUT/export/mesh, by `recon4d.export.mesh`'s file names (the first suffix in name
    order where a frame has several).

    Attributes:
        whole: frame -> its whole mesh (frame_NNNN).
        still: a split export's still parts: first frame -> the file the frames from there to the next still
            file share (still_NNNN).
        moving: a split export's moving parts: frame -> file (moving_NNNN; none where a frame has no moving
            surface).
        static: the first other mesh file in name order (a static or whole-scene mesh), shown at every time.
    """

    whole: dict[int, Path] = field(default_factory=dict)
    still: dict[int, Path] = field(default_factory=dict)
    moving: dict[int, Path] = field(default_factory=dict)
    static: Path | None = None

    def __bool__(self) -> bool:
        return bool(self.whole or self.still or self.moving or self.static)

    def at(self, t: float) -> list[Path]:
        """The files that make the mesh shown at time t: the static one, and those of frame round(t) (its whole
        mesh; else, once a still file starts at or before it, that still file and the frame's moving file,
        which a frame without moving surface lacks), or else of the nearest frame with a mesh."""
        files = [self.static] if self.static is not None else []
        frame = round(t)
        if frame not in self.whole and min(self.still, default=frame + 1) > frame:  # no still part reaches it
            frame = nearest_key(sorted({*self.whole, *self.still, *self.moving}), t)
        if frame is None:
            return files
        if frame in self.whole:
            return [*files, self.whole[frame]]
        start = max((k for k in self.still if k <= frame), default=None)
        return files + [parts[k] for parts, k in ((self.still, start), (self.moving, frame)) if k in parts]


def find_meshes(out_dir: Path) -> MeshFiles:
    """The meshes exported to OUT/export/mesh (`MeshFiles`)."""
    by_prefix, others = exported_meshes(out_dir / MESH_EXPORT_DIR)
    first = {prefix: {t: paths[0] for t, paths in by_frame.items()} for prefix, by_frame in by_prefix.items()}
    return MeshFiles(first[WHOLE_FRAME_PREFIX], first[STILL_PART_PREFIX], first[MOVING_PART_PREFIX],
                     others[0] if others else None)


def nearest_key(keys: list[int], t: float) -> int | None:
    """The key closest to t (ties: the earlier), or None for no keys."""
    return min(keys, key=lambda k: (abs(k - t), k)) if keys else None


class LayerPanel:
    """Mixin of `SceneViewer`: the Layers panel and what its checkboxes switch (needs the splat and camera
    nodes, scene, config, server, time, status)."""

    def _add_layer_panel(self) -> None:
        gui = self.server.gui
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
        self._layer_checkboxes = {
            "still": self.still_checkbox, "moving": self.moving_checkbox, "highlight": self.highlight_checkbox,
            "tracks": self.tracks_checkbox, "camera_path": self.path_checkbox, "frustums": self.frustum_checkbox,
            "mesh": self.mesh_checkbox,
        }
        for name, checkbox in self._layer_checkboxes.items():
            checkbox.on_update(lambda _, name=name, checkbox=checkbox: self._apply_layer(name, checkbox.value))

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
                for (_, _, handle), members in zip(self.still_nodes, self._still_members):
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
                self._meshes = find_meshes(self.out_dir)  # an export written while the viewer runs shows too
            self.set_time(self.time)

    def _build_tracks(self, query_frame: int) -> None:
        from recon4d.track import track_points

        cams = self.scene.cameras
        queries = track_query_grid(cams.width, cams.height, self.config.track_grid_columns, query_frame)
        with torch.no_grad():
            tracks = track_points(self.scene, queries)
        tracks_3d = tracks.tracks_3d.numpy()
        colors = track_colors(tracks_3d.shape[1])
        self._tracks = TrackLayer(query_frame, tracks_3d, colors)
        segment_colors = np.broadcast_to(colors[None, :, None, :], (tracks_3d.shape[0] - 1, *colors.shape[:1], 2, 3))
        self._track_lines = self.server.scene.add_line_segments(
            "/tracks/lines", track_segments(tracks_3d), colors=segment_colors.reshape(-1, 2, 3),
            thickness=self.config.line_thickness_px, thickness_units="screen")
        self._track_heads = self.server.scene.add_point_cloud(
            "/tracks/heads", tracks_3d[0].astype(np.float32), colors=colors, precision="float32",
            point_size=self.config.track_point_size_fraction * self.depth_scale, point_shape="circle")

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
        """Show the meshes of the current time (`MeshFiles.at`), loading them on first use and keeping the
        `mesh_cache_files` most recently shown in the page: a long clip's whole meshes (22.5 MB a frame on
        backpack's 450 frames) are not all sent at once."""
        shown = self._meshes.at(self.time) if self.layers.mesh else []
        if shown:
            try:
                import trimesh
            except ImportError as exc:
                raise InputError("showing meshes needs trimesh", hint="pip install trimesh") from exc
        for path in shown:
            if path not in self._mesh_handles:
                mesh = trimesh.load(str(path), force="mesh", process=False)
                self._mesh_handles[path] = self.server.scene.add_mesh_trimesh(f"/mesh/{path.stem}", mesh)
            self._mesh_handles.move_to_end(path)
        for path, handle in self._mesh_handles.items():
            handle.visible = path in shown
        while len(self._mesh_handles) > max(self.config.mesh_cache_files, len(shown)):
            _, handle = self._mesh_handles.popitem(last=False)  # the least recently shown: not in `shown`
            handle.remove()
