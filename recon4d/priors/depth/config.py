"""Settings of the depth backends: every threshold of `VideoDepth`, the options of `FileDepth` and
`DepthAnythingV2`, and the algorithm version that keys cached depth priors."""
from __future__ import annotations

from dataclasses import dataclass, field

# Bumped whenever an estimator's algorithm changes its output, so cached priors are recomputed.
DEPTH_ALGORITHM_VERSION = 2


@dataclass
class VideoDepthConfig:
    """Every threshold of `VideoDepth`. Pixel quantities are in pixels of the working resolution."""

    # Frames larger than this (longest side, pixels) are processed downscaled and the depth upsampled:
    # the two-view geometry gains little from more pixels and the fill solve grows with the pixel count.
    max_working_side: int = 512
    # Partner frames t±k are searched for k = 1 .. max_frame_gap (flow chained k times).
    max_frame_gap: int = 6
    # Stop growing k once the median rotation-compensated parallax of a pair reaches this many pixels.
    target_parallax_px: float = 4.0
    # A pair whose median rotation-compensated parallax stays below this is treated as rotation-only or
    # static: a pure rotation explains its flow, so it carries no depth and is not triangulated.
    min_pair_parallax_px: float = 0.75
    # Stop chaining when fewer than this fraction of the pixels keep a valid, still correspondence.
    min_valid_fraction: float = 0.15
    # Correspondences used to fit the rotation-only model and the essential matrix (random subset).
    fit_points: int = 3000
    # Trimmed re-fits of the rotation-only model (each keeps the residuals below 2x the median).
    rotation_fit_iterations: int = 3
    # Robust estimator of the essential matrix: "magsac" (cv2.USAC_MAGSAC) or "ransac" (cv2.RANSAC).
    essential_method: str = "magsac"
    # Inlier threshold of the essential-matrix fit (pixels, distance to the epipolar line).
    essential_threshold_px: float = 1.0
    essential_confidence: float = 0.999
    # Pairs whose essential matrix explains fewer fit points than this are dropped as unreliable.
    min_inlier_ratio: float = 0.5
    # Inliers used by cv2.recoverPose to pick the one of four poses with the points in front of both cameras.
    chirality_points: int = 500
    # Per-point parallax (angle between the two viewing rays times the focal length, pixels): points
    # below it are too ill-conditioned to triangulate (depth error ~ flow noise / parallax).
    min_point_parallax_px: float = 1.0
    # Points whose triangulation reprojects further than this from the observed target pixel are dropped.
    max_reprojection_px: float = 1.5
    # Two depth maps on one frame are scale-linked only if they overlap on at least this many pixels.
    min_link_points: int = 50
    # Flow smears across depth discontinuities (a band of a few pixels around every occluding edge takes
    # a blend of foreground and background motion), so triangulated depth there is wrong. Pixels where the
    # merged log depth changes faster than depth_edge_log_gradient per pixel, widened by
    # depth_edge_margin_px, are dropped and filled from both sides along the image edges instead.
    depth_edge_log_gradient: float = 0.1
    depth_edge_margin_px: int = 2
    # The band is repaired by a colour-guided weighted median of the reliable depths around it (see
    # `repair_depth_edges`): window radius (pixels), colour sigma (RGB in [0, 1], root-mean-square over
    # channels) and the factor applied to the confidence of repaired pixels.
    edge_repair_radius_px: int = 6
    edge_repair_colour_sigma: float = 0.06
    edge_repair_confidence: float = 0.5
    # Plane-sweep refinement (after the first fill): each frame's depth is re-estimated per pixel by testing
    # depths exp(offset) * current for sweep_steps offsets in [-sweep_range, +sweep_range] (log depth) against
    # the partner frames' colours, with the cost (mean absolute RGB difference, truncated at
    # sweep_truncation) aggregated over a sweep_window x sweep_window box and the best partner per pixel
    # (so a pixel hidden in one partner is judged by the other). Matching small windows on the images
    # localises depth edges far better than the smoothed flow. A pixel takes the swept depth when its cost
    # curve has a clear minimum inside the range: (mean cost - best cost) >= sweep_min_distinctness.
    # sweep_passes > 1 repeats with half the range each time. 0 passes (the default) turns it off: measured
    # on the synthetic clips at 320x180 and on Middlebury it changed AbsRel by <= 0.001 in edges-only mode
    # for +35% time; on all pixels it sharpened synthetic edges a little but speckled real footage.
    # With sweep_edges_only the swept depth is used only within sweep_edge_margin_px of depth edges (where the
    # flow smears); elsewhere the flow's depth is smoother: on real footage with fine, noisy texture
    # (compressed video of a carpet) small-window matching picks speckled depths.
    sweep_edges_only: bool = True
    sweep_edge_margin_px: int = 4
    sweep_passes: int = 0
    sweep_range: float = 0.3
    sweep_steps: int = 15
    sweep_window: int = 3
    sweep_truncation: float = 0.15
    sweep_min_distinctness: float = 0.01
    sweep_median: int = 5
    # Depth agreement of several pairs on a pixel: confidence falls as exp(-(spread / sigma)^2), spread
    # being the median absolute deviation of log depth.
    agreement_sigma: float = 0.08
    # Agreement factor given to pixels seen by a single pair (nothing to agree with).
    single_map_agreement: float = 0.6
    # Parallax factor of the confidence: 1 - exp(-parallax_px / parallax_quality_px).
    parallax_quality_px: float = 3.0
    # Edge-aware fill: weight of the smoothness term against the data term (data weights are in [0, 1]).
    smoothness: float = 2.0
    # Colour difference (RGB in [0, 1], root-mean-square over channels) at which a neighbour link weakens
    # by exp(-1/2): depth edges are expected where the image has edges.
    guide_sigma: float = 0.04
    # Smallest neighbour weight, so every region stays connected to some data.
    edge_weight_floor: float = 1e-3
    cg_iterations: int = 300
    cg_tolerance: float = 1e-5
    # Confidence of filled (not triangulated) pixels: fill_confidence * exp(-distance / fill_decay_px).
    fill_confidence: float = 0.3
    fill_decay_px: float = 8.0
    # Upper bound of the confidence of pixels on moving objects (their depth is only a guess).
    moving_confidence: float = 0.1
    # Moving regions get the depth of the near end of the still depths around them: a moving thing occludes
    # what is behind it and usually stands on what is below it (ground contact), so the nearer part of its
    # surroundings is a better guess than their average. The ring is moving_ring_fraction of the longer image
    # side wide (at least 2 pixels); the value is the moving_ring_percentile-th percentile of its
    # triangulated depths, used as fill data of weight moving_prior_weight inside the region (the fill does
    # not mix moving and still pixels). Regions with fewer than moving_ring_min_points ring samples are just
    # filled from their surroundings.
    moving_ring_fraction: float = 0.08
    moving_ring_percentile: float = 2.0
    moving_prior_weight: float = 0.3
    moving_ring_min_points: int = 10
    # Frames without any triangulated pixel take depth from the nearest frame through the chained flow,
    # with the confidence scaled by this factor.
    propagated_confidence_factor: float = 0.5
    # Constant-depth fallback (no parallax anywhere in the clip): this confidence everywhere.
    fallback_confidence: float = 0.05
    seed: int = 0


