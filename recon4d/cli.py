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
from typing import Any

from recon4d import __version__
from recon4d.device import DEVICE_CHOICES, resolve_device
from recon4d.errors import Recon4DError


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit code 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, f"recon4d: error: {message} (see `{self.prog} --help`)\n")


def _number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False):
    """argparse type: a finite int/float in [low, high] (or (low, high] with low_open); else a one-line usage error."""
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:g}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE_FPS = _number(float, 0, 1000, low_open=True)


def _add_out(parser: argparse.ArgumentParser, default_text: str) -> None:
    """The destination of a command that writes: -o/--out everywhere, --dest kept as an alias."""
    parser.add_argument("--out", "-o", "--dest", dest="out", type=Path, default=None,
                        help=f"destination folder (default: {default_text})")


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
    fit.add_argument("--preset", default="default",
                     help="fast | thumbnail | default | quality | walkaround (photo sets and walk-arounds of a still "
                          "object), or a YAML file with config fields (default: default)")
    fit.add_argument("--max-frames", type=_number(int, 2), default=None, help="use at most this many frames")
    fit.add_argument("--stride", type=_number(int, 1), default=None, help="use every k-th frame")
    fit.add_argument("--short-side", type=_number(int, 16, 4096), default=None, help="working resolution: short image side in pixels")
    fit.add_argument("--gaussians", dest="num_gaussians", type=_number(int, 1, 10_000_000), default=None, help="Gaussians on frame 0")
    fit.add_argument("--fov", dest="fov_x_deg", type=_number(float, 0, 180, low_open=True), default=None, help="horizontal field of view, degrees")
    fit.add_argument("--intrinsics", type=str, default=None,
                     help="fx,fy,cx,cy in pixels of the working resolution (overrides --fov)")
    fit.add_argument("--holdout-every", type=_number(int, 0), default=None,
                     help="withhold every K-th frame from the fit and report held-out PSNR (0 = off)")
    fit.add_argument("--seed", type=_number(int, 0, 2**63 - 1), default=None, help="random seed")
    fit.add_argument("--flow", default="dis", help="flow prior: dis (default, no weights) | farneback | torchscript")
    fit.add_argument("--flow-model", type=Path, default=None, help="TorchScript flow model file for --flow torchscript")
    fit.add_argument("--depth", default="video",
                     help="depth prior: video (default, no weights) | file | depth-anything-v2")
    fit.add_argument("--depth-path", type=Path, default=None,
                     help="depth maps (--depth file) or a local Depth Anything V2 folder (--depth depth-anything-v2)")
    fit.add_argument("--restart", action="store_true",
                     help="ignore an existing checkpoint in OUT and start over (replaces a finished scene there)")
    fit.add_argument("--overwrite", action="store_true",
                     help="replace a finished scene of another input or settings in OUT (refused otherwise)")
    fit.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                     help="continuous-time refinement after the sequential fit (default: as the preset says)")
    fit.add_argument("--refine-iters", type=_number(int, 0), default=None, help="refinement steps")
    fit.add_argument("--keyframes", action=argparse.BooleanOptionalAction, default=None,
                     help="fit only keyframes chosen by motion; the frames between get refined interpolated cameras "
                          "(default: as the preset says)")
    fit.add_argument("--sfm", action=argparse.BooleanOptionalAction, default=None,
                     help="start cameras from COLMAP's structure-from-motion (pycolmap, the export extra): for "
                          "walk-arounds and photo sets with wide steps between views (default: as the preset says, off)")
    fit.add_argument("--static", action=argparse.BooleanOptionalAction, default=None,
                     help="nothing in the scene moves (a walk-around or photo set): no moving masks, every "
                          "Gaussian still, no residual motion in the refinement (default: as the preset says, off)")
    fit.set_defaults(handler=_cmd_fit)

    refine = commands.add_parser("refine", help="continuous-time refinement of an existing `recon4d fit` OUT")
    refine.add_argument("scene", type=Path, help="output directory of `recon4d fit` (sequential result)")
    refine.add_argument("--refine-iters", type=_number(int, 0), default=None,
                        help="refinement steps (default: as fitted)")
    refine.set_defaults(handler=_cmd_refine)

    info = commands.add_parser("info", help="summarise a scene file or output directory")
    info.add_argument("scene", type=Path, help="scene file or output directory of `recon4d fit`")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(handler=_cmd_info)

    export = commands.add_parser("export", help="write splats, meshes, cameras, masks or tracks of a fitted OUT")
    export.add_argument("scene", type=Path, help="output directory of `recon4d fit` (or its scene file)")
    export.add_argument("--format", required=True,
                        choices=("ply", "spz", "compressed_ply", "mesh", "cameras", "masks", "tracks"))
    export.add_argument("--frame", default="all",
                        help="frame index or 'all' (ply, mesh, masks; tracks: the query frame, 'all' = 0; default: all)")
    export.add_argument("--static", action="store_true", help="mesh: only the still Gaussians (background)")
    export.add_argument("--mesh-format", default=".ply", choices=(".ply", ".obj", ".glb"), help="mesh file type")
    export.add_argument("--split", action="store_true",
                        help="mesh: each window's still part once (still_NNNN) and per frame only the moving part "
                             "(moving_NNNN), instead of a whole mesh per frame (frame_NNNN)")
    _add_out(export, "OUT/export/<format>")
    export.set_defaults(handler=_cmd_export)

    render = commands.add_parser("render", help="render a camera path of a fitted OUT to mp4 (and PNG frames)")
    render.add_argument("scene", type=Path, help="output directory of `recon4d fit` (or its scene file)")
    render.add_argument("--path", default="input",
                        help="input | orbit | spiral | bullet-time | stabilized | zoom, or a camera path .json "
                             "(schema: recon4d/render_views/paths.py) (default: input)")
    render.add_argument("--width", type=_number(int, 1), default=None, help="output width in pixels (default: the scene's)")
    render.add_argument("--height", type=_number(int, 1), default=None, help="output height in pixels (default: the scene's)")
    render.add_argument("--scale", type=_number(float, 0, low_open=True), default=None,
                        help="output size as a multiple of the scene's")
    render.add_argument("--fps", type=POSITIVE_FPS, default=None, help="frame rate of the video (default: the input's)")
    render.add_argument("--frames", type=_number(int, 1, 100_000), default=None, help="number of frames of the path")
    render.add_argument("--slowmo", type=_number(float, 1, 100), default=1.0,
                        help="slow motion factor on paths where time runs: interpolated frames in between (default: 1)")
    render.add_argument("--time", type=_number(float, 0), default=None,
                        help="bullet-time: the frozen time (default: middle); orbit/spiral/zoom: freeze time here")
    render.add_argument("--camera-frame", type=_number(float, 0), default=0.0, help="stabilized/zoom: the held camera (default: 0)")
    render.add_argument("--arc", type=_number(float, 0, 3600, low_open=True), default=None,
                        help="degrees: bullet-time swing (default 30) or orbit sweep (default 360)")
    render.add_argument("--zoom", type=_number(float, 0, 100, low_open=True), default=None, help="zoom: final magnification (default: 2)")
    render.add_argument("--zoom-mode", default="focal", choices=("focal", "dolly", "vertigo"),
                        help="zoom: change the focal length, move the camera, or both (dolly zoom)")
    render.add_argument("--depth", action="store_true", help="also render depth (colour-mapped inverse depth)")
    render.add_argument("--alpha", action="store_true", help="also render accumulated opacity")
    render.add_argument("--motion", action="store_true", help="also render moving Gaussians highlighted")
    render.add_argument("--layout", default="side-by-side", choices=("side-by-side", "separate"),
                        help="extra views in the same video or in separate videos (default: side-by-side)")
    render.add_argument("--png", action="store_true", help="also write PNG frames")
    render.add_argument("--renderer", default="splats", choices=("splats", "r2l", "nerdf"),
                        help="splats (the scene's Gaussians) or a light-field student distilled from them by "
                             "`recon4d nerf distill` (default: splats)")
    render.add_argument("--model", type=Path, default=None,
                        help="--renderer r2l|nerdf: the student's folder (default: OUT/nelf/<renderer>)")
    _add_out(render, "OUT/render")
    render.set_defaults(handler=_cmd_render)

    track_points = commands.add_parser("track", help="2D/3D point tracks of a fitted OUT: npz, csv, overlay video")
    track_points.add_argument("scene", type=Path, help="output directory of `recon4d fit` (or its scene file)")
    queries = track_points.add_mutually_exclusive_group(required=True)
    queries.add_argument("--points", nargs="+", metavar="X,Y[,T]",
                         help="query pixels (scene resolution) on frame T (default: --query-frame)")
    queries.add_argument("--grid", type=_number(int, 1), metavar="N", help="an N x N grid of query pixels (N <= 256)")
    track_points.add_argument("--query-frame", type=_number(int, 0), default=0, help="frame of the queries (default: 0)")
    track_points.add_argument("--fps", type=POSITIVE_FPS, default=None, help="frame rate of the overlay (default: the input's)")
    _add_out(track_points, "OUT/tracks")
    track_points.set_defaults(handler=_cmd_track)

    evaluate = commands.add_parser("eval", help="score a fitted OUT against synthetic ground truth")
    evaluate.add_argument("scene", type=Path, help="output directory of `recon4d fit` (or its scene file)")
    evaluate.add_argument("--gt", type=Path, required=True, help="ground-truth folder written by recon4d.eval.synthetic")
    evaluate.add_argument("--json", action="store_true", help="print machine-readable JSON")
    evaluate.set_defaults(handler=_cmd_eval)

    doctor = commands.add_parser("doctor", help="check the installation and build the CPU rasterizer once")
    doctor.set_defaults(handler=_cmd_doctor)
    _register_plugin_commands(commands)
    return parser


