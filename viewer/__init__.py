"""Browser viewer of fitted recon4d scenes (`recon4d view OUT`), served by viser.

The viewer imports recon4d; recon4d never imports the viewer (it finds the `view` subcommand through the
`recon4d.commands` entry point).
"""
from __future__ import annotations

__all__ = ["SceneViewer", "ViewerConfig"]


def __getattr__(name: str):  # lazy: importing the package must not import viser
    if name in __all__:
        from viewer import app

        return getattr(app, name)
    raise AttributeError(name)
