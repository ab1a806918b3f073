"""The depth backends by name: `make_depth_estimator("video" | "file" | "depth-anything-v2", **options)`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from recon4d.errors import PriorError
from recon4d.priors.depth.config import DepthAnythingV2Config, FileDepthConfig, VideoDepthConfig
from recon4d.priors.depth.depth_anything import DEPTH_ANYTHING_HINT, DepthAnythingV2
from recon4d.priors.depth.file import FileDepth
from recon4d.priors.depth.video import VideoDepth
from recon4d.priors.registry import BackendRegistry, config_from_options
from recon4d.priors.types import DepthEstimator

KIND = "depth prior"


def _make_video(config: VideoDepthConfig | None = None, **options: Any) -> VideoDepth:
    return VideoDepth(config or config_from_options(VideoDepthConfig, options, KIND, "video"))


def _make_file(path: str | Path | None = None, config: FileDepthConfig | None = None, **options: Any) -> FileDepth:
    if path is None:
        raise PriorError("the 'file' depth prior needs a path", "pass --depth-path FOLDER_OR_NPY")
    return FileDepth(path, config or config_from_options(FileDepthConfig, options, KIND, "file"))


def _make_depth_anything(model_path: str | Path | None = None, config: DepthAnythingV2Config | None = None,
                         **options: Any) -> DepthAnythingV2:
    if model_path is None:
        raise PriorError("the 'depth-anything-v2' depth prior needs a model folder", DEPTH_ANYTHING_HINT)
    return DepthAnythingV2(model_path, config or config_from_options(DepthAnythingV2Config, options, KIND,
                                                                     "depth-anything-v2"))


#: Depth backends by name; each factory takes the options of make_depth_estimator.
DEPTH_ESTIMATORS: BackendRegistry[DepthEstimator] = BackendRegistry(KIND)
DEPTH_ESTIMATORS.register("video", VideoDepth, _make_video)
DEPTH_ESTIMATORS.register("file", FileDepth, _make_file)
DEPTH_ESTIMATORS.register("depth-anything-v2", DepthAnythingV2, _make_depth_anything)


def make_depth_estimator(name: str = "video", **options: Any) -> DepthEstimator:
    """Depth prior by name: "video" (default, no weights), "file" (path=...), "depth-anything-v2"
    (model_path=...). Other keyword options are fields of that backend's config dataclass, or config=.
    Unknown name or option -> PriorError."""
    return DEPTH_ESTIMATORS.make(name, **options)
