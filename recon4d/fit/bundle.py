"""Keyframe bundle adjustment during the sequential pass, with loop closure.

Why: the sequential pass fits camera t against Gaussians placed from the cameras before it, then freezes it;
new content is placed from camera t. An error in a camera or in the depth of new content is never revisited,
so the errors of consecutive frames add up (drift) and the last frames of a long path render blurred. The
refinement optimises all cameras jointly, but only at the end, from a drifted start. Here, after every
`bundle.every`-th fitted frame, the cameras of the last `bundle.window` fitted frames and the still Gaussians'
means and colours are optimised together against all frames of the window, with the pass's own loss terms
(`BundleConfig`; every fitted frame of the pass is a keyframe). When the latest frame revisits an early view
(`recon4d.fit.loop.find_revisit`), that frame joins the window with its camera fixed.

Loss of window frame k, at the working resolution, on still pixels (moving masks dilated as in the camera
step): `losses.photo` x photometric + `losses.depth` x depth (covered pixels) + `losses.flow_camera` x the
flow of each Gaussian from camera k-1 to camera k against the prior's backward flow, when frame k-1 is in the
window too. Frames are rendered with every still Gaussian (a still surface first seen later was there at k
too) and the dynamic Gaussians alive at k at their stored state, detached, so they occlude what they
occluded. Gauge: frame 0 never moves; the oldest window frame is fixed, or, when a revisited frame joins,
that one is. Optimiser: `recon4d.fit.optim.SelectiveAdam`, so Gaussians no window frame sees keep their values.
The adjustment draws no random numbers, so a resumed fit repeats it exactly.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from recon4d.fit.loop import find_revisit, frame_descriptors
from recon4d.fit.losses import COVERED_ALPHA, depth_loss, flow_loss, photometric_loss
from recon4d.fit.model import CameraParams
from recon4d.fit.optim import SelectiveAdam
from recon4d.geometry.camera import invert_pose, project_to_pixels
from recon4d.io.scene import Gaussians

if TYPE_CHECKING:  # the fitter imports this module
    from recon4d.fit.sequential import FitState, SequentialFitter


def window_frames(t: int, window: int, revisit: int | None) -> tuple[list[int], set[int]]:
    """Frames of the window that ends at fitted frame t, and those whose camera stays fixed.

    Returns (frames in increasing order, fixed frames): the last `window` frames up to t, the revisited frame
    first when given; fixed are frame 0, and the revisited frame or else the oldest window frame."""
    recent = list(range(max(0, t - window + 1), t + 1))
    if revisit is not None and revisit < recent[0]:
        return [revisit, *recent], {0, revisit}
    return recent, {0, recent[0]}


def view_at(state: FitState, k: int, means: torch.Tensor, active: Gaussians) -> Gaussians:
    """The Gaussians as frame k sees them: every still one (means [N, 3] as given, differentiable) and the
    dynamic ones alive at k at their stored state (detached)."""
    g = state.gaussians
    ids, means_k, quats_k = state.active_dynamic_state(k)
    means = means.clone()
    quats = active.quats.detach().clone()
    means[ids] = means_k
    quats[ids] = quats_k
    shown = ~g.is_dynamic | (g.birth_frame <= k)
    return Gaussians(means[shown], quats[shown], active.scales.detach()[shown], active.opacities.detach()[shown],
                     active.colors[shown])


def window_frame_loss(fitter: SequentialFitter, view: Gaussians, k: int, camera_from_world: torch.Tensor,
                      previous_camera: torch.Tensor | None) -> torch.Tensor:
    """Loss of window frame k seen from `camera_from_world` [4, 4] (see the module docstring); with
    `previous_camera` (frame k-1's [4, 4]) the flow term between the two is added."""
    # The pass's own still-mask dilation and depth floor (imported here: the pass imports this module).
    from recon4d.fit.sequential import MIN_DEPTH, dilate

    config, inputs = fitter.config, fitter.inputs
    still = ~dilate(inputs.moving[k], config.sequential.motion_dilation)
    extra = None
    if previous_camera is not None:
        pixels = project_to_pixels(view.means, camera_from_world, inputs.K, min_depth=MIN_DEPTH)[0]
        previous = project_to_pixels(view.means, previous_camera, inputs.K, min_depth=MIN_DEPTH)[0]
        extra = previous - pixels
    out = fitter.render(view, camera_from_world, extra=extra)
    still_w = still.float()
    loss = config.losses.photo * photometric_loss(out.color[..., :3], inputs.frames[k], still_w, config.losses.ssim)
    loss = loss + config.losses.depth * depth_loss(out.depth, inputs.depth[k], still_w * (out.alpha.detach() > COVERED_ALPHA))
    if extra is not None:
        flow_w = (still & inputs.valid_backward[k - 1]).float()
        loss = loss + config.losses.flow_camera * flow_loss(out.color[..., 3:5], inputs.flow_backward[k - 1], flow_w)
    return loss


def adjust_window(fitter: SequentialFitter, state: FitState, frames: list[int], fixed: set[int]) -> dict:
    """Jointly optimise the cameras of `frames` (all but `fixed`) and the still Gaussians' means and colours
    for `bundle.iters` steps; writes the cameras back into `state`. Returns {"loss_before", "loss_after",
    "camera_shift"} (the largest move of a camera centre, in depth units)."""
    cfg, seq = fitter.config.bundle, fitter.config.sequential
    g = state.gaussians
    before = torch.stack([state.camera_from_world[k] for k in frames])
    cameras = CameraParams(before, fitter.depth_unit, translation_scale=seq.lr_camera_translation / seq.lr_camera_rotation,
                           gauge=tuple(i for i, k in enumerate(frames) if k in fixed))
    g.means.requires_grad_(True)
    g.color_logits.requires_grad_(True)
    optimizer = SelectiveAdam([
        {"params": [cameras.deltas], "lr": cfg.lr_camera},
        {"params": [g.means], "lr": seq.lr_means * fitter.depth_unit * cfg.lr_gaussians},
        {"params": [g.color_logits], "lr": seq.lr_colors * cfg.lr_gaussians},
    ])
    losses = []
    for _ in range(cfg.iters):
        active = g.activated()
        poses = [cameras.camera_from_world(i) for i in range(len(frames))]
        loss = active.means.sum() * 0
        for i, k in enumerate(frames):
            previous = poses[i - 1] if i > 0 and frames[i - 1] == k - 1 else None
            loss = loss + window_frame_loss(fitter, view_at(state, k, active.means, active), k, poses[i], previous)
        loss = loss / len(frames)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if g.means.grad is not None:
            g.means.grad[g.is_dynamic] = 0  # dynamic ones keep their latest state; frames read their snapshots
        optimizer.step()
        losses.append(loss.item())
    g.requires_grad_(False)
    after = cameras.poses()
    for i, k in enumerate(frames):
        state.camera_from_world[k] = after[i].detach().clone()
    shift = (invert_pose(after)[:, :3, 3] - invert_pose(before)[:, :3, 3]).norm(dim=-1).max()
    return {"loss_before": losses[0] if losses else None, "loss_after": losses[-1] if losses else None,
            "camera_shift": float(shift) / fitter.depth_unit}


def adjust_after_frame(fitter: SequentialFitter, state: FitState, t: int) -> dict:
    """The sequential pass's hook after fitted frame t: when `bundle.every` says so, find a revisit (if loop
    closure is on) and adjust the window. Returns the stats to merge into frame t's (`{}` when not run)."""
    cfg = fitter.config.bundle
    if cfg.every <= 0 or t < 2 or t % cfg.every:
        return {}
    revisit = None
    if cfg.loop_closure:
        descriptors = frame_descriptors(fitter.inputs.frames[: t + 1])
        revisit = find_revisit(descriptors, t, max(cfg.loop_min_gap, cfg.window), cfg.loop_min_similarity,
                               cfg.loop_min_departure)
    if revisit is not None and revisit < state.window_start:
        revisit = None  # an earlier temporal window's frame: its Gaussians are retired
    frames, fixed = window_frames(t, min(cfg.window, t - state.window_start + 1), revisit)
    stats = adjust_window(fitter, state, frames, fixed)
    if not all(math.isfinite(v) for v in stats.values() if v is not None):
        raise FloatingPointError(f"bundle adjustment at frame {t} diverged: {stats}")
    return {"bundle_frames": frames, "bundle_revisit": revisit, **{f"bundle_{k}": v for k, v in stats.items()}}