PLUGIN_GROUP = "recon4d.commands"


def _register_plugin_commands(commands: argparse._SubParsersAction) -> None:
    """Add subcommands that packages built on recon4d register under the `recon4d.commands` entry point.

    Each entry point names a callable `register(commands)` that adds one subparser and sets its `handler`.
    This keeps the layering one-way: the viewer imports recon4d, recon4d never imports the viewer.
    """
    from importlib.metadata import entry_points

    for entry in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        try:
            register = entry.load()
        except ImportError as exc:  # an optional extra that is not installed: say how to get it
            message = f"`recon4d {entry.name}` needs an optional dependency ({exc}); install it with pip"
            unavailable = commands.add_parser(entry.name, help=f"(unavailable: {exc})")
            unavailable.set_defaults(handler=_unavailable(message))
            continue
        register(commands)


def _unavailable(message: str):
    def handler(args: argparse.Namespace) -> int:
        from recon4d.errors import InputError

        raise InputError(message)

    return handler


def _cmd_fit(args: argparse.Namespace) -> int:
    import math

    from recon4d.errors import InputError
    from recon4d.fit.config import load_config
    from recon4d.fit.pipeline import fit_video
    from recon4d.io.outputs import check_output_dir
    from recon4d.priors.pipeline import PriorSettings

    out = check_output_dir(args.out or Path("out") / args.video.stem)
    if not args.video.exists():
        raise InputError(f"input not found: {args.video}", hint="pass a video file or an image folder")
    device = resolve_device(args.device)
    overrides = {name: getattr(args, name) for name in
                 ("max_frames", "stride", "short_side", "num_gaussians", "fov_x_deg", "holdout_every", "seed",
                  "refine", "refine_iters")}
    intrinsics = None
    if args.intrinsics:
        try:
            intrinsics = [float(x) for x in args.intrinsics.split(",")]
        except ValueError:
            intrinsics = []
        if len(intrinsics) != 4 or not all(map(math.isfinite, intrinsics)) or min(intrinsics[:2]) <= 0:
            raise InputError(f"--intrinsics expects fx,fy,cx,cy (finite, fx and fy > 0), got {args.intrinsics!r}")
    if args.flow_model is not None and not args.flow_model.is_file():
        raise InputError(f"--flow-model {args.flow_model} is not a file")
    if args.depth_path is not None and not args.depth_path.exists():
        raise InputError(f"--depth-path {args.depth_path} does not exist")
    flow_options = {"path": str(args.flow_model)} if args.flow_model else {}
    depth_options = {}
    if args.depth_path:
        depth_options = {"model_path" if args.depth == "depth-anything-v2" else "path": str(args.depth_path)}
    overrides["priors"] = PriorSettings(flow=args.flow, flow_options=flow_options, depth=args.depth,
                                        depth_options=depth_options)
    overrides["input.intrinsics"] = intrinsics
    overrides["keyframes.enabled"] = args.keyframes
    overrides["sfm.enabled"] = args.sfm
    overrides["input.static_scene"] = args.static
    config = load_config(args.preset, overrides)
    result = fit_video(args.video, out, config, device, overwrite=args.overwrite, restart=args.restart)
    _print_fit_summary(result.metrics, out)
    return 0


