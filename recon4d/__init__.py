"""recon4d: monocular video to 4D Gaussian scenes."""
from __future__ import annotations

import os

__version__ = "0.1.0"

# Idle OpenMP threads sleep instead of spinning. With the default (active) policy, on a loaded 2-core machine
# 2 torch threads made a render step 13-40x slower than 1 (the small ops between kernels spin-wait for busy
# cores); passive waiting made 2 threads cost what 1 does (bench/render.py, README "CPU rasterizer").
# libgomp reads it when torch loads, so it only takes effect where recon4d is imported before torch (the CLI).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from recon4d.errors import Recon4DError  # noqa: E402


def load_scene(path):  # noqa: ANN001 - thin re-export, documented in recon4d.io.scene
    """Load a scene file written by recon4d; see :func:`recon4d.io.scene.load_scene`."""
    from recon4d.io.scene import load_scene as _load

    return _load(path)


__all__ = ["__version__", "Recon4DError", "load_scene"]
