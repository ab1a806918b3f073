"""COLMAP sparse models (text or binary, read by pycolmap) + their image folder -> :class:`PosedImages`.

Accepted camera models: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV (distortion removed from
the images when read). Images come in name order (COLMAP's image ids follow registration, not capture).
Bounds: depth percentiles of the model's 3D points, or the camera layout when it has too few points.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from recon4d.errors import BackendError, InputError
from recon4d.nerf.data.conventions import (
    principal_point_from_half_pixel,
    undistort_image,
)
from recon4d.nerf.data.posed import (
    PosedImages,
    bounds_from_cameras,
    bounds_from_points,
    composite,
    read_image,
    resize,
    resize_intrinsics,
    stack_set,
    target_size,
)

log = logging.getLogger(__name__)

MODEL_FILES = ("cameras.txt", "cameras.bin")
MIN_POINTS_FOR_BOUNDS = 8
# Where a model's parameters sit, per camera model: (fx, fy, cx, cy) indices and distortion k1 k2 p1 p2.
_LAYOUTS = {
    "SIMPLE_PINHOLE": ((0, 0, 1, 2), ()),
    "PINHOLE": ((0, 1, 2, 3), ()),
    "SIMPLE_RADIAL": ((0, 0, 1, 2), ((3, 0),)),
    "RADIAL": ((0, 0, 1, 2), ((3, 0), (4, 1))),
    "OPENCV": ((0, 1, 2, 3), ((4, 0), (5, 1), (6, 2), (7, 3))),
}


def find_model(path: Path) -> Path | None:
    """The COLMAP model folder under `path`: itself, sparse/0, or sparse."""
    for candidate in (path, path / "sparse" / "0", path / "sparse"):
        if any((candidate / name).is_file() for name in MODEL_FILES):
            return candidate
    return None


def _image_folder(path: Path, model: Path) -> Path:
    for candidate in (path / "images", model.parent.parent / "images", model.parent / "images", model / "images"):
        if candidate.is_dir():
            return candidate
    raise InputError(f"no images folder beside the COLMAP model at {model}", hint="expected DATA/images")


def camera_parameters(model_name: str, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP camera -> (intrinsics [4] fx fy cx cy in OpenCV centres, distortion [4] k1 k2 p1 p2)."""
    if model_name not in _LAYOUTS:
        raise InputError(f"COLMAP camera model {model_name} is not supported",
                         hint=f"use one of {', '.join(_LAYOUTS)} or undistort with COLMAP first")
    focal_index, distortion_index = _LAYOUTS[model_name]
    fx, fy, cx, cy = (float(params[i]) for i in focal_index)
    distortion = np.zeros(4)
    for source, target in distortion_index:
        distortion[target] = params[source]
    return np.array([fx, fy, *principal_point_from_half_pixel(cx, cy)]), distortion


def read_colmap(path: str | os.PathLike, short_side: int | None = None, background: float = 0.0) -> PosedImages:
    """Read a COLMAP dataset folder (model in it, in sparse/0 or sparse; images in images/)."""
    try:
        import pycolmap
    except ImportError as exc:
        raise BackendError("reading COLMAP models needs pycolmap", hint="pip install pycolmap") from exc
    path = Path(path)
    model = find_model(path)
    if model is None:
        raise InputError(f"no COLMAP model at {path}")
    reconstruction = pycolmap.Reconstruction()
    try:
        reconstruction.read(str(model))
    except Exception as exc:  # pycolmap raises RuntimeError/ValueError for malformed files
        raise InputError(f"cannot read the COLMAP model at {model}: {str(exc).splitlines()[0]}") from exc
    image_dir = _image_folder(path, model)
    images, alphas, poses, intrinsics, names, missing = [], [], [], [], [], []
    for image in sorted(reconstruction.images.values(), key=lambda im: im.name):
        file = image_dir / image.name
        if not file.is_file():
            missing.append(image.name)
            continue
        camera = reconstruction.cameras[image.camera_id]
        K, distortion = camera_parameters(camera.model_name, np.asarray(camera.params))
        rgb, alpha = read_image(file)
        height, width = rgb.shape[:2]
        if (width, height) != (camera.width, camera.height):
            raise InputError(f"{file} is {width}x{height}, its COLMAP camera {camera.width}x{camera.height}")
        if np.any(distortion != 0):
            rgb = undistort_image(rgb, K, distortion)
            alpha = None if alpha is None else undistort_image(alpha, K, distortion)
        size = target_size(width, height, short_side)
        rgb, alpha = resize(rgb, size), None if alpha is None else resize(alpha, size)
        images.append(np.clip(composite(rgb, alpha, background), 0.0, 1.0).astype(np.float32))
        alphas.append(alpha)
        cam_from_world = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
        pose = np.eye(4)
        pose[:3, :4] = cam_from_world.matrix()
        poses.append(np.linalg.inv(pose))
        intrinsics.append(resize_intrinsics(K, (width, height), size))
        names.append(image.name)
    if missing:
        log.warning("%s: %d registered images are missing (first: %s); skipped them",
                                            image_dir, len(missing), missing[0])
    if not images:
        raise InputError(f"the COLMAP model at {model} has no images that exist in {image_dir}")
    poses = np.stack(poses)
    points = np.array([p.xyz for p in reconstruction.points3D.values()]).reshape(-1, 3)
    if len(points) >= MIN_POINTS_FOR_BOUNDS:
        near, far = bounds_from_points(points, poses)
    else:
        near, far = bounds_from_cameras(poses)
    return stack_set(images, alphas, poses, np.stack(intrinsics), names, near, far, model)