def _print_fit_summary(m: dict, out: Path) -> None:
    held = m["held_out"]
    held_text = f", held-out PSNR {held['psnr']:.2f} dB over {held['frames']} frames" if held["frames"] else ""
    skipped = m.get("skipped") or {}
    if skipped.get("frames"):
        held_text += f", PSNR {skipped['psnr']:.2f} dB on {skipped['frames']} frames between keyframes"
    if "sequential" in m and m["sequential"]["held_out"] and m["sequential"]["held_out"].get("psnr") is not None:
        held_text += f" (sequential pass: {m['sequential']['held_out']['psnr']:.2f} dB)"
    keyframes = f" ({m['fitted']['frames']} keyframes)" if skipped.get("frames") else ""
    print(f"fitted {m['frames']} frames{keyframes} with {m['gaussians']} Gaussians in {m['seconds_total']:.1f} s: "
          f"PSNR {m['fitted']['psnr']:.2f} dB, SSIM {m['fitted']['ssim']:.3f}{held_text}")
    print(f"wrote {out}/scene.r4d, cameras.json, metrics.json, comparison.mp4")


def _cmd_refine(args: argparse.Namespace) -> int:
    from recon4d.fit.pipeline import refine_output

    result = refine_output(args.scene, resolve_device(args.device), {"refine_iters": args.refine_iters})
    _print_fit_summary(result.metrics, result.out_dir)
    return 0


