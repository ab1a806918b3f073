"""Posed RGBA view sets on disk: nerfstudio/Blender `transforms.json` + PNG images (read and write).

`transforms.json` stores camera-to-world matrices in the OpenGL convention (x right, y up, z backward);
in memory the poses are OpenCV `world_from_camera` (x right, y down, z forward), as everywhere in recon4d.
Intrinsics: `fl_x`/`fl_y`/`cx`/`cy` (pixels, nerfstudio pixel centres at j + 0.5, so
``cx = cx_opencv + 0.5`` as in `recon4d.export.cameras`) or `camera_angle_x` (radians, square pixels,
centred).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from recon4d.errors import InputError
from recon4d.export.cameras import PIXEL_CENTER_OFFSET
from recon4d.geometry import look_at
from recon4d.io.atomic import atomic_path, write_bytes_atomic

OPENGL_FROM_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


@dataclass
class ViewSet:
    """V posed RGBA images of one object.

    Attributes:
        images: [V, H, W, 4] float in [0, 1], straight alpha (alpha 1 everywhere for RGB inputs).
        world_from_camera: [V, 4, 4] OpenCV.
        K: [V, 3, 3] intrinsics in pixels.
    """

    images: torch.Tensor
    world_from_camera: torch.Tensor
    K: torch.Tensor

    @property
    def width(self) -> int:
        return self.images.shape[2]

    @property
    def height(self) -> int:
        return self.images.shape[1]


def intrinsics(fov_x_deg: float, width: int, height: int) -> torch.Tensor:
    """[3, 3] pinhole intrinsics with square pixels and the principal point at the image centre."""
    focal = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    return torch.tensor([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1.0]])


def orbit_poses(count: int, distance: float, elevations_deg: tuple[float, ...], center: torch.Tensor | None = None,
                azimuth_offset_deg: float = 0.0, up: torch.Tensor | None = None) -> torch.Tensor:
    """[count, 4, 4] OpenCV world_from_camera on a sphere about `center`, looking at it.

    `up` is the world's up direction (default +z, the corpus convention). Azimuths are evenly spaced;
    elevations cycle through `elevations_deg`, so every elevation band sees the object from all sides.
    """
    center = torch.zeros(3) if center is None else center.float()
    up = torch.tensor([0.0, 0.0, 1.0]) if up is None else up.float() / up.float().norm()
    # an orthonormal frame (a, b, up) with the azimuth measured in the a-b plane
    helper = torch.tensor([1.0, 0.0, 0.0]) if abs(float(up[0])) < 0.9 else torch.tensor([0.0, 1.0, 0.0])
    a = torch.linalg.cross(up, helper)
    a = a / a.norm()
    b = torch.linalg.cross(up, a)
    poses = []
    for i in range(count):
        azimuth = math.radians(azimuth_offset_deg + 360.0 * i / count)
        elevation = math.radians(elevations_deg[i % len(elevations_deg)])
        direction = math.cos(elevation) * (math.cos(azimuth) * a + math.sin(azimuth) * b) + math.sin(elevation) * up
        poses.append(look_at(center + distance * direction, center, up))
    return torch.stack(poses)


def write_view_set(folder: Path, views: ViewSet) -> None:
    """Write `images/NNN.png` (RGBA) and `transforms.json` into `folder` (each file atomically)."""
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    frames = []
    K = views.K[0]
    for index, image in enumerate(views.images):
        rgba = (image.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
        if not ok:
            raise RuntimeError("PNG encoding failed")
        name = f"images/{index:03d}.png"
        write_bytes_atomic(folder / name, encoded.tobytes())
        opengl = views.world_from_camera[index] @ OPENGL_FROM_OPENCV
        frames.append({"file_path": name, "transform_matrix": opengl.tolist()})
    transforms = {
        "camera_angle_x": 2 * math.atan(0.5 * views.width / float(K[0, 0])),
        "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]),
        "cx": float(K[0, 2]) + PIXEL_CENTER_OFFSET, "cy": float(K[1, 2]) + PIXEL_CENTER_OFFSET,
        "w": views.width, "h": views.height, "frames": frames,
    }
    with atomic_path(folder / "transforms.json") as tmp:
        tmp.write_text(json.dumps(transforms, indent=1))


def _read_image(path: Path) -> np.ndarray:
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise InputError(f"cannot read image {path}")
    if data.ndim == 2:
        data = np.repeat(data[..., None], 3, -1)
    scale = 65535.0 if data.dtype == np.uint16 else 255.0
    data = data.astype(np.float32) / scale
    if data.shape[-1] == 3:
        return np.concatenate([data[..., ::-1], np.ones_like(data[..., :1])], -1)
    return cv2.cvtColor(data, cv2.COLOR_BGRA2RGBA)


def _frame_path(folder: Path, file_path: str) -> Path:
    path = folder / file_path
    if path.suffix == "" and not path.exists():  # Blender synthetic scenes omit ".png"
        path = path.with_suffix(".png")
    return path


def read_view_set(folder: Path) -> ViewSet:
    """Read a folder with `transforms.json` (nerfstudio/Blender form) into a ViewSet."""
    folder = Path(folder)
    transforms_path = folder / "transforms.json"
    if not transforms_path.is_file():
        raise InputError(f"{folder} has no transforms.json", hint="a view set is images + nerfstudio transforms.json")
    try:
        meta = json.loads(transforms_path.read_text())
        frames = meta["frames"]
        if not frames:
            raise ValueError("no frames")
        images = np.stack([_read_image(_frame_path(folder, f["file_path"])) for f in frames])
        height, width = images.shape[1:3]
        poses, Ks = [], []
        for frame in frames:
            pose = torch.tensor(frame["transform_matrix"], dtype=torch.float32).reshape(4, 4)
            poses.append(pose @ OPENGL_FROM_OPENCV)
            merged = {**meta, **frame}
            if "fl_x" in merged:
                fx, fy = float(merged["fl_x"]), float(merged.get("fl_y", merged["fl_x"]))
                cx = float(merged.get("cx", width / 2)) - PIXEL_CENTER_OFFSET
                cy = float(merged.get("cy", height / 2)) - PIXEL_CENTER_OFFSET
            else:
                fx = fy = 0.5 * width / math.tan(0.5 * float(merged["camera_angle_x"]))
                cx, cy = (width - 1) / 2, (height - 1) / 2
            scale_x, scale_y = width / float(merged.get("w", width)), height / float(merged.get("h", height))
            Ks.append(torch.tensor([[fx * scale_x, 0, cx * scale_x], [0, fy * scale_y, cy * scale_y], [0, 0, 1.0]]))
    except InputError:
        raise
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise InputError(f"{transforms_path} is not a valid transforms.json ({exc})") from exc
    return ViewSet(torch.from_numpy(images), torch.stack(poses), torch.stack(Ks))
