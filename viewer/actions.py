"""What the Save panel does: look through an input camera, render the current view at full quality (PNG
under OUT/views/), export the current time as a 3DGS PLY (OUT/export/ply/)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from recon4d.errors import InputError, Recon4DError
from recon4d.geometry.camera import invert_pose
from viewer.cameras import vertical_fov
from viewer.config import PLY_EXPORT_DIR, VIEWS_DIR
from viewer.splats import highlight_colors


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


def free_path(folder: Path, stem: str, suffix: str) -> Path:
    """folder/stem_NNN.suffix with the first NNN not taken."""
    index = 0
    while (path := folder / f"{stem}_{index:03d}{suffix}").exists():
        index += 1
    return path


def reported_camera(client):
    """The client's camera handle once the browser has reported its view, else None."""
    camera = getattr(client, "camera", None)
    if camera is None:
        return None
    try:
        camera.update_timestamp  # noqa: B018 - viser asserts here until the browser has sent its camera
    except AssertionError:
        return None
    return camera


class SavePanel:
    """Mixin of `SceneViewer`: looking through input cameras, rendering and exporting (needs scene, config,
    server, time, layers, status)."""

    def _add_save_panel(self) -> None:
        gui = self.server.gui
        with gui.add_folder("Save"):
            self.render_button = gui.add_button("Render view (full quality)")
            self.export_button = gui.add_button("Export frame as PLY")
            self.status = gui.add_markdown("")
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
        from recon4d.io.scene_render import render_scene

        is_moving = self.scene.is_moving[self.scene.alive_at(t)]
        shown = (is_moving & self.layers.moving) | (~is_moving & self.layers.still)

        def features(gaussians, alive):  # noqa: ANN001, ANN202 - render_scene's feature function
            colors = gaussians.colors.float().clamp(0, 1)
            if self.layers.highlight:
                colors = torch.from_numpy(highlight_colors(colors.numpy(), is_moving.numpy(), self.config))
            return colors

        pose = torch.as_tensor(np.asarray(world_from_camera), dtype=torch.float32)
        with torch.no_grad():
            out = render_scene(self.scene, t, camera_from_world=invert_pose(pose), K=K, size=(int(width), int(height)),
                               colors=features, select=shown,
                               background=torch.tensor(self.config.render_background, dtype=torch.float32))
        return out.color.clamp(0, 1).numpy()

    def save_view(self, client=None) -> Path:
        """Render the browser's current view (or input camera at the current time without a browser) at full
        quality and save it as PNG under OUT/views/ -> the path."""
        import cv2

        from recon4d.io.atomic import write_bytes_atomic

        t = self.time
        height = self.config.render_height or self.scene.cameras.height
        camera = reported_camera(client)
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