#: `recon4d info` shows a longer list (one value per frame of a long clip) by its length and ends; --json shows all.
INFO_LIST_SHOWN = 6


def _brief(value: Any) -> str:
    """A summary value as `recon4d info` prints it: lists of more than INFO_LIST_SHOWN entries by their length
    and ends, at any depth.

        >>> _brief({"inits": [None] + ["pnp"] * 449, "psnr": 27.5})
        "{'inits': [450 values: None, 'pnp', 'pnp', ..., 'pnp', 'pnp', 'pnp'], 'psnr': 27.5}"
    """
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key!r}: {_brief(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list) and len(value) > INFO_LIST_SHOWN:
        half = INFO_LIST_SHOWN // 2
        ends = [_brief(item) for item in value[:half]] + ["..."] + [_brief(item) for item in value[-half:]]
        return f"[{len(value)} values: {', '.join(ends)}]"
    if isinstance(value, list):
        return "[" + ", ".join(_brief(item) for item in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def _cmd_info(args: argparse.Namespace) -> int:
    from recon4d.io.scene import load_scene

    scene = load_scene(args.scene)
    summary = {
        "frames": scene.num_frames,
        "image_size": [scene.cameras.width, scene.cameras.height],
        "gaussians": len(scene.gaussians),
        "dynamic_gaussians": int(scene.is_dynamic.sum()),
        "moving_gaussians": int(scene.is_moving.sum()),
        # Where the dynamic Gaussians' states come from: a refined scene's motion model, or the frames whose
        # states a sequential scene stores (the others blend them).
        "dynamic_states": ({"motion_model": scene.motion.metadata()} if scene.motion is not None else
                           {"stored_frames": scene.num_frames if scene.state_frames is None
                            else int(scene.state_frames.numel())}),
        "arrays": {name: list(value.shape) for name, value in scene.arrays.items()},
        "metrics": scene.metrics,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            if key != "metrics":
                print(f"{key:>18}: {_brief(value)}")
        print(f"{'metrics':>18}:")
        for key, value in summary["metrics"].items():  # one line each: a long clip's per-frame lists shortened
            print(f"{key:>24}: {_brief(value)}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from recon4d.errors import InputError
    from recon4d.io.frames import STILL_SCENE_STEM, one_file_for_all
    from recon4d.io.outputs import check_output_dir
    from recon4d.io.scene import load_scene

    if args.split and (args.format != "mesh" or args.static):
        raise InputError("--split is for --format mesh without --static: it writes a frame's still and moving parts "
                         "apart")
    base = args.scene if args.scene.is_dir() else args.scene.parent
    dest = check_output_dir(args.out or base / "export" / args.format)
    scene = load_scene(args.scene)
    if args.frame == "all":
        frames = "all"
    else:
        try:
            frames = int(args.frame)
        except ValueError:
            raise InputError(f"--frame expects an index or 'all', got {args.frame!r}") from None
        if not 0 <= frames < scene.num_frames:
            raise InputError(f"--frame {frames} is not a frame index 0..{scene.num_frames - 1} (or 'all')")
    if args.format in ("ply", "spz", "compressed_ply"):
        from recon4d.export import export_ply

        written = export_ply(scene, dest, frames=frames, format=args.format)
        if one_file_for_all(scene, frames):
            print(f"the scene is still: one file holds the Gaussians of all {scene.num_frames} frames")
    elif args.format == "mesh":
        from recon4d.export import export_mesh, export_meshes

        if args.static:
            stats = export_mesh(scene, dest / f"{STILL_SCENE_STEM}{args.mesh_format}",
                                frame=None if frames == "all" else frames, static_only=True)
            written = [stats.path]
        else:
            stats = export_meshes(scene, dest, frames, suffix=args.mesh_format, split=args.split)
            written = list(dict.fromkeys(path for s in stats for path in (s.still_path, s.path) if path is not None))
            if one_file_for_all(scene, frames) and not args.split:
                print(f"the scene is still: one mesh serves all {scene.num_frames} frames")
            if not args.split and len(stats) > 1:
                megabytes = sum(path.stat().st_size for path in written) / 2**20
                print(f"meshes: {megabytes:.0f} MB; --split writes each window's still part once and per frame "
                      "only the moving part")
    elif args.format == "cameras":
        from recon4d.export import export_cameras
        from recon4d.io.scene_frames import read_scene_frames

        # Without the source (moved, changed) the cameras are still written, without images.
        written = list(export_cameras(scene, dest, frames_rgb=read_scene_frames(scene)).values())
    elif args.format == "tracks":
        from recon4d.export.tracks import TrackExportConfig, export_tracks, grid_queries

        config = TrackExportConfig()
        queries = grid_queries(scene.cameras.width, scene.cameras.height, config.default_grid,
                               0 if frames == "all" else frames)
        written = list(export_tracks(scene, dest, queries, config).values())
    else:
        from recon4d.export import export_masks

        written = export_masks(scene, dest, frames=frames)
    print(f"wrote {len(written)} file(s) to {dest}")
    return 0


def _scene_folder(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def _cmd_render(args: argparse.Namespace) -> int:
    import dataclasses

    from recon4d.io.outputs import check_output_dir
    from recon4d.io.scene import load_scene
    from recon4d.render_views import (
        PATH_NAMES,
        PathConfig,
        make_path,
        output_size,
        render_path_to_files,
        scene_fps,
    )

    dest = check_output_dir(args.out or _scene_folder(args.scene) / "render")
    scene = load_scene(args.scene)
    device = resolve_device(args.device)
    config = PathConfig()
    if args.arc is not None:
        field = "bullet_arc_degrees" if args.path == "bullet-time" else "orbit_degrees"
        config = dataclasses.replace(config, **{field: args.arc})
    if args.zoom is not None:
        config = dataclasses.replace(config, zoom_factor=args.zoom)
    width, height = output_size(scene.cameras.width, scene.cameras.height, args.width, args.height, args.scale)
    views = make_path(scene, args.path, count=args.frames, slowmo=args.slowmo, time=args.time,
                      camera_frame=args.camera_frame, zoom_mode=args.zoom_mode, config=config)
    extras = [name for name in ("depth", "alpha", "motion") if getattr(args, name)]
    custom = args.path not in PATH_NAMES  # a JSON file: its cameras are not written again
    stem = Path(args.path).stem if custom else args.path
    fps = args.fps or scene_fps(scene)
    if args.renderer == "splats":
        written = render_path_to_files(scene, views, dest, stem, width, height, fps, extras, args.layout, args.png,
                                       device=device, write_cameras=not custom)
    else:
        written = _render_with_student(args, scene, views, dest, stem, width, height, fps, extras, custom)
    print(f"rendered {len(views)} frames at {width}x{height}, {fps:.3g} fps: "
          f"{', '.join(p.name for p in written)} in {dest}")
    return 0


def _render_with_student(args: argparse.Namespace, scene, views, dest: Path, stem: str, width: int, height: int,  # noqa: ANN001
                         fps: float, extras: list[str], custom: bool) -> list[Path]:
    """`recon4d render --renderer r2l|nerdf`: the same camera path through a distilled light-field student."""
    from recon4d.errors import InputError
    from recon4d.nerf.nelf.render import render_path_with_student
    from recon4d.render_views import write_camera_path, write_outputs

    if extras:
        raise InputError(f"--{extras[0]} needs --renderer splats", hint="a light-field student renders colour only")
    model_dir = args.model or _scene_folder(args.scene) / "nelf" / args.renderer
    if not model_dir.is_dir():
        raise InputError(f"no {args.renderer} student at {model_dir}",
                         hint=f"run `recon4d nerf distill {_scene_folder(args.scene)} --model {args.renderer} -o "
                              f"{model_dir}` or pass --model")
    frames = render_path_with_student(model_dir, scene, views, width, height, expected_kind=args.renderer)
    written = write_outputs({"color": frames}, dest, f"{stem}_{args.renderer}", fps, args.layout, args.png)
    if not custom:
        written.append(write_camera_path(dest / f"{stem}_cameras.json", list(views)))
    return written


def _cmd_track(args: argparse.Namespace) -> int:
    from recon4d.export.tracks import (
        TrackExportConfig,
        export_tracks,
        grid_queries,
        parse_point_queries,
    )
    from recon4d.io.outputs import check_output_dir
    from recon4d.io.scene import load_scene

    dest = check_output_dir(args.out or _scene_folder(args.scene) / "tracks")
    scene = load_scene(args.scene)
    if args.grid is not None:
        queries = grid_queries(scene.cameras.width, scene.cameras.height, args.grid, args.query_frame)
    else:
        queries = parse_point_queries(args.points, args.query_frame)
    paths = export_tracks(scene, dest, queries, TrackExportConfig(fps=args.fps))
    print(f"tracked {queries.shape[0]} points over {scene.num_frames} frames: "
          f"{', '.join(p.name for p in paths.values())} in {dest}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from recon4d.eval.ground_truth import evaluate_scene
    from recon4d.eval.synthetic import load_ground_truth
    from recon4d.io.scene import load_scene

    results = evaluate_scene(load_scene(args.scene), load_ground_truth(args.gt))
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key:>28}: {value:.4f}" if isinstance(value, float) else f"{key:>28}: {value}")
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


def _broken_pipe() -> int:
    """The reader of our stdout went away (`recon4d info ... | head`): stop quietly, like other Unix tools."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # Python's final flush of stdout must not fail again
    return 141  # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except BrokenPipeError:
        return _broken_pipe()
    except Recon4DError as exc:
        print(f"recon4d: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("recon4d: interrupted; rerun the same command to resume from the last finished frame", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line unless --debug
        if args.debug:
            raise
        print(f"recon4d: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
