"""Global camera prior from structure-from-motion (COLMAP through pycolmap): the cameras of all frames at once.

The sequential pass chains each camera from the previous one, so a step that flow and two-view matching cannot
follow (a wide baseline, a walk-around with steps of 30-90 degrees) breaks the rest of the path. COLMAP's
incremental mapper matches every pair of frames (or a sequential window plus loop candidates on long clips),
registers frames one by one against the growing 3D point cloud and bundle-adjusts globally, so it places frames
that share features with any earlier-placed frame, not only with their neighbour. Its poses are up to a
similarity transform; `recon4d.fit.sequential` aligns them to the fit at one frame (`sfm_start`).

The intrinsics are held fixed at the fit's (COLMAP only refines poses and points), so both agree. Frames are
matched at `SfmConfig.short_side` pixels, more than the fit's working resolution: at 180 px COLMAP placed 4 of
lego's 34 views; at 400 px 31 with the ratio test at 0.8, all 34 at 0.9 with guided matching (the default),
within 1.1 degrees; at 800 px with 8192 features, guided matching and ratio 0.8 all 34, three of them 122-178
degrees off (README, "Global camera prior from structure-from-motion").
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recon4d.errors import InputError


@dataclass
class SfmConfig:
    """The structure-from-motion camera prior (`recon4d.priors.sfm`), section `sfm` of the fit config.

    enabled: run COLMAP on the sequential pass's frames and start each registered frame's camera step from its
        COLMAP pose (aligned to the fit), instead of chaining it from the previous frame.
    short_side: frames are decoded again at this short side (pixels) for feature extraction.
    max_features: SIFT keypoints per frame.
    domain_size_pooling: DSP-SIFT descriptors (pooled over scales); on lego at 400 px COLMAP placed 31 of 34
        views with them, 28 without, all within 0.9 degrees.
    match_max_ratio: Lowe's ratio test of the matcher (COLMAP's default 0.8). Lego's three views 25-41 degrees
        from any other have too few matches that pass 0.8; at 0.9 with guided matching COLMAP placed all 34
        views within 1.1-1.6 degrees for seeds 0, 1 and 2 (0.8: 31 of 34).
    guided_matching: match again along the epipolar lines of each verified pair (more inliers per pair).
    max_step_degrees: a frame's COLMAP start is dropped (the sequential start is kept) where its rotation from
        the fit's previous camera exceeds this. COLMAP sometimes places a view turned round (180 degrees about
        its axis: a mirror-like ambiguity of nearly symmetric views), and neighbouring frames of a video or a
        walk-around are not (lego's ordered views are at most 95 degrees apart). The camera step's loss at
        the start cannot judge it: at a wide baseline the model built so far covers the new view in part,
        and the chained start, near the previous view, scored lower at 31 of the 33 COLMAP starts of lego (all
        34 views placed within 1.1 degrees).
    exhaustive_max_frames: up to this many frames every pair is matched; more frames are matched within
        `sequential_overlap` neighbours plus COLMAP's loop detection by quadratic overlap.
    sequential_overlap: neighbours matched per frame on long clips (frames).
    min_registered: share of the frames COLMAP must place for the prior to be used at all (a clip without
        parallax, e.g. a still camera, places few or none, and then the sequential start is kept).
    min_scale_points: COLMAP points seen by the anchor frame (inside its rendered object) that set the scale.
    refine_camera: still run the camera step from the COLMAP start (photometric refinement); off, the COLMAP
        pose is the camera of the frame. With `joint`: let the refinement move the cameras (off: COLMAP's).
    joint: a still scene (`input.static_scene`) is fitted as one model over all views at once, as 3DGS fits a
        photo set, instead of frame by frame: COLMAP places every frame of the clip (held-out frames too, as
        the Mip-NeRF 360 protocol does: they are withheld from the photometric fit only), its points start the
        Gaussians (`recon4d.fit.sfm_scene`) and the refinement fits them to the fitted frames; there is no
        sequential pass. Lego's walk-around with every 4th view held out (README, "A walk-around as one
        model"): held-out 11.6 -> 26.2 dB. Needs `refine.enabled`. Where COLMAP places under
        `min_registered` of the frames, the sequential pass runs without the prior.
    point_opacity, point_neighbours: a joint fit's Gaussian at each COLMAP point starts this opaque and as wide
        as its mean distance to this many nearest points (3DGS: 0.1 and 3). Lego held out, mean of two view
        orders: opacity 0.5 24.27 dB, 0.1 24.05 dB.
    joint_depth_weight: weight of the depth prior's term in a joint fit, in place of `losses.depth` (0.1). That
        prior is chained from optical flow between consecutive views, which does not follow a walk-around's wide
        steps, and COLMAP's points already give the geometry. Lego, every 4th view held out: 0 lifts the
        held-out views by 0.71 dB (path order, 25.52 -> 26.23) and 1.01 dB (file order, 23.35 -> 24.36).
    drop_error_ratio: after a joint fit, a fitted view whose mean absolute error is above this multiple of the
        median view's is taken as placed wrongly by COLMAP (e.g. turned round, as it did on lego with other
        matching settings): the fit runs again without it, and the view is treated as skipped. On the tiny
        world a view turned round ends at 24x the median error and cost the held-out views 2.1 dB; lego's
        worst correctly placed views are at 2.0x (path order) and 1.3x (file order). 0: off.
    min_shift_px: COLMAP is not run where the camera has not moved: corners of the first frame are tracked
        (pyramidal Lucas-Kanade) into every other frame, and where in each frame at least half of them are
        tracked with a median shift under this many pixels (at `short_side`; `camera_shift_px`), no pair of
        frames has the parallax to triangulate from. A still camera then costs milliseconds instead of a run
        that places nothing: tree.avi's 20 frames spent 247 s in COLMAP (features 49 s, matching 125 s, the
        mapper 73 s) to place none. 0: always run it.
    seed: COLMAP's random seed (RANSAC).
    num_threads: COLMAP's threads (-1: all cores). With several, reruns of the same frames differ: in one of
        six lego fits (stop 34) it turned view 13 round (the step check dropped it), and one CI run of the lego
        test got ATE 0.85 %. One thread (the default) gives the same cameras on every run: lego's 34 views in
        33 s on this 2-core machine, as fast as all cores measured here.
    """

    enabled: bool = False
    short_side: int = 400
    max_features: int = 4096
    domain_size_pooling: bool = True
    match_max_ratio: float = 0.9
    guided_matching: bool = True
    max_step_degrees: float = 120.0
    exhaustive_max_frames: int = 80
    sequential_overlap: int = 15
    min_registered: float = 0.5
    min_scale_points: int = 20
    refine_camera: bool = True
    joint: bool = False
    point_opacity: float = 0.5
    point_neighbours: int = 3
    joint_depth_weight: float = 0.0
    drop_error_ratio: float = 5.0
    min_shift_px: float = 2.0
    seed: int = 0
    num_threads: int = 1

    def colmap_settings(self) -> dict:
        """The fields that change COLMAP's result (the prior cache's key; `short_side` is in the clip's hash)."""
        names = ("max_features", "domain_size_pooling", "match_max_ratio", "guided_matching", "exhaustive_max_frames",
                 "sequential_overlap", "seed", "num_threads")
        return {name: getattr(self, name) for name in names}


