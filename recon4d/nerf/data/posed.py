"""A posed image set: what every reader returns and every GNT/NeLF trainer consumes.

Conventions are recon4d's (see :mod:`recon4d.nerf.data.conventions`): OpenCV camera axes,
``world_from_camera`` 4x4, intrinsics fx, fy, cx, cy in pixels with pixel centres at integers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from recon4d.errors import InputError
from recon4d.nerf.data.conventions import scale_intrinsics

# Near/far from camera geometry alone (no depth known): a fraction of the mean camera-to-centre distance
# on either side. NeRF-synthetic's cameras sit 4.03 from the object, whose standard bounds are 2 and 6.
BOUNDS_FRACTION = 0.5
# Near/far from known scene depths (sparse points, splats): percentiles, widened by this factor.
DEPTH_PERCENTILES = (1.0, 99.0)
DEPTH_MARGIN = 0.1


@dataclass
class PosedImages:
    """N images of one static scene with their cameras.

    Attributes:
        images: [N, H, W, 3] float32 RGB in [0, 1] (RGBA inputs already composited over `background`).
        alphas: [N, H, W] float32 coverage of RGBA inputs, or None.
        valid: [N, H, W] bool, pixels that show the static scene (False where a fit saw a moving object),
            or None when every pixel is valid.
        world_from_camera: [N, 4, 4] float32, OpenCV axes.
        intrinsics: [N, 4] float32 fx, fy, cx, cy in pixels of (W, H).
        names: per image, its file name (or frame label), in the source's file order.
        near, far: depth range along the optical axis that contains the scene.
        source: where the set was read from (for messages).
        depths: [N, H, W] float32 true z-depth per pixel (inf where no surface), or None: known only for
            synthetic data (the procedural scenes), where training may supervise the model's depth with it.
    """

    images: torch.Tensor
    alphas: torch.Tensor | None
    valid: torch.Tensor | None
    world_from_camera: torch.Tensor
    intrinsics: torch.Tensor
    names: list[str]
    near: float
    far: float
    source: str = ""
    depths: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n, height, width, channels = self.images.shape
        if channels != 3 or self.world_from_camera.shape != (n, 4, 4) or self.intrinsics.shape != (n, 4):
            raise InputError(f"inconsistent posed image set {self.source}: images {tuple(self.images.shape)}, "
                             f"poses {tuple(self.world_from_camera.shape)}, intrinsics {tuple(self.intrinsics.shape)}")
        for name, mask in (("alphas", self.alphas), ("valid", self.valid), ("depths", self.depths)):
            if mask is not None and mask.shape != (n, height, width):
                raise InputError(f"{name} of {self.source} have shape {tuple(mask.shape)}, expected {(n, height, width)}")
        if not 0 < self.near < self.far:
            raise InputError(f"bad depth bounds near={self.near} far={self.far} for {self.source}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]

    def subset(self, index) -> PosedImages:
        """The views at `index` (list of ints or a LongTensor), in that order."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.images.device)
        pick = lambda t: None if t is None else t[index]
        return replace(self, images=self.images[index], alphas=pick(self.alphas), valid=pick(self.valid),
                       world_from_camera=self.world_from_camera[index], intrinsics=self.intrinsics[index],
                       names=[self.names[i] for i in index.tolist()], depths=pick(self.depths))

    def to(self, device: torch.device | str) -> PosedImages:
        """The same set with its tensors on `device`."""
        move = lambda t: None if t is None else t.to(device)
        return replace(self, images=self.images.to(device), alphas=move(self.alphas), valid=move(self.valid),
                       world_from_camera=self.world_from_camera.to(device), intrinsics=self.intrinsics.to(device),
                       depths=move(self.depths))

    def K(self) -> torch.Tensor:
        """[N, 3, 3] intrinsic matrices."""
        fx, fy, cx, cy = self.intrinsics.unbind(-1)
        zero, one = torch.zeros_like(fx), torch.ones_like(fx)
        return torch.stack([fx, zero, cx, zero, fy, cy, zero, zero, one], -1).reshape(-1, 3, 3)


def holdout_split(count: int, every: int) -> tuple[list[int], list[int]]:
    """(held-out, source) indices: frame i is held out when i % every == every - 1 (file order)."""
    if every < 2:
        raise InputError(f"--holdout-every must be >= 2, got {every}")
    held = [i for i in range(count) if i % every == every - 1]
    if not held:
        raise InputError(f"no view is held out: {count} views with --holdout-every {every}")
    return held, [i for i in range(count) if i % every != every - 1]


