"""Blender / NeRF-synthetic / instant-ngp / nerfstudio ``transforms.json`` <-> :class:`PosedImages`.

Read: camera-to-world ``transform_matrix`` in OpenGL axes; intrinsics either shared (top level) or per
frame (any of ``fl_x fl_y cx cy w h k1 k2 k3 p1 p2`` may be overridden by a frame), or only
``camera_angle_x`` [``camera_angle_y``] (Blender: principal point at the image centre); OpenCV distortion
k1 k2 p1 p2 [k3] is removed from the images; ``file_path`` without an extension gets ``.png`` (Blender);
frames whose image is missing are skipped with one warning line; an optional nerfstudio ``mask_path``
(0 = ignore) becomes ``valid``. RGBA images are composited over a background (white for Blender scenes).
Bounds: top-level ``near``/``far`` when given, else from the camera layout
(:func:`recon4d.nerf.data.posed.bounds_from_cameras`).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from recon4d.errors import InputError
from recon4d.io.atomic import write_bytes_atomic
from recon4d.nerf.data.conventions import (
    focal_from_fov,
    opencv_from_opengl,
    opengl_from_opencv,
    principal_point_from_half_pixel,
    principal_point_to_half_pixel,
    undistort_image,
)
from recon4d.nerf.data.posed import (
    PosedImages,
    bounds_from_cameras,
    composite,
    read_image,
    resize,
    resize_intrinsics,
    stack_set,
    target_size,
)

log = logging.getLogger(__name__)

#: File names tried, in order, when a folder is given.
TRANSFORMS_NAMES = ("transforms.json", "transforms_train.json")
DISTORTION_KEYS = ("k1", "k2", "p1", "p2", "k3")
_BLENDER_IMAGE_SUFFIX = ".png"


def find_transforms(path: Path) -> Path | None:
    """The transforms JSON a path names (the file itself, or the first of TRANSFORMS_NAMES in a folder)."""
    if path.is_file() and path.suffix == ".json":
        return path
    if path.is_dir():
        for name in TRANSFORMS_NAMES:
            if (path / name).is_file():
                return path / name
    return None


def _image_path(root: Path, file_path: str) -> Path:
    path = root / file_path
    if path.suffix == "" and not path.is_file():
        path = path.with_suffix(_BLENDER_IMAGE_SUFFIX)
    return path


def _frame_camera(content: dict, frame: dict, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(intrinsics [4] OpenCV centres, distortion [5]) of one frame from its own and the shared keys."""
    get = lambda key: frame.get(key, content.get(key))
    fx, fy = get("fl_x"), get("fl_y")
    if fx is None and get("camera_angle_x") is not None:
        fx = focal_from_fov(float(get("camera_angle_x")), width)
    if fy is None and get("camera_angle_y") is not None:
        fy = focal_from_fov(float(get("camera_angle_y")), height)
    if fx is None and fy is None:
        raise KeyError("fl_x/fl_y or camera_angle_x")
    fx, fy = float(fx if fx is not None else fy), float(fy if fy is not None else fx)
    cx = float(get("cx")) if get("cx") is not None else width / 2
    cy = float(get("cy")) if get("cy") is not None else height / 2
    cx, cy = principal_point_from_half_pixel(cx, cy)
    distortion = np.array([float(get(key) or 0.0) for key in DISTORTION_KEYS])
    return np.array([fx, fy, cx, cy]), distortion


