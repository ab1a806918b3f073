"""GFlow-style sequential fit: frame 0 from depth, then per frame a camera step, flow-driven motion of the
dynamic Gaussians, new content, and a Gaussian step.

The model is `recon4d.fit.model.GaussianParams` plus one camera per fitted frame; new Gaussians come from
`recon4d.fit.strategy.spawn.SpawnStrategy`, the camera of a new frame from PnP (`recon4d.fit.pnp`) refined by
`recon4d.fit.camera.optimize_camera`. The trainer checkpoints after every frame through a callback so that an
interrupted fit resumes where it stopped; each frame reseeds its random generator from (seed, frame), so a
resumed fit gives the same result.

Optimiser state: the Gaussian step builds a fresh Adam at each frame (a new target); a spawn during the step
keeps the moments of the existing rows and starts the new ones at zero, as the refinement's growth does
(`recon4d.fit.strategy.grow`). Measured against rebuilding Adam after each spawn (README, "How the fit is
built"): held-out PSNR of the sequential pass +0.15 dB on bear and +0.17 dB on cup.

Coarse to fine (`sequential.pyramid_levels`, `sequential.coarse_share`; `recon4d.fit.pyramid`): the camera step
and the Gaussian step each spend their first iterations on downsampled frames and priors (the camera step's
learning-rate schedule runs on across the levels; each level has its own plateau test, since losses at two
resolutions do not compare). Flow errors stay in working-resolution pixels. New content is spawned, and
PnP, the motion of dynamic Gaussians and the slow-mover test run, at the working resolution only.
"""
from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from recon4d.fit.bundle import adjust_after_frame
from recon4d.fit.camera import Plateau, optimize_camera
from recon4d.fit.config import FitConfig
from recon4d.fit.losses import (
    COVERED_ALPHA,
    align_prior_depth,
    depth_loss,
    flow_loss,
    isotropy_loss,
    photometric_loss,
)
from recon4d.fit.matching import WideBaselineStart
from recon4d.fit.model import CameraParams, GaussianParams, prior_depth_unit
from recon4d.fit.pnp import PNP_MAX_POINTS, PNP_MIN_INLIERS, pnp_camera_from_world
from recon4d.fit.pyramid import Level, Pyramid, level_phases, pixels_at_level
from recon4d.fit.sfm_start import sfm_scale, sfm_start
from recon4d.fit.strategy.spawn import SpawnStrategy, unproject_pixels
from recon4d.geometry.camera import invert_pose, project_to_pixels, rotation_angle_deg, transform_points
from recon4d.io.scene import Gaussians
from recon4d.render import RenderResult, rasterize

# Points closer to a camera than this (scene units) are projected as if at this depth (flow terms, motion).
MIN_DEPTH = 1e-3
# A Gaussian counts as in front when its depth is within this fraction of the rendered depth at its pixel.
OCCLUSION_TOLERANCE = 0.05

@dataclass
class FitInputs:
    """Everything the fit reads, at working resolution, on the compute device.

    Attributes:
        frames: [T, H, W, 3] float in [0, 1].
        flow_forward, flow_backward: [T-1, H, W, 2] pixels (t -> t+1 on frame t; t+1 -> t on frame t+1).
        valid_forward, valid_backward: [T-1, H, W] bool.
        depth: [T, H, W] prior depth (up to scale); depth_confidence: [T, H, W] in [0, 1].
        moving: [T, H, W] bool moving-object masks.
        K: [3, 3] intrinsics.
        sfm_camera_from_world: [T, 4, 4] COLMAP's cameras (`recon4d.priors.sfm`; NaN rows: not placed), or None.
        sfm_points: [P, 3] COLMAP's points in its world, or None.
    """

    frames: torch.Tensor
    flow_forward: torch.Tensor
    flow_backward: torch.Tensor
    valid_forward: torch.Tensor
    valid_backward: torch.Tensor
    depth: torch.Tensor
    depth_confidence: torch.Tensor
    moving: torch.Tensor
    K: torch.Tensor
    sfm_camera_from_world: torch.Tensor | None = None
    sfm_points: torch.Tensor | None = None

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    def between(self, start: int, stop: int) -> "FitInputs":
        """The inputs of frames start..stop-1 and the flow between consecutive ones of them (views, no copies)."""
        return FitInputs(**{f.name: _frames_of(f.name, getattr(self, f.name), start, stop) for f in fields(self)})

    def split(self, spans: list[tuple[int, int]]) -> list["FitInputs"]:
        """`between(start, stop)` of each span, as copies; this FitInputs is emptied on the way (its fields set
        to None), each whole-clip tensor let go of once its spans are copied, so at most one of them is held
        twice. For a refinement whose windows read only their own frames: a finished window's copies can be
        freed while the other windows run, which views of the whole clip would keep."""
        parts: list[dict] = [{} for _ in spans]
        for f in fields(self):
            whole = getattr(self, f.name)
            setattr(self, f.name, None)
            copy = whole is not None and f.name in _SLICED
            for part, (start, stop) in zip(parts, spans):
                taken = _frames_of(f.name, whole, start, stop)
                part[f.name] = taken.clone() if copy else taken
            del whole
        return [FitInputs(**part) for part in parts]