@dataclass
class FileDepthConfig:
    """Options of `FileDepth`."""

    # Integer images (16-bit or 8-bit png/tif) hold depth * (1 / png_scale): depth = value * png_scale.
    # The default reads millimetres as metres.
    png_scale: float = 0.001
    # Whether the files hold depth in a known unit (metres); False = relative depth, one scale per clip.
    metric: bool = False
    # The file aspect ratio may differ from the clip's by this relative amount before it is an error.
    max_aspect_change: float = 0.02


@dataclass
class DepthAnythingV2Config:
    """Options of `DepthAnythingV2`."""

    device: str = "auto"  # "auto" = CUDA when available, else CPU
    batch_size: int = 4
    # Without a triangulated sparse depth to fit to, the relative inverse depth r is normalised to [0, 1]
    # between its 2nd and 98th percentile over the clip and depth = 1 / (r + default_inverse_shift),
    # i.e. the clip is assumed to span about 1 : (1 + 1/shift) in depth (21:1 for 0.05).
    default_inverse_shift: float = 0.05
    # Confidence of the learned depth (constant; the model gives no uncertainty).
    confidence: float = 0.5
    # The affine fit in inverse-depth space needs at least this many triangulated pixels.
    min_fit_points: int = 200
    video: VideoDepthConfig = field(default_factory=VideoDepthConfig)
