"""Dense depth from sparse samples: an edge-aware weighted-least-squares solve in log depth."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy import ndimage


def fill_depth_edge_aware(
    log_depth: np.ndarray,
    weight: np.ndarray,
    guide: np.ndarray,
    smoothness: float = 2.0,
    guide_sigma: float = 0.04,
    edge_weight_floor: float = 1e-3,
    cg_iterations: int = 300,
    cg_tolerance: float = 1e-5,
    regions: np.ndarray | None = None,
) -> np.ndarray:
    """Dense log depth from sparse samples by weighted least squares with image-guided smoothness.

    Minimises sum_i weight_i (x_i - log_depth_i)^2 + smoothness * sum_(i,j 4-neighbours) w_ij (x_i - x_j)^2
    with w_ij = exp(-|guide_i - guide_j|^2 / (2 sigma^2)) + floor, so values spread along surfaces and
    stop at image edges (the classic colourisation / WLS fill). Solved by Jacobi-preconditioned conjugate
    gradients started from the nearest-sample fill.

    log_depth: [H, W] float (ignored where weight == 0); weight: [H, W] >= 0 with at least one > 0;
    guide: [H, W, C] float in [0, 1]; regions: optional [H, W] labels, links between pixels of different
    labels get only the floor weight (e.g. moving objects vs the still scene: neither bleeds into the other).
    Returns [H, W] float32.
    """
    height, width = weight.shape
    n = height * width
    has_data = weight > 0
    data = np.where(has_data, log_depth, 0.0).astype(np.float64)
    # Start from the nearest sample: CG then only has to smooth, not to carry values across holes.
    _, (near_i, near_j) = ndimage.distance_transform_edt(~has_data, return_indices=True)
    x0 = data[near_i, near_j].ravel()

    index = np.arange(n).reshape(height, width)
    g = guide.reshape(height, width, -1).astype(np.float64)
    diff_h = np.mean((g[:, 1:] - g[:, :-1]) ** 2, axis=-1)
    diff_v = np.mean((g[1:, :] - g[:-1, :]) ** 2, axis=-1)
    w_h = np.exp(-diff_h / (2.0 * guide_sigma**2)) + edge_weight_floor
    w_v = np.exp(-diff_v / (2.0 * guide_sigma**2)) + edge_weight_floor
    if regions is not None:
        w_h = np.where(regions[:, 1:] == regions[:, :-1], w_h, edge_weight_floor)
        w_v = np.where(regions[1:, :] == regions[:-1, :], w_v, edge_weight_floor)
    rows = np.concatenate([index[:, :-1].ravel(), index[:-1, :].ravel()])
    cols = np.concatenate([index[:, 1:].ravel(), index[1:, :].ravel()])
    w = smoothness * np.concatenate([w_h.ravel(), w_v.ravel()])
    degree = np.bincount(rows, w, minlength=n) + np.bincount(cols, w, minlength=n)
    diag = weight.ravel().astype(np.float64) + degree
    off = sp.coo_matrix((np.concatenate([-w, -w]), (np.concatenate([rows, cols]), np.concatenate([cols, rows]))),
                        shape=(n, n))
    system = (sp.diags(diag) + off).tocsr()
    rhs = weight.ravel() * data.ravel()
    solution = _conjugate_gradient(system, rhs, x0, 1.0 / diag, cg_iterations, cg_tolerance)
    if not np.all(np.isfinite(solution)):
        solution = x0
    return solution.reshape(height, width).astype(np.float32)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    # einsum instead of BLAS ddot: OpenBLAS worker threads fight OpenCV's thread pool on small machines and
    # made this solve 10-50x slower at random (measured on 2 cores); vectors here are too short to need them.
    return float(np.einsum("i,i->", a, b))


def _conjugate_gradient(system: sp.csr_matrix, rhs: np.ndarray, x0: np.ndarray, inverse_diagonal: np.ndarray,
                        iterations: int, tolerance: float) -> np.ndarray:
    """Jacobi-preconditioned conjugate gradients for a symmetric positive definite sparse system [N, N]."""
    x = x0.astype(np.float64).copy()
    residual = rhs - system @ x
    z = inverse_diagonal * residual
    direction = z.copy()
    rz = _dot(residual, z)
    stop = tolerance * max(np.sqrt(_dot(rhs, rhs)), 1e-30)
    for _ in range(iterations):
        if np.sqrt(_dot(residual, residual)) <= stop:
            break
        product = system @ direction
        step = rz / max(_dot(direction, product), 1e-300)
        x += step * direction
        residual -= step * product
        z = inverse_diagonal * residual
        rz_next = _dot(residual, z)
        direction = z + (rz_next / max(rz, 1e-300)) * direction
        rz = rz_next
    return x