#: FitInputs fields with one entry per frame, and per pair of consecutive frames; the others are shared.
_PER_FRAME = frozenset({"frames", "depth", "depth_confidence", "moving", "sfm_camera_from_world"})
_PER_PAIR = frozenset({"flow_forward", "flow_backward", "valid_forward", "valid_backward"})
_SLICED = _PER_FRAME | _PER_PAIR


def _frames_of(name: str, value: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    """The part of FitInputs field `name` for frames start..stop-1 (a view; shared fields whole)."""
    if value is None or name not in _SLICED:
        return value
    return value[start:stop] if name in _PER_FRAME else value[start:max(stop - 1, start)]


@dataclass
class FitState:
    """What the fit has produced so far; checkpointed after every frame.

    Rows of all Gaussians are numbered as in `all_gaussians()`: the retired ones first, then the active ones.

    Attributes:
        gaussians: the trainable Gaussians of the current temporal window (their latest-frame state).
        camera_from_world: per fitted frame, [4, 4].
        dynamic_states: per fitted frame, (row numbers of the dynamic Gaussians alive then, their means, quats);
            a window's first frame holds those of both windows.
        frame_stats: per fitted frame, seconds, iterations and losses.
        retired: the Gaussians of finished windows (their death frames set), or None.
        window_start: the fitted frame the current window begins at.
    """

    gaussians: GaussianParams
    camera_from_world: list[torch.Tensor] = field(default_factory=list)
    dynamic_states: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    frame_stats: list[dict] = field(default_factory=list)
    retired: GaussianParams | None = None
    window_start: int = 0

    @property
    def next_frame(self) -> int:
        return len(self.camera_from_world)

    @property
    def row_offset(self) -> int:
        """Row number of the first active Gaussian."""
        return 0 if self.retired is None else len(self.retired)

    def all_gaussians(self) -> GaussianParams:
        """Retired and active Gaussians, in row order."""
        return self.gaussians if self.retired is None else GaussianParams.concat([self.retired, self.gaussians])

    def active_dynamic_rows(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame k's dynamic states of the active Gaussians: (their indices into `gaussians` [D], and where
        they are in `dynamic_states[k]` [D])."""
        local = self.dynamic_states[k][0] - self.row_offset
        keep = (local >= 0).nonzero().squeeze(1)
        return local.index_select(0, keep), keep

    def active_dynamic_state(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frame k's dynamic states of the active Gaussians: (indices into `gaussians`, means, quats)."""
        ids, keep = self.active_dynamic_rows(k)
        _, means, quats = self.dynamic_states[k]
        return ids, means.index_select(0, keep), quats.index_select(0, keep)

    def state_dict(self) -> dict:
        return {
            "gaussians": self.gaussians.state_dict(),
            "camera_from_world": [p.cpu() for p in self.camera_from_world],
            "dynamic_states": [tuple(x.cpu() for x in s) for s in self.dynamic_states],
            "frame_stats": self.frame_stats,
            "retired": None if self.retired is None else self.retired.state_dict(),
            "window_start": self.window_start,
        }

    @staticmethod
    def from_state_dict(state: dict, device: torch.device) -> "FitState":
        gaussians = GaussianParams.from_state_dict({k: v.to(device) for k, v in state["gaussians"].items()})
        return FitState(
            gaussians=gaussians,
            camera_from_world=[p.to(device) for p in state["camera_from_world"]],
            dynamic_states=[tuple(x.to(device) for x in s) for s in state["dynamic_states"]],
            frame_stats=list(state["frame_stats"]),
            retired=None if state.get("retired") is None
            else GaussianParams.from_state_dict({k: v.to(device) for k, v in state["retired"].items()}),
            window_start=int(state.get("window_start", 0)),
        )


# ----------------------------------------------------------------------------------------------------------
# Pure helpers


def bilinear_sample(image: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """image: [H, W, C]; pixels: [N, 2] (u, v) -> values [N, C] (border-clamped)."""
    height, width = image.shape[:2]
    grid = torch.stack([pixels[:, 0] / max(width - 1, 1) * 2 - 1, pixels[:, 1] / max(height - 1, 1) * 2 - 1], -1)
    sampled = F.grid_sample(image.permute(2, 0, 1)[None], grid[None, None], mode="bilinear",
                            padding_mode="border", align_corners=True)
    return sampled[0, :, 0].T


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of [H, W] bool by a square of the given radius."""
    if radius <= 0:
        return mask
    size = 2 * radius + 1
    return F.max_pool2d(mask[None, None].float(), size, stride=1, padding=radius)[0, 0] > 0


def window_boundaries(num_frames: int, window_frames: int) -> list[int]:
    """The fitted frames at which a pass over `num_frames` starts a new temporal window: as few windows as
    hold at most `window_frames` frames each (consecutive windows share their boundary frame), and an even
    number of them when there are several (while every window keeps two frames), as equal as the count
    allows; [] when one window holds them all.

    Even, because the refinement runs the windows two side by side, one thread each: an odd one out would
    run alone, on one of two cores, as long as a pair does (one thread more for it gained nothing: cup's
    450-frame clip, stop 48). Split in four instead of three, each window is a quarter shorter.

    Example:
        >>> window_boundaries(79, 32), window_boundaries(28, 32), window_boundaries(8, 4)
        ([20, 39, 58], [], [2, 4, 5])
    """
    if window_frames < 2 or num_frames <= window_frames:
        return []
    windows = math.ceil((num_frames - 1) / (window_frames - 1))
    windows = min(windows + windows % 2, num_frames - 1)
    return [round(i * (num_frames - 1) / windows) for i in range(1, windows)]


def subset_window_boundaries(fitted: list[int], subset: list[int], window_frames: int) -> list[int]:
    """`window_boundaries` of all `fitted` frames (sorted clip indices), each moved to the nearest frame of the
    sequential pass's `subset` of them: indices into `subset`, distinct and increasing. Windows then hold as
    many keyframes of the refinement as without a subset, not as many frames of the pass.

    Example:
        >>> subset_window_boundaries(list(range(0, 16, 2)), [0, 6, 8, 14], 4)
        [1, 2]
    """
    subset_times = torch.tensor(subset, dtype=torch.float64)
    boundaries = []
    for b in window_boundaries(len(fitted), window_frames):
        index = int((subset_times - fitted[b]).abs().argmin())
        if 0 < index < len(subset) - 1 and (not boundaries or index > boundaries[-1]):
            boundaries.append(index)
    return boundaries


# ----------------------------------------------------------------------------------------------------------
# The trainer


class SequentialFitter:
    """Runs the per-frame optimisation over `inputs`, continuing from `state` when given."""

    def __init__(self, inputs: FitInputs, config: FitConfig, on_frame: Callable[[FitState, int], None] | None = None,
                 boundaries: list[int] | None = None):
        """`boundaries`: the frames (indices into inputs) that start a temporal window; by default
        `window_boundaries` of `sequential.window_frames`."""
        self.inputs = inputs
        self.config = config
        self.on_frame = on_frame
        self.height, self.width = inputs.frames.shape[1:3]
        self.device = inputs.frames.device
        self.K = inputs.K
        self.depth_unit = prior_depth_unit(inputs.depth[0])
        self.strategy = SpawnStrategy(inputs, config.init, config.densify)
        self.pyramid = Pyramid(inputs, config.sequential.pyramid_levels)
        self.wide_baseline = WideBaselineStart(inputs.frames, inputs.K, config.matching, inputs.moving)
        if boundaries is None:
            boundaries = window_boundaries(inputs.num_frames, config.sequential.window_frames)
        self.window_boundaries = set(boundaries)
        self.sfm_anchor: tuple[int, float] | None = None  # (frame, fit units per COLMAP unit), found on first use
        self.sfm_not_anchor: set[int] = set()  # frames that saw too few COLMAP points to be the anchor
        self._replay_key: tuple[torch.Tensor, int] | None = None  # (birth_frame tensor, row offset) of `_replay_rows`
        self._replay_rows: dict[int, tuple] = {}  # frame -> (its states' ids tensor, alive rows, ids, keep)

    # -- rendering -----------------------------------------------------------------------------------------
    def render(self, gaussians: Gaussians, camera_from_world: torch.Tensor,
               extra: torch.Tensor | None = None, level: Level | None = None) -> RenderResult:
        """Render at the working resolution, or at a pyramid `level` (its intrinsics and size)."""
        level = level or self.pyramid.level(0)
        features = gaussians.colors if extra is None else torch.cat([gaussians.colors, extra], -1)
        return rasterize(gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, features,
                         camera_from_world, level.inputs.K, level.width, level.height)

    def phases(self, iterations: int) -> list[tuple[Level, int]]:
        """(pyramid level, iterations) of a stage of `iterations`, coarsest first."""
        cfg = self.config.sequential
        return [(self.pyramid.level(index), count)
                for index, count in level_phases(iterations, self.pyramid.levels, cfg.coarse_share)]

    # -- stages ----------------------------------------------------------------------------------------------
    def fit_first_frame(self, generator: torch.Generator) -> tuple[FitState, dict]:
        state = FitState(gaussians=self.strategy.first_frame(generator))
        stats = self.optimize_gaussians(state, 0, torch.eye(4, device=self.device), self.config.sequential.frame0_iters,
                                        generator, move_still=True, previous_pixels=None)
        return state, stats

    def camera_step(self, state: FitState, t: int, init: torch.Tensor, previous_pixels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Optimise camera t with the Gaussians frozen, coarse to fine; returns camera_from_world [4, 4]."""
        cfg = self.config.sequential
        with torch.no_grad():
            gaussians = state.gaussians.activated()
            gaussians = Gaussians(*(x.detach() for x in (gaussians.means, gaussians.quats, gaussians.scales,
                                                        gaussians.opacities, gaussians.colors)))
        camera_from_world, done, ran, info = init, 0, 0, {"loss": None}
        for level, iterations in self.phases(cfg.camera_iters):
            factor = level.factor
            # One Adam rate for the delta; translation steps are scaled to scene units and to their own rate.
            cameras = CameraParams(camera_from_world[None], self.depth_unit,
                                   translation_scale=cfg.lr_camera_translation / cfg.lr_camera_rotation)
            loss_of = functools.partial(self.camera_loss, gaussians, t, level, pixels_at_level(previous_pixels, factor))
            # The learning-rate schedule runs on across levels: this phase covers steps done .. done+iterations.
            lr = cfg.lr_camera_rotation * cfg.camera_lr_decay ** (done / cfg.camera_iters)
            camera_from_world, info = optimize_camera(cameras, 0, loss_of, iterations, lr,
                                                      lr_decay=cfg.camera_lr_decay ** (iterations / cfg.camera_iters),
                                                      plateau=Plateau(cfg.plateau_patience, cfg.plateau_tolerance),
                                                      keep_best=True)
            done += iterations
            ran += info["iterations"]
        return camera_from_world, {"camera_iters": ran, "camera_loss": info["loss"]}

    def camera_loss(self, gaussians: Gaussians, t: int, level: Level, previous_pixels: torch.Tensor,
                    camera_from_world: torch.Tensor) -> torch.Tensor:
        """Camera-step loss of frame t at a pyramid level, on still pixels: photometric, depth, and the flow of
        each Gaussian from its pixel at t-1 (`previous_pixels` [N, 2], in the level's pixels) against the prior's
        backward flow, in working-resolution pixels."""
        cfg, losses, inputs = self.config.sequential, self.config.losses, level.inputs
        still = ~dilate(inputs.moving[t], math.ceil(cfg.motion_dilation / level.factor))
        still_w = still.float()
        flow_w = (still & inputs.valid_backward[t - 1]).float()
        pixels = project_to_pixels(gaussians.means, camera_from_world, inputs.K, min_depth=MIN_DEPTH)[0]
        out = self.render(gaussians, camera_from_world, extra=previous_pixels - pixels, level=level)
        loss = losses.photo * photometric_loss(out.color[..., :3], inputs.frames[t], still_w, losses.ssim)
        loss = loss + losses.depth * depth_loss(out.depth, inputs.depth[t], still_w * (out.alpha.detach() > COVERED_ALPHA))
        flow_error = level.factor * flow_loss(out.color[..., 3:5], inputs.flow_backward[t - 1], flow_w)
        return loss + losses.flow_camera * flow_error

    def move_dynamic(self, state: FitState, t: int, previous_cfw: torch.Tensor, camera_from_world: torch.Tensor) -> None:
        """Carry dynamic Gaussians from frame t-1 to t along the forward flow, with the depth change the depth
        prior gives as far as the prior agrees with the scene's still surfaces.

        A Gaussian at camera depth z moves to the pixel the flow gives, at depth z * ratio, where
        log ratio = log still_ratio + trust * (log prior_ratio - log still_ratio):
        - still_ratio: its own depth in the new camera over z, what a point that stays put shows (camera
          motion alone);
        - prior_ratio: the prior's depth at the target pixel over that at the source, each frame's prior scaled
          to the scene first;
        - trust (`prior_depth_change`): 1 where the scaled prior matches the rendered still surfaces of both
          frames, 0 where it does not (`sequential.prior_residual_trusted`, `prior_residual_ignored`).
        Why: a prior's depth of moving things is no better than its depth of still ones (the video prior guesses
        the former from the latter). Where that is a fill (cup: a static camera, nothing to triangulate), the
        full ratio moved every dynamic Gaussian by the guess's swings from frame to frame, all in the same
        direction, and nothing pulled them back: over cup's 450-frame clip their median depth fell from 0.27
        to 0.015 while the still ones' stayed near 0.2, into the renderer's near plane, where the refinement's
        trajectories broke (floaters, up to 10 dB lost on 30 frames; stop 51). Where the prior is good (bear),
        its ratio carries the walking bear's depth: weighting it by the prior's own per-pixel confidence (0.08
        at most on moving pixels, so nearly camera motion alone) cost bear's held-out frames 1 dB."""
        g = state.gaussians
        dynamic = g.is_dynamic.nonzero().squeeze(1)
        if dynamic.numel() == 0:
            return
        scale_change, trust = self.prior_depth_change(state, t, previous_cfw, camera_from_world)
        with torch.no_grad():
            means = g.means[dynamic]
            pixels, camera_z = project_to_pixels(means, previous_cfw, self.K, min_depth=MIN_DEPTH)
            z = camera_z.clamp_min(MIN_DEPTH)
            inside = (pixels[:, 0] >= 0) & (pixels[:, 0] <= self.width - 1) & (pixels[:, 1] >= 0) & (pixels[:, 1] <= self.height - 1)
            flow = bilinear_sample(self.inputs.flow_forward[t - 1], pixels)
            target = pixels + flow
            depth_before = bilinear_sample(self.inputs.depth[t - 1][..., None], pixels)[:, 0]
            depth_after = bilinear_sample(self.inputs.depth[t][..., None], target)[:, 0]
            prior_ratio = depth_after.clamp_min(1e-6) / depth_before.clamp_min(1e-6) * scale_change
            still_ratio = transform_points(camera_from_world, means)[:, 2].clamp_min(MIN_DEPTH) / z
            ratio = (still_ratio * (prior_ratio / still_ratio) ** trust).clamp(0.5, 2.0)
            new_z = z * ratio
            x = (target[:, 0] - self.K[0, 2]) / self.K[0, 0] * new_z
            y = (target[:, 1] - self.K[1, 2]) / self.K[1, 1] * new_z
            moved = transform_points(invert_pose(camera_from_world), torch.stack([x, y, new_z], -1))
            # The camera moved too: Gaussians outside the view keep their world position.
            g.means[dynamic] = torch.where(inside[:, None] & (camera_z[:, None] > MIN_DEPTH), moved, means)

    @torch.no_grad()
    def prior_depth_change(self, state: FitState, t: int, previous_cfw: torch.Tensor,
                           camera_from_world: torch.Tensor) -> tuple[float, float]:
        """(s_t / s_(t-1), trust) for carrying dynamic Gaussians from frame t-1 to t (`move_dynamic`).

        s_k scales frame k's prior depth to the scene (`recon4d.fit.losses.align_prior_depth` against a render
        of the still Gaussians from camera k): a prior known up to a scale per frame (the video prior's median
        over cup's 450-frame clip ranges from 0.3 to 6.7) would otherwise move every dynamic Gaussian by that
        frame's swing. trust in [0, 1] falls linearly from 1 to 0 as the worse of the two frames' residuals
        rises from `sequential.prior_residual_trusted` to `prior_residual_ignored`. Without still Gaussians or
        covered pixels to compare with: (1, 1), the prior's ratio as it is."""
        cfg = self.config.sequential
        g = state.gaussians
        still = ~g.is_dynamic
        if not bool(still.any()):
            return 1.0, 1.0
        gaussians = g.activated().select(still)
        alignments = []
        for k, camera in ((t - 1, previous_cfw), (t, camera_from_world)):
            out = self.render(gaussians, camera)
            alignment = align_prior_depth(self.inputs.depth[k], out.depth, out.alpha, self.inputs.moving[k])
            if alignment is None:
                return 1.0, 1.0
            alignments.append(alignment)
        residual = max(float(a.residual) for a in alignments)
        span = cfg.prior_residual_ignored - cfg.prior_residual_trusted
        trust = min(1.0, max(0.0, (cfg.prior_residual_ignored - residual) / span))
        return float(alignments[1].scale / alignments[0].scale), trust

    def optimize_gaussians(self, state: FitState, t: int, camera_from_world: torch.Tensor, iterations: int,
                           generator: torch.Generator, move_still: bool, previous_pixels: torch.Tensor | None) -> dict:
        """Gaussian step at frame t (camera fixed). Still Gaussians keep their positions unless `move_still`."""
        cfg = self.config
        lrs = {"means": cfg.sequential.lr_means * self.depth_unit, "quats": cfg.sequential.lr_quats, "log_scales": cfg.sequential.lr_scales,
               "opacity_logits": cfg.sequential.lr_opacities, "color_logits": cfg.sequential.lr_colors}
        optimizer = state.gaussians.optimizer(lrs)
        added, losses, ran, start = 0, [], 0, 0
        for level, count in self.phases(iterations):
            inputs, factor = level.inputs, level.factor
            target = inputs.frames[t]
            ones = torch.ones(level.height, level.width, device=self.device)
            depth_w = inputs.depth_confidence[t]
            flow_w = (inputs.moving[t] & inputs.valid_backward[t - 1]).float() if t > 0 else None
            flow_w = flow_w if flow_w is not None and bool(flow_w.sum() > 0) else None  # read once, not every step
            plateau = Plateau(cfg.sequential.plateau_patience, cfg.sequential.plateau_tolerance)
            # Steps are numbered by their place in the schedule, so that a phase stopped early by its plateau
            # does not shift when the next one spawns.
            for step in range(start + 1, start + count + 1):
                g = state.gaussians
                active = g.activated()
                extra = None
                if previous_pixels is not None:
                    pixels = project_to_pixels(active.means, camera_from_world, inputs.K, min_depth=MIN_DEPTH)[0]
                    extra = pixels_at_level(previous_pixels, factor) - pixels
                out = self.render(active, camera_from_world, extra=extra, level=level)
                color = out.color[..., :3]
                loss = cfg.losses.photo * photometric_loss(color, target, ones, cfg.losses.ssim)
                loss = loss + cfg.losses.depth * depth_loss(out.depth, inputs.depth[t], depth_w * (out.alpha.detach() > COVERED_ALPHA))
                if extra is not None and flow_w is not None:
                    loss = loss + cfg.losses.flow * factor * flow_loss(out.color[..., 3:5], inputs.flow_backward[t - 1], flow_w)
                loss = loss + cfg.losses.iso * isotropy_loss(g.log_scales)
                if t > state.window_start and cfg.sequential.replay_every > 0 and step % cfg.sequential.replay_every == 0:
                    past = int(torch.randint(state.window_start, t, (1,), generator=generator))
                    loss = loss + cfg.losses.replay * self.replay_loss(state, past, level)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if not move_still and g.means.grad is not None:  # a product, not a masked write: no row search
                    g.means.grad.mul_(g.is_dynamic[:, None])
                optimizer.step()
                losses.append(loss.item())
                ran += 1
                stop = plateau.step(losses[-1])
                if factor == 1:  # new content is placed from working-resolution renders and errors only
                    info = {"t": t, "iterations": iterations, "added": added, "color": color, "render": out,
                            "camera_from_world": camera_from_world}
                    new = self.strategy.step_post_optimizer(g, step, info, generator)
                    if new is not None:
                        previous_pixels = self._extend_previous(previous_pixels, new, t, camera_from_world)
                        g.append(new, optimizer)
                        added += len(new)
                        plateau = Plateau(cfg.sequential.plateau_patience, cfg.sequential.plateau_tolerance)
                        stop = False
                if stop:
                    break
            start += count
        state.gaussians.requires_grad_(False)
        return {"gaussian_iters": ran, "gaussian_loss": losses[-1] if losses else None, "error_densified": added}

    def replay_loss(self, state: FitState, k: int, level: Level) -> torch.Tensor:
        """Photometric loss of an earlier frame k with its camera and the dynamic Gaussians where they were.

        Shared attributes (colours, opacities, scales, rotations of still Gaussians) are refitted at every
        frame; replaying past frames keeps them consistent with the whole sequence instead of the latest
        frame only, which is what lets the scene render frames other than the last one.
        """
        g = state.gaussians
        alive, ids, means_k, quats_k = self.replay_rows(state, k)
        means = g.means.clone()
        quats = g.quats.clone()
        means[ids] = means_k
        quats[ids] = quats_k
        active = g.activated()
        view = Gaussians(*(x.index_select(0, alive) for x in (means, quats, active.scales, active.opacities, active.colors)))
        out = self.render(view, state.camera_from_world[k], level=level)
        weight = torch.ones(level.height, level.width, device=self.device)
        return photometric_loss(out.color, level.inputs.frames[k], weight, self.config.losses.ssim)

    def replay_rows(self, state: FitState, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows [A] of the active Gaussians alive at frame k, and `FitState.active_dynamic_state(k)`).

        The row searches (the alive rows, `FitState.active_dynamic_rows`) are kept per frame until the rows change (spawned or retired Gaussians) or frame
        k's states are replaced, so that a replay step, every second step of the pass, reads nothing back from
        the device: the same frames are replayed many times."""
        g, ids_k = state.gaussians, state.dynamic_states[k][0]
        rows_key = (g.birth_frame, state.row_offset)
        if self._replay_key is None or self._replay_key[0] is not rows_key[0] or self._replay_key[1] != rows_key[1]:
            self._replay_key, self._replay_rows = rows_key, {}
        cached = self._replay_rows.get(k)
        if cached is None or cached[0] is not ids_k:
            cached = (ids_k, (g.birth_frame <= k).nonzero().squeeze(1), *state.active_dynamic_rows(k))
            self._replay_rows[k] = cached
        _, alive, ids, keep = cached
        _, means_k, quats_k = state.dynamic_states[k]
        return alive, ids, means_k.index_select(0, keep), quats_k.index_select(0, keep)

    def _extend_previous(self, previous_pixels: torch.Tensor | None, new: GaussianParams, t: int,
                         camera_from_world: torch.Tensor) -> torch.Tensor | None:
        """Previous-frame pixels of newly added Gaussians: their pixel at t moved by the backward flow."""
        if previous_pixels is None:
            return None
        pixels = project_to_pixels(new.means, camera_from_world, self.K, min_depth=MIN_DEPTH)[0]
        back = bilinear_sample(self.inputs.flow_backward[t - 1], pixels)
        return torch.cat([previous_pixels, pixels + back])

    def snapshot(self, state: FitState, camera_from_world: torch.Tensor) -> None:
        g = state.gaussians
        dynamic = g.is_dynamic.nonzero().squeeze(1)
        state.camera_from_world.append(camera_from_world.detach().clone())
        state.dynamic_states.append((dynamic + state.row_offset, g.means[dynamic].detach().clone(), g.quats[dynamic].detach().clone()))

    def initial_camera(self, state: FitState, t: int) -> tuple[torch.Tensor, str]:
        """Camera t from the structure-from-motion prior when it placed frame t (`sfm_camera_start`) within
        `sfm.max_step_degrees` of camera t-1's rotation; else the sequential start (`sequential_start`)."""
        start = self.sfm_camera_start(state, t)
        if start is None:
            return self.sequential_start(state, t)
        step = start[:3, :3].double() @ state.camera_from_world[t - 1][:3, :3].double().T
        if float(rotation_angle_deg(step.cpu().numpy())) > self.config.sfm.max_step_degrees:
            chained, kind = self.sequential_start(state, t)
            return chained, f"{kind} (sfm rejected)"
        return start, "sfm"

    def sequential_start(self, state: FitState, t: int) -> tuple[torch.Tensor, str]:
        """Camera t chained from frame t-1: PnP on still pixels of frame t-1 (rendered depth) matched by the
        forward flow; falls back to constant velocity; replaced by the wide-baseline feature start when that
        explains more feature matches (`wide_baseline_start`)."""
        previous = state.camera_from_world[t - 1]
        if t >= 2:
            velocity = previous @ invert_pose(state.camera_from_world[t - 2])
            guess = velocity @ previous
        else:
            guess = previous
        with torch.no_grad():
            out = self.render(state.gaussians.activated(), previous)
        usable = (out.alpha > COVERED_ALPHA) & self.inputs.valid_forward[t - 1] & ~dilate(self.inputs.moving[t - 1], self.config.sequential.motion_dilation)
        flat = usable.flatten().nonzero().squeeze(1)
        if flat.numel() > PNP_MAX_POINTS:
            step = flat.numel() // PNP_MAX_POINTS + 1
            flat = flat[::step]
        if flat.numel() < PNP_MIN_INLIERS:
            return self.wide_baseline_start(state, t, out, guess, "constant-velocity")
        points = unproject_pixels(flat, out.depth.flatten()[flat], self.K, self.width, invert_pose(previous))
        pixels = torch.stack([flat % self.width, flat // self.width], -1).to(self.K.dtype)
        pixels = pixels + self.inputs.flow_forward[t - 1].reshape(-1, 2)[flat]
        pose = pnp_camera_from_world(points.cpu().numpy(), pixels.cpu().numpy(), self.K.cpu().numpy(),
                                     guess.cpu().numpy())
        if pose is None:
            return self.wide_baseline_start(state, t, out, guess, "constant-velocity")
        return self.wide_baseline_start(state, t, out, torch.tensor(pose, dtype=previous.dtype, device=self.device), "pnp")

    def sfm_camera_start(self, state: FitState, t: int) -> torch.Tensor | None:
        """COLMAP's camera t aligned to the fit at the anchor: the earliest fitted frame COLMAP placed whose
        rendered still, opaque pixels see `sfm.min_scale_points` of its points (`recon4d.fit.sfm_start`).
        None when there is no prior, COLMAP did not place frame t, or no anchor is found yet."""
        poses = self.inputs.sfm_camera_from_world
        if poses is None or not bool(torch.isfinite(poses[t]).all()):
            return None
        if self.sfm_anchor is None:
            for k in range(t):
                if k in self.sfm_not_anchor or not bool(torch.isfinite(poses[k]).all()):
                    continue
                with torch.no_grad():
                    out = self.render(state.gaussians.activated(), state.camera_from_world[k])
                trusted = (out.alpha > COVERED_ALPHA) & ~dilate(self.inputs.moving[k], self.config.sequential.motion_dilation)
                scale = sfm_scale(self.inputs.sfm_points.to(poses), poses[k], out.depth.to(poses), trusted,
                                  self.K.to(poses), self.config.sfm.min_scale_points)
                if scale is None:
                    self.sfm_not_anchor.add(k)
                    continue
                self.sfm_anchor = (k, scale)
                break
            if self.sfm_anchor is None:
                return None
        k, scale = self.sfm_anchor
        return sfm_start(poses[t], poses[k], state.camera_from_world[k], scale)

    def wide_baseline_start(self, state: FitState, t: int, rendered: RenderResult, start: torch.Tensor,
                            kind: str) -> tuple[torch.Tensor, str]:
        """`start` [4, 4] (of `kind`), or the feature start of `recon4d.fit.matching` when `matching.enabled`,
        it explains more feature matches (`rendered`: frame t-1's render from its camera) and the camera step's
        loss is lower there: matches cannot tell a camera's motion from a moving object's when most of them
        lie on it, the still pixels of the loss can."""
        if not self.config.matching.enabled:
            return start, kind

        def render_at(k: int) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                out = rendered if k == t - 1 else self.render(state.gaussians.activated(), state.camera_from_world[k])
            return out.depth, out.alpha > self.config.matching.min_alpha

        pose, reference = self.wide_baseline(t, state.camera_from_world, render_at, start)
        if pose is None or (self.config.matching.check_loss and self.start_loss(state, t, pose) >= self.start_loss(state, t, start)):
            return start, kind
        return pose, "features" if reference == t - 1 else f"features-{reference}"

    @torch.no_grad()
    def start_loss(self, state: FitState, t: int, camera_from_world: torch.Tensor) -> float:
        """The camera step's loss of frame t at a start pose [4, 4] (working resolution)."""
        gaussians = state.gaussians.activated()
        previous = project_to_pixels(gaussians.means, state.camera_from_world[t - 1], self.K, min_depth=MIN_DEPTH)[0]
        return float(self.camera_loss(gaussians, t, self.pyramid.level(0), previous, camera_from_world))

    def add_new_content(self, state: FitState, t: int, camera_from_world: torch.Tensor,
                        generator: torch.Generator) -> GaussianParams | None:
        """Spawn where frame t, seen from its new camera, is uncovered or disoccluded; returns the new ones."""
        with torch.no_grad():
            rendered = self.render(state.gaussians.activated(), camera_from_world)
        new = self.strategy.after_camera_step(state.gaussians, t, camera_from_world, rendered, generator)
        if new is not None:
            state.gaussians.append(new)
        return new

    @torch.no_grad()
    def label_slow_movers(self, state: FitState) -> int:
        """Make dynamic (and so moving) the still Gaussians that the prior's moving masks cover in at least
        `sequential.slow_mover_share` of the current window's fitted frames where the Gaussian is in view and in
        front (its depth within `OCCLUSION_TOLERANCE` of the rendered depth); returns how many. See
        `SequentialConfig`."""
        cfg, g = self.config.sequential, state.gaussians
        if cfg.slow_mover_share <= 0 or not bool((~g.is_dynamic).any()):
            return 0
        active = g.activated()
        visible_count = torch.zeros(len(g), device=self.device)
        masked_count = torch.zeros(len(g), device=self.device)
        for k in range(state.window_start, state.next_frame):
            camera_from_world = state.camera_from_world[k]
            ids, means_k, quats_k = state.active_dynamic_state(k)
            means = g.means.clone()
            means[ids] = means_k
            quats = g.quats.clone()
            quats[ids] = quats_k
            alive = g.birth_frame <= k
            out = rasterize(means[alive], quats[alive], active.scales[alive], active.opacities[alive],
                            active.colors[alive], camera_from_world, self.K, self.width, self.height)
            depth = out.depth  # 0 where nothing renders: nothing there is in front
            pixels, z = project_to_pixels(g.means, camera_from_world, self.K, min_depth=MIN_DEPTH)
            u, v = pixels[:, 0].round().long(), pixels[:, 1].round().long()
            in_view = alive & ~g.is_dynamic & (z > MIN_DEPTH) & (u >= 0) & (u < self.width) & (v >= 0) & (v < self.height)
            u, v = u.clamp(0, self.width - 1), v.clamp(0, self.height - 1)
            in_front = z <= depth[v, u] * (1 + OCCLUSION_TOLERANCE)
            visible = in_view & in_front
            visible_count += visible.float()
            masked_count += (visible & self.inputs.moving[k][v, u]).float()
        relabel = (~g.is_dynamic & (visible_count >= cfg.slow_mover_min_frames)
                   & (masked_count >= cfg.slow_mover_share * visible_count))
        g.is_dynamic = g.is_dynamic | relabel
        return int(relabel.sum())

    @torch.no_grad()
    def start_window(self, state: FitState) -> dict:
        """Retire the current window's Gaussians after its last frame b (the latest fitted one) and start the
        next window at b from copies of the Gaussians frame b sees (`SequentialConfig.window_frames`); returns
        the frame's statistics."""
        boundary = state.next_frame - 1
        relabelled = self.label_slow_movers(state)
        g = state.gaussians
        seen = self.seen_from(g, state.camera_from_world[boundary])
        copies = g.select(seen)
        copies.birth_frame.fill_(boundary)
        g.death_frame.fill_(boundary)  # the window's own rows retire as they are: no copy of them
        state.retired = g if state.retired is None else GaussianParams.concat([state.retired, g])
        state.gaussians, state.window_start = copies, boundary
        dynamic = copies.is_dynamic.nonzero().squeeze(1)
        ids, means, quats = state.dynamic_states[boundary]
        state.dynamic_states[boundary] = (torch.cat([ids, dynamic + state.row_offset]), torch.cat([means, copies.means[dynamic]]),
                                          torch.cat([quats, copies.quats[dynamic]]))
        return {"window_start": boundary, "window_copied": len(copies), "window_retired": len(g), "slow_movers": relabelled}

    def seen_from(self, g: GaussianParams, camera_from_world: torch.Tensor) -> torch.Tensor:
        """[N] bool: the Gaussians that contribute to a pixel of the render from `camera_from_world` [4, 4]
        (in their current state): those out of view, or hidden behind opaque surfaces, have no gradient."""
        active = g.activated()
        opacities = active.opacities.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = rasterize(active.means.detach(), active.quats.detach(), active.scales.detach(), opacities,
                            active.colors.detach(), camera_from_world, self.K, self.width, self.height)
            out.alpha.sum().backward()
        return opacities.grad.abs() > 0

    # -- driver ----------------------------------------------------------------------------------------------
    def run(self, state: FitState | None = None) -> FitState:
        cfg = self.config
        start_frame = 0 if state is None else state.next_frame
        for t in range(start_frame, self.inputs.num_frames):
            started = time.perf_counter()
            generator = torch.Generator().manual_seed(cfg.seed * 100003 + t)
            torch.manual_seed(cfg.seed * 100003 + t)
            if t == 0:
                state, stats = self.fit_first_frame(generator)
                camera_from_world = torch.eye(4, device=self.device)
            else:
                stats = {}
                if t - 1 in self.window_boundaries and t - 1 > state.window_start:
                    stats.update(self.start_window(state))
                previous_cfw = state.camera_from_world[t - 1]
                init, init_kind = self.initial_camera(state, t)
                with torch.no_grad():
                    previous_pixels = project_to_pixels(state.gaussians.means, previous_cfw, self.K, min_depth=MIN_DEPTH)[0]
                if init_kind == "sfm" and not cfg.sfm.refine_camera:
                    camera_from_world, camera_stats = init, {}
                else:
                    camera_from_world, camera_stats = self.camera_step(state, t, init, previous_pixels)
                stats.update(camera_stats)
                stats["camera_init"] = init_kind
                # previous_pixels were taken before the move: they are where each Gaussian was at t-1.
                self.move_dynamic(state, t, previous_cfw, camera_from_world)
                new = self.add_new_content(state, t, camera_from_world, generator)
                stats["new_content"] = 0 if new is None else len(new)
                if new is not None and len(new):
                    previous_pixels = self._extend_previous(previous_pixels, new, t, camera_from_world)
                stats.update(self.optimize_gaussians(state, t, camera_from_world, cfg.sequential.gaussian_iters, generator,
                                                     move_still=False, previous_pixels=previous_pixels))
            self.snapshot(state, camera_from_world)
            stats.update(adjust_after_frame(self, state, t))  # keyframe bundle adjustment (`bundle`), when due
            stats.update({"frame": t, "seconds": time.perf_counter() - started, "gaussians": len(state.gaussians)})
            state.frame_stats.append(stats)
            if self.on_frame is not None:
                self.on_frame(state, t)
        return state
