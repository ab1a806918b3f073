"""Synthetic 4D clips with exact ground truth, ray-cast from analytic primitives in NumPy.

Independent of any Gaussian renderer, so it can judge the renderer, the priors and the fit alike.

Scene (world frame = OpenCV axes: x right, y down, z forward; units are arbitrary "metres"):
  * a textured back wall (plane z = 8.5) and floor (plane y = 1.3), a static box and a static sphere
    standing on the floor;
  * a moving sphere and a moving box (rigid motion: an elliptic orbit plus a spin about a tilted axis).
    Their textures live in object-local coordinates, so texture moves with the object (flow is well posed).
Depth ranges over about 2.7 .. 8.7 units.

Camera: pinhole, OpenCV convention, poses as ``world_from_camera`` 4x4, intrinsics fx, fy, cx, cy in pixels.
Pixel convention: the centre of pixel (row i, column j) is at (u=j, v=i); cx = (W-1)/2, cy = (H-1)/2.
A ray through (u, v) has camera-frame direction ((u-cx)/fx, (v-cy)/fy, 1), so its ray parameter *is* the
z-depth; depth, flow, masks and tracks all come from the ray through the pixel centre.
RGB is supersampled (2x2 by default) so frames look like real, anti-aliased video.

Variants (per-frame motion is independent of the clip length; all motions are bounded oscillations, so long
clips stay framed):
  ``translate``    camera slides sideways (+ a little forward) while looking at a fixed point: real parallax;
                   objects move (~1-5 px/frame at 128 px width).
  ``rotate``       camera pans/tilts about its own centre (no translation); objects move.
  ``static``       camera fixed; objects move.
  ``fast``         camera as ``translate``; objects move fast (~8-15 px/frame at 128 px width).
  ``static_scene`` camera as ``translate``; nothing moves (``moving_mask`` is empty).

Modules, in the order a clip is made: `config` (variants, every tunable number), `scene` (primitives, their
motion, the camera path, intrinsics), `raycast` (exact hits, projection, visibility), `shading` (texture and
light), `generate` (`make_synthetic`: frames and every ground-truth array, the `SyntheticClip` of `clip`),
`ground_truth_files` (`write_synthetic` / `load_ground_truth`).
"""
from recon4d.eval.synthetic.clip import SyntheticClip
from recon4d.eval.synthetic.config import VARIANTS, SyntheticConfig
from recon4d.eval.synthetic.generate import make_synthetic
from recon4d.eval.synthetic.ground_truth_files import GT_FORMAT, GT_VERSION, load_ground_truth, write_synthetic
from recon4d.eval.synthetic.scene import make_intrinsics

__all__ = [
    "GT_FORMAT", "GT_VERSION", "VARIANTS", "SyntheticClip", "SyntheticConfig", "load_ground_truth",
    "make_intrinsics", "make_synthetic", "write_synthetic",
]
