"""The input cameras in the viewer: the camera path, frustums with the input frames as their images, the
camera of the current time, and where a new browser tab's camera starts."""
from __future__ import annotations

import math

import numpy as np
import torch

from recon4d.geometry.camera import invert_pose
from recon4d.io.frames import scene_fps
from recon4d.progress import track


def rotation_to_wxyz(rotation: np.ndarray) -> np.ndarray:
    """Rotation matrix [3, 3] -> unit quaternion [4] (w, x, y, z), w >= 0."""
    from recon4d.geometry.quaternion import quaternion_from_rotation

    return quaternion_from_rotation(torch.as_tensor(rotation, dtype=torch.float64)).numpy()


def vertical_fov(fy: float, height: int) -> float:
    """Vertical field of view in radians of a pinhole camera with focal fy and `height` pixel rows."""
    return 2.0 * math.atan(0.5 * height / fy)


def resize_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """image [H, W, 3] uint8 -> resized so max(H, W) == long_side (area interpolation when shrinking)."""
    import cv2

    height, width = image.shape[:2]
    factor = long_side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)


class CameraNodes:
    """Mixin of `SceneViewer`: path, frustums and current camera (needs scene, config, server, time)."""

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

    def camera_pose_at(self, t: float) -> np.ndarray:
        """world_from_camera [4, 4] of the input camera at time t (fractional t interpolates)."""
        return self.scene.cameras.world_from_camera_at(t).detach().double().numpy()

    def _update_current_camera(self) -> None:
        pose = self.camera_pose_at(self.time)
        self.current_frustum.wxyz = rotation_to_wxyz(pose[:3, :3])
        self.current_frustum.position = pose[:3, 3]
