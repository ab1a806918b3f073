"""Wide-baseline start of the camera step (recon4d.fit.matching): features + PnP with RANSAC vs the flow start."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from recon4d.fit.config import FitConfig, MatchingConfig
from recon4d.fit.matching import (
    WideBaselineStart,
    baseline_scale,
    choose_start,
    detect_features,
    epipolar_errors,
    essential_start,
    grey_uint8,
    match_descriptors,
    match_features,
    relative_start,
    rotation_residual_px,
)
from recon4d.fit.pnp import pnp_camera_from_world
from recon4d.geometry import invert_pose, look_at
from recon4d.priors.flow import make_flow_estimator
from recon4d.render import rasterize

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTH, HEIGHT = 128, 96
RADIUS = 4.0  # orbit radius around the object (scene units)
GAIN = 20.0  # contrast of the texture: sharp-edged blobs, as on a real object


def textured_object(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Gaussians on the faces of three boxes standing on a floor, coloured by band-limited noise (matching
    needs texture that does not repeat). Returns means [N, 3], quats, scales, opacities, colors."""
    g = torch.Generator().manual_seed(seed)
    surfaces = []
    for centre, size in (((0.0, 0.0, 0.0), (1.2, 1.2, 1.2)), ((1.0, 0.35, 0.6), (0.5, 0.5, 0.5)),
                         ((-0.7, 0.3, -0.9), (0.6, 0.6, 0.8))):
        points = torch.rand(12000, 3, generator=g) - 0.5
        axis = torch.randint(0, 3, (len(points),), generator=g)
        side = torch.randint(0, 2, (len(points),), generator=g).float() - 0.5
        points[torch.arange(len(points)), axis] = side  # onto a face of the unit cube
        surfaces.append(points * torch.tensor(size) + torch.tensor(centre))
    floor = torch.rand(15000, 3, generator=g) * torch.tensor([6.0, 0.0, 6.0]) + torch.tensor([-3.0, 0.6, -3.0])
    means = torch.cat([*surfaces, floor])
    # Band-limited noise (random plane waves of several wavelengths) in brightness, which matching sees.
    directions = torch.randn(32, 3, generator=g)
    frequency = torch.linspace(6.0, 30.0, 32)[:, None]
    phases = torch.rand(32, generator=g) * 2 * math.pi
    waves = torch.sin(means @ (directions / directions.norm(dim=-1, keepdim=True) * frequency).T + phases)
    brightness = torch.sigmoid(GAIN * waves.sum(-1) / math.sqrt(16))
    colors = brightness[:, None] * torch.tensor([0.9, 0.8, 0.7]) + 0.1
    quats = torch.zeros(len(means), 4)
    quats[:, 0] = 1
    return means, quats, torch.full((len(means), 3), 0.04), torch.full((len(means),), 0.95), colors


def orbit_pose(degrees: float) -> torch.Tensor:
    """world_from_camera [4, 4] on a circle around the object, slightly above it, looking at its centre."""
    angle = math.radians(degrees)
    eye = torch.tensor([RADIUS * math.sin(angle), -1.5, -RADIUS * math.cos(angle)])
    return look_at(eye, torch.zeros(3), torch.tensor([0.0, -1.0, 0.0]))


def render_views(degrees_list=(0.0, 2.0, 25.0, 60.0, 5.0)) -> tuple[np.ndarray, dict]:
    """K [3, 3] and, per orbit angle, (camera_from_world [4, 4], image [H, W, 3], depth [H, W], alpha [H, W])."""
    gaussians = textured_object()
    fx = 0.5 * WIDTH / math.tan(math.radians(25))
    K = torch.tensor([[fx, 0, (WIDTH - 1) / 2], [0, fx, (HEIGHT - 1) / 2], [0, 0, 1.0]])
    views = {}
    for degrees in degrees_list:
        pose = orbit_pose(degrees)
        out = rasterize(*gaussians, invert_pose(pose), K, WIDTH, HEIGHT, background=torch.ones(3))
        views[degrees] = (invert_pose(pose).double().numpy(), out.color.clamp(0, 1).numpy(), out.depth.numpy(),
                          out.alpha.numpy())
    return K.double().numpy(), views


@pytest.fixture(scope="module")
def scene():
    return render_views()


