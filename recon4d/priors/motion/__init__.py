"""Still/moving split of every frame from optical flow, GFlow-style: epipolar (or homography) residuals.

For every pair of frames (s, s+k), k in ``MotionConfig.baselines`` (k > 1 through chained flow), the camera
motion is fitted robustly to flow correspondences of the whole image, where still pixels are the majority:

1. Correspondences: a grid of valid forward vectors (x, x + f(x)) plus valid backward vectors reversed
   (y + b(y), y), so both directions vote for one pair geometry. Blank (textureless) pixels are left out
   when frames are given.
2. Robust fits of a fundamental matrix F and a homography H (``cv2.findFundamentalMat`` /
   ``cv2.findHomography`` with MAGSAC++ or RANSAC).
3. Model selection with Torr's GRIC: a rotation-only (or static, or planar-scene) camera is explained by H
   as well as by F, and F is then degenerate (any F through the epipole fits, so moving pixels can fit it
   too). GRIC charges F for its extra degree of freedom per point, so H wins unless there is real parallax.
   A camera whose still pixels barely move is labelled "static" (its H is ~identity).
4. Per-pixel residual of the chosen model for every flow vector of the pair: the Sampson distance for F, and
   the transfer distance |H x - x'| / sqrt(2) for H (the same both-image first-order distance for a
   near-isometric H, so one threshold scale fits both). Both in pixels.
5. Each residual is divided by its pair's threshold: max(floor * k ** growth, factor * robust spread of the
   inlier residuals), with a lower floor for F pairs (Sampson sees only the off-epipolar part of an
   independent motion). A frame's score is the mean of its valid, textured normalised residuals over all
   pairs that touch it (later and earlier frames; frame 0 has only later ones). Score > 1 = moving.
6. The motion window (``window``): each frame is also judged by its chained flow over W frames against the
   clip's own still-region noise at that baseline, so that slow motion, below any per-pair threshold, is
   found; the final score is the larger of the two.
7. Clean-up: morphological opening and closing, removal of small components, hole filling.

Limitations, inherent to geometry from flow alone:
- An object moving along its own epipolar lines (e.g. sideways when the camera also moves sideways) looks
  like still parallax; longer baselines, spin or any other motion component give it away.
- A translating camera over a dominant plane (a table top) with a small still object above it is explained
  by H nearly as well as by F; GRIC then picks H and the object's parallax is called motion.
- The window calls still whatever F explains when GRIC picks H, so a slow object under a rotating camera is
  missed; and where slow movers cover most textured pixels (a hand in front of a blank wall), the robust fits
  take their motion for the camera's and the still-region noise level is overestimated.

Modules: `config` (MotionConfig, camera models), `geometry` (pair fits and residuals), `maps` (chained
flow, texture, clean-up), `window` (the motion window), `estimate` (`estimate_moving_masks`).

Pixel convention: the centre of pixel (row i, column j) is at (u=j, v=i), as in ``recon4d.priors.types``.
"""

from recon4d.priors.motion.config import CAMERA_MODELS, MotionConfig
from recon4d.priors.motion.estimate import MotionResult, estimate_moving_masks
from recon4d.priors.motion.geometry import PairGeometry, fit_pair_geometry, homography_distance, sampson_distance
from recon4d.priors.motion.maps import clean_mask, compose_flow, texture_strength

__all__ = [
    "CAMERA_MODELS",
    "MotionConfig",
    "MotionResult",
    "PairGeometry",
    "estimate_moving_masks",
    "fit_pair_geometry",
    "sampson_distance",
    "homography_distance",
    "clean_mask",
    "compose_flow",
    "texture_strength",
]
