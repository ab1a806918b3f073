"""The Gaussians as viser splats: display arrays, budgets and covariances (pure NumPy helpers), and the scene
nodes that show them.

Still Gaussians live in nodes that are sent once and never change (one node per range of birth frames, shown
once the time reaches it); the moving Gaussians live in one node whose buffer is the only thing re-sent per
time step. Splat buffers store covariances as float16, so splats are sent in "display units" (world x
`display_unit_scale`) and the node scales them back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from recon4d.io.scene import NEVER
from recon4d.render.highlight import motion_highlight
from viewer.config import ViewerConfig


def quaternion_rotations(quats: np.ndarray) -> np.ndarray:
    """quats [N, 4] (w, x, y, z, any norm) -> rotation matrices [N, 3, 3] float32.

    The same matrices as `recon4d.geometry.quaternion.rotation_from_quaternion`, in NumPy float32 because
    this runs per time step on every displayed moving Gaussian (about 10x faster here than the torch version).
    """
    q = np.asarray(quats, dtype=np.float32)
    q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
    w, x, y, z = q.T
    rotation = np.empty((q.shape[0], 3, 3), dtype=np.float32)
    rotation[:, 0, 0], rotation[:, 0, 1], rotation[:, 0, 2] = 1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)
    rotation[:, 1, 0], rotation[:, 1, 1], rotation[:, 1, 2] = 2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)
    rotation[:, 2, 0], rotation[:, 2, 1], rotation[:, 2, 2] = 2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)
    return rotation


def splat_covariances(quats: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """quats [N, 4] (w, x, y, z, any norm), scales [N, 3] standard deviations -> covariances [N, 3, 3] float32.

    Sigma = R diag(s^2) R^T = (R S)(R S)^T, the covariance `recon4d.render.rasterize` uses for the same parameters.
    """
    scaled = quaternion_rotations(quats) * np.asarray(scales, dtype=np.float32)[:, None, :]
    return scaled @ scaled.transpose(0, 2, 1)


def splat_importance(opacities: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """How much a splat shows: opacity [N] x area of its two largest axes (scales [N, 3]) -> [N]."""
    largest_two = np.sort(np.asarray(scales, dtype=np.float64), axis=1)[:, 1:]
    return np.asarray(opacities, dtype=np.float64) * largest_two[:, 0] * largest_two[:, 1]


def decimate(importance: np.ndarray, budget: int) -> np.ndarray:
    """Indices (sorted, int64) of the `budget` most important entries of importance [N]; all when N <= budget."""
    count = importance.shape[0]
    if count <= budget:
        return np.arange(count)
    keep = np.argpartition(-importance, budget - 1)[:budget]
    return np.sort(keep)


def display_unit_scale(scales: np.ndarray, target_std: float) -> float:
    """Factor from world to display units so the median splat std (geometric mean of scales [N, 3]) becomes
    `target_std`; 1 when there are no splats or they are degenerate."""
    if scales.shape[0] == 0:
        return 1.0
    typical = float(np.median(np.exp(np.log(np.clip(scales, 1e-30, None)).mean(1))))
    return target_std / typical if typical > 0 and math.isfinite(typical) else 1.0


def birth_groups(birth_frames: np.ndarray, max_groups: int) -> list[tuple[int, np.ndarray]]:
    """Split entries by birth frame [N] into at most `max_groups` groups of consecutive birth frames.

    Returns [(first birth frame of the group, indices into birth_frames)], ordered by birth.
    """
    if birth_frames.shape[0] == 0:
        return []
    frames = np.unique(birth_frames)
    if frames.shape[0] > max_groups:  # merge neighbouring birth frames into max_groups ranges of equal count
        edges = np.quantile(birth_frames, np.linspace(0, 1, max_groups + 1)[1:-1], method="lower")
        frames = np.unique(np.concatenate([frames[:1], edges]))
    group = np.searchsorted(frames, birth_frames, side="right") - 1
    return [(int(frames[g]), np.nonzero(group == g)[0]) for g in range(frames.shape[0]) if (group == g).any()]


def highlight_colors(colors: np.ndarray, is_moving: np.ndarray | bool, config: ViewerConfig) -> np.ndarray:
    """`recon4d.render.highlight.motion_highlight` of colors [N, 3] in [0, 1] as float32 numpy; is_moving [N]
    bool, or one bool for all."""
    colors = torch.from_numpy(np.asarray(colors, dtype=np.float32))
    moving = torch.as_tensor(np.broadcast_to(np.asarray(is_moving, dtype=bool), colors.shape[:1]).copy())
    return motion_highlight(colors, moving, config.highlight).numpy()


@dataclass
class SplatSet:
    """Display arrays of a decimated set of Gaussians (world units, NumPy)."""

    index: np.ndarray  # [M] indices into the scene's Gaussians
    means: np.ndarray  # [M, 3]
    quats: np.ndarray  # [M, 4]
    scales: np.ndarray  # [M, 3]
    opacities: np.ndarray  # [M]
    colors: np.ndarray  # [M, 3]
    birth: np.ndarray  # [M]
    death: np.ndarray  # [M] first frame it no longer exists in (NEVER: it lives to the end)


class SplatNodes:
    """Mixin of `SceneViewer`: the still and moving splat nodes (needs scene, config, server, time, layers)."""

    def _prepare_splats(self) -> None:
        g = self.scene.gaussians
        dynamic = self.scene.is_dynamic.numpy().astype(bool)
        opacities = g.opacities.detach().float().numpy().reshape(-1)
        scales = g.scales.detach().float().numpy()
        importance = splat_importance(opacities, scales)
        death = (np.full(len(g), NEVER, dtype=np.int64) if self.scene.death_frame is None
                 else self.scene.death_frame.numpy().astype(np.int64))

        def subset(index: np.ndarray) -> SplatSet:
            return SplatSet(index=index, means=g.means[index].detach().float().numpy(),
                             quats=g.quats[index].detach().float().numpy(), scales=scales[index],
                             opacities=opacities[index], colors=g.colors[index].detach().float().clamp(0, 1).numpy(),
                             birth=self.scene.birth_frame[index].numpy(), death=death[index])

        still_index = np.nonzero(~dynamic)[0]
        moving_index = np.nonzero(dynamic)[0]
        self.still = subset(still_index[decimate(importance[still_index], self.config.max_still_gaussians)])
        moving_keep = decimate(importance[moving_index], self.config.max_moving_gaussians)
        self.moving = subset(moving_index[moving_keep])
        # Dynamic Gaussians that are not moving things (background with a residual drift) follow their
        # trajectory in the moving node but belong to the still layer and are never highlighted.
        self._moving_is_moving = self.scene.is_moving.numpy().astype(bool)[self.moving.index]
        # The kept dynamic Gaussians' positions in is_dynamic index order (that of Scene4D.dynamic_state_at).
        self._moving_keep = moving_keep
        self.unit = display_unit_scale(np.concatenate([self.still.scales, self.moving.scales]), self.config.display_splat_std)
        self.still_covariances = splat_covariances(self.still.quats, self.still.scales) * self.unit**2

    def _still_rgbs(self, colors: np.ndarray) -> np.ndarray:
        return highlight_colors(colors, False, self.config) if self.layers.highlight else colors

    def _add_splat_nodes(self) -> None:
        scene_api = self.server.scene
        self.still_nodes: list[tuple[int, int, object]] = []  # (first birth frame, death frame, node)
        self._still_members: list[np.ndarray] = []
        # A long clip's temporal windows each have their own still Gaussians: no node spans two of them.
        deaths = np.unique(self.still.death)
        for death in deaths.tolist():
            window = np.nonzero(self.still.death == death)[0]
            for first_birth, members in birth_groups(self.still.birth[window], max(1, self.config.max_still_nodes // len(deaths))):
                members = window[members]
                handle = scene_api.add_gaussian_splats(
                    f"/gaussians/still/{first_birth:05d}" + ("" if death == NEVER else f"-{death:05d}"),
                    centers=self.still.means[members] * self.unit,
                    covariances=self.still_covariances[members],
                    rgbs=self._still_rgbs(self.still.colors[members]),
                    opacities=self.still.opacities[members, None],
                    scale=1.0 / self.unit,
                    visible=first_birth <= self.time < death,
                )
                self.still_nodes.append((first_birth, death, handle))
                self._still_members.append(members)
        self.moving_node = None
        if self.moving.index.shape[0]:
            means, quats, _ = self._moving_state(0.0)
            self.moving_node = scene_api.add_gaussian_splats(
                "/gaussians/moving", centers=means * self.unit,
                covariances=splat_covariances(quats, self.moving.scales) * self.unit**2,
                rgbs=self.moving.colors, opacities=self.moving.opacities[:, None], scale=1.0 / self.unit)

    def _update_moving(self) -> None:
        if self.moving_node is None:
            return
        is_moving = self._moving_is_moving
        alive = (self.moving.birth <= self.time) & (self.time < self.moving.death) & np.where(is_moving, self.layers.moving, self.layers.still)
        self._moving_count = int(alive.sum())
        if self._moving_count == 0:
            self.moving_node.visible = False
            return
        means, quats, colors = self._moving_state(self.time, alive)
        if self.layers.highlight:
            colors = highlight_colors(colors, is_moving[alive], self.config)
        self.moving_node.set_gaussians(
            centers=means * self.unit,
            covariances=splat_covariances(quats, self.moving.scales[alive]) * self.unit**2,
            rgbs=colors, opacities=self.moving.opacities[alive, None])
        self.moving_node.visible = True

    def _moving_state(self, t: float, shown: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Means [M, 3], unit quats [M, 4] and colours [M, 3] at time t of the displayed moving Gaussians, or
        of those among them that `shown` [M] bool marks.

        The scene's own `dynamic_state_at` (interpolated per-frame states, or the continuous motion model
        with its colour offsets), evaluated for those Gaussians only: a long clip's other temporal windows
        are not evaluated at every step of the time slider.
        """
        keep = self._moving_keep if shown is None else self._moving_keep[shown]
        colors = self.moving.colors if shown is None else self.moving.colors[shown]
        with torch.no_grad():
            means, quats, offsets = self.scene.dynamic_state_at(float(t), torch.from_numpy(keep))
        means, quats = means.float().numpy(), quats.float().numpy()
        if offsets is None:
            return means, quats, colors
        return means, quats, np.clip(colors + offsets.float().numpy(), 0.0, 1.0)
