"""Every camera-convention change between posed-image formats and recon4d, in one place.

recon4d (and :class:`~recon4d.nerf.data.posed.PosedImages`): OpenCV camera axes (x right, y down, z
forward), ``world_from_camera`` 4x4, intrinsics fx, fy, cx, cy in pixels with the centre of pixel
(row i, column j) at (u=j, v=i).

* Blender / NeRF-synthetic / instant-ngp / nerfstudio ``transforms.json``: ``transform_matrix`` is
  camera-to-world with OpenGL camera axes (x right, y up, z backward); principal point with pixel centres
  at (j + 0.5, i + 0.5); Blender gives only ``camera_angle_x`` (horizontal field of view, principal point
  at the image centre).
* COLMAP: OpenCV camera axes, poses stored as ``cam_from_world``; pixel centres at (j + 0.5, i + 0.5).
* Lens distortion (OpenCV model k1 k2 p1 p2 [k3]) acts on normalised coordinates, so it does not depend
  on the pixel-centre convention; images are undistorted once when read (:func:`undistort_image`).

Example:
    >>> import numpy as np
    >>> pose = np.eye(4)
    >>> bool(np.allclose(opencv_from_opengl(opengl_from_opencv(pose)), pose))
    True
"""
from __future__ import annotations

import math

import numpy as np

from recon4d.export.cameras import PIXEL_CENTER_OFFSET, opengl_from_opencv
from recon4d.geometry.camera import scale_intrinsics

__all__ = [
    "PIXEL_CENTER_OFFSET",
    "focal_from_fov",
    "fov_from_focal",
    "opencv_from_opengl",
    "opengl_from_opencv",
    "principal_point_from_half_pixel",
    "principal_point_to_half_pixel",
    "scale_intrinsics",
    "undistort_image",
]


def opencv_from_opengl(world_from_camera: np.ndarray) -> np.ndarray:
    """[..., 4, 4] camera-to-world with OpenGL axes -> the same pose with OpenCV axes (an involution)."""
    return opengl_from_opencv(world_from_camera)


def principal_point_from_half_pixel(cx: float, cy: float) -> tuple[float, float]:
    """(cx, cy) with pixel centres at j + 0.5 (transforms.json, COLMAP) -> recon4d's (centres at j)."""
    return cx - PIXEL_CENTER_OFFSET, cy - PIXEL_CENTER_OFFSET


def principal_point_to_half_pixel(cx: float, cy: float) -> tuple[float, float]:
    """Inverse of :func:`principal_point_from_half_pixel`."""
    return cx + PIXEL_CENTER_OFFSET, cy + PIXEL_CENTER_OFFSET


def focal_from_fov(fov: float, size: int) -> float:
    """Focal length in pixels of a pinhole spanning `size` pixels with field of view `fov` radians."""
    return 0.5 * size / math.tan(0.5 * fov)


def fov_from_focal(focal: float, size: int) -> float:
    """Inverse of :func:`focal_from_fov`."""
    return 2.0 * math.atan(0.5 * size / focal)


def undistort_image(image: np.ndarray, intrinsics: np.ndarray, distortion: np.ndarray) -> np.ndarray:
    """Remove OpenCV lens distortion, keeping the pinhole intrinsics.

    Args:
        image: [H, W] or [H, W, C] float32 or uint8.
        intrinsics: [4] fx, fy, cx, cy in OpenCV pixel centres.
        distortion: [4] k1 k2 p1 p2 or [5] with k3.
    Returns:
        The image a pinhole camera with the same intrinsics would have taken (bilinear resampling; pixels
        whose source falls outside the image repeat the border).
    """
    import cv2

    fx, fy, cx, cy = (float(v) for v in intrinsics)
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    dist = np.asarray(distortion, dtype=np.float64)
    height, width = image.shape[:2]
    map_x, map_y = cv2.initUndistortRectifyMap(K, dist, None, K, (width, height), cv2.CV_32FC1)
    return cv2.remap(image, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
