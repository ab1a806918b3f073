"""`FileDepth`: depth maps the user already has (a folder of .npy / 16-bit .png / .tif / .exr, or one
[T, H, W] .npy / .npz)."""
from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from recon4d.errors import PriorError
from recon4d.priors.depth.config import DEPTH_ALGORITHM_VERSION, FileDepthConfig
from recon4d.priors.depth.inputs import check_frames, resize
from recon4d.priors.types import DepthResult, FlowResult

_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".exr")
_FILE_SUFFIXES = (".npy",) + _IMAGE_SUFFIXES


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


class FileDepth:
    """User-supplied depth maps: a folder with one file per frame (.npy, 16-bit .png, .tif, .exr; sorted by
    natural order of the names), or one .npy / .npz holding [T, H, W] (npz: key "depth" or its only array).

    Maps are resized (nearest neighbour, so no depth is invented across edges) to the clip size when the
    aspect ratio fits. Non-finite or non-positive values are filled from the nearest valid pixel and get
    confidence 0; every other pixel has confidence 1.
    """

    name = "file"

    def __init__(self, path: str | Path, config: FileDepthConfig | None = None) -> None:
        self.path = Path(path)
        self.config = config or FileDepthConfig()
        if not self.path.exists():
            raise PriorError(f"depth path {self.path} does not exist",
                             "pass a folder of per-frame depth files or one .npy/.npz [T, H, W]")
        if self.path.is_file() and self.path.suffix.lower() not in (".npy", ".npz"):
            raise PriorError(f"depth file {self.path} is not .npy or .npz",
                             "pass a folder of per-frame depth files or one .npy/.npz [T, H, W]")

    def settings(self) -> dict[str, Any]:
        """Everything that changes the result, for cache keys: the files' names, sizes and times, the config."""
        paths = [self.path] if self.path.is_file() else sorted(self.path.iterdir())
        files = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in paths if p.is_file()]
        return {"estimator": self.name, "version": DEPTH_ALGORITHM_VERSION, "path": str(self.path.resolve()),
                "files": files, **asdict(self.config)}

    def __call__(self, frames: np.ndarray, flow: FlowResult | None = None, intrinsics: np.ndarray | None = None,
                 moving_masks: np.ndarray | None = None) -> DepthResult:
        """frames [T, H, W, 3] uint8 RGB (only their count and size are used); the other inputs are ignored."""
        check_frames(frames)
        num_frames, height, width = frames.shape[:3]
        maps = self._load()
        if len(maps) != num_frames:
            raise PriorError(f"{self.path} holds {len(maps)} depth maps but the clip has {num_frames} frames",
                             "give one depth map per frame")
        depth = np.empty((num_frames, height, width), dtype=np.float32)
        confidence = np.empty((num_frames, height, width), dtype=np.float32)
        for t, raw in enumerate(maps):
            depth[t], confidence[t] = self._fit(raw, t, height, width)
        return DepthResult(depth=depth, confidence=confidence, metric=self.config.metric)

    def _load(self) -> list[np.ndarray]:
        if self.path.is_file():
            arr = self._load_array_file(self.path)
            if arr.ndim == 2:
                arr = arr[None]
            if arr.ndim != 3:
                raise PriorError(f"{self.path} holds an array of shape {arr.shape}, expected [T, H, W]",
                                 "save the depth as one [T, H, W] array")
            return list(arr)
        files = sorted((p for p in self.path.iterdir() if p.suffix.lower() in _FILE_SUFFIXES), key=_natural_key)
        if not files:
            raise PriorError(f"no depth files (.npy, .png, .tif, .exr) in {self.path}",
                             "put one depth map per frame in the folder")
        return [self._load_frame_file(p) for p in files]

    @staticmethod
    def _load_array_file(path: Path) -> np.ndarray:
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise PriorError(f"cannot read depth file {path}: {exc}", "save it with numpy.save / savez") from exc
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                keys = list(data.keys())
                if "depth" in keys:
                    return np.asarray(data["depth"])
                if len(keys) == 1:
                    return np.asarray(data[keys[0]])
            raise PriorError(f"{path} holds arrays {keys}; expected one array or one named 'depth'",
                             "save the depth under the key 'depth'")
        return np.asarray(data)

    def _load_frame_file(self, path: Path) -> np.ndarray:
        if path.suffix.lower() == ".npy":
            arr = self._load_array_file(path)
        else:
            arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if arr is None:
                hint = ("OpenCV reads EXR only with OPENCV_IO_ENABLE_OPENEXR=1 set; or convert to .npy"
                        if path.suffix.lower() == ".exr" else "save depth as 16-bit png or .npy")
                raise PriorError(f"cannot read depth image {path}", hint)
            if np.issubdtype(arr.dtype, np.integer):
                arr = arr.astype(np.float64) * self.config.png_scale
        arr = np.squeeze(arr)
        if arr.ndim != 2:
            raise PriorError(f"depth map {path} has shape {arr.shape}, expected one channel [H, W]",
                             "save depth as a single-channel image or a 2-D array")
        return arr

    def _fit(self, raw: np.ndarray, index: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        raw = np.asarray(raw, dtype=np.float32)
        src_h, src_w = raw.shape
        if abs((src_w / src_h) / (width / height) - 1.0) > self.config.max_aspect_change:
            raise PriorError(f"depth map {index} is {src_w}x{src_h}, which does not fit the {width}x{height} clip",
                             "give depth maps with the clip's aspect ratio")
        valid = np.isfinite(raw) & (raw > 0)
        if not valid.any():
            raise PriorError(f"depth map {index} has no positive finite value", "check the depth files")
        if not valid.all():
            _, (near_i, near_j) = ndimage.distance_transform_edt(~valid, return_indices=True)
            raw = raw[near_i, near_j]
        conf = valid.astype(np.float32)
        if (src_h, src_w) != (height, width):
            raw = resize(raw, width, height, cv2.INTER_NEAREST)
            conf = resize(conf, width, height, cv2.INTER_NEAREST)
        return raw, conf
