"""The `recon4d` command.

Every user-facing failure is a `recon4d.errors.Recon4DError`; it is printed as one line on stderr and
the process exits with its code (2 for bad input, 1 for internal failures), never with a traceback
unless `--debug` is given.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from recon4d import __version__
from recon4d.device import DEVICE_CHOICES, resolve_device
from recon4d.errors import Recon4DError


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit code 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, f"recon4d: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="recon4d", description="Monocular video to a 4D Gaussian scene with a camera per frame.")
    parser.add_argument("--version", action="version", version=f"recon4d {__version__}")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                        help="compute device: auto picks cuda when a GPU and gsplat are present (default: auto)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    fit = commands.add_parser("fit", help="reconstruct a video or image folder into OUT")
    fit.add_argument("video", type=Path, help="video file (mp4, mov, avi, webm, gif) or folder of images")
    fit.add_argument("--out", "-o", type=Path, default=None, help="output directory (default: out/<video name>)")
    fit.add_argument("--max-frames", type=int, default=None, help="use at most this many frames")
    fit.add_argument("--stride", type=int, default=1, help="use every k-th frame")
    fit.add_argument("--short-side", type=int, default=None, help="resize frames to this short side (pixels)")
    fit.set_defaults(handler=_cmd_fit)

    info = commands.add_parser("info", help="summarise a scene file or output directory")
    info.add_argument("scene", type=Path, help="scene file or output directory of `recon4d fit`")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(handler=_cmd_info)

    doctor = commands.add_parser("doctor", help="check the installation and build the CPU rasterizer once")
    doctor.set_defaults(handler=_cmd_doctor)
    return parser


def _cmd_fit(args: argparse.Namespace) -> int:
    from recon4d.io.video import read_clip

    device = resolve_device(args.device)
    out = args.out or Path("out") / args.video.stem
    start = time.perf_counter()
    clip = read_clip(args.video, stride=args.stride, max_frames=args.max_frames, short_side=args.short_side)
    print(f"decoded {clip.num_frames} frames of {clip.width}x{clip.height} at {clip.fps:.2f} fps "
          f"from {args.video} in {time.perf_counter() - start:.2f} s (device: {device})")
    print(f"not yet: priors, sequential fitting and writing {out} arrive with issues #3 and #4")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from recon4d.io.scene import load_scene

    scene = load_scene(args.scene)
    summary = {
        "frames": scene.num_frames,
        "image_size": [scene.cameras.width, scene.cameras.height],
        "gaussians": len(scene.gaussians),
        "dynamic_gaussians": int(scene.is_dynamic.sum()),
        "arrays": {name: list(value.shape) for name, value in scene.arrays.items()},
        "metrics": scene.metrics,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:>18}: {value}")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    import torch

    from recon4d.device import gsplat_available
    from recon4d.render.cpu import extension

    start = time.perf_counter()
    extension()
    print(f"recon4d {__version__}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"CPU rasterizer: ready ({time.perf_counter() - start:.1f} s to load or build)")
    print(f"CUDA: {'available' if torch.cuda.is_available() else 'not available'}; "
          f"gsplat: {'installed' if gsplat_available() else 'not installed'}")
    print(f"device for --device {args.device}: {resolve_device(args.device)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except Recon4DError as exc:
        print(f"recon4d: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("recon4d: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line unless --debug
        if args.debug:
            raise
        print(f"recon4d: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
