"""Camera exports: nerfstudio ``transforms.json`` and COLMAP text, plus readers for both.

All convention changes between recon4d and other tools live in this module:

* recon4d: OpenCV camera axes (x right, y down, z forward); poses are ``world_from_camera``; the centre of
  pixel (row i, column j) is at (u=j, v=i), so a W-pixel-wide image spans u in [-0.5, W - 0.5].
* nerfstudio: OpenGL camera axes (x right, y up, z backward) in ``transform_matrix`` (camera-to-world);
  pixel centres at (j + 0.5, i + 0.5). So ``transform_matrix = world_from_camera @ diag(1, -1, -1, 1)``
  and ``cx = cx_opencv + 0.5``.
* COLMAP: OpenCV camera axes, poses stored as ``cam_from_world`` (quaternion + translation); pixel centres
  at (j + 0.5, i + 0.5) as in nerfstudio, so ``cx = cx_opencv + 0.5``.

Output layout of `export_cameras(scene, out_dir, ...)` (loads as a nerfstudio dataset and as a COLMAP
dataset, e.g. for gsplat's or nerfstudio's COLMAP loaders)::

    out_dir/transforms.json
    out_dir/images/frame_0000.png ...        (only when frames are given)
    out_dir/sparse/0/cameras.txt images.txt points3D.txt (+ rigs.txt frames.txt from COLMAP >= 3.12)

Example:
    >>> paths = export_cameras(load_scene("out"), "out/cameras")          # doctest: +SKIP
    >>> poses = read_transforms_json(paths["nerfstudio"])                 # doctest: +SKIP
    >>> poses.world_from_camera.shape                                     # doctest: +SKIP
    torch.Size([30, 4, 4])
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recon4d.errors import BackendError, InputError
from recon4d.io.atomic import write_bytes_atomic
from recon4d.io.frames import FRAME_STEM, frame_file_name
from recon4d.io.scene import Scene4D

# Pixel-centre shift from recon4d/OpenCV (centre of pixel (0, 0) at 0) to COLMAP/nerfstudio (at 0.5).
PIXEL_CENTER_OFFSET = 0.5
# Right-multiplying a camera-to-world pose by this flips the camera's y and z axes: OpenCV <-> OpenGL.
_FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])
CAMERA_FORMATS = ("nerfstudio", "colmap")
IMAGE_DIR = "images"
COLMAP_DIR = "sparse/0"


@dataclass(frozen=True)
class CameraExportConfig:
    """What goes beside the poses.

    Attributes:
        max_points: at most this many still Gaussians (centres and colours) become COLMAP ``points3D``,
            which COLMAP-based splat trainers use for initialisation; 0 writes an empty points3D.txt.
        min_point_opacity: Gaussians below this opacity are not written as points (they are often
            floaters or half-transparent fill).
    """

    max_points: int = 100_000
    min_point_opacity: float = 0.5


@dataclass(frozen=True)
class CameraPoses:
    """Cameras read back from an export, in recon4d's conventions.

    Attributes:
        world_from_camera: [T, 4, 4] float64, OpenCV axes.
        intrinsics: [T, 4] float64 fx, fy, cx, cy in pixels, OpenCV pixel centres.
        width, height: image size in pixels (of the first camera).
        image_names: per frame, the image file the export refers to.
    """

    world_from_camera: torch.Tensor
    intrinsics: torch.Tensor
    width: int
    height: int
    image_names: list[str]


def opengl_from_opencv(world_from_camera: np.ndarray) -> np.ndarray:
    """[..., 4, 4] camera-to-world pose with OpenCV camera axes -> the same pose with OpenGL axes (and back)."""
    return np.asarray(world_from_camera, dtype=np.float64) @ _FLIP_YZ


def image_name(t: int) -> str:
    """File name of frame t's image in both exports: 'frame_0000.png' ..."""
    return frame_file_name(FRAME_STEM, t, ".png")


