"""Per-frame depth priors: classical multi-view depth from the video itself, user files, Depth Anything V2.

Backends (all follow the `DepthEstimator` protocol of `recon4d.priors.types`; by name through
`make_depth_estimator`, module `backends`):

- `VideoDepth` (default, needs no weights; module `video`): two-view geometry on the optical flow. For every
  frame it picks a partner frame on each side with enough parallax (flow chained over up to `max_frame_gap`
  frames, `flow_chain`), estimates the relative pose from still pixels (essential matrix + chirality check;
  pairs a pure rotation explains are skipped) and triangulates every still pixel (`pairs`, `two_view`),
  brings all pairs to one clip-wide scale and merges them with a robust median (`scale_chaining`), repairs
  the flow's smear at depth edges (colour-guided weighted median, `edges`), fills the rest with an
  edge-aware weighted-least-squares solve in log depth, the frame as guide (`fill`), optionally sharpened
  by a small plane sweep against the partner frames (`plane_sweep`, off by default).
- `FileDepth` (module `file`): depth maps the user already has (a folder of .npy / 16-bit .png / .tif /
  .exr, or one [T, H, W] .npy / .npz).
- `DepthAnythingV2` (module `depth_anything`): the learned monocular model through `transformers`, from a
  local folder only.

Every threshold is a field of the backend's config dataclass (module `config`); input checks and the
working-resolution resampling are in `inputs`.

Pixel convention (as in `types.py`): the centre of pixel (row i, column j) is at (u=j, v=i); intrinsics
fx, fy, cx, cy are in pixels of the frames passed in. Depth is z-depth along the camera axis.
"""
from recon4d.priors.depth.backends import DEPTH_ESTIMATORS, make_depth_estimator
from recon4d.priors.depth.config import (
    DEPTH_ALGORITHM_VERSION,
    DepthAnythingV2Config,
    FileDepthConfig,
    VideoDepthConfig,
)
from recon4d.priors.depth.depth_anything import DEPTH_ANYTHING_HINT, DepthAnythingV2, inverse_to_depth
from recon4d.priors.depth.file import FileDepth
from recon4d.priors.depth.fill import fill_depth_edge_aware
from recon4d.priors.depth.plane_sweep import plane_sweep_refine
from recon4d.priors.depth.two_view import fit_rotation_only, triangulate_two_view
from recon4d.priors.depth.video import SparseDepth, VideoDepth

__all__ = [
    "DEPTH_ALGORITHM_VERSION",
    "DEPTH_ANYTHING_HINT",
    "DEPTH_ESTIMATORS",
    "DepthAnythingV2",
    "DepthAnythingV2Config",
    "FileDepth",
    "FileDepthConfig",
    "SparseDepth",
    "VideoDepth",
    "VideoDepthConfig",
    "fill_depth_edge_aware",
    "fit_rotation_only",
    "inverse_to_depth",
    "make_depth_estimator",
    "plane_sweep_refine",
    "triangulate_two_view",
]
