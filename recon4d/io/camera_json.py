"""recon4d's camera JSON, written and read in one place: the cameras of a fit (``OUT/cameras.json``) and camera
paths (``recon4d render --path my_path.json``, the ``*_cameras.json`` written beside rendered videos).

A camera entry::

    {"world_from_camera": [[r00, r01, r02, tx], [r10, r11, r12, ty], [r20, r21, r22, tz], [0, 0, 0, 1]],
     "fx": 120.0, "fy": 120.0, "cx": 79.5, "cy": 44.5, ...}

- ``world_from_camera``: 4x4 rigid transform (orthonormal rotation with determinant +1, last row 0 0 0 1)
  mapping camera to world coordinates, OpenCV camera axes (x right, y down, z forward).
- ``fx``, ``fy``: focal lengths in pixels (> 0). ``cx``, ``cy``: principal point in pixels, OpenCV pixel centres
  (pixel (row i, column j) is centred at (j, i)); optional when the image size is known, default the image
  centre ((W-1)/2, (H-1)/2).
- Other fields ride along, always in the order of `FIELD_ORDER`: ``index``, ``name``, ``source_index`` (frame
  index in the source video), ``timestamp`` (seconds) before the camera; ``width``, ``height`` and ``time``
  (scene time in frame units, on camera paths) after it.

Files: a camera path is a JSON list of entries (an object ``{"views": [...]}`` is read too); a fit's
``cameras.json`` is ``{"convention": ..., "width": W, "height": H, "frames": [...]}`` whose frames repeat their
width and height. `read_camera_json` reads all three forms.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from recon4d.errors import InputError
from recon4d.io.atomic import write_bytes_atomic
from recon4d.io.scene import Scene4D

CONVENTION = "OpenCV (x right, y down, z forward); world_from_camera maps camera to world coordinates"
_CAMERA_KEYS = ("world_from_camera", "fx", "fy", "cx", "cy")
FIELD_ORDER = ("index", "name", "source_index", "timestamp", *_CAMERA_KEYS, "width", "height", "time")
_ROTATION_TOLERANCE = 1e-3  # max |R^T R - I| and |det R - 1| accepted when reading


@dataclass
class CameraJson:
    """Cameras read from a camera JSON file.

    Attributes:
        world_from_camera: [T, 4, 4] float64, validated rigid.
        intrinsics: [T, 4] float64 fx, fy, cx, cy in pixels (cx, cy filled in where the file omits them).
        width, height: the image size the file states at its top level, None for a plain list.
        fields: per camera, its other fields (name, time, ...) in file order.
    """

    world_from_camera: torch.Tensor
    intrinsics: torch.Tensor
    width: int | None
    height: int | None
    fields: list[dict]

    def __len__(self) -> int:
        return self.world_from_camera.shape[0]


# ----------------------------------------------------------------------------------------------------------
# Writing


def camera_entries(world_from_camera: torch.Tensor, intrinsics: torch.Tensor, **fields: Sequence) -> list[dict]:
    """world_from_camera [T, 4, 4], intrinsics [T, 4] (fx, fy, cx, cy) and per-camera fields (each a sequence of
    T JSON values, e.g. ``time=[0.0, 0.5]``) -> T camera entries, keys in `FIELD_ORDER` (unknown fields last)."""
    count = world_from_camera.shape[0]
    if intrinsics.shape != (count, 4) or any(len(values) != count for values in fields.values()):
        raise ValueError(f"expected {count} cameras in every argument, got intrinsics {tuple(intrinsics.shape)} "
                         f"and fields {({key: len(values) for key, values in fields.items()})}")
    poses, rows = world_from_camera.double().tolist(), intrinsics.double().tolist()
    order = {key: rank for rank, key in enumerate(FIELD_ORDER)}
    entries = []
    for t in range(count):
        entry = {key: values[t] for key, values in fields.items()}
        entry.update(zip(_CAMERA_KEYS, [poses[t], *rows[t]]))
        entries.append(dict(sorted(entry.items(), key=lambda item: order.get(item[0], len(order)))))
    return entries


def cameras_document(world_from_camera: torch.Tensor, intrinsics: torch.Tensor, width: int, height: int,
                     **fields: Sequence) -> dict:
    """The cameras.json object of T cameras of one image size (see `camera_entries` for the arguments)."""
    count = world_from_camera.shape[0]
    frames = camera_entries(world_from_camera, intrinsics, **fields, width=[int(width)] * count,
                            height=[int(height)] * count)
    return {"convention": CONVENTION, "width": int(width), "height": int(height), "frames": frames}


def scene_cameras_json(scene: Scene4D, source_indices: Sequence[int]) -> dict:
    """The ``cameras.json`` of `recon4d fit`: one camera per scene frame with its index, frame name, index in
    the source video (`source_indices`, one per frame) and timestamp."""
    cams = scene.cameras
    return cameras_document(cams.world_from_camera, cams.intrinsics, cams.width, cams.height,
                            index=list(range(len(cams))), name=list(cams.frame_names),
                            source_index=[int(i) for i in source_indices],
                            timestamp=[float(s) for s in cams.timestamps.tolist()])


def camera_json_bytes(value: dict | list) -> bytes:
    """The bytes of a camera JSON file (one indentation everywhere, so files of equal cameras are equal)."""
    return json.dumps(value, indent=1).encode()


def write_camera_json(path: str | os.PathLike, value: dict | list) -> Path:
    """Write a camera JSON value (`cameras_document` or a `camera_entries` list) atomically -> the path."""
    path = Path(path)
    write_bytes_atomic(path, camera_json_bytes(value))
    return path


# ----------------------------------------------------------------------------------------------------------
# Reading


def finite_number(entry: dict, key: str, where: str) -> float:
    """entry[key] as a float; InputError naming `where` unless it is a finite JSON number."""
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where}: {key!r} must be a finite number, got {value!r}")
    return float(value)


def _image_size(data: dict, source: str) -> tuple[int | None, int | None]:
    size = []
    for key in ("width", "height"):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{source}: {key!r} must be a positive integer, got {value!r}")
        size.append(value)
    return size[0], size[1]


def _rigid_pose(entry: dict, where: str) -> torch.Tensor:
    try:
        pose = torch.tensor(entry.get("world_from_camera"), dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        pose = None
    if pose is None or tuple(pose.shape) != (4, 4) or not bool(torch.isfinite(pose).all()):
        raise InputError(f"{where}: 'world_from_camera' must be a 4x4 list of finite numbers")
    rotation = pose[:3, :3]
    orthonormal = (rotation.T @ rotation - torch.eye(3, dtype=torch.float64)).abs().max() < _ROTATION_TOLERANCE
    if not orthonormal or abs(float(torch.linalg.det(rotation)) - 1) > _ROTATION_TOLERANCE \
            or not torch.allclose(pose[3], torch.tensor([0.0, 0, 0, 1], dtype=torch.float64)):
        raise InputError(f"{where}: 'world_from_camera' is not a rigid transform (rotation with det +1, "
                         "last row 0 0 0 1)")
    return pose


def parse_camera_json(data: object, source: str = "camera JSON",
                      image_size: tuple[int, int] | None = None) -> CameraJson:
    """Validate a camera JSON value (schema in the module docstring) -> CameraJson; InputError (one line) when
    it is bad. image_size: (width, height) giving the default principal point when the value states none."""
    width = height = None
    if isinstance(data, dict):
        width, height = _image_size(data, source)
        data = data.get("frames", data.get("views"))
    if not isinstance(data, list) or not data:
        raise InputError(f"{source}: expected a non-empty JSON list of cameras",
                         hint='each camera: {"world_from_camera": 4x4, "fx", "fy", "cx", "cy", ...}')
    centre_size = (width, height) if width is not None and height is not None else image_size
    poses, intrinsics, fields = [], [], []
    for index, entry in enumerate(data):
        where = f"{source}, camera {index}"
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected an object, got {type(entry).__name__}")
        poses.append(_rigid_pose(entry, where))
        fx, fy = finite_number(entry, "fx", where), finite_number(entry, "fy", where)
        if fx <= 0 or fy <= 0:
            raise InputError(f"{where}: focal lengths must be positive, got fx={fx}, fy={fy}")
        if centre_size is None and not ("cx" in entry and "cy" in entry):
            raise InputError(f"{where}: 'cx' and 'cy' are needed (the file states no image size)")
        cx = finite_number(entry, "cx", where) if "cx" in entry else (centre_size[0] - 1) / 2
        cy = finite_number(entry, "cy", where) if "cy" in entry else (centre_size[1] - 1) / 2
        intrinsics.append([fx, fy, cx, cy])
        fields.append({key: value for key, value in entry.items() if key not in _CAMERA_KEYS})
    return CameraJson(torch.stack(poses), torch.tensor(intrinsics, dtype=torch.float64), width, height, fields)


def read_camera_json(path: str | os.PathLike, image_size: tuple[int, int] | None = None) -> CameraJson:
    """Read and validate a camera JSON file (see `parse_camera_json`); InputError (one line) when it is bad."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"camera JSON file not found: {path}")
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror or exc})") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InputError(f"{path} is not valid JSON ({getattr(exc, 'msg', exc)})") from None
    return parse_camera_json(data, str(path), image_size)