def _poses_and_intrinsics(scene: Scene4D) -> tuple[np.ndarray, np.ndarray]:
    world_from_camera = scene.cameras.world_from_camera.detach().cpu().to(torch.float64).numpy()
    intrinsics = scene.cameras.intrinsics.detach().cpu().to(torch.float64).numpy()
    return world_from_camera, intrinsics


def write_frame_images(frames_rgb, out_dir: str | os.PathLike) -> list[Path]:
    """frames_rgb: [T, H, W, 3] uint8 RGB (numpy or torch) -> PNGs ``out_dir/frame_0000.png`` ..., atomically."""
    import cv2

    frames = frames_rgb.detach().cpu().numpy() if isinstance(frames_rgb, torch.Tensor) else np.asarray(frames_rgb)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(f"frames must be uint8 RGB [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    paths = []
    for t, frame in enumerate(frames):
        ok, encoded = cv2.imencode(".png", np.ascontiguousarray(frame[..., ::-1]))  # OpenCV wants BGR
        if not ok:
            raise InputError(f"could not encode frame {t} as PNG")
        path = Path(out_dir) / image_name(t)
        write_bytes_atomic(path, encoded.tobytes())
        paths.append(path)
    return paths


def transforms_json(scene: Scene4D, image_dir: str = IMAGE_DIR) -> dict:
    """The nerfstudio ``transforms.json`` content of a scene (a JSON-serialisable dict).

    Shared intrinsics (frame 0's) are at the top level; frames whose intrinsics differ carry their own
    ``fl_x fl_y cx cy`` as nerfstudio allows. Each frame also has its ``timestamp`` in seconds.
    """
    world_from_camera, intrinsics = _poses_and_intrinsics(scene)
    fx, fy, cx, cy = intrinsics[0]
    content = {
        "camera_model": "OPENCV",
        "fl_x": fx,
        "fl_y": fy,
        "cx": cx + PIXEL_CENTER_OFFSET,
        "cy": cy + PIXEL_CENTER_OFFSET,
        "w": scene.cameras.width,
        "h": scene.cameras.height,
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "frames": [],
    }
    timestamps = scene.cameras.timestamps.detach().cpu().to(torch.float64).numpy()
    transform_matrix = opengl_from_opencv(world_from_camera)
    for t in range(scene.num_frames):
        frame = {
            "file_path": f"{image_dir}/{image_name(t)}",
            "transform_matrix": transform_matrix[t].tolist(),
            "timestamp": float(timestamps[t]),
        }
        if not np.array_equal(intrinsics[t], intrinsics[0]):
            fx, fy, cx, cy = intrinsics[t]
            frame.update({"fl_x": fx, "fl_y": fy, "cx": cx + PIXEL_CENTER_OFFSET, "cy": cy + PIXEL_CENTER_OFFSET})
        content["frames"].append(frame)
    return json.loads(json.dumps(content, default=float))  # numpy scalars -> plain floats


def write_transforms_json(scene: Scene4D, path: str | os.PathLike) -> Path:
    """Write the scene's cameras as a nerfstudio ``transforms.json`` at `path` (atomically)."""
    path = Path(path)
    write_bytes_atomic(path, (json.dumps(transforms_json(scene), indent=2) + "\n").encode())
    return path


def read_transforms_json(path: str | os.PathLike) -> CameraPoses:
    """Read a nerfstudio ``transforms.json`` (pinhole part; distortion ignored) -> recon4d conventions."""
    path = Path(path)
    if path.is_dir():
        path = path / "transforms.json"
    try:
        content = json.loads(path.read_text())
        frames = content["frames"]
        poses, intrinsics = [], []
        for frame in frames:
            poses.append(np.asarray(frame["transform_matrix"], dtype=np.float64))
            values = [frame.get(key, content.get(key)) for key in ("fl_x", "fl_y", "cx", "cy")]
            if None in values:
                raise KeyError("fl_x/fl_y/cx/cy")
            intrinsics.append(values)
        width, height = int(content.get("w", frames[0].get("w"))), int(content.get("h", frames[0].get("h")))
    except FileNotFoundError as exc:
        raise InputError(f"no transforms.json at {path}") from exc
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise InputError(f"{path} is not a nerfstudio transforms.json: {exc}") from exc
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    intrinsics[:, 2:] -= PIXEL_CENTER_OFFSET
    world_from_camera = opengl_from_opencv(np.stack(poses))
    return CameraPoses(
        torch.from_numpy(world_from_camera),
        torch.from_numpy(intrinsics),
        width,
        height,
        [Path(frame["file_path"]).name for frame in frames],
    )


def _pycolmap():
    try:
        import pycolmap
    except ImportError as exc:
        raise BackendError("COLMAP export needs pycolmap", hint="pip install pycolmap") from exc
    return pycolmap


def _colmap_points(scene: Scene4D, config: CameraExportConfig) -> tuple[np.ndarray, np.ndarray]:
    """Opaque Gaussians that are not moving things (canonical positions) -> points [M, 3] float64 and colours [M, 3] uint8 (evenly thinned to max_points)."""
    g = scene.gaussians
    keep = (~scene.is_moving) & (g.opacities >= config.min_point_opacity)
    index = keep.nonzero().squeeze(1)
    if config.max_points <= 0:
        index = index[:0]
    elif len(index) > config.max_points:
        index = index[torch.linspace(0, len(index) - 1, config.max_points).round().long()]
    points = g.means[index].detach().cpu().to(torch.float64).numpy()
    colors = g.colors[index, :3].detach().cpu().clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return points, colors


def colmap_reconstruction(scene: Scene4D, config: CameraExportConfig | None = None):
    """The scene's cameras as a `pycolmap.Reconstruction`: one PINHOLE camera per distinct intrinsics,
    one registered image per frame (image_id = t + 1, name ``frame_0000.png``), still Gaussians as points3D.
    """
    pycolmap = _pycolmap()
    config = config or CameraExportConfig()
    world_from_camera, intrinsics = _poses_and_intrinsics(scene)
    camera_from_world = np.linalg.inv(world_from_camera)
    reconstruction = pycolmap.Reconstruction()
    camera_ids: dict[tuple[float, ...], int] = {}
    for t in range(scene.num_frames):
        key = tuple(intrinsics[t].tolist())
        if key not in camera_ids:
            camera_ids[key] = len(camera_ids) + 1
            fx, fy, cx, cy = key
            camera = pycolmap.Camera(
                camera_id=camera_ids[key],
                model="PINHOLE",
                width=scene.cameras.width,
                height=scene.cameras.height,
                params=[fx, fy, cx + PIXEL_CENTER_OFFSET, cy + PIXEL_CENTER_OFFSET],
            )
            # COLMAP >= 3.12 keeps images in frames of rigs; a lone camera is a rig of one.
            reconstruction.add_camera_with_trivial_rig(camera)
        image = pycolmap.Image(name=image_name(t), camera_id=camera_ids[key], image_id=t + 1)
        reconstruction.add_image_with_trivial_frame(image, pycolmap.Rigid3d(camera_from_world[t, :3, :4]))
    points, colors = _colmap_points(scene, config)
    for point, color in zip(points, colors, strict=True):
        reconstruction.add_point3D(point, pycolmap.Track(), color)
    return reconstruction


def write_colmap_text(scene: Scene4D, out_dir: str | os.PathLike, config: CameraExportConfig | None = None) -> Path:
    """Write COLMAP text files (cameras.txt, images.txt, points3D.txt, ...) into `out_dir`, each atomically."""
    import tempfile

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reconstruction = colmap_reconstruction(scene, config)
    # pycolmap writes a whole folder; stage it beside the target, then move each file in atomically.
    with tempfile.TemporaryDirectory(prefix=".colmap.", dir=out_dir) as staging:
        reconstruction.write_text(staging)
        for staged in sorted(Path(staging).iterdir()):
            write_bytes_atomic(out_dir / staged.name, staged.read_bytes())
    return out_dir


def read_colmap_text(path: str | os.PathLike) -> CameraPoses:
    """Read a COLMAP text model folder -> cameras in recon4d conventions, images in image_id order.

    Only pinhole cameras are accepted (SIMPLE_PINHOLE, PINHOLE, or a model whose distortion is zero).
    """
    pycolmap = _pycolmap()
    path = Path(path)
    if not (path / "cameras.txt").is_file() or not (path / "images.txt").is_file():
        raise InputError(f"no COLMAP text model at {path}", hint="expected cameras.txt and images.txt there")
    reconstruction = pycolmap.Reconstruction()
    try:
        reconstruction.read_text(str(path))
    except Exception as exc:  # pycolmap raises RuntimeError/ValueError for malformed lines
        raise InputError(f"cannot read the COLMAP model at {path}: {str(exc).splitlines()[0]}") from exc
    poses, intrinsics, names = [], [], []
    for image_id in sorted(reconstruction.images):
        image = reconstruction.images[image_id]
        camera = reconstruction.cameras[image.camera_id]
        distortion = np.asarray(camera.params)[list(camera.extra_params_idxs())]
        if camera.model_name not in ("SIMPLE_PINHOLE", "PINHOLE") and np.any(distortion != 0):
            raise InputError(
                f"COLMAP camera {camera.camera_id} ({camera.model_name}) has lens distortion",
                hint="undistort the images with COLMAP first",
            )
        cam_from_world = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
        pose = np.eye(4)
        pose[:3, :4] = cam_from_world.matrix()
        poses.append(np.linalg.inv(pose))
        K = np.asarray(camera.calibration_matrix())
        intrinsics.append([K[0, 0], K[1, 1], K[0, 2] - PIXEL_CENTER_OFFSET, K[1, 2] - PIXEL_CENTER_OFFSET])
        names.append(image.name)
    if not poses:
        raise InputError(f"the COLMAP model at {path} has no images")
    first = reconstruction.cameras[reconstruction.images[min(reconstruction.images)].camera_id]
    return CameraPoses(
        torch.from_numpy(np.stack(poses)),
        torch.from_numpy(np.asarray(intrinsics, dtype=np.float64)),
        int(first.width),
        int(first.height),
        names,
    )


def export_cameras(
    scene: Scene4D,
    out_dir: str | os.PathLike,
    frames_rgb=None,
    formats: Sequence[str] = CAMERA_FORMATS,
    config: CameraExportConfig | None = None,
) -> dict[str, Path]:
    """Write the scene's cameras for other tools.

    Args:
        scene: the fitted scene.
        out_dir: dataset folder (created if needed); see the module docstring for its layout.
        frames_rgb: optional [T, H, W, 3] uint8 RGB input frames (numpy or torch), written as
            ``images/frame_0000.png`` ... so that the folder is a complete dataset.
        formats: any of "nerfstudio" (transforms.json) and "colmap" (sparse/0/*.txt).
        config: COLMAP points3D settings.
    Returns:
        {"nerfstudio": transforms.json path, "colmap": model folder, "images": image folder} for what was written.
    """
    unknown = [name for name in formats if name not in CAMERA_FORMATS]
    if unknown:
        raise InputError(f"unknown camera format {unknown[0]!r}", hint=f"use {' or '.join(CAMERA_FORMATS)}")
    out_dir = Path(out_dir)
    if frames_rgb is not None:
        shape = tuple(np.shape(frames_rgb))
        expected = (scene.num_frames, scene.cameras.height, scene.cameras.width, 3)
        if shape != expected:
            raise InputError(
                f"frames have shape {shape}, the scene's cameras need {expected}",
                hint="pass the frames the scene was fitted on, at the fitted resolution",
            )
    written: dict[str, Path] = {}
    if "nerfstudio" in formats:
        written["nerfstudio"] = write_transforms_json(scene, out_dir / "transforms.json")
    if "colmap" in formats:
        written["colmap"] = write_colmap_text(scene, out_dir / COLMAP_DIR, config)
    if frames_rgb is not None:
        write_frame_images(frames_rgb, out_dir / IMAGE_DIR)
        written["images"] = out_dir / IMAGE_DIR
    return written
