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

Modules: `config` (ViewerConfig), `splats` (splat nodes), `cameras` (path, frustums, current camera),
`playback` (Time panel), `layers` (Layers panel: tracks, meshes, ...), `actions` (Save panel: look through,
render, export), `generate` (Generate panel: text-to-3D with a `recon4d gen` model); `app` puts them together as `SceneViewer` and serves a scene with `start_viewer`.
"""
from __future__ import annotations

import contextlib
import sys
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from recon4d.errors import InputError, SceneError
from recon4d.io.scene import Scene4D
from viewer.actions import SavePanel
from recon4d.io.scene_frames import read_scene_frames
from viewer.cameras import CameraNodes
from viewer.config import ViewerConfig
from viewer.layers import LayerPanel, Layers, TrackLayer, find_meshes
from viewer.playback import PlaybackPanel
from viewer.splats import SplatNodes, birth_groups, decimate, splat_covariances, splat_importance

# Importable from viewer.app as before the split (the CLI, tests and users import them from here).
__all__ = ["SceneViewer", "ViewerConfig", "birth_groups", "decimate", "find_meshes",
           "splat_covariances", "splat_importance", "start_viewer"]


class SceneViewer(SplatNodes, CameraNodes, PlaybackPanel, LayerPanel, SavePanel):
    """Serves one scene on a viser server; holds the display state and the GUI.

    Args:
        scene: the fitted scene.
        out_dir: the scene's output folder (views/ and export/ are written here; meshes read from it).
        server: a running `viser.ViserServer` (the viewer adds its scene nodes and GUI to it).
        config: display budgets and styles.
        frames: input frames [T, H, W, 3] uint8 for the frustum images; None draws frustums without images.
        generator_model: a `recon4d gen` model directory: adds the Generate panel (`viewer.generate`).
    """

    def __init__(self, scene: Scene4D, out_dir: Path, server, config: ViewerConfig | None = None,
                 frames: np.ndarray | None = None, generator_model: Path | None = None) -> None:
        self.config = config or ViewerConfig()
        self.config.validate()
        if scene.gaussians.colors.dim() != 2 or scene.gaussians.colors.shape[1] != 3:
            raise SceneError(f"the viewer needs RGB colours [N, 3], the scene has {tuple(scene.gaussians.colors.shape)}")
        self.scene = scene
        self.out_dir = Path(out_dir)
        self.server = server
        self.num_frames = scene.num_frames
        self.time = 0.0
        self.layers = Layers()
        self.playing = False
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._tracks: TrackLayer | None = None
        self._mesh_handles: OrderedDict[Path, object] = OrderedDict()  # least recently shown first
        self._meshes = find_meshes(self.out_dir)
        self._moving_count = 0
        self.generator_model = generator_model
        self.generate_panel = None

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

    def _add_gui(self) -> None:
        g = self.scene.gaussians
        self.server.gui.add_markdown(
            f"**{self.num_frames} frames**, {self.scene.cameras.width}x{self.scene.cameras.height} px, "
            f"{len(g)} Gaussians ({int(self.scene.is_moving.sum())} moving); showing "
            f"{self.still.index.shape[0]} fixed + {self.moving.index.shape[0]} with a trajectory.")
        self._add_time_panel()
        self._add_layer_panel()
        self._add_save_panel()
        if self.generator_model is not None:
            from viewer.generate import GENERATED_DIR, GeneratePanel

            self.generate_panel = GeneratePanel(self.server, self.generator_model, lambda: self.camera_pose_at(self.time),
                                                self.depth_scale, self.out_dir / GENERATED_DIR)

    def close(self) -> None:
        """Stop playback and the server."""
        self._stop.set()
        self._player.join(timeout=5)
        with contextlib.redirect_stdout(sys.stderr):
            self.server.stop()


def start_viewer(scene_path: Path, host: str = "127.0.0.1", port: int = 8080, config: ViewerConfig | None = None,
                 log=print, gen_model: Path | None = None, generate: bool = True) -> SceneViewer:
    """Load a scene (a `recon4d fit` output folder or a scene file) and serve it -> the running viewer.

    With `generate`, the Generate panel samples `gen_model` (default: the shipped generator, when installed).
    Raises SceneError for a missing or unreadable scene and InputError for a host/port that cannot be used
    or a --gen-model directory without a model.
    """
    from viewer.generate import find_generator_model

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
    generator_model = find_generator_model(gen_model, generate)
    log(f"loading {scene_path}")
    scene = load_scene(scene_path)
    log("reading the input frames for the camera frustums")
    frames = read_scene_frames(scene)
    import viser

    log("building the scene nodes")
    with contextlib.redirect_stdout(sys.stderr):  # viser prints a banner; stdout carries only our URL line
        server = viser.ViserServer(host=host, port=port, verbose=False, label="recon4d")
    try:
        viewer = SceneViewer(scene, out_dir, server, config=config, frames=frames, generator_model=generator_model)
    except BaseException:
        server.stop()
        raise
    return viewer
