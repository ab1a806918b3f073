"""recon4d: monocular video to 4D Gaussian scenes."""
from __future__ import annotations

__version__ = "0.1.0"

from recon4d.errors import Recon4DError  # noqa: E402


def load_scene(path):  # noqa: ANN001 - thin re-export, documented in recon4d.io.scene
    """Load a scene file written by recon4d; see :func:`recon4d.io.scene.load_scene`."""
    from recon4d.io.scene import load_scene as _load

    return _load(path)


__all__ = ["__version__", "Recon4DError", "load_scene"]
