"""KNN rigidity of trajectories: neighbouring moving points keep their distances from one frame to the next.

The refinement's regulariser (`recon4d.fit.refine.Refiner.motion_regularisers`): each dynamic Gaussian has up to
k nearest neighbours at its birth, within its own temporal window (`knn_neighbours`), and the loss is the
change of each neighbour distance over one frame (`rigidity_loss`). On the CPU one C++ pass computes the loss
and its gradient (`csrc/trajectories.cpp`); torch's advanced indexing took 9 ms per time for 174k pairs, most of it
in the sorting accumulate of the gather's backward. Elsewhere the same computation runs as tensor ops.
"""
from __future__ import annotations

from pathlib import Path

import torch
from scipy.spatial import cKDTree

_KERNEL = Path(__file__).with_name("csrc") / "trajectories.cpp"


def knn_neighbours(points: torch.Tensor, window: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [N, k] of each point's k nearest other points within its window (-1 where a window has fewer
    than k + 1 points); points [N, 3], window [N, 2] (rows with equal windows are one group).

    Example:
        >>> points = torch.tensor([[0.0, 0, 0], [1, 0, 0], [5, 0, 0]])
        >>> knn_neighbours(points, torch.zeros(3, 2), 1).squeeze(1).tolist()
        [1, 0, 1]
    """
    neighbours = torch.full((points.shape[0], max(k, 0)), -1, dtype=torch.long, device=points.device)
    if k <= 0 or points.shape[0] < 2:
        return neighbours
    for group in torch.unique(window, dim=0):
        rows = (window == group).all(-1).nonzero().squeeze(1)
        count = min(k, rows.numel() - 1)
        if count <= 0:
            continue
        members = points[rows].detach().cpu().double().numpy()
        # A k-d tree: 27k points in 40 ms, where chunked torch.cdist + topk took 4 s.
        _, nearest = cKDTree(members).query(members, k=count + 1, workers=-1)
        nearest = torch.from_numpy(nearest[:, 1:].astype("int64")).to(points.device)  # column 0: the point itself
        neighbours[rows, :count] = rows[nearest]
    return neighbours


class _RigidityKernel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, positions: torch.Tensor, neighbours: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        from recon4d.cpp import load_extension

        loss, grad = load_extension(_KERNEL).rigidity(positions.detach().contiguous(), neighbours.contiguous(),
                                                     weight.detach().contiguous())
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):  # noqa: ANN001, ANN205
        (grad,) = ctx.saved_tensors
        return grad * grad_loss[:, None, None, None], None, None


def rigidity_loss(positions: torch.Tensor, neighbours: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted change of neighbour distances [T], differentiable in positions:
    sum over rows i and neighbours j >= 0 of weight[t, i] * | |a_i - a_j| - |b_i - b_j| |.

    Args:
        positions: [T, 2, N, 3] points at two instants (a = [:, 0], b = [:, 1]) for each of T times.
        neighbours: [N, k] neighbour rows (`knn_neighbours`; -1: none).
        weight: [T, N] weight of each row's pairs at each time (not differentiated).

    Example:
        >>> a = torch.tensor([[0.0, 0, 0], [1, 0, 0]])
        >>> positions = torch.stack([a, 2 * a])[None]  # the pair's distance grows from 1 to 2
        >>> rigidity_loss(positions, torch.tensor([[1], [0]]), torch.ones(1, 2)).tolist()
        [2.0]
    """
    if positions.device.type == "cpu" and positions.dtype == torch.float32:
        return _RigidityKernel.apply(positions, neighbours, weight)
    valid = neighbours >= 0
    others = neighbours.clamp_min(0)
    ends = positions.index_select(2, others.reshape(-1)).unflatten(2, others.shape)  # [T, 2, N, k, 3]
    distance = (positions[:, :, :, None] - ends).norm(dim=-1)  # [T, 2, N, k]
    change = (distance[:, 0] - distance[:, 1]).abs() * valid
    return (change.sum(-1) * weight.detach()).sum(-1)
