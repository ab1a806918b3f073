"""The recon4d scene file: Gaussians, their motion, cameras, labels, config and metrics in one file.

Format: a safetensors file. Tensors are stored under slash-separated names (``gaussians/means``,
``cameras/world_from_camera``, ``arrays/moving_masks`` ...); the header metadata holds
``format = "recon4d.scene"``, an integer ``version`` and a JSON ``manifest`` (frame names, image size,
config, metrics). safetensors stores raw little-endian bytes, so a save/load round trip is bit-exact, and
it never unpickles code. Writes are atomic.

A dynamic scene keeps one canonical set of N Gaussians. Still Gaussians never move. The Nd dynamic ones
(``is_dynamic``) have one position and rotation per frame: stored in ``dynamic_means`` / ``dynamic_quats``
by the sequential pass at the frames it fitted (``state_frames``; the others blend their neighbours), or given
by a continuous-time motion model after the refinement;
a Gaussian exists from its ``birth_frame`` on, and until its ``death_frame`` (exclusive) when the scene has
one: a long clip is fitted in temporal windows (`recon4d.fit.sequential`), each with its own Gaussians. ``is_moving`` (a subset of ``is_dynamic``) marks the Gaussians
of independently moving things, which moving masks and highlights show; a dynamic Gaussian that is not moving
is background that drifts by a residue (the refinement's residual motion). Files without it read it as
``is_dynamic``.
"""
from __future__ import annotations

import bisect
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from recon4d.errors import SceneError
from recon4d.geometry.lie import interpolate_pose
from recon4d.geometry.quaternion import normalize_quaternion
from recon4d.geometry.trajectory import evaluate_trajectories, time_basis, window_basis
from recon4d.io.atomic import atomic_path

FORMAT_NAME = "recon4d.scene"
# 5: states stored at some frames (state_frames); 4: death frames and per-trajectory time windows; 3: sparse
# motion coefficients; 2: motion model
FORMAT_VERSION = 5
NEVER = 2**31 - 1  # death frame of a Gaussian that lives to the end of the clip


@dataclass
class Gaussians:
    """A set of 3D Gaussians with activated parameters (what `recon4d.render.rasterize` takes).

    Attributes:
        means: [N, 3] world positions.
        quats: [N, 4] rotations (w, x, y, z).
        scales: [N, 3] standard deviations (linear).
        opacities: [N] in [0, 1].
        colors: [N, C] RGB in [0, 1] (C = 3) or other features.
    """

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor

    def __len__(self) -> int:
        return self.means.shape[0]

    def select(self, index: torch.Tensor) -> "Gaussians":
        """Subset by boolean mask or index tensor."""
        return Gaussians(*(getattr(self, name)[index] for name in _GAUSSIAN_FIELDS))


_GAUSSIAN_FIELDS = ("means", "quats", "scales", "opacities", "colors")


def _neighbours(t: float, count: int) -> tuple[int, int, float]:
    """Frames around time t and the blend weight of the later one."""
    if not 0 <= t <= count - 1:
        raise IndexError(f"time {t} outside 0..{count - 1}")
    before = int(math.floor(t))
    return before, min(before + 1, count - 1), float(t) - before


@dataclass
class Cameras:
    """One pinhole camera per frame, OpenCV convention.

    Attributes:
        world_from_camera: [T, 4, 4].
        intrinsics: [T, 4] fx, fy, cx, cy in pixels of (width, height).
        timestamps: [T] seconds.
        width, height: image size in pixels.
        frame_names: per frame, the source file name or frame label.
    """

    world_from_camera: torch.Tensor
    intrinsics: torch.Tensor
    timestamps: torch.Tensor
    width: int
    height: int
    frame_names: list[str]

    def __len__(self) -> int:
        return self.world_from_camera.shape[0]

    def world_from_camera_at(self, t: float) -> torch.Tensor:
        """Pose [4, 4] at time t in frame units; fractional t interpolates (slerp + linear translation)."""
        before, after, weight = _neighbours(t, len(self))
        if weight == 0.0:
            return self.world_from_camera[before].clone()
        return interpolate_pose(self.world_from_camera[before], self.world_from_camera[after], weight)

    def K(self, t: float) -> torch.Tensor:
        """Intrinsics matrix [3, 3] at time t (frame units; fractional t interpolates linearly)."""
        before, after, weight = _neighbours(t, len(self))
        fx, fy, cx, cy = torch.lerp(self.intrinsics[before], self.intrinsics[after], weight).unbind()
        zero, one = torch.zeros_like(fx), torch.ones_like(fx)
        return torch.stack([fx, zero, cx, zero, fy, cy, zero, zero, one]).reshape(3, 3)


