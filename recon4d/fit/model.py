"""The trainable model of a fit: Gaussian parameters, their motion, and the cameras.

Both passes optimise the same three things in raw (unconstrained) form:

- `GaussianParams`: N Gaussians as means, wxyz quaternions, log scales, opacity logits and colour logits, with
  their labels (`is_dynamic`, `birth_frame`); `activated()` gives the renderable `recon4d.io.scene.Gaussians`.
  The sequential pass keeps one current state of them (per-frame states of the dynamic ones are snapshots).
- `SceneModel` (refinement): the same per-Gaussian rows plus continuous-time motion — a polynomial + Fourier
  trajectory per dynamic Gaussian (position, rotation, colour offset) and a residual trajectory per still one
  — and `CameraParams`. The index sets `still` / `dynamic` partition the rows and `is_moving` marks the
  Gaussians of moving things, so every label is derived from one place and `to_scene()` cannot disagree.
- `CameraParams`: fixed base poses plus one trainable 6-DoF delta per camera (rotation in radians,
  translation in scene depth units), with gauge cameras that never move.

Scene units: the sequential pass puts frame 0's camera at the origin and its Gaussians at the prior depth, so
one depth unit is the median prior depth of frame 0 (`prior_depth_unit`). Later stages, which no longer have
the prior of frame 0 at hand, measure the same scale as the median distance of the Gaussians from a camera
(`median_distance`). Learning rates of positions and camera translations are per depth unit.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from recon4d.fit.optim import replace_parameter
from recon4d.fit.sfm_scene import SFM_CAMERAS, place_unfitted
from recon4d.geometry.camera import invert_pose
from recon4d.geometry.lie import apply_pose_delta, fill_poses
from recon4d.geometry.quaternion import NORM_EPS, normalize_quaternion
from recon4d.geometry.trajectory import evaluate_trajectories, time_basis, window_basis
from recon4d.io.scene import NEVER, Gaussians, MotionModel, Scene4D

_EPS = 1e-4
_FRAME_STATE_KERNEL = Path(__file__).with_name("csrc") / "trajectories.cpp"


def logit(p: torch.Tensor) -> torch.Tensor:
    """Inverse sigmoid of p (clamped to [1e-4, 1 - 1e-4]), same shape."""
    p = p.clamp(_EPS, 1 - _EPS)
    return torch.log(p / (1 - p))


def prior_depth_unit(depth: torch.Tensor) -> float:
    """The scene's depth unit from frame 0's prior depth [H, W]: its median."""
    return float(depth.median())


def median_distance(means: torch.Tensor, centre: torch.Tensor) -> float:
    """The scene's depth unit measured from Gaussians: median distance of means [N, 3] from a camera centre
    [3] (1.0 without Gaussians)."""
    if means.shape[0] == 0:
        return 1.0
    return float(torch.linalg.norm(means - centre, dim=-1).median())


# ----------------------------------------------------------------------------------------------------------
# Gaussians


@dataclass
class GaussianParams:
    """Raw (unconstrained) parameters of N Gaussians and their labels.

    Attributes:
        means: [N, 3] world; quats: [N, 4] wxyz; log_scales: [N, 3]; opacity_logits: [N];
        color_logits: [N, 3] (sigmoid -> RGB); is_dynamic: [N] bool (in the sequential pass every dynamic
        Gaussian is a moving one: both come from the prior's moving masks); birth_frame: [N] int32;
        death_frame: [N] int32, first frame a Gaussian no longer exists in (`NEVER` until the sequential pass
        retires its temporal window).
    """

    means: torch.Tensor
    quats: torch.Tensor
    log_scales: torch.Tensor
    opacity_logits: torch.Tensor
    color_logits: torch.Tensor
    is_dynamic: torch.Tensor
    birth_frame: torch.Tensor
    death_frame: torch.Tensor

    PARAMETERS = ("means", "quats", "log_scales", "opacity_logits", "color_logits")
    ROWS = (*PARAMETERS, "is_dynamic", "birth_frame", "death_frame")

    @staticmethod
    def create(means, scales, colors, opacity: float, is_dynamic, birth_frame: int) -> "GaussianParams":
        """means [N, 3], scales [N] (isotropic), colors [N, 3] in [0, 1], is_dynamic [N] bool."""
        n = means.shape[0]
        quats = torch.zeros(n, 4, dtype=means.dtype, device=means.device)
        quats[:, 0] = 1
        return GaussianParams(
            means=means.detach().clone(), quats=quats,
            log_scales=torch.log(scales.detach())[:, None].repeat(1, 3),
            opacity_logits=logit(torch.full((n,), opacity, dtype=means.dtype, device=means.device)),
            color_logits=logit(colors.detach()),
            is_dynamic=is_dynamic.clone(),
            birth_frame=torch.full((n,), birth_frame, dtype=torch.int32, device=means.device),
            death_frame=torch.full((n,), NEVER, dtype=torch.int32, device=means.device),
        )

    def __len__(self) -> int:
        return self.means.shape[0]

    def requires_grad_(self, flag: bool) -> "GaussianParams":
        for name in self.PARAMETERS:
            getattr(self, name).requires_grad_(flag)
        return self

    def append(self, other: "GaussianParams", optimizer: torch.optim.Optimizer | None = None) -> None:
        """Append `other`'s rows. With `optimizer` (one that trains some of these parameters), the grown
        tensors replace the old ones in it: existing rows keep their Adam moments, new rows start at zero."""
        for name in self.ROWS:
            old = getattr(self, name)
            merged = torch.cat([old.detach(), getattr(other, name).detach()])
            if optimizer is not None and name in self.PARAMETERS:
                merged.requires_grad_(old.requires_grad)
                replace_parameter(optimizer, old, merged)
            setattr(self, name, merged)

    def select(self, index: torch.Tensor | slice) -> "GaussianParams":
        """The rows picked by a bool mask, an index tensor [N] or a slice, as a copy."""
        return GaussianParams(**{name: getattr(self, name).detach()[index].clone() for name in self.ROWS})

    @staticmethod
    def concat(parts: list["GaussianParams"]) -> "GaussianParams":
        """All rows of `parts`, in order, as one copy."""
        return GaussianParams(**{name: torch.cat([getattr(p, name).detach() for p in parts]) for name in GaussianParams.ROWS})

    def tail(self, start: int) -> "GaussianParams":
        """The Gaussians from row `start` on (e.g. the ones just appended), as a copy."""
        return self.select(slice(start, None))

    def activated(self) -> Gaussians:
        return Gaussians(
            means=self.means, quats=self.quats, scales=torch.exp(self.log_scales),
            opacities=torch.sigmoid(self.opacity_logits), colors=torch.sigmoid(self.color_logits),
        )

    def optimizer(self, lrs: dict[str, float]) -> torch.optim.Adam:
        """Adam over the parameters named in `lrs` (name -> learning rate); others stay fixed."""
        groups = []
        for name in self.PARAMETERS:
            tensor = getattr(self, name)
            tensor.requires_grad_(name in lrs)
            if name in lrs:
                groups.append({"params": [tensor], "lr": lrs[name], "name": name})
        return torch.optim.Adam(groups, eps=1e-15, fused=True)  # one kernel per step: 5x cheaper than the loop on CPU

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).detach().clone() for name in self.ROWS}

    @staticmethod
    def from_state_dict(state: dict[str, torch.Tensor]) -> "GaussianParams":
        return GaussianParams(**{k: v.clone() for k, v in state.items()})


# ----------------------------------------------------------------------------------------------------------
# Cameras


class CameraParams:
    """Cameras as fixed base poses and trainable 6-DoF deltas.

    camera_from_world(k) = exp(delta_k * unit) applied to base_k (`recon4d.geometry.lie.apply_pose_delta`);
    `unit` [6] scales the rotation part (radians) and the translation part (depth units, times
    `translation_scale`, which lets one Adam rate move rotation and translation at their own speeds).

    Example:
        >>> cameras = CameraParams(torch.eye(4)[None].repeat(2, 1, 1), depth_unit=2.0, gauge=(0,))
        >>> cameras.camera_from_world(1).shape, bool(cameras.deltas.requires_grad)
        (torch.Size([4, 4]), True)
    """

    def __init__(self, base_camera_from_world: torch.Tensor, depth_unit: float, translation_scale: float = 1.0,
                 gauge: tuple[int, ...] = ()) -> None:
        """base_camera_from_world: [F, 4, 4]; gauge: indices whose pose stays the base (fixes the frame)."""
        device = base_camera_from_world.device
        self.base = base_camera_from_world
        self.deltas = torch.zeros(base_camera_from_world.shape[0], 6, device=device, requires_grad=True)
        self.depth_unit = depth_unit
        self.unit = (torch.tensor([1.0, 1.0, 1.0, depth_unit, depth_unit, depth_unit], device=device)
                     * torch.tensor([1.0, 1.0, 1.0] + [translation_scale] * 3, device=device))
        self.gauge = frozenset(gauge)

    def __len__(self) -> int:
        return self.base.shape[0]

    def camera_from_world(self, k: int, delta: torch.Tensor | None = None) -> torch.Tensor:
        """[4, 4] pose of camera k (differentiable in its delta; `delta` [6] overrides the stored one)."""
        if k in self.gauge:
            return self.base[k]
        return apply_pose_delta((self.deltas[k] if delta is None else delta) * self.unit, self.base[k])

    @torch.no_grad()
    def poses(self) -> torch.Tensor:
        """All cameras' camera_from_world [F, 4, 4], detached."""
        return torch.stack([self.camera_from_world(k) for k in range(len(self))])


# ----------------------------------------------------------------------------------------------------------
# The refinement's model


class SceneModel:
    """Gaussians with continuous-time motion and refinable cameras over the fitted frames of a clip.

    Rows (first index of the per-Gaussian tensors, N): quats [N, 4], log_scales [N, 3], opacity_logits [N],
    color_logits [N, 3], birth [N] and death [N] (clip frames; a Gaussian exists at birth <= t < death),
    window [N, 2] (first and last frame of its temporal window, over which its trajectory is normalised:
    `Scene4D.trajectory_windows`), is_moving [N] bool. Still rows (`still` [Ns] indices) have a
    position `still_means` [Ns, 3] and a residual trajectory `still_motion` [Ns, B-1, 3] (non-constant
    coefficients only); dynamic rows (`dynamic` [Nd], in index order) have trajectories `position` [Nd, B, 3],
    `rotation` [Nd, B, 4] and `color_offsets` [Nd, B, 3]. `motion_meta` holds the basis (poly degree, Fourier
    terms, time span in frames). All tensors live on one device; trainable ones require grad.
    """

    GAUSSIAN_ROWS = ("quats", "log_scales", "opacity_logits", "color_logits")

    def __init__(self, scene: Scene4D, motion: MotionModel, fitted: list[int], device: torch.device,
                 rows: torch.Tensor | None = None, gauge: tuple[int, ...] = (0,)) -> None:
        """From a sequential `scene` and the initial `motion` of its dynamic Gaussians (clip frames `fitted`);
        `rows` [R] (sorted indices, e.g. one temporal window's) takes only those Gaussians of the scene, and then
        `motion` holds the trajectories of the dynamic ones among them; `gauge` lists the fitted frames whose
        cameras stay fixed. The scene's per-frame states are not read: `motion` replaces them."""
        self.device = device
        self.fitted = list(fitted)
        taken = slice(None) if rows is None else rows
        is_dynamic = scene.is_dynamic[taken]
        self.dynamic = is_dynamic.nonzero().squeeze(1).to(device)
        self.still = (~is_dynamic).nonzero().squeeze(1).to(device)
        self.birth = scene.birth_frame[taken].to(device)
        self.windowed = scene.death_frame is not None
        death = scene.death_frame[taken] if self.windowed else torch.full_like(self.birth, NEVER)
        self.death = death.to(device)
        self.window = scene.trajectory_windows()[taken].to(device)
        self._cached_layout: tuple | None = None  # see `_layout`
        self.is_moving = scene.is_moving[taken].to(device)
        g = scene.gaussians.select(taken)
        tensor = lambda x: x.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)  # noqa: E731
        self.still_means = tensor(g.means[self.still.cpu()])
        self.quats = tensor(g.quats)
        self.log_scales = tensor(torch.log(g.scales.clamp_min(1e-8)))
        self.opacity_logits = tensor(logit(g.opacities))
        self.color_logits = tensor(logit(g.colors))
        self.position = tensor(motion.position)
        self.rotation = tensor(motion.rotation)
        self.color_offsets = tensor(motion.color)
        self.motion_meta = motion.metadata()
        self.still_motion = tensor(torch.zeros(self.still.numel(), motion.position.shape[1] - 1, 3))
        base = torch.stack([invert_pose(scene.cameras.world_from_camera[t]).float() for t in fitted]).to(device)
        first_centre = scene.cameras.world_from_camera[fitted[0], :3, 3].float().to(device)
        self.cameras = CameraParams(base, median_distance(g.means.to(device), first_centre), gauge=gauge)

    @property
    def num_gaussians(self) -> int:
        return self.quats.shape[0]

    @property
    def depth_unit(self) -> float:
        return self.cameras.depth_unit

    @property
    def num_windows(self) -> int:
        """Temporal windows of the clip (1 unless the sequential pass retired some)."""
        return int(torch.unique(self.window[:, 0]).numel()) if self.num_gaussians else 1

    def _layout(self) -> dict:
        """Row bookkeeping that changes only when rows are added or relabelled (densification, the still
        Gaussians that keep their residual motion), recomputed then:

        - "window": (first, last) clip frame of all temporal windows, "single": one window for all rows;
        - "slot" [N]: a row's place in cat(still rows, dynamic rows) (`means_at`);
        - "state" [N]: a row's place in cat(its own N rows, the Nd trajectory rows): a still row reads its
          own value, a dynamic one its trajectory's (`gaussians_at`);
        - "index" [N]: a still row's place i among the still rows, or -(j + 1) for a dynamic row's place j among
          the dynamic ones, and "first", "span" [N] float32: its window's first frame and length (at least 1),
          which normalise its trajectory's time (`frame_state`'s kernel);
        - "alive": clip time -> rows alive then (`rows_alive_at`)."""
        key = (self.window.shape[0], self.dynamic.numel(), self.window.data_ptr(), self.dynamic.data_ptr())
        if self._cached_layout is None or self._cached_layout[0] != key:
            count, ns, nd = self.num_gaussians, self.still.numel(), self.dynamic.numel()
            slot = torch.empty(count, dtype=torch.long, device=self.device)
            slot[self.still] = torch.arange(ns, device=self.device)
            slot[self.dynamic] = torch.arange(ns, ns + nd, device=self.device)
            state = torch.arange(count, device=self.device)
            state[self.dynamic] = torch.arange(count, count + nd, device=self.device)
            window = ((float(self.window[:, 0].min()), float(self.window[:, 1].max())) if count
                      else (0.0, float(self.motion_meta["time_span"])))
            single = bool((self.window == self.window[:1]).all()) if count else True
            index = torch.empty(count, dtype=torch.long, device=self.device)
            index[self.still] = torch.arange(ns, device=self.device)
            index[self.dynamic] = -1 - torch.arange(nd, device=self.device)
            first = self.window[:, 0].float().contiguous()
            span = (self.window[:, 1] - self.window[:, 0]).float().clamp_min(1.0).contiguous()
            self._cached_layout = (key, {"window": window, "single": single, "slot": slot, "state": state,
                                         "index": index, "first": first, "span": span, "alive": {}})
        return self._cached_layout[1]

    @property
    def time_range(self) -> tuple[float, float]:
        """First and last clip frame of the model's temporal windows."""
        return self._layout()["window"]

    @property
    def single_window(self) -> bool:
        """All rows share one temporal window (a clip fitted in one window, or one window of a long clip)."""
        return self._layout()["single"]

    def basis(self, times: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Trajectory basis of Gaussians `rows` [R] at clip times [T] (frames), each over its window: [T, R, B],
        or [T, B] when all rows share one window (one matrix product evaluates them, instead of R small ones)."""
        times = times.reshape(-1).float().to(self.device)
        degree, terms = self.motion_meta["poly_degree"], self.motion_meta["fourier_terms"]
        if self.single_window:
            first, last = self.time_range
            return time_basis((times - first) / max(last - first, 1.0), degree, terms)
        return window_basis(times, self.window[rows], degree, terms)

    def alive_at(self, t: float | torch.Tensor) -> torch.Tensor:
        """[N] bool (or [T, N] for times [T]): the Gaussians that exist at clip time t."""
        t = torch.as_tensor(t, dtype=torch.float32, device=self.device)
        t = t[..., None] if t.dim() else t
        return (self.birth <= t) & (self.death > t)

    @torch.no_grad()
    def at_birth(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Each dynamic Gaussian's trajectory [Nd, B, D] evaluated at its own birth frame -> [Nd, D]."""
        window = self.window[self.dynamic]
        tau = (self.birth[self.dynamic].float() - window[:, 0]) / (window[:, 1] - window[:, 0]).clamp_min(1.0)
        basis = time_basis(tau, self.motion_meta["poly_degree"], self.motion_meta["fourier_terms"])
        return torch.einsum("nbd,nb->nd", coeffs.detach(), basis)

    def rows_alive_at(self, t: float) -> torch.Tensor:
        """[A] indices (ascending) of the Gaussians that exist at clip time t; kept until rows change."""
        alive = self._layout()["alive"]
        if t not in alive:
            alive[t] = self.alive_at(t).nonzero().squeeze(1)
        return alive[t]

    def means_at(self, times: list[float], rows: torch.Tensor, with_still_motion: bool) -> torch.Tensor:
        """Positions [T, A, 3] of the Gaussians `rows` [A] at clip times [T] (differentiable): one evaluation
        of the trajectories for all times, then one gather of the rows. Still ones move by their residual
        trajectory only `with_still_motion` (off, it stays zero and is not evaluated)."""
        # Gathered row-major ([rows, T, 3]): index_select's backward (index_add) is 3x cheaper there than an
        # indexed gather's (accumulating index_put), and along a later dimension.
        times_tensor = torch.tensor(times)
        still = self.still_means[:, None].expand(-1, len(times), -1)
        if with_still_motion:
            still = still + evaluate_trajectories(self.still_motion, self.basis(times_tensor, self.still)[..., 1:]).transpose(0, 1)
        dynamic = evaluate_trajectories(self.position, self.basis(times_tensor, self.dynamic)).transpose(0, 1)
        return torch.cat([still, dynamic]).index_select(0, self._layout()["slot"][rows]).transpose(0, 1)

    def frame_state(self, times: list[float], rows: torch.Tensor,
                    with_still_motion: bool) -> tuple[torch.Tensor, Gaussians]:
        """Positions [T, A, 3] of the Gaussians `rows` [A] at clip times [T] (1 to 4) and those Gaussians at
        times[0] (differentiable): `means_at` and `gaussians_at` in one. On the CPU one C++ pass each way
        (`csrc/trajectories.cpp`: forward + backward 7.2 -> 1.8 ms for 9,500 alive rows of a 24,000-Gaussian window,
        one thread); elsewhere those two."""
        if self.device.type != "cpu" or self.position.dtype != torch.float32 or not 1 <= len(times) <= 4:
            means = self.means_at(times, rows, with_still_motion)
            return means, self.gaussians_at(times[0], rows, means[0])
        layout = self._layout()
        parameters = (self.still_means, self.still_motion, self.position, self.rotation, self.color_offsets,
                      self.quats, self.log_scales, self.opacity_logits, self.color_logits)
        basis = self.motion_meta["poly_degree"], self.motion_meta["fourier_terms"]
        means, quats, scales, opacities, colors = _FrameStateCpu.apply(
            rows.contiguous(), torch.tensor(times, dtype=torch.float32), layout["index"], layout["first"],
            layout["span"], *basis, with_still_motion, *parameters)
        return means, Gaussians(means[0], quats, scales, opacities, colors)

    def gaussians_at(self, t: float, rows: torch.Tensor, means: torch.Tensor) -> Gaussians:
        """The Gaussians `rows` [A] at clip time t (differentiable), at positions `means` [A, 3] (`means_at`):
        dynamic ones with their trajectory's rotation and colour offset."""
        basis = self.basis(torch.tensor([t]), self.dynamic)
        state = self._layout()["state"][rows]
        quats = torch.cat([self.quats, evaluate_trajectories(self.rotation, basis)[0]]).index_select(0, state)
        colors = torch.sigmoid(self.color_logits)
        offsets = evaluate_trajectories(self.color_offsets, basis)[0]
        colors = torch.cat([colors, (colors.index_select(0, self.dynamic) + offsets).clamp(0, 1)]).index_select(0, state)
        return Gaussians(means, normalize_quaternion(quats), torch.exp(self.log_scales.index_select(0, rows)),
                         torch.sigmoid(self.opacity_logits.index_select(0, rows)), colors)

    def reference_rotations(self) -> torch.Tensor:
        """[N, 4] rotation of each Gaussian: its static one, or a dynamic one's at its birth frame."""
        quats = self.quats.detach().clone()
        if self.dynamic.numel():
            quats[self.dynamic] = self.at_birth(self.rotation)
        return normalize_quaternion(quats)

    @torch.no_grad()
    def settle_still_motion(self, num_frames: int, keep_motion_px: float, focal: float) -> int:
        """Turn into dynamic Gaussians (trajectory = mean + residual motion; not labelled moving) the still
        ones whose residual motion reaches `keep_motion_px` (image pixels at focal length `focal`, seen from the
        first camera) at some frame after their birth; the others keep their mean position and lose the
        residue. Returns how many kept a trajectory."""
        if self.still.numel() == 0 or not bool(self.still_motion.detach().abs().gt(0).any()):
            return 0
        count = self.still.numel()
        largest = torch.zeros(count, device=self.device)  # over the frames each one is alive in
        total = torch.zeros(count, 3, device=self.device)
        frames_alive = torch.zeros(count, device=self.device)
        for start in range(0, num_frames, MotionModel.CHUNK_TIMES):  # bounds the [T, Ns, B] basis
            times = torch.arange(start, min(start + MotionModel.CHUNK_TIMES, num_frames), dtype=torch.float32)
            displacement = evaluate_trajectories(self.still_motion.detach(), self.basis(times, self.still)[..., 1:])
            alive = self.alive_at(times.to(self.device))[:, self.still].float()  # [T, Ns]
            largest = torch.maximum(largest, (displacement.norm(dim=-1) * alive).amax(0))
            total += (displacement * alive[..., None]).sum(0)
            frames_alive += alive.sum(0)
        center = invert_pose(self.cameras.base[0])[:3, 3]
        distance = torch.linalg.norm(self.still_means.detach() - center, dim=-1).clamp_min(1e-6)
        promote = largest / distance * focal >= keep_motion_px
        mean_displacement = total / frames_alive.clamp_min(1)[:, None]
        still_means, still_motion = self.still_means.detach(), self.still_motion.detach()
        promoted = int(promote.sum())
        if promoted:
            count = self.position.shape[1]
            position = torch.cat([still_means[promote][:, None], still_motion[promote]], 1)  # [P, B, 3]
            rotation = torch.zeros(promoted, count, 4, device=self.device)
            rotation[:, 0] = self.quats.detach()[self.still[promote]]
            ids = torch.cat([self.dynamic, self.still[promote]])
            order = ids.argsort()  # dynamic Gaussians are stored in index order
            self.dynamic = ids[order]
            self.position = torch.cat([self.position.detach(), position])[order]
            self.rotation = torch.cat([self.rotation.detach(), rotation])[order]
            self.color_offsets = torch.cat([self.color_offsets.detach(), torch.zeros(promoted, count, 3, device=self.device)])[order]
        keep = ~promote
        self.still = self.still[keep]
        self.still_means = still_means[keep] + mean_displacement[keep]
        self.still_motion = torch.zeros_like(still_motion[keep])
        return promoted

    def to_scene(self, template: Scene4D) -> Scene4D:
        """The model as a Scene4D over all frames of `template` (`scene_from_models`)."""
        return scene_from_models([self], template)


class _FrameStateCpu(torch.autograd.Function):
    """`SceneModel.frame_state` on the CPU (float32): the kernel's forward, and its backward for the gradients."""

    @staticmethod
    def forward(ctx, rows, times, index, first, span, degree, terms, with_still_motion, *parameters):  # noqa: ANN001
        from recon4d.cpp import load_extension

        parameters = tuple(p.detach().contiguous() for p in parameters)
        layout = (rows, times, index, first, span)
        ctx.settings = (degree, terms, with_still_motion)
        ctx.save_for_backward(*layout, *parameters)
        return tuple(load_extension(_FRAME_STATE_KERNEL).frame_state_forward(
            *layout, *parameters, degree, terms, with_still_motion, NORM_EPS))

    @staticmethod
    def backward(ctx, *grads):  # noqa: ANN001, ANN205
        from recon4d.cpp import load_extension

        # Outputs the loss did not use come as zeros (autograd materialises them), not None.
        parameter_grads = load_extension(_FRAME_STATE_KERNEL).frame_state_backward(
            *ctx.saved_tensors, *ctx.settings, NORM_EPS, *(g.contiguous() for g in grads))
        with_still_motion = ctx.settings[2]
        parameter_grads = [g if (i != 1 or with_still_motion) and ctx.needs_input_grad[8 + i] else None
                           for i, g in enumerate(parameter_grads)]
        return (None,) * 8 + tuple(parameter_grads)


@torch.no_grad()
def scene_from_models(models: list[SceneModel], template: Scene4D) -> Scene4D:
    """Models of disjoint Gaussians (e.g. one per temporal window, in time order) as one Scene4D over all frames
    of `template` (the sequential scene they started from): their rows in order, the continuous motion model and
    the refined cameras of their fitted frames (other frames' cameras re-interpolated between their refined
    neighbours). All models share one trajectory basis."""
    offsets = [0]
    for model in models:
        offsets.append(offsets[-1] + model.num_gaussians)
    cat = lambda name: torch.cat([getattr(m, name).detach().cpu() for m in models])  # noqa: E731
    rows = lambda name: torch.cat([getattr(m, name).cpu() + o for m, o in zip(models, offsets)])  # noqa: E731
    dynamic, still = rows("dynamic"), rows("still")
    windowed = any(m.windowed for m in models)
    motion = MotionModel(cat("position"), cat("rotation"), cat("color_offsets"), **models[0].motion_meta,
                         window=torch.cat([m.window[m.dynamic].cpu() for m in models]) if windowed else None)
    count = offsets[-1]
    is_dynamic = torch.zeros(count, dtype=torch.bool)
    is_dynamic[dynamic] = True
    means = torch.zeros(count, 3)
    means[still] = cat("still_means")
    # Dynamic Gaussians' static slot: their state at frame 0, as the sequential pass has it.
    means[dynamic] = motion.states(0.0, with_colors=False)[0][0]
    gaussians = Gaussians(means, normalize_quaternion(cat("quats")), torch.exp(cat("log_scales")),
                          torch.sigmoid(cat("opacity_logits")), torch.sigmoid(cat("color_logits")))
    world_from_camera = template.cameras.world_from_camera.clone()
    fitted = sorted({t for m in models for t in m.fitted})
    for model in models:
        for k, t in enumerate(model.fitted):
            world_from_camera[t] = invert_pose(model.cameras.camera_from_world(k).detach().cpu()).to(world_from_camera.dtype)
    world_from_camera = fill_poses(world_from_camera, fitted)
    if SFM_CAMERAS in template.arrays:  # a joint fit: COLMAP placed the unfitted frames, wide steps from the fitted
        world_from_camera = place_unfitted(world_from_camera, template.arrays[SFM_CAMERAS], fitted)
    cameras = type(template.cameras)(world_from_camera=world_from_camera, intrinsics=template.cameras.intrinsics,
                                     timestamps=template.cameras.timestamps, width=template.cameras.width,
                                     height=template.cameras.height, frame_names=list(template.cameras.frame_names))
    birth_frame = cat("birth").to(template.birth_frame.dtype)
    death_frame = cat("death").to(template.birth_frame.dtype) if windowed else None
    refined = Scene4D(gaussians=gaussians, is_dynamic=is_dynamic, birth_frame=birth_frame, death_frame=death_frame,
                      dynamic_means=None, dynamic_quats=None, cameras=cameras, arrays=dict(template.arrays),
                      config=dict(template.config), metrics=dict(template.metrics), motion=motion,
                      is_moving=cat("is_moving").clone())
    refined.validate()
    return refined
