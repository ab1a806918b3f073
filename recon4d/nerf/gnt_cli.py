"""`recon4d nerf train | eval | render | attack`: GNT-MOVE generalizable NeRF and the NeRFool attack."""
from __future__ import annotations

import argparse
import json
import os
from fractions import Fraction
from pathlib import Path

from recon4d.errors import InputError

DEFAULT_SHORT_SIDE = 32
VIDEO_FPS = 24


def _eps(text: str) -> float:
    """'8/255' or '0.03' -> float."""
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from exc


def _views(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated view indices, got {text!r}") from exc


def _device(args: argparse.Namespace) -> str:
    import torch

    name = args.nerf_device or getattr(args, "device", "auto") or "auto"
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda but no CUDA GPU is visible to torch", hint="use --device cpu")
    return name


def _writable(path: Path, suffix: str | None = None) -> Path:
    """Check an output file location before heavy work."""
    if suffix and path.suffix.lower() != suffix:
        raise InputError(f"{path} must end with {suffix}")
    parent = path.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {parent}: {exc.strerror}") from exc
    if not os.access(parent, os.W_OK):
        raise InputError(f"cannot write into {parent}")
    return path


def _common(parser: argparse.ArgumentParser, holdout: bool = True) -> None:
    parser.add_argument("--short-side", type=int, default=DEFAULT_SHORT_SIDE, help="resize images so their short side is S")
    if holdout:
        parser.add_argument("--holdout-every", type=int, default=8, help="hold out views i with i %% K == K-1 (default 8)")
        parser.add_argument("--views", type=_views, default=None, help="held-out view indices instead, e.g. 3,7")
    parser.add_argument("--device", dest="nerf_device", choices=("auto", "cpu", "cuda"), default=None)


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train GNT / GNT-MOVE across scenes")
    train.add_argument("data", nargs="+", type=Path, help="posed image sets (transforms.json, COLMAP, fit folders)")
    train.add_argument("-o", "--out", type=Path, required=True, help="model folder (resumes when it exists)")
    train.add_argument("--moe", action=argparse.BooleanOptionalAction, default=True, help="GNT-MOVE (default) or dense GNT")
    train.add_argument("--steps", type=int, default=None)
    train.add_argument("--rays", type=int, default=None, help="global batch of rays per step (even)")
    train.add_argument("--lr", type=float, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--eval-every", type=int, default=None)
    train.add_argument("--short-side", type=int, default=DEFAULT_SHORT_SIDE)
    train.add_argument("--holdout-every", type=int, default=8)
    train.add_argument("--device", dest="nerf_device", choices=("auto", "cpu", "cuda"), default=None)
    train.set_defaults(handler=_cmd_train)

    evaluate = sub.add_parser("eval", help="zero/few-shot PSNR/SSIM on held-out views, with baselines")
    evaluate.add_argument("data", type=Path)
    evaluate.add_argument("--model", type=Path, default=None, help="model folder or .safetensors (default: shipped)")
    evaluate.add_argument("--dense-model", type=Path, default=None,
                          help="dense GNT baseline (default: the shipped one when --model is not given)")
    evaluate.add_argument("--no-dense", action="store_true", help="skip the dense GNT baseline")
    evaluate.add_argument("--shots", type=int, default=None, help="source views per target (few-shot); default the model's K")
    evaluate.add_argument("--json", type=Path, default=None, help="write the full result here")
    _common(evaluate)
    evaluate.set_defaults(handler=_cmd_eval)

    render = sub.add_parser("render", help="novel-view video of a (possibly unseen) scene")
    render.add_argument("data", type=Path)
    render.add_argument("--model", type=Path, default=None)
    render.add_argument("--path", default="orbit", help="orbit, spiral or a camera path JSON")
    render.add_argument("--frames", type=int, default=48)
    render.add_argument("-o", "--out", type=Path, required=True, help="video file (.mp4)")
    _common(render, holdout=False)
    render.set_defaults(handler=_cmd_render)

    attack = sub.add_parser("attack", help="NeRFool: adversarial source views, and a purification defence")
    attack.add_argument("data", type=Path)
    attack.add_argument("--model", type=Path, default=None)
    attack.add_argument("--eps", type=_eps, default=8 / 255, help="L-inf radius, e.g. 8/255")
    attack.add_argument("--steps", type=int, default=10)
    attack.add_argument("--rays", type=int, default=256, help="target rays per PGD step")
    attack.add_argument("--universal", action="store_true", help="one perturbation per source for all targets")
    attack.add_argument("--paths", choices=("both", "cnn", "blend"), default="both",
                        help="perturb the CNN input, the blended RGB, or both (default)")
    attack.add_argument("--defence-sigma", type=float, default=1.0, help="purification blur, pixels")
    attack.add_argument("--transfer", action="store_true", help="attack only the undefended model (not adaptive)")
    attack.add_argument("--json", type=Path, default=None)
    _common(attack)
    attack.set_defaults(handler=_cmd_attack)


def _load(data: Path, short_side: int, device: str = "cpu"):
    from recon4d.nerf.data import load_posed_images

    return load_posed_images(data, short_side=short_side).to(device)


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from recon4d.nerf.gnt.config import GNTConfig, TrainConfig
    from recon4d.nerf.gnt.train import train

    overrides = {k: v for k, v in (("steps", args.steps), ("rays", args.rays), ("lr", args.lr),
                                    ("eval_every", args.eval_every)) if v is not None}
    config = dataclasses.replace(TrainConfig(), seed=args.seed, holdout_every=args.holdout_every, **overrides)
    model_config = GNTConfig(moe=args.moe)
    device = _device(args)
    scenes = [_load(path, args.short_side) for path in args.data]
    record = train(scenes, args.out, model_config, config, device=device,
                   extra={"data": [str(p) for p in args.data]})
    print(json.dumps(record))
    return 0


def _write_json(path: Path | None, result: dict) -> None:
    if path is not None:
        from recon4d.io.atomic import write_bytes_atomic

        write_bytes_atomic(path, (json.dumps(result, indent=1) + "\n").encode())


def _cmd_eval(args: argparse.Namespace) -> int:
    from recon4d.nerf.gnt.checkpoint import SHIPPED, load_model
    from recon4d.nerf.gnt.evaluate import evaluate, split_views

    if args.json is not None:
        _writable(args.json, ".json")
    device = _device(args)
    model, _ = load_model(args.model, device)
    baseline = None
    if not args.no_dense and (args.dense_model is not None or args.model is None):
        baseline, _ = load_model(args.dense_model or SHIPPED["dense"], device)
    data = _load(args.data, args.short_side, device)
    held, sources = split_views(len(data), args.holdout_every, args.views)
    result = evaluate(model, data, held, sources, args.shots, baseline)
    result["model"] = str(args.model or SHIPPED["moe"])
    _write_json(args.json, result)
    line = f"PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.3f} on {len(held)} held-out views " \
           f"({data.width}x{data.height}, {result['shots']} sources); nearest view {result['nearest_view_psnr']:.2f} dB"
    if baseline is not None:
        line += f"; dense GNT {result['dense_psnr']:.2f} dB"
    print(line)
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from recon4d.io.video_writer import write_video
    from recon4d.nerf.gnt.checkpoint import load_model
    from recon4d.nerf.gnt.paths import make_path
    from recon4d.nerf.gnt.render import render_view
    from recon4d.progress import track

    _writable(args.out, ".mp4")
    if args.frames < 2:
        raise InputError(f"--frames must be >= 2, got {args.frames}")
    device = _device(args)
    model, _ = load_model(args.model, device)
    data = _load(args.data, args.short_side, device)
    poses, intrinsics = make_path(args.path, data, args.frames)
    frames = []
    for pose, K in track(list(zip(poses, intrinsics)), "rendering GNT views"):
        rgb, _ = render_view(model, data, pose, K, data.width, data.height)
        frames.append((rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())
    write_video(args.out, np.stack(frames), VIDEO_FPS)
    print(f"wrote {args.out} ({len(frames)} frames, {data.width}x{data.height})")
    return 0


def _cmd_attack(args: argparse.Namespace) -> int:
    from recon4d.nerf.gnt.attack import AttackConfig, attack
    from recon4d.nerf.gnt.checkpoint import load_model
    from recon4d.nerf.gnt.evaluate import split_views

    if args.json is not None:
        _writable(args.json, ".json")
    config = AttackConfig(eps=args.eps, steps=args.steps, rays=args.rays, paths=args.paths,
                          universal=args.universal, defence_sigma=args.defence_sigma)
    device = _device(args)
    model, _ = load_model(args.model, device)
    data = _load(args.data, args.short_side, device)
    held, sources = split_views(len(data), args.holdout_every, args.views)
    result = attack(model, data, held, sources, config, adaptive=not args.transfer)
    _write_json(args.json, result)
    print(f"clean {result['clean_psnr']:.2f} dB -> attacked {result['attacked_psnr']:.2f} dB "
          f"(drop {result['psnr_drop']:.2f} dB at eps {config.eps:.4f}); defence: clean {result['defended_clean_psnr']:.2f} dB, "
          f"attacked {result['defended_attacked_psnr']:.2f} dB")
    return 0