@dataclass
class MotionModel:
    """Continuous-time motion of the dynamic Gaussians (Gaussian-Flow's polynomial + Fourier model).

    Attribute(t) = coefficients . time_basis(t / time_span) (see `recon4d.geometry.trajectory`); with `window`,
    each trajectory is normalised over its own window instead: tau = (t - first) / (last - first).

    Attributes:
        position: [Nd, B, 3] world position coefficients.
        rotation: [Nd, B, 4] quaternion (wxyz) coefficients; evaluated values are normalised.
        color: [Nd, B, 3] additive colour offsets (RGB); the result is clamped to [0, 1].
        poly_degree, fourier_terms: the basis (B = 1 + poly_degree + 2 fourier_terms).
        time_span: frames mapped to tau = 1 (number of frames - 1).
        window: [Nd, 2] first and last frame of each trajectory's time window, or None (the whole clip).
    """

    position: torch.Tensor
    rotation: torch.Tensor
    color: torch.Tensor
    poly_degree: int
    fourier_terms: int
    time_span: float
    window: torch.Tensor | None = None

    TENSORS = ("position", "rotation", "color")
    # Times evaluated together where a per-trajectory basis [T, Nd, B] is built.
    CHUNK_TIMES = 16

    def basis(self, t: float | torch.Tensor) -> torch.Tensor:
        """Basis at times t (frame units, scalar or [T]): [T, B], or [T, Nd, B] with windows."""
        times = torch.as_tensor(t, dtype=self.position.dtype, device=self.position.device).reshape(-1)
        if self.window is not None:
            return window_basis(times, self.window.to(times), self.poly_degree, self.fourier_terms)
        return time_basis(times / max(self.time_span, 1e-9), self.poly_degree, self.fourier_terms)

    def window_groups(self) -> list[tuple[float, float, slice | torch.Tensor]]:
        """(first, last, rows) of each trajectory window: the rows of the coefficients normalised over [first,
        last]; one group of all rows without windows.

        Computed once per `window` tensor: grouping the rows of a [Nd, 2] tensor (`torch.unique` over rows)
        takes 0.3 s at 150,000 trajectories, which every rendered frame of a 450-frame scene paid again."""
        if self.window is None:
            return [(0.0, self.time_span, slice(None))]
        cached = self.__dict__.get("_window_groups")
        if cached is not None and cached[0] is self.window:
            return cached[1]
        windows, inverse = torch.unique(self.window, dim=0, return_inverse=True)
        groups = [(float(first), float(last), slice(None) if len(windows) == 1 else (inverse == g).nonzero().squeeze(1))
                  for g, (first, last) in enumerate(windows.tolist())]
        self.__dict__["_window_groups"] = (self.window, groups)
        return groups

    def states(self, t: float | torch.Tensor, with_colors: bool = True,
               rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Positions [T, R, 3], unit quaternions [T, R, 4] and colour offsets [T, R, 3] at times t of the
        trajectories `rows` ([R] distinct indices; default all, R = Nd); the offsets are None with `with_colors`
        off (the dense states of every frame of a long clip need no colours: at 450 frames and 110,000
        trajectories they would add 0.6 GB).

        A window none of whose trajectories is asked for is not evaluated: one frame of a long clip asks only
        for the Gaussians alive then, which live in one or two of its windows. The others are evaluated window
        by window as without `rows`, so the values are the same bit for bit."""
        times = torch.as_tensor(t, dtype=self.position.dtype, device=self.position.device).reshape(-1)
        count = self.position.shape[0]
        slot = None  # [Nd] each trajectory's place in the output, -1 where not asked for
        if rows is not None:
            slot = torch.full((count,), -1, dtype=torch.long, device=self.position.device)
            slot[rows] = torch.arange(rows.numel(), device=self.position.device)
        size = count if rows is None else rows.numel()
        means = self.position.new_zeros(times.numel(), size, 3)
        quats = self.position.new_zeros(times.numel(), size, 4)
        offsets = self.position.new_zeros(times.numel(), size, 3) if with_colors else None
        # One [T, B] basis and one matrix product per window, not one per trajectory.
        for first, last, group in self.window_groups():
            target, keep = group, slice(None)
            if slot is not None:
                places = slot[group]
                keep = (places >= 0).nonzero().squeeze(1)
                if keep.numel() == 0:
                    continue
                target = places[keep]
            span = max(last - first, 1.0) if self.window is not None else max(self.time_span, 1e-9)
            basis = time_basis((times - first) / span, self.poly_degree, self.fourier_terms)
            means[:, target] = evaluate_trajectories(self.position[group], basis)[:, keep]
            rotation = evaluate_trajectories(self.rotation[group], basis)[:, keep]
            quats[:, target] = torch.nn.functional.normalize(rotation, dim=-1)
            if offsets is not None:
                offsets[:, target] = evaluate_trajectories(self.color[group], basis)[:, keep]
        return means, quats, offsets

    def metadata(self) -> dict[str, Any]:
        return {"poly_degree": self.poly_degree, "fourier_terms": self.fourier_terms, "time_span": self.time_span}

    def select(self, rows: torch.Tensor) -> "MotionModel":
        """The trajectories `rows` [R] (indices) of this model, with their windows."""
        return MotionModel(self.position[rows], self.rotation[rows], self.color[rows], **self.metadata(),
                           window=None if self.window is None else self.window[rows])


@dataclass
class Scene4D:
    """A fitted 4D scene.

    Attributes:
        gaussians: canonical Gaussians (positions of dynamic ones at their birth frame).
        is_dynamic: [N] bool, has a per-frame state (a trajectory).
        birth_frame: [N] int32, first frame a Gaussian exists in.
        dynamic_means: [K, Nd, 3] positions of the dynamic Gaussians (in index order) at the K frames
            `state_frames`; None when `motion` is set.
        dynamic_quats: [K, Nd, 4] their rotations; None when `motion` is set.
        cameras: per-frame cameras.
        arrays: other named tensors (moving masks [T, H, W], tracks, ...).
        config: the resolved configuration (JSON-serialisable).
        metrics: quality and timing numbers (JSON-serialisable).
        motion: continuous-time model of the dynamic Gaussians (after `recon4d refine`), or None. When set,
            it defines the dynamic states (`dynamic_state_at`, `dynamic_states`) and the scene keeps no
            per-frame copy of them: at 450 frames and 110,000 trajectories that copy takes 1.4 GB, which
            every command that loads the scene would pay to read one frame. The file stores only the
            coefficients.
        is_moving: [N] bool, the Gaussians of moving things (moving masks, highlights, static exports leave
            them out); a subset of is_dynamic. None means all dynamic Gaussians.
        death_frame: [N] int32, first frame a Gaussian no longer exists in (`NEVER`: it lives to the end), or
            None when every Gaussian does.
        state_frames: [K] int64, the increasing frames whose dynamic states are stored, from 0 to T - 1; the
            frames between two of them blend those two (`dynamic_state_at`). None: every frame is stored (K = T).
            The sequential pass stores its fitted frames: a long clip's keyframes are a sixth of its frames, and
            storing every frame's states took 1.4 GB at 450 frames.
    """

    gaussians: Gaussians
    is_dynamic: torch.Tensor
    birth_frame: torch.Tensor
    dynamic_means: torch.Tensor | None
    dynamic_quats: torch.Tensor | None
    cameras: Cameras
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    motion: MotionModel | None = None
    is_moving: torch.Tensor | None = None
    death_frame: torch.Tensor | None = None
    state_frames: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.is_moving is None:
            self.is_moving = self.is_dynamic.clone()

    @property
    def num_frames(self) -> int:
        return len(self.cameras)

    @property
    def is_still(self) -> bool:
        """Whether the scene shows the same Gaussians at every time: none has a trajectory, every one lives from
        the first frame to the last (a still scene's fit, e.g. a walk-around)."""
        lives_throughout = self.death_frame is None or bool((self.death_frame == NEVER).all())
        return not bool(self.is_dynamic.any()) and not bool((self.birth_frame > 0).any()) and lives_throughout

    def alive_at(self, t: float) -> torch.Tensor:
        """[N] bool: the Gaussians that exist at time t (frame units): born at or before t, not dead by t."""
        alive = self.birth_frame <= t
        if self.death_frame is not None:
            alive = alive & (self.death_frame > t)
        return alive

    def window_ends(self) -> torch.Tensor:
        """[W - 1] sorted frames where a temporal window ends and the next begins: the scene's death frames
        (empty for a scene fitted in one window)."""
        if self.death_frame is None:
            return torch.zeros(0, dtype=self.birth_frame.dtype)
        return torch.unique(self.death_frame[self.death_frame != NEVER])

    def trajectory_windows(self) -> torch.Tensor:
        """[N, 2] float: first and last frame of the temporal window each Gaussian belongs to, the span its
        trajectory is normalised over. Windows end at the scene's death frames; a Gaussian belongs to the
        window it is born in. Without death frames every Gaussian's window is the whole clip."""
        last = float(max(self.num_frames - 1, 1))
        count = self.birth_frame.shape[0]
        if self.death_frame is None:
            return torch.tensor([0.0, last]).repeat(count, 1)
        ends = self.window_ends().to(torch.float64)
        edges = torch.cat([torch.zeros(1, dtype=torch.float64), ends, torch.tensor([last], dtype=torch.float64)])
        window = torch.searchsorted(ends, self.birth_frame.to(torch.float64), right=True)
        return torch.stack([edges[window], edges[window + 1]], -1).float()

    def window_at(self, t: int) -> tuple[int, int]:
        """First and last frame of the temporal window that frame t lies in: its Gaussians are born in it and
        die at its end, where the next window's begin. (0, T - 1) for a scene fitted in one window."""
        last = self.num_frames - 1
        ends = self.window_ends().tolist()
        later = [end for end in ends if end > t]
        return max([end for end in ends if end <= t], default=0), (later[0] - 1 if later else last)

    def dynamic_state_at(self, t: float,
                         rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Positions [R, 3], unit quaternions [R, 4] and colour offsets [R, 3] (None without a motion model)
        at time t in frame units of the dynamic Gaussians `rows` ([R] distinct indices into the dynamic ones,
        in is_dynamic index order; default all, R = Nd).

        With a motion model, its value at t. Otherwise the stored state when t is one of `state_frames`, and
        else a blend of the stored states before and after t (positions linearly, rotations by normalised lerp
        on the short arc): the frames between fitted ones, slow motion and held-out frames.
        """
        if self.motion is not None:
            means, quats, offsets = (x[0] for x in self.motion.states(float(t), rows=rows))
            return means, quats, offsets
        before, after, weight = self._stored_neighbours(t)
        pick = slice(None) if rows is None else rows
        means, quats = self.dynamic_means[before][pick], self.dynamic_quats[before][pick]
        if weight == 0.0:
            return means, quats, None
        later_quats = self.dynamic_quats[after][pick]
        later_quats = torch.where((quats * later_quats).sum(-1, keepdim=True) < 0, -later_quats, later_quats)
        return ((1 - weight) * means + weight * self.dynamic_means[after][pick],
                normalize_quaternion((1 - weight) * quats + weight * later_quats), None)

    def _stored_neighbours(self, t: float) -> tuple[int, int, float]:
        """Stored states (indices into dynamic_means) before and after time t, and the blend weight of the
        later one."""
        before, after, weight = _neighbours(t, self.num_frames)  # also refuses a t outside the clip
        if self.state_frames is None:
            return before, after, weight
        frames = self.state_frames.tolist()
        before = bisect.bisect_right(frames, t) - 1
        if frames[before] == t:
            return before, before, 0.0
        return before, before + 1, (t - frames[before]) / (frames[before + 1] - frames[before])

    def dynamic_states(self, frames: list[int] | None = None,
                       rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions [F, R, 3] and unit quaternions [F, R, 4] of the dynamic Gaussians `rows` (default all) at
        the frames `frames` (default all, F = T): `dynamic_state_at` of each, built on each call (one frame
        costs 1 / T of all)."""
        frames = list(range(self.num_frames)) if frames is None else list(frames)
        if self.motion is not None:
            times = torch.tensor(frames, dtype=self.motion.position.dtype)
            means, quats, _ = self.motion.states(times, with_colors=False, rows=rows)
            return means, quats
        if self.state_frames is None and rows is None and frames == list(range(self.num_frames)):
            return self.dynamic_means, self.dynamic_quats
        if not frames:
            count = self.dynamic_means.shape[1] if rows is None else rows.numel()
            return self.dynamic_means.new_zeros(0, count, 3), self.dynamic_quats.new_zeros(0, count, 4)
        means, quats = zip(*(self.dynamic_state_at(t, rows)[:2] for t in frames))
        return torch.stack(means), torch.stack(quats)

    def gaussians_at(self, t: float) -> Gaussians:
        """The Gaussians that exist at time t (in frame units), dynamic ones at their time-t state
        (`dynamic_state_at`). Only the living dynamic Gaussians' states are evaluated."""
        alive = self.alive_at(t)
        current = self.gaussians.select(alive)  # copies, written below
        dynamic = self.is_dynamic[alive]
        means, quats, offsets = self.dynamic_state_at(t, alive[self.is_dynamic].nonzero().squeeze(1))
        current.means[dynamic], current.quats[dynamic] = means, quats
        if offsets is not None:
            current.colors[dynamic] = (current.colors[dynamic] + offsets).clamp(0, 1)
        return current

    def validate(self) -> None:
        """Raise SceneError if the parts do not fit together."""
        n, t = len(self.gaussians), self.num_frames
        nd = int(self.is_dynamic.sum())
        dynamic_ok = tuple(self.is_dynamic.shape) == (n,) and self.is_dynamic.dtype == torch.bool
        moving_ok = tuple(self.is_moving.shape) == (n,) and self.is_moving.dtype == torch.bool
        checks = [
            (all(getattr(self.gaussians, f).shape[0] == n for f in _GAUSSIAN_FIELDS), "Gaussian fields differ in length"),
            (dynamic_ok, "is_dynamic must be bool [N]"),
            (moving_ok, "is_moving must be bool [N]"),
            (not (moving_ok and dynamic_ok) or not bool((self.is_moving & ~self.is_dynamic).any()),
             "is_moving must be a subset of is_dynamic"),
            (tuple(self.birth_frame.shape) == (n,), "birth_frame must be [N]"),
            (self.death_frame is None or tuple(self.death_frame.shape) == (n,), "death_frame must be [N]"),
            (tuple(self.cameras.intrinsics.shape) == (t, 4), f"intrinsics must be [{t}, 4]"),
            (tuple(self.cameras.timestamps.shape) == (t,), f"timestamps must be [{t}]"),
            (len(self.cameras.frame_names) == t, f"frame_names must have {t} entries"),
        ]
        if self.motion is None:
            stored = t
            if self.state_frames is not None:
                frames = self.state_frames
                stored = frames.numel()
                checks.append((frames.dim() == 1 and not frames.is_floating_point() and stored >= 1
                               and int(frames[0]) == 0 and int(frames[-1]) == t - 1 and bool((frames.diff() > 0).all()),
                               f"state_frames must be increasing frames from 0 to {t - 1}"))
            checks += [
                (self.dynamic_means is not None and tuple(self.dynamic_means.shape) == (stored, nd, 3),
                 f"dynamic_means must be [{stored}, {nd}, 3]"),
                (self.dynamic_quats is not None and tuple(self.dynamic_quats.shape) == (stored, nd, 4),
                 f"dynamic_quats must be [{stored}, {nd}, 4]"),
            ]
        else:
            checks.append((self.dynamic_means is None and self.dynamic_quats is None and self.state_frames is None,
                           "a scene with a motion model keeps no stored states "
                           "(dynamic_means, dynamic_quats, state_frames)"))
            checks += [(getattr(self.motion, name).shape[0] == nd, f"motion {name} must have {nd} rows")
                       for name in MotionModel.TENSORS]
            checks.append((self.motion.window is None or tuple(self.motion.window.shape) == (nd, 2),
                           f"motion window must be [{nd}, 2]"))
        for ok, message in checks:
            if not ok:
                raise SceneError(f"inconsistent scene: {message}")


def _pack_coefficients(name: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    """Trajectory coefficients [Nd, B, C] as stored: dense, or, when most are zero (background with a
    residual drift has a constant term and a few low-order ones; colour offsets are often all zero), a mask
    of the non-zero (Gaussian, basis function) pairs [Nd, B] bool and their values [K, C]."""
    nonzero = (value != 0).any(-1)
    sparse_bytes = nonzero.numel() + int(nonzero.sum()) * value.shape[-1] * value.element_size()
    if sparse_bytes >= value.numel() * value.element_size():
        return {name: value}
    return {f"{name}/nonzero": nonzero, f"{name}/values": value[nonzero]}


def _unpack_coefficients(name: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    if name in tensors:
        return tensors[name]
    nonzero, values = tensors[f"{name}/nonzero"], tensors[f"{name}/values"]
    if nonzero.dtype != torch.bool or values.dim() != 2 or int(nonzero.sum()) != values.shape[0]:
        raise ValueError(f"{name}: sparse coefficients do not match their mask")
    dense = torch.zeros(*nonzero.shape, values.shape[1], dtype=values.dtype)
    dense[nonzero] = values
    return dense


def save_scene(scene: Scene4D, path: str | os.PathLike) -> Path:
    """Write `scene` to `path` atomically; returns the path."""
    from safetensors.torch import save_file

    scene.validate()
    tensors = {f"gaussians/{name}": getattr(scene.gaussians, name) for name in _GAUSSIAN_FIELDS}
    tensors.update({
        "is_dynamic": scene.is_dynamic,
        "is_moving": scene.is_moving,
        "birth_frame": scene.birth_frame,
        "cameras/world_from_camera": scene.cameras.world_from_camera,
        "cameras/intrinsics": scene.cameras.intrinsics,
        "cameras/timestamps": scene.cameras.timestamps,
    })
    if scene.motion is None:
        tensors.update({"dynamic_means": scene.dynamic_means, "dynamic_quats": scene.dynamic_quats})
        if scene.state_frames is not None:
            tensors["state_frames"] = scene.state_frames
    else:  # the per-frame states follow from the model: store only its coefficients
        for name in MotionModel.TENSORS:
            tensors.update(_pack_coefficients(f"motion/{name}", getattr(scene.motion, name)))
        if scene.motion.window is not None:
            tensors["motion/window"] = scene.motion.window
    if scene.death_frame is not None:
        tensors["death_frame"] = scene.death_frame
    tensors.update({f"arrays/{name}": value for name, value in scene.arrays.items()})
    tensors = {name: value.detach().cpu().contiguous() for name, value in tensors.items()}
    manifest = {
        "width": scene.cameras.width,
        "height": scene.cameras.height,
        "frame_names": scene.cameras.frame_names,
        "config": scene.config,
        "metrics": scene.metrics,
        "motion": None if scene.motion is None else scene.motion.metadata(),
    }
    metadata = {"format": FORMAT_NAME, "version": str(FORMAT_VERSION), "manifest": json.dumps(manifest)}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


#: Largest image side a scene may declare (pixels): bounds every buffer sized from the manifest.
MAX_IMAGE_SIDE = 16384


def _scene_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        from recon4d.io.outputs import recover_outputs

        recover_outputs(path)  # an interrupted commit of a fit is finished before anything is read
        path = path / "scene.r4d"
    if not path.is_file():
        raise SceneError(f"no scene file at {path}", hint="run `recon4d fit VIDEO --out DIR` first")
    return path


def _read_header(reader, path: Path) -> dict:  # noqa: ANN001 - a safetensors reader
    metadata = reader.metadata() or {}
    if metadata.get("format") != FORMAT_NAME:
        raise SceneError(f"{path} is not a recon4d scene file")
    try:
        version = int(metadata.get("version", "0"))
    except ValueError:
        raise SceneError(f"{path} has a malformed format version") from None
    if version > FORMAT_VERSION:
        raise SceneError(
            f"{path} was written by a newer recon4d (format {version}, this one reads <= {FORMAT_VERSION})",
            hint="pip install -U recon4d",
        )
    try:
        manifest = json.loads(metadata["manifest"])
    except (KeyError, ValueError):
        raise SceneError(f"{path} has no readable manifest") from None
    _check_manifest(manifest, path)
    return manifest


def _check_manifest(manifest: Any, path: Path) -> None:
    """The manifest sizes buffers and names frames: refuse anything but the documented shape."""
    if not isinstance(manifest, dict):
        raise SceneError(f"{path}: the manifest must be a JSON object, not {type(manifest).__name__}")
    for side in ("width", "height"):
        value = manifest.get(side)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IMAGE_SIDE:
            raise SceneError(f"{path}: manifest {side} must be an integer in 1..{MAX_IMAGE_SIDE}, got {value!r}")
    names = manifest.get("frame_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SceneError(f"{path}: manifest frame_names must be a list of strings")
    for key in ("config", "metrics"):
        if not isinstance(manifest.get(key, {}), dict):
            raise SceneError(f"{path}: manifest {key} must be a JSON object")
    if manifest.get("motion") is not None and not isinstance(manifest["motion"], dict):
        raise SceneError(f"{path}: manifest motion must be a JSON object or null")


def read_manifest(path: str | os.PathLike) -> dict:
    """The JSON manifest of a scene file (size, frame names, config, metrics) without reading its tensors."""
    from safetensors import safe_open

    path = _scene_file(path)
    try:
        with safe_open(str(path), framework="pt") as reader:
            return _read_header(reader, path)
    except SceneError:
        raise
    except Exception as exc:  # safetensors raises its own error types for truncated or garbage files
        raise SceneError(f"cannot read scene file {path}: it is truncated or not a recon4d scene") from exc


def load_scene(path: str | os.PathLike) -> Scene4D:
    """Read a scene file; raises SceneError (one line) for a missing, truncated, foreign, malformed or newer
    file."""
    from safetensors import safe_open

    path = _scene_file(path)
    try:
        with safe_open(str(path), framework="pt") as reader:
            manifest = _read_header(reader, path)
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}
    except SceneError:
        raise
    except Exception as exc:  # safetensors raises its own error types for truncated or garbage files
        raise SceneError(f"cannot read scene file {path}: it is truncated or not a recon4d scene") from exc
    try:
        motion = None
        if manifest.get("motion") is not None:
            motion = MotionModel(*(_unpack_coefficients(f"motion/{name}", tensors) for name in MotionModel.TENSORS),
                                 **manifest["motion"], window=tensors.get("motion/window"))
        scene = Scene4D(
            gaussians=Gaussians(*(tensors[f"gaussians/{name}"] for name in _GAUSSIAN_FIELDS)),
            is_dynamic=tensors["is_dynamic"],
            birth_frame=tensors["birth_frame"],
            dynamic_means=None if motion is not None else tensors["dynamic_means"],
            dynamic_quats=None if motion is not None else tensors["dynamic_quats"],
            cameras=Cameras(
                world_from_camera=tensors["cameras/world_from_camera"],
                intrinsics=tensors["cameras/intrinsics"],
                timestamps=tensors["cameras/timestamps"],
                width=manifest["width"],
                height=manifest["height"],
                frame_names=list(manifest["frame_names"]),
            ),
            arrays={name[len("arrays/"):]: value for name, value in tensors.items() if name.startswith("arrays/")},
            config=manifest.get("config", {}),
            metrics=manifest.get("metrics", {}),
            motion=motion,
            is_moving=tensors.get("is_moving"),
            death_frame=tensors.get("death_frame"),
            state_frames=tensors.get("state_frames"),
        )
    except KeyError as exc:
        raise SceneError(f"scene file {path} lacks the entry {exc.args[0]!r}") from exc
    except (TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise SceneError(f"scene file {path} is malformed ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    scene.validate()
    return scene
