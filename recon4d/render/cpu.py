"""CPU backend: a C++ tile rasterizer with a hand-written backward pass, and the loader of the C++ kernels.

Forward and backward run over screen tiles on `torch.get_num_threads()` OpenMP threads (small renders stay
on one); images and gradients are bit-identical for any thread count. On a shared, busy machine set
OMP_WAIT_POLICY=PASSIVE before torch is imported: spin-waiting OpenMP threads otherwise cost several times
the work of PyTorch's many small parallel ops.

The extensions (csrc/tile_raster.cpp here, csrc/projection.cpp for `recon4d.render.projection`, and those of
higher layers that pass their source to `load_extension`, e.g. `recon4d.fit.optim`) are each built once per machine with `torch.utils.cpp_extension` (ninja) into ``$RECON4D_CACHE_DIR/ext`` (default
``~/.cache/recon4d/ext``); the build key hashes the source, the torch version and the compiler flags, so a
later process only loads the shared library.
"""
from __future__ import annotations

import hashlib
import os
import platform
import threading
from pathlib import Path

import torch

from recon4d.errors import BackendError

_CSRC = Path(__file__).with_name("csrc")
# -ffast-math lets gcc vectorise expf over the pixel loop (libmvec); the kernels avoid inf/NaN inputs.
_CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]
_extensions: dict = {}
_lock = threading.Lock()


def cache_dir() -> Path:
    """Root of recon4d's on-disk caches."""
    return Path(os.environ.get("RECON4D_CACHE_DIR", Path.home() / ".cache" / "recon4d"))


def _build_key(source: Path) -> str:
    digest = hashlib.sha256(source.read_bytes())
    digest.update(" ".join([torch.__version__, platform.machine(), *_CFLAGS]).encode())
    return digest.hexdigest()[:16]


def load_extension(source: Path):
    """Load (building on first use on this machine) the extension compiled from the one C++ file `source`."""
    name = source.stem
    if name not in _extensions:
        with _lock:
            if name not in _extensions:
                from torch.utils.cpp_extension import load

                key = _build_key(source)
                build_dir = cache_dir() / "ext" / key
                build_dir.mkdir(parents=True, exist_ok=True)
                try:
                    _extensions[name] = load(
                        name=f"recon4d_{name}_{key}",
                        sources=[str(source)],
                        extra_cflags=_CFLAGS,
                        extra_ldflags=["-fopenmp"],
                        build_directory=str(build_dir),
                        verbose=False,
                    )
                except Exception as exc:  # compiler missing, headers missing, ...
                    raise BackendError(
                        f"could not build the C++ kernel {source.name}: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                        hint="install a C++ compiler (g++) and the Python headers, then retry",
                    ) from exc
    return _extensions[name]


def extension():
    """The compiled tile rasterizer (csrc/tile_raster.cpp)."""
    return load_extension(_CSRC / "tile_raster.cpp")


def projection_extension():
    """The compiled EWA projection (csrc/projection.cpp)."""
    return load_extension(_CSRC / "projection.cpp")


class _RasterizeTiles(torch.autograd.Function):
    """Composites projected Gaussians; differentiable in means2d, conics, features and opacities."""

    @staticmethod
    def forward(ctx, means2d, conics, features, opacities, radii, offsets, ids, width, height, tile):
        inputs = [x.detach().contiguous() for x in (means2d, conics, features, opacities)]
        out_features, transmittance, pixel_end = extension().rasterize_forward(
            *inputs, radii, offsets, ids, width, height, tile
        )
        ctx.save_for_backward(*inputs, radii, offsets, ids, transmittance, pixel_end)
        ctx.dims = (width, height, tile)
        ctx.mark_non_differentiable(pixel_end)
        return out_features, 1.0 - transmittance

    @staticmethod
    def backward(ctx, v_features, v_alpha):
        means2d, conics, features, opacities, radii, offsets, ids, transmittance, pixel_end = ctx.saved_tensors
        width, height, tile = ctx.dims
        v_features = torch.zeros((height, width, features.shape[1])) if v_features is None else v_features
        v_alpha = torch.zeros((height, width)) if v_alpha is None else v_alpha
        entry_grads = extension().rasterize_backward(
            means2d, conics, features, opacities, radii, offsets, ids, transmittance, pixel_end,
            v_features.float().contiguous(), v_alpha.float().contiguous(), width, height, tile,
        )
        grads = torch.zeros((means2d.shape[0], entry_grads.shape[1]), dtype=entry_grads.dtype)
        grads.index_add_(0, ids.long(), entry_grads)
        return grads[:, 0:2], grads[:, 2:5], grads[:, 6:], grads[:, 5], None, None, None, None, None, None


def rasterize_tiles(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    features: torch.Tensor,
    opacities: torch.Tensor,
    radii: torch.Tensor,
    depths: torch.Tensor,
    width: int,
    height: int,
    tile_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha-composite projected Gaussians front to back.

    Args:
        means2d: [N, 2] pixel coordinates with pixel centres at (x + 0.5, y + 0.5) (gsplat's frame).
        conics: [N, 3] (a, b, c) of the inverse 2D covariance.
        features: [N, D] anything to composite (colour channels, depth, ...).
        opacities: [N].
        radii: [N, 2] int32 pixel half-extents of each Gaussian's footprint; 0 culls it.
        depths: [N] camera z used for ordering only.
    Returns:
        features [H, W, D] (no background) and alpha [H, W].
    """
    order = torch.argsort(depths.detach(), stable=True)
    radii = radii.to(torch.int32).contiguous()
    offsets, ids = extension().bin_gaussians(
        means2d.detach().float().contiguous(), radii, order, width, height, tile_size
    )
    return _RasterizeTiles.apply(
        means2d.float(), conics.float(), features.float(), opacities.float(), radii, offsets, ids,
        width, height, tile_size,
    )