@dataclass
class SfmCameras:
    """COLMAP's cameras of T frames in its own world frame and units.

    camera_from_world: [T, 4, 4] OpenCV camera-from-world; rows of frames COLMAP did not place are NaN.
    points: [P, 3] triangulated points (world). seconds: wall time. registered: how many frames were placed.
    not_run: why COLMAP was not run (`SfmConfig.min_shift_px`), or "" where it ran.
    """

    camera_from_world: np.ndarray
    points: np.ndarray
    seconds: float
    not_run: str = ""

    @property
    def registered(self) -> int:
        return int(np.isfinite(self.camera_from_world[:, 0, 0]).sum())


def require_pycolmap():
    """The pycolmap module, or a one-line InputError naming the extra that installs it."""
    try:
        import pycolmap
    except ImportError as exc:
        raise InputError("the sfm camera prior needs pycolmap", hint="pip install 'recon4d[export]' or set sfm.enabled: false") from exc
    return pycolmap


def cached_sfm_cameras(frames: np.ndarray, intrinsics: np.ndarray, config: SfmConfig, clip_hash: str,
                       use_cache: bool = True) -> tuple[SfmCameras, bool]:
    """`sfm_cameras`, read from the prior cache (`recon4d.priors.cache`, kind "sfm") when the same frames
    (`clip_hash`: the decoded clip's hash and which of its frames) were placed with the same settings and
    pycolmap version; else computed and stored. Returns the cameras and whether they came from the cache. A
    rerun of a walk-around (other refinement settings, or after Ctrl-C) skips COLMAP (lego: 42 s)."""
    pycolmap = require_pycolmap()
    settings = {"colmap": config.colmap_settings(), "intrinsics": [float(v) for v in intrinsics],
                "pycolmap": getattr(pycolmap, "__version__", "unknown")}
    cache = None
    if use_cache:
        from recon4d.priors.cache import PriorCache

        cache = PriorCache()
        hit = cache.get("sfm", clip_hash, settings)
        if hit is not None:
            return SfmCameras(hit["camera_from_world"], hit["points"], 0.0), True
    cameras = sfm_cameras(frames, intrinsics, config)
    if cache is not None and not cameras.not_run:  # the shift test is cheaper than a cache read
        arrays = {"camera_from_world": cameras.camera_from_world, "points": cameras.points}
        cache.put("sfm", clip_hash, settings, arrays)
    return cameras, False