def read_transforms(path: str | os.PathLike, short_side: int | None = None, background: float | None = None) -> PosedImages:
    """Read a transforms JSON (file or folder) -> PosedImages in recon4d conventions.

    Args:
        path: the JSON file or a folder with one of TRANSFORMS_NAMES.
        short_side: resize so the shorter image side is this many pixels (intrinsics follow).
        background: grey level RGBA images are composited over; None = white (1.0), Blender's convention.
    """
    json_path = find_transforms(Path(path))
    if json_path is None:
        raise InputError(f"no transforms.json at {path}")
    try:
        content = json.loads(json_path.read_text())
        frames = content["frames"]
        if not isinstance(frames, list) or not frames:
            raise ValueError("no frames")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{json_path} is not a transforms.json: {exc}") from exc
    background = 1.0 if background is None else background
    root = json_path.parent
    images, alphas, valid, poses, intrinsics, names, missing = [], [], [], [], [], [], []
    for frame in frames:
        try:
            image_path = _image_path(root, frame["file_path"])
            matrix = np.asarray(frame["transform_matrix"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{json_path}: a frame has no usable file_path/transform_matrix ({exc})") from exc
        if not image_path.is_file():
            missing.append(frame["file_path"])
            continue
        if matrix.shape == (3, 4):
            matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
        if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
            raise InputError(f"{json_path}: transform_matrix of {frame['file_path']} is not a finite 4x4 matrix")
        rgb, alpha = read_image(image_path)
        height, width = rgb.shape[:2]
        try:
            K, distortion = _frame_camera(content, frame, width, height)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{json_path}: no intrinsics for {frame['file_path']} ({exc})") from exc
        mask = None
        if frame.get("mask_path"):
            mask_rgb, _ = read_image(_image_path(root, frame["mask_path"]))
            mask = mask_rgb[..., 0]
        if np.any(distortion != 0):
            rgb = undistort_image(rgb, K, distortion)
            alpha = None if alpha is None else undistort_image(alpha, K, distortion)
            mask = None if mask is None else undistort_image(mask, K, distortion)
        size = target_size(width, height, short_side)
        rgb, alpha = resize(rgb, size), None if alpha is None else resize(alpha, size)
        images.append(np.clip(composite(rgb, alpha, background), 0.0, 1.0).astype(np.float32))
        alphas.append(alpha)
        valid.append(None if mask is None else resize(mask, size) >= 0.5)
        poses.append(opencv_from_opengl(matrix))
        intrinsics.append(resize_intrinsics(K, (width, height), size))
        names.append(image_path.name)
    if missing:
        log.warning("%s: %d of %d frames name missing images (first: %s); skipped them",
                    json_path, len(missing), len(frames), missing[0])
    if not images:
        raise InputError(f"{json_path}: none of its {len(frames)} images exist")
    poses = np.stack(poses)
    if "near" in content and "far" in content:
        near, far = float(content["near"]), float(content["far"])
    else:
        near, far = bounds_from_cameras(poses)
    masks = None if any(v is None for v in valid) else np.stack(valid)
    return stack_set(images, alphas, poses, np.stack(intrinsics), names, near, far, json_path, valid=masks)


def write_transforms(posed: PosedImages, out_dir: str | os.PathLike, shared_intrinsics: bool = True,
                     distortion: np.ndarray | None = None, image_dir: str = "images", background: float = 1.0) -> Path:
    """Write PosedImages as ``out_dir/transforms.json`` + PNGs (RGBA when `posed.alphas` is set).

    RGBA images get straight (un-composited) colour, assuming `posed.images` were composited over
    `background`. The images are written as they are: `distortion` (k1 k2 p1 p2 [k3]) only records the
    lens model they were taken with. Returns the JSON path.
    """
    import cv2

    out_dir = Path(out_dir)
    (out_dir / image_dir).mkdir(parents=True, exist_ok=True)
    intrinsics = posed.intrinsics.double().numpy()
    first = intrinsics[0]
    content: dict = {"w": posed.width, "h": posed.height, "near": posed.near, "far": posed.far, "frames": []}
    if shared_intrinsics:
        cx, cy = principal_point_to_half_pixel(first[2], first[3])
        content.update({"camera_model": "OPENCV", "fl_x": first[0], "fl_y": first[1], "cx": cx, "cy": cy})
    if distortion is not None:
        content.update({key: float(value) for key, value in zip(DISTORTION_KEYS, distortion)})
    matrices = opengl_from_opencv(posed.world_from_camera.double().numpy())
    for i, name in enumerate(posed.names):
        stem = Path(name).stem
        colour = posed.images[i].numpy()
        if posed.alphas is not None:
            alpha = posed.alphas[i].numpy()[..., None]
            colour = np.where(alpha > 0, (colour - background * (1 - alpha)) / np.maximum(alpha, 1e-6), 0.0)
        rgb = (np.clip(colour, 0, 1) * 255).round().astype(np.uint8)[..., ::-1]
        if posed.alphas is not None:
            rgb = np.dstack([rgb, (posed.alphas[i].numpy() * 255).round().astype(np.uint8)])
        ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb))
        if not ok:
            raise InputError(f"could not encode image {name}")
        write_bytes_atomic(out_dir / image_dir / f"{stem}.png", encoded.tobytes())
        frame = {"file_path": f"{image_dir}/{stem}.png", "transform_matrix": matrices[i].tolist()}
        if not shared_intrinsics:
            cx, cy = principal_point_to_half_pixel(intrinsics[i, 2], intrinsics[i, 3])
            frame.update({"fl_x": intrinsics[i, 0], "fl_y": intrinsics[i, 1], "cx": cx, "cy": cy})
        content["frames"].append(frame)
    path = out_dir / "transforms.json"
    write_bytes_atomic(path, (json.dumps(content, indent=1, default=float) + "\n").encode())
    return path
