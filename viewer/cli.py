"""`recon4d view OUT`: serve a fitted scene in the browser until Ctrl-C (or SIGTERM).

Plugged into the `recon4d` command through the `recon4d.commands` entry point (see pyproject.toml).
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from viewer.app import ViewerConfig

DEFAULT_PORT = 8080


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `view` subcommand to the `recon4d` subparsers."""
    defaults = ViewerConfig()
    view = commands.add_parser("view", help="browse a fitted OUT in a web browser (4D player, cameras, tracks)")
    view.add_argument("scene", type=Path, help="output directory of `recon4d fit` (or its scene file)")
    view.add_argument("--port", type=int, default=DEFAULT_PORT,
                      help=f"port to serve on; 0 lets the OS pick a free one; a busy port moves to the next "
                           f"free one (default: {DEFAULT_PORT})")
    view.add_argument("--host", default="127.0.0.1",
                      help="address to listen on; 0.0.0.0 serves other machines too (default: 127.0.0.1)")
    view.add_argument("--max-gaussians", type=int, default=defaults.max_still_gaussians,
                      help=f"display budget of still Gaussians; renders and exports use all "
                           f"(default: {defaults.max_still_gaussians})")
    view.add_argument("--max-moving", type=int, default=defaults.max_moving_gaussians,
                      help=f"display budget of moving Gaussians (default: {defaults.max_moving_gaussians})")
    view.add_argument("--render-height", type=int, default=None,
                      help="pixel height of 'Render view' images (default: the scene's image height)")
    view.add_argument("--gen-model", type=Path, default=None,
                      help="text-to-3D model directory for the Generate panel (default: the shipped model)")
    view.add_argument("--no-generate", action="store_true", help="no Generate panel")
    view.set_defaults(handler=run_view)


def run_view(args: argparse.Namespace) -> int:
    """Handler of `recon4d view`: start the viewer, print its URL, serve until interrupted."""
    from recon4d.progress import progress_enabled
    from viewer.app import start_viewer

    config = ViewerConfig(max_still_gaussians=args.max_gaussians, max_moving_gaussians=args.max_moving,
                          render_height=args.render_height)

    def log(message: str) -> None:  # start-up steps, quiet like the progress bars (RECON4D_NO_PROGRESS)
        if progress_enabled():
            print(f"recon4d view: {message}", file=sys.stderr, flush=True)

    viewer = start_viewer(args.scene, host=args.host, port=args.port, config=config, log=log,
                          gen_model=args.gen_model, generate=not args.no_generate)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host  # IPv6 literal in a URL
    print(f"serving {args.scene} at http://{shown_host}:{viewer.server.get_port()} (Ctrl-C to stop)", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        viewer.close()
    return 0
