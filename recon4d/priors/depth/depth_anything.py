"""`DepthAnythingV2`: the learned monocular model through `transformers`, from a local folder only, its
relative inverse depth fitted to the clip's triangulated depth (`inverse_to_depth`)."""
from __future__ import annotations

import importlib.util
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from recon4d.errors import PriorError
from recon4d.priors.depth.config import DEPTH_ALGORITHM_VERSION, DepthAnythingV2Config
from recon4d.priors.depth.inputs import check_frames, resize
from recon4d.priors.depth.video import SparseDepth, VideoDepth
from recon4d.priors.types import DepthResult, FlowResult

DEPTH_ANYTHING_HINT = (
    "pip install transformers; download depth-anything/Depth-Anything-V2-Small-hf to a folder "
    "and pass --depth depth-anything-v2 --depth-path PATH"
)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class DepthAnythingV2:
    """Depth Anything V2 (relative inverse depth) through `transformers`, from a local folder only.

    The model predicts affine-invariant inverse depth r. When flow and intrinsics are given, `VideoDepth`
    triangulates a sparse depth d on still pixels and one affine map 1/d = a r + b is fitted for the clip
    (robustly, in inverse-depth space); otherwise the documented default of `DepthAnythingV2Config`
    (`default_inverse_shift`) is used. Depth is normalised to median 1, `metric=False`.
    """

    name = "depth-anything-v2"

    def __init__(self, model_path: str | Path, config: DepthAnythingV2Config | None = None) -> None:
        self.model_path = Path(model_path)
        self.config = config or DepthAnythingV2Config()
        if importlib.util.find_spec("transformers") is None:
            raise PriorError("the depth-anything-v2 prior needs the 'transformers' package", DEPTH_ANYTHING_HINT)
        has_weights = self.model_path.is_dir() and (self.model_path / "config.json").is_file() and (
            any((self.model_path / name).is_file() for name in _WEIGHT_FILES)
            or any(self.model_path.glob("*.safetensors")))
        if not has_weights:
            raise PriorError(f"no Depth Anything V2 weights (config.json + model.safetensors) in {self.model_path}",
                             DEPTH_ANYTHING_HINT)
        self._model: Any = None
        self._processor: Any = None
        self._device: Any = None

    def settings(self) -> dict[str, Any]:
        """Everything that changes the result, for cache keys: the model folder's files and the config."""
        files = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(self.model_path.iterdir())
                 if p.is_file()]
        config = asdict(self.config)
        config.pop("batch_size")  # speed only
        return {"estimator": self.name, "version": DEPTH_ALGORITHM_VERSION, "path": str(self.model_path.resolve()),
                "files": files, **config}

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        try:
            self._processor = AutoImageProcessor.from_pretrained(str(self.model_path), local_files_only=True)
            model = AutoModelForDepthEstimation.from_pretrained(str(self.model_path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise PriorError(f"cannot load Depth Anything V2 from {self.model_path}: {exc}",
                             DEPTH_ANYTHING_HINT) from exc
        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        self._model = model.to(self._device).eval()

    def predict_inverse_depth(self, frames: np.ndarray) -> np.ndarray:
        """frames [T, H, W, 3] uint8 RGB -> relative inverse depth [T, H, W] float32 (>= 0, larger = nearer)."""
        import torch

        self._load()
        num_frames, height, width = frames.shape[:3]
        out = np.empty((num_frames, height, width), dtype=np.float32)
        batch = max(1, self.config.batch_size)
        with torch.no_grad():
            for start in range(0, num_frames, batch):
                chunk = [frames[i] for i in range(start, min(num_frames, start + batch))]
                inputs = self._processor(images=chunk, return_tensors="pt").to(self._device)
                predicted = self._model(**inputs).predicted_depth  # [B, h, w]
                resized = torch.nn.functional.interpolate(predicted[:, None], size=(height, width),
                                                          mode="bicubic", align_corners=False)[:, 0]
                out[start:start + len(chunk)] = resized.clamp_min(0).float().cpu().numpy()
        return out

    def __call__(self, frames: np.ndarray, flow: FlowResult | None, intrinsics: np.ndarray | None,
                 moving_masks: np.ndarray | None = None) -> DepthResult:
        check_frames(frames)
        inverse = self.predict_inverse_depth(frames)
        sparse = None
        if flow is not None and intrinsics is not None:
            sparse = VideoDepth(self.config.video).sparse(frames, flow, intrinsics, moving_masks)
        depth = inverse_to_depth(inverse, sparse, self.config)
        confidence = np.full(depth.shape, self.config.confidence, dtype=np.float32)
        return DepthResult(depth=depth, confidence=confidence, metric=False)


def inverse_to_depth(inverse: np.ndarray, sparse: SparseDepth | None,
                     config: DepthAnythingV2Config | None = None) -> np.ndarray:
    """Relative inverse depth [T, H, W] -> depth [T, H, W] > 0 with median 1.

    With a sparse triangulated depth: 1/d = a r + b fitted over all its pixels of the clip by iteratively
    re-weighted least squares (Cauchy weights); the fit is used only if a > 0 and it keeps 99% of the
    pixels in front of the camera. Otherwise the default of `DepthAnythingV2Config.default_inverse_shift`.
    """
    cfg = config or DepthAnythingV2Config()
    num_frames, height, width = inverse.shape
    fitted: np.ndarray | None = None
    if sparse is not None:
        small_h, small_w = sparse.log_depth.shape[1:]
        r_small = np.stack([resize(f, small_w, small_h, cv2.INTER_AREA) for f in inverse])
        ok = np.isfinite(sparse.log_depth)
        if ok.sum() >= cfg.min_fit_points:
            r = r_small[ok].astype(np.float64)
            target = np.exp(-sparse.log_depth[ok].astype(np.float64))
            weight = sparse.confidence[ok].astype(np.float64)
            design = np.stack([r, np.ones_like(r)], axis=1)
            coef = np.zeros(2)
            for _ in range(10):
                sw = np.sqrt(weight)
                coef = np.linalg.lstsq(design * sw[:, None], target * sw, rcond=None)[0]
                residual = design @ coef - target
                scale = 1.4826 * np.median(np.abs(residual)) + 1e-12
                weight = sparse.confidence[ok] / (1.0 + (residual / (2.0 * scale)) ** 2)
            candidate = coef[0] * inverse + coef[1]
            if coef[0] > 0 and np.mean(candidate > 0) >= 0.99:
                floor = np.percentile(candidate[candidate > 0], 1)
                fitted = 1.0 / np.maximum(candidate, floor)
    if fitted is None:
        low, high = np.percentile(inverse, [2, 98])
        normalised = np.clip((inverse - low) / max(high - low, 1e-12), 0.0, 1.0)
        fitted = 1.0 / (normalised + cfg.default_inverse_shift)
    fitted = fitted / np.median(fitted)
    return fitted.astype(np.float32)