def sfm_cameras(frames: np.ndarray, intrinsics: np.ndarray, config: SfmConfig) -> SfmCameras:
    """COLMAP's cameras of `frames` [T, H, W, 3] uint8 RGB with fixed pinhole `intrinsics` [4] fx, fy, cx, cy
    (pixels of these frames). Runs in a temporary folder; returns NaN rows for frames it does not place."""
    import cv2

    pycolmap = require_pycolmap()
    started = time.perf_counter()
    num_frames = frames.shape[0]
    camera_from_world = np.full((num_frames, 4, 4), np.nan)
    points = np.zeros((0, 3))
    if config.min_shift_px > 0:
        shift = camera_shift_px(frames)
        if shift < config.min_shift_px:
            return SfmCameras(camera_from_world, points, time.perf_counter() - started,
                              not_run=f"the camera barely moves (median corner shift at most {shift:.2f} px, "
                                      f"under sfm.min_shift_px = {config.min_shift_px:g})")
    pycolmap.logging.minloglevel = 2  # warnings and errors only: the mapper's progress is not the fit's
    with tempfile.TemporaryDirectory(prefix="recon4d_sfm_") as tmp:
        root = Path(tmp)
        images = root / "images"
        images.mkdir()
        names = [f"frame_{t:05d}.png" for t in range(num_frames)]
        for name, frame in zip(names, frames):
            cv2.imwrite(str(images / name), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = "PINHOLE"
        reader.camera_params = ",".join(f"{float(v):.9g}" for v in intrinsics)
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.num_threads = config.num_threads
        extraction.sift.max_num_features = config.max_features
        extraction.sift.domain_size_pooling = config.domain_size_pooling
        database = root / "database.db"
        pycolmap.extract_features(database, images, camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                                  extraction_options=extraction)
        matching = pycolmap.FeatureMatchingOptions()
        matching.sift.max_ratio = config.match_max_ratio
        matching.guided_matching = config.guided_matching
        matching.num_threads = config.num_threads
        if num_frames <= config.exhaustive_max_frames:
            pycolmap.match_exhaustive(database, matching_options=matching)
        else:
            pairing = pycolmap.SequentialPairingOptions()
            pairing.overlap = config.sequential_overlap
            pairing.quadratic_overlap = True
            pycolmap.match_sequential(database, matching_options=matching, pairing_options=pairing)
        options = pycolmap.IncrementalPipelineOptions()
        options.ba_refine_focal_length = False
        options.ba_refine_principal_point = False
        options.ba_refine_extra_params = False
        options.random_seed = config.seed
        options.num_threads = config.num_threads
        options.mapper.num_threads = config.num_threads
        (root / "sparse").mkdir()
        reconstructions = pycolmap.incremental_mapping(database, images, root / "sparse", options=options)
        if reconstructions:
            best = max(reconstructions.values(), key=lambda r: r.num_reg_images())
            for image in best.images.values():
                if image.has_pose:
                    camera_from_world[names.index(image.name)] = np.vstack([image.cam_from_world().matrix(), [0, 0, 0, 1]])
            points = np.array([p.xyz for p in best.points3D.values()], dtype=np.float64).reshape(-1, 3)
    return SfmCameras(camera_from_world, points, time.perf_counter() - started)


# Corners of the first frame that `camera_shift_px` tracks, and how (OpenCV's usual settings for them).
SHIFT_CORNERS, SHIFT_CORNER_QUALITY, SHIFT_CORNER_SPACING_PX = 400, 0.01, 7
SHIFT_WINDOW_PX, SHIFT_PYRAMID_LEVELS = 21, 3
# Fewer corners than this in the first frame measure nothing; a frame that keeps under this share of them tracked
# is a step too wide to track, not a still camera.
SHIFT_MIN_CORNERS, SHIFT_MIN_TRACKED_SHARE = 8, 0.5


def camera_shift_px(frames: np.ndarray) -> float:
    """How far the image moves over a clip `frames` [T, H, W, 3] uint8 RGB: the largest, over frames 1..T-1, of
    the median shift (pixels) of the first frame's corners tracked into that frame by pyramidal Lucas-Kanade;
    inf where some frame keeps under half of them tracked (a wide step) or the first frame has too few corners.
    A still camera's shift is the tracker's noise (a moving object covers a minority of the corners).

        >>> still = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
        >>> still[:] = still[0]
        >>> camera_shift_px(still) < 0.1
        True
    """
    import cv2

    first = cv2.cvtColor(np.ascontiguousarray(frames[0]), cv2.COLOR_RGB2GRAY)
    corners = cv2.goodFeaturesToTrack(first, SHIFT_CORNERS, SHIFT_CORNER_QUALITY, SHIFT_CORNER_SPACING_PX)
    if corners is None or len(corners) < SHIFT_MIN_CORNERS:
        return float("inf")
    largest = 0.0
    for frame in frames[1:]:
        gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        tracked, status, _ = cv2.calcOpticalFlowPyrLK(first, gray, corners, None,
                                                      winSize=(SHIFT_WINDOW_PX, SHIFT_WINDOW_PX),
                                                      maxLevel=SHIFT_PYRAMID_LEVELS)
        kept = status.ravel() == 1
        if kept.sum() < SHIFT_MIN_TRACKED_SHARE * len(corners):
            return float("inf")
        largest = max(largest, float(np.median(np.linalg.norm((tracked - corners).reshape(-1, 2)[kept], axis=1))))
    return largest