def pose_errors(estimate: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(rotation error in degrees, camera-centre error in scene units) of two camera_from_world [4, 4]."""
    relative = estimate[:3, :3] @ truth[:3, :3].T
    angle = math.degrees(math.acos(np.clip((np.trace(relative) - 1) / 2, -1, 1)))
    centre = lambda pose: -pose[:3, :3].T @ pose[:3, 3]
    return angle, float(np.linalg.norm(centre(estimate) - centre(truth)))


def flow_start(K: np.ndarray, first: tuple, second: tuple) -> np.ndarray:
    """The sequential pass's flow start (`SequentialFitter.initial_camera`): DIS flow from the first view's
    covered, flow-consistent pixels, lifted by its exact depth, PnP from the first camera.
    Returns camera_from_world [4, 4] of the second view, the first camera when PnP fails."""
    pose0, image0, depth0, alpha0 = first
    frames = np.stack([np.round(image0 * 255), np.round(second[1] * 255)]).astype(np.uint8)
    flow = make_flow_estimator("dis")(frames)
    v, u = np.nonzero((alpha0 > 0.5) & flow.valid_forward[0])
    z = depth0[v, u]
    camera = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], 1)
    world = camera @ np.linalg.inv(pose0)[:3, :3].T + np.linalg.inv(pose0)[:3, 3]
    pixels = np.stack([u, v], 1) + flow.flow_forward[0][v, u]
    pose = pnp_camera_from_world(world, pixels, K, pose0)
    return pose0 if pose is None else pose


def feature_relative(K: np.ndarray, first: tuple, second: tuple, config: MatchingConfig):
    """Matches of two views and the feature start's second_from_first [4, 4] (None when it fails)."""
    pixels_a, pixels_b = match_features(detect_features(grey_uint8(first[1]), config),
                                        detect_features(grey_uint8(second[1]), config), config)
    relative, _ = relative_start(pixels_a, pixels_b, first[2], first[3] > config.min_alpha, K, config)
    return relative, pixels_a, pixels_b


def test_feature_start_recovers_a_wide_step_the_flow_start_misses(scene):
    K, views = scene
    first, second = views[0.0], views[25.0]
    truth = second[0]
    assert pose_errors(first[0], truth)[0] > 24.0  # the step really is wide: 25 degrees around the object
    config = MatchingConfig()
    relative, pixels_a, pixels_b = feature_relative(K, first, second, config)
    assert relative is not None and len(pixels_a) >= 40
    rotation, centre = pose_errors(relative @ first[0], truth)
    assert rotation < 3.0 and centre < 0.05 * RADIUS  # the step's length comes from the rendered depth
    flow = flow_start(K, first, second)
    assert pose_errors(flow, truth)[0] > 10.0  # DIS flow does not follow a step of this size
    use, flow_inliers, feature_inliers = choose_start(flow @ np.linalg.inv(first[0]), relative, pixels_a, pixels_b,
                                                     K, config)
    assert use and feature_inliers >= config.min_inliers and flow_inliers < feature_inliers / 2
    # With depth that is right in shape (here exact), PnP on it settles what the essential matrix leaves loose.
    refined, _, _ = feature_relative(K, first, second, MatchingConfig(depth_refine=True))
    assert pose_errors(refined @ first[0], truth)[0] < 1.5


def test_chooser_keeps_the_flow_start_on_a_small_step(scene):
    K, views = scene
    first, second = views[0.0], views[2.0]
    config = MatchingConfig()
    flow = flow_start(K, first, second)
    assert pose_errors(flow, second[0])[0] < 0.5  # flow works on small steps
    relative, pixels_a, pixels_b = feature_relative(K, first, second, config)
    use, flow_inliers, feature_inliers = choose_start(flow @ np.linalg.inv(first[0]), relative, pixels_a, pixels_b,
                                                     K, config)
    assert not use and flow_inliers >= 0.8 * feature_inliers > config.min_inliers


def test_search_starts_from_the_earlier_view_the_path_returned_to(scene):
    """Frames 0, 60 and 5 degrees around the object: frame 2 shares little with frame 1 and much with frame 0."""
    K, views = scene
    order = [views[0.0], views[60.0], views[5.0]]
    frames = torch.tensor(np.stack([v[1] for v in order]), dtype=torch.float32)
    cameras = [torch.tensor(v[0]) for v in order[:2]]  # fitted frames 0 and 1, exact

    def render_at(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(order[k][2]), torch.tensor(order[k][3] > 0.9)

    start = WideBaselineStart(frames, torch.tensor(K), MatchingConfig())
    pose, reference = start(2, cameras, render_at, flow_start=cameras[1])  # the flow start stays at frame 1
    assert reference == 0 and pose is not None
    rotation, centre = pose_errors(pose.numpy(), order[2][0])
    assert rotation < 1.0 and centre < 0.05 * RADIUS
    alone = WideBaselineStart(frames, torch.tensor(K), MatchingConfig(search_frames=0))
    assert alone(2, cameras, render_at, flow_start=cameras[1]) == (None, 1)  # t-1 only: no start


def random_relative_pose() -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = cv2.Rodrigues(np.array([0.05, -0.3, 0.02]))[0]
    pose[:3, 3] = [0.8, 0.1, 0.2]
    return pose


def test_essential_start_rejects_outliers_and_needs_enough_matches():
    rng = np.random.default_rng(0)
    K = np.array([[100.0, 0, 64], [0, 100.0, 48], [0, 0, 1]])
    truth = random_relative_pose()
    points = rng.uniform(-1, 1, (120, 3)) + [0, 0, 5]
    def project(pose):
        camera = points @ pose[:3, :3].T + pose[:3, 3]
        pixels = camera @ K.T
        return pixels[:, :2] / pixels[:, 2:]
    pixels_a, pixels_b = project(np.eye(4)), project(truth)
    pixels_b[:36] += rng.uniform(10, 30, (36, 2)) * rng.choice([-1, 1], (36, 2))  # 30 % gross outliers
    found = essential_start(pixels_a, pixels_b, K, MatchingConfig())
    assert found is not None
    rotation, direction, inliers = found
    assert pose_errors(np.block([[rotation, np.zeros((3, 1))], [np.zeros((1, 3)), 1]]),
                       np.block([[truth[:3, :3], np.zeros((3, 1))], [np.zeros((1, 3)), 1]]))[0] < 0.05
    assert math.degrees(math.acos(direction @ truth[:3, 3] / np.linalg.norm(truth[:3, 3]))) < 0.5
    assert inliers[36:].all() and inliers[:36].sum() <= 2
    errors = epipolar_errors(truth, pixels_a, pixels_b, K)
    assert (errors[36:] < 1e-6).all() and (errors[:36] > 1.0).sum() >= 34
    assert essential_start(pixels_a[36:44], pixels_b[36:44], K, MatchingConfig()) is None  # too few matches
    # The step's length from depth: the rendered depth is twice the unit-baseline triangulation's.
    depth = np.zeros((96, 128))
    u, v = np.round(pixels_a[36:]).astype(int).T
    depth[v, u] = 2.0 * points[36:, 2] * np.linalg.norm(truth[:3, 3])
    scale = baseline_scale(points[36:, 2], pixels_a[36:], depth, depth > 0)
    assert scale == pytest.approx(2.0 * np.linalg.norm(truth[:3, 3]), rel=1e-3)


def test_a_camera_that_only_rotates_fits_every_direction_of_travel():
    rng = np.random.default_rng(1)
    K = np.array([[100.0, 0, 64], [0, 100.0, 48], [0, 0, 1]])
    rotation = np.eye(4)
    rotation[:3, :3] = cv2.Rodrigues(np.array([0.0, 0.1, 0.0]))[0]
    points = rng.uniform(-1, 1, (50, 3)) + [0, 0, 5]
    pixels_a = points[:, :2] / points[:, 2:] * 100 + [64, 48]
    camera = points @ rotation[:3, :3].T
    pixels_b = camera[:, :2] / camera[:, 2:] * 100 + [64, 48]
    assert epipolar_errors(rotation, pixels_a, pixels_b, K).max() < 1e-9
    moved = rotation.copy()
    moved[:3, 3] = [0.0, 1.0, 0.0]  # any direction of travel explains a pure rotation's matches
    assert epipolar_errors(moved, pixels_a, pixels_b, K).max() < 1e-6


def test_mutual_ratio_matching():
    a = np.array([[0, 0], [10, 0], [0, 10]], dtype=np.float32)
    b = np.array([[0.5, 0], [0, 10.5], [10, 0.4], [5.0, 5.0]], dtype=np.float32)
    assert sorted(map(tuple, match_descriptors(a, b, ratio=0.8, binary=False).tolist())) == [(0, 0), (1, 2), (2, 1)]
    assert match_descriptors(a, None, ratio=0.8, binary=False).shape == (0, 2)


def test_matching_config_is_validated():
    from recon4d.errors import InputError

    with pytest.raises(InputError, match="matching.detector"):
        FitConfig.from_dict({"matching": {"detector": "surf"}}).validate()
    with pytest.raises(InputError, match="matching.ratio"):
        FitConfig.from_dict({"matching.ratio": 1.5}).validate()
    assert FitConfig().validate().matching.enabled


def test_a_start_without_parallax_is_dropped():
    """Matches that a rotation alone explains (a static or only rotating camera) give no feature start: its
    baseline would be triangulated from noise. A real step gives parallax well above the bar."""
    K = np.array([[100.0, 0, 64], [0, 100.0, 48], [0, 0, 1]])
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.uniform(-1.5, 1.5, (200, 2)), rng.uniform(3.0, 8.0, (200, 1))], 1)  # camera a

    def project(x):
        uv = x @ K.T
        return uv[:, :2] / uv[:, 2:]

    rotation = cv2.Rodrigues(np.array([0.0, 0.05, 0.01]))[0]
    pixels_a = project(points)
    rotated = project(points @ rotation.T) + rng.normal(0, 0.2, (200, 2))
    assert rotation_residual_px(pixels_a, rotated, K, rotation) < 0.5
    depth, usable = np.full((96, 128), 5.0), np.ones((96, 128), dtype=bool)
    config = MatchingConfig()
    assert relative_start(pixels_a, rotated, depth, usable, K, config)[0] is None
    stepped = project(points @ rotation.T + np.array([0.4, 0.0, 0.0]))
    assert rotation_residual_px(pixels_a, stepped, K, rotation) > 3 * config.min_parallax_px