def target_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) after resizing so the shorter side is `short_side` (None: unchanged)."""
    if short_side is None:
        return width, height
    if short_side < 8:
        raise InputError(f"short side must be >= 8 pixels, got {short_side}")
    scale = short_side / min(width, height)
    return (short_side, max(1, round(height * scale))) if width <= height else (max(1, round(width * scale)), short_side)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H, W, C] or [H, W] float32 -> `size` (width, height); area averaging down, bilinear up."""
    import cv2

    if (image.shape[1], image.shape[0]) == size:
        return image
    shrinking = size[0] < image.shape[1]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_intrinsics(intrinsics: np.ndarray, old: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
    """Intrinsics [..., 4] of an image of size old (w, h) resized to new (w, h)."""
    return scale_intrinsics(intrinsics, new[0] / old[0], new[1] / old[1])


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """An image file -> (RGB [H, W, 3] float32 in [0, 1], alpha [H, W] float32 or None). 8/16-bit, gray or colour."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise InputError(f"cannot decode the image {path}")
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    image = image.astype(np.float32) / scale
    if image.ndim == 2:
        image = image[..., None]
    alpha = image[..., 3].copy() if image.shape[-1] == 4 else None
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., 2::-1]
    return np.ascontiguousarray(rgb), alpha


def composite(rgb: np.ndarray, alpha: np.ndarray | None, background: float) -> np.ndarray:
    """Straight-alpha RGB over a grey-level background."""
    if alpha is None:
        return rgb
    return rgb * alpha[..., None] + background * (1.0 - alpha[..., None])


def bounds_from_cameras(world_from_camera: np.ndarray) -> tuple[float, float]:
    """Near/far for an object-centred capture: around the point closest to all optical axes.

    world_from_camera: [N, 4, 4] OpenCV. The centre is the least-squares intersection of the cameras'
    z axes; near/far = (1 -+ BOUNDS_FRACTION) x the mean camera-to-centre distance.
    """
    origins = world_from_camera[:, :3, 3]
    axes = world_from_camera[:, :3, 2] / np.linalg.norm(world_from_camera[:, :3, 2], axis=-1, keepdims=True)
    projectors = np.eye(3)[None] - axes[:, :, None] * axes[:, None, :]
    A = projectors.sum(0)
    b = np.einsum("nij,nj->i", projectors, origins)
    if len(origins) < 2 or np.linalg.cond(A) > 1e8:  # parallel axes: no centre
        raise InputError("cannot infer near/far from parallel cameras", hint="give near and far explicitly")
    centre = np.linalg.solve(A, b)
    distance = float(np.linalg.norm(origins - centre, axis=-1).mean())
    return distance * (1 - BOUNDS_FRACTION), distance * (1 + BOUNDS_FRACTION)


def bounds_from_points(points: np.ndarray, world_from_camera: np.ndarray) -> tuple[float, float]:
    """Near/far from known scene points [M, 3] seen by cameras [N, 4, 4] (depth percentiles with a margin)."""
    camera_from_world = np.linalg.inv(world_from_camera)
    depth = np.einsum("nj,mj->nm", camera_from_world[:, 2, :3], points) + camera_from_world[:, 2, 3:4]
    depth = depth[depth > 0]
    if depth.size < 8:
        raise InputError("too few scene points in front of the cameras to bound the scene")
    low, high = np.percentile(depth, DEPTH_PERCENTILES)
    return float(low * (1 - DEPTH_MARGIN)), float(high * (1 + DEPTH_MARGIN))


def stack_set(images: list[np.ndarray], alphas: list[np.ndarray | None], poses: np.ndarray, intrinsics: np.ndarray,
              names: list[str], near: float, far: float, source: str | Path, valid: np.ndarray | None = None) -> PosedImages:
    """Lists from a reader -> one PosedImages (alphas kept only when every image had one)."""
    sizes = {image.shape for image in images}
    if len(sizes) != 1:
        raise InputError(f"images of {source} have different sizes {sorted(sizes)}", hint="use --short-side")
    have_alpha = all(a is not None for a in alphas)
    return PosedImages(
        images=torch.from_numpy(np.stack(images)).float(),
        alphas=torch.from_numpy(np.stack(alphas)).float() if have_alpha else None,
        valid=None if valid is None else torch.from_numpy(valid),
        world_from_camera=torch.from_numpy(np.asarray(poses)).float(),
        intrinsics=torch.from_numpy(np.asarray(intrinsics)).float(),
        names=list(names), near=float(near), far=float(far), source=str(source),
    )
