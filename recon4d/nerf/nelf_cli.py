"""`recon4d nerf distill` and `recon4d nerf export`: light-field students of a fitted scene."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    distill = subparsers.add_parser("distill", help="distil a fitted scene into a one-pass light field (R2L, NeRDF)")
    distill.add_argument("fit_dir", type=Path, help="output directory of `recon4d fit` (the teacher)")
    distill.add_argument("--model", required=True, help="r2l (MobileR2L-style) or nerdf")
    state = distill.add_mutually_exclusive_group()
    state.add_argument("--time", type=float, default=None, help="teacher: the whole scene at this time (frame units)")
    state.add_argument("--static", action="store_true", help="teacher: the still part of the scene (default)")
    distill.add_argument("--out", "-o", type=Path, required=True, help="model folder to write")
    distill.add_argument("--preset", default="cpu",
                         help="cpu (default, trains in minutes) or paper (published sizes, for a GPU)")
    distill.add_argument("--steps", type=int, default=None, help="steps on teacher views (default: the preset's)")
    distill.add_argument("--finetune-steps", type=int, default=None, help="steps on the real frames afterwards")
    distill.add_argument("--views", type=int, default=None, help="teacher views sampled around the camera path")
    distill.add_argument("--seed", type=int, default=None, help="random seed")
    distill.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in the model folder")
    distill.set_defaults(handler=_cmd_distill)

    export = subparsers.add_parser("export", help="export a distilled light field to ONNX (checked by onnxruntime)")
    export.add_argument("model_dir", type=Path, help="model folder written by `recon4d nerf distill`")
    export.add_argument("--onnx", type=Path, required=True, help="ONNX file to write")
    export.set_defaults(handler=_cmd_export)


def _cmd_distill(args: argparse.Namespace) -> int:
    import torch

    from recon4d.nerf.nelf import distill, preset_config, with_overrides

    config = with_overrides(preset_config(args.model, args.preset), steps=args.steps,
                            finetune_steps=args.finetune_steps, views=args.views, seed=args.seed)
    from recon4d.errors import InputError

    # Only training uses the device (the teacher runs in recon4d's CPU rasterizer), so gsplat is not needed.
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda but no CUDA GPU is visible to torch", hint="use --device cpu")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    metrics = distill(args.fit_dir, args.out, config, time=args.time, restart=args.restart, device=device)
    print(f"wrote {args.out}/model.safetensors, model.onnx, metrics.json "
          f"(PSNR vs teacher {metrics['psnr_vs_teacher']:.2f} dB)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from recon4d.nerf.nelf.onnx_export import export_and_verify
    from recon4d.nerf.nelf.student import load_student, probe_rays

    model, info, _ = load_student(args.model_dir)
    rays = [probe_rays(model, info, scale) for scale in (1, 2)]
    worst = export_and_verify(model, args.onnx, rays)
    print(f"wrote {args.onnx} (onnxruntime matches PyTorch within {worst:.1e} at {info.width}x{info.height} "
          f"and {2 * info.width}x{2 * info.height})")
    return 0
