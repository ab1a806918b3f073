"""Every threshold of the still/moving split, and the camera models a pair of frames can get."""

from __future__ import annotations

from dataclasses import dataclass

#: Per-pair camera models: "fundamental" (translation with parallax), "homography" (rotation-only or planar
#: scene: no parallax), "static" (still pixels do not move), "unknown" (too few valid flow vectors to fit,
#: e.g. a scene cut; nothing is marked moving in that pair).
CAMERA_MODELS = ("fundamental", "homography", "static", "unknown")
#: Bumped when the split's algorithm changes the masks for the same flow and config: it is part of the cache
#: keys of the masks and of the depth prior that reads them (`recon4d.priors.pipeline`).
MOTION_ALGORITHM_VERSION = 1


@dataclass
class MotionConfig:
    """Every threshold of the still/moving split. Pixel values are at the resolution of the flow.

    Attributes:
        baselines: frame distances k at which frames are compared: frame t against t +- k through chained
            flow (1 = consecutive pairs; it is always used). Independent motion accumulates over k frames
            faster than flow noise, so slow objects moving nearly along the epipolar lines, which look still
            in one pair, stand out over a longer baseline.
        sample_stride: grid step in pixels of the correspondences used to fit F and H.
        max_samples: at most this many correspondences per pair (a seeded random subset beyond it); the
            robust fits cost time linear in it.
        min_samples: fewer valid correspondences than this -> camera model "unknown", nothing moving.
        robust_method: "magsac" (cv2.USAC_MAGSAC, MAGSAC++) or "ransac".
        robust_threshold_px: inlier threshold of the robust fits in pixels (MAGSAC++ treats it as the
            maximum noise level).
        robust_confidence: confidence of the robust fits.
        robust_max_iters: iteration cap of the robust fits.
        static_flow_px: if the median flow length of the still (H-inlier) correspondences is below this,
            the camera is "static".
        gric_lambda3: GRIC's cap on one outlier's cost, in units of (4 - model dimension); Torr uses 2.
        gric_sigma_floor_px: lower bound of the noise level sigma used by GRIC (the inlier spread of good
            flow can be tiny, which would make GRIC over-sensitive to sub-pixel flow bias).
        homography_gric_margin: H is chosen when GRIC(H) < GRIC(F) + margin * n (n correspondences); 0 is
            plain GRIC, a positive margin prefers H (safer: a wrongly chosen F is degenerate).
        error_threshold_px: floor of the per-pair residual threshold for "homography" and "static" pairs,
            pixels (Sampson units). There the residual is the whole independent motion of a pixel.
        epipolar_threshold_px: the same floor for "fundamental" pairs. The Sampson distance sees only the
            part of an independent motion that leaves the epipolar line, so this floor is lower to stay
            about as sensitive; the price is a slightly wider mask where flow blurs motion boundaries.
        threshold_growth: the floors grow as k ** threshold_growth with the baseline k: chained flow is
            noisier and blurs motion boundaries more, while independent motion grows about linearly with k.
        adaptive_sigma_factor: the threshold is max(error_threshold_px, factor * sigma) where sigma is the
            robust spread (1.4826 * median) of the chosen model's inlier residuals.
        window_frames: W, frames of the motion window (0 = off): every frame is also judged by the residual
            of its chained flow W frames ahead and W frames back (shorter near the clip ends), so an object
            moving a fraction of a pixel per frame, which never crosses a per-pair threshold, is still found.
        window_noise_quantile: the noise scale of the window at baseline k comes from this quantile of the
            window residuals of the clip's still pixels at k (textured, valid, per-pair score <= 1), read as
            a Rayleigh quantile: sigma = Q / sqrt(-2 ln(1 - q)). Low, because slow movers pass the per-pair
            test and can be most of those pixels; it holds while truly still pixels are more than about this
            share of them. Unitless, in (0, 1).
        window_noise_sigmas: the window threshold is this many sigmas (unitless). For Rayleigh noise, 4.5
            sigma is exceeded with probability exp(-4.5^2 / 2) = 4e-5.
        window_floor_px: lower bound of that threshold, pixels (Sampson units) per sqrt(frame): at baseline
            k it is window_floor_px * k ** threshold_growth. It only matters where flow is nearly exact
            (synthetic footage), where the measured noise is ~0.
        window_exclusion_px: window evidence is ignored within this radius (pixels) of pixels the per-pair
            score already calls moving: flow blurs a fast object's motion into its surroundings, which the
            window would accumulate into a halo. 0 = off.
        min_texture: pixels whose texture strength (:func:`texture_strength`, grey levels per pixel along
            the weakest gradient direction) is below this carry no evidence when frames are given: flow in
            blank regions (walls, sky, sensor-flat backgrounds) is a guess that can pass the forward-backward
            check, and its residuals are noise. 0 = off.
        texture_radius_px: half size of the window of the texture measure.
        use_invalid_evidence: where a pixel has no valid (forward-backward consistent) flow in either
            direction, score it from its unreliable flow instead of calling it still.
        open_radius_px: radius of the opening that removes speckles (0 = off).
        close_radius_px: radius of the closing that joins nearby fragments (0 = off).
        min_component_fraction: moving components smaller than this share of the image are dropped.
        fill_holes: fill holes inside moving regions (textureless object interiors have weak evidence).
        seed: seed of the correspondence subsampling (results are deterministic).
        num_threads: robust fits run at once (OpenCV releases the GIL); 0 = os.cpu_count().
    """

    baselines: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    sample_stride: int = 4
    max_samples: int = 2000
    min_samples: int = 30
    robust_method: str = "magsac"
    robust_threshold_px: float = 0.5
    robust_confidence: float = 0.999
    robust_max_iters: int = 2000
    static_flow_px: float = 0.25
    gric_lambda3: float = 2.0
    gric_sigma_floor_px: float = 0.2
    homography_gric_margin: float = 0.0
    error_threshold_px: float = 1.0
    epipolar_threshold_px: float = 0.25
    threshold_growth: float = 0.5
    adaptive_sigma_factor: float = 3.0
    window_frames: int = 16
    window_noise_quantile: float = 0.25
    window_noise_sigmas: float = 4.5
    window_floor_px: float = 0.2
    window_exclusion_px: int = 4
    min_texture: float = 0.5
    texture_radius_px: int = 3
    use_invalid_evidence: bool = True
    open_radius_px: int = 1
    close_radius_px: int = 2
    min_component_fraction: float = 0.002
    fill_holes: bool = True
    seed: int = 0
    num_threads: int = 0
