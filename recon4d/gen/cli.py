"""`recon4d gen ...`: corpus, encode, decode, train, sample (plugged in through `recon4d.commands`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from recon4d.errors import InputError


def register(commands: argparse._SubParsersAction) -> None:
    gen = commands.add_parser("gen", help="text-to-3D: procedural corpus, scene latents, rectified-flow generator")
    sub = gen.add_subparsers(dest="gen_command", metavar="GEN_COMMAND", parser_class=type(gen))

    corpus = sub.add_parser("corpus", help="render a captioned multi-view corpus of procedural objects")
    corpus.add_argument("-o", "--out", type=Path, required=True, help="corpus folder")
    corpus.add_argument("--count", type=int, default=16, help="number of objects (default: 16)")
    corpus.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    corpus.add_argument("--views", type=int, default=None, help="views per object (default: 32)")
    corpus.add_argument("--size", type=int, default=64, help="image width = height in pixels (default: 64)")
    _add_parallel_flags(corpus)
    corpus.set_defaults(handler=_cmd_corpus)

    encode = sub.add_parser("encode", help="fit every object (or a fit's object) to G Gaussians: scene latents")
    encode.add_argument("source", type=Path, help="corpus folder, object folder, or `recon4d fit` output directory")
    encode.add_argument("-o", "--out", type=Path, required=True, help="latents folder")
    encode.add_argument("--gaussians", type=int, default=None, help="Gaussians per object G (default: 1024)")
    encode.add_argument("--steps", type=int, default=None, help="optimisation steps per object (default: 300)")
    encode.add_argument("--object", dest="which", default="moving", choices=("moving", "still", "all"),
                        help="fit directories: the moving object, the still part, or all (default: moving)")
    encode.add_argument("--time", type=float, default=0.0, help="fit directories: frame time (default: 0)")
    encode.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    _add_parallel_flags(encode)
    encode.set_defaults(handler=_cmd_encode)

    decode = sub.add_parser("decode", help="a latent file to a scene directory (scene.r4d, preview.mp4, contact.png)")
    decode.add_argument("latent", type=Path, help="latent file (.r4dlat)")
    decode.add_argument("-o", "--out", type=Path, required=True, help="scene directory")
    decode.add_argument("--no-preview", action="store_true", help="write only scene.r4d")
    decode.set_defaults(handler=_cmd_decode)

    train = sub.add_parser("train", help="train the rectified-flow text-to-latent model (torchrun for data parallel)")
    train.add_argument("latents", type=Path, help="latents folder of `recon4d gen encode`")
    train.add_argument("-o", "--out", type=Path, required=True, help="model directory")
    train.add_argument("--config", type=Path, default=None, help="YAML preset (configs/gen*.yaml); flags override it")
    train.add_argument("--stages", default=None,
                       help="comma list of rf1,render,boss,rf2,onestep,refiner,boss_finetune (default: rf1,boss)")
    train.add_argument("--steps", type=int, default=None, help="1-RF optimiser steps")
    train.add_argument("--batch", type=int, default=None, help="GLOBAL batch, split evenly over torchrun processes")
    train.add_argument("--lr", type=float, default=None, help="1-RF learning rate")
    train.add_argument("--sampler", default=None, choices=("uniform", "logit_normal", "u_shaped"),
                       help="1-RF timestep sampler (default: logit_normal)")
    train.add_argument("--loss", default=None, choices=("mse", "pseudo_huber"), help="1-RF loss (default: mse)")
    train.add_argument("--render-steps", type=int, default=None,
                       help="render stage optimiser steps (the 1-RF fine-tuned with the rendering loss: L1 + SSIM between "
                            "renders of the implied clean latent and of the true one)")
    train.add_argument("--reflow-steps", type=int, default=None, help="2-RF optimiser steps")
    train.add_argument("--distill-steps", type=int, default=None, help="one-step student optimiser steps")
    train.add_argument("--refiner-steps", type=int, default=None, help="FlowTurbo refiner optimiser steps")
    train.add_argument("--boss-finetune-steps", type=int, default=None,
                       help="optimiser steps of the boss_finetune stage per budget (default: 300)")
    train.add_argument("--boss-budgets", default=None,
                       help="comma list of step budgets K the boss_finetune stage finetunes for (default: 2,4)")
    train.add_argument("--size", default=None, choices=("cpu", "gpu"), help="denoiser size (default: cpu, a few M parameters)")
    train.add_argument("--seed", type=int, default=None, help="random seed")
    train.set_defaults(handler=_cmd_train)

    sample = sub.add_parser("sample", help="generate 3D Gaussian scenes from a prompt")
    sample.add_argument("prompt", help='text, e.g. "a red mug"')
    sample.add_argument("-o", "--out", type=Path, required=True,
                        help="scene directory (with --num N > 1: OUT/sample_000 ...)")
    sample.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    sample.add_argument("--steps", type=int, default=8, help="velocity evaluations (default: 8; 1 = one-step student)")
    sample.add_argument("--solver", default="auto", choices=("auto", "euler", "heun", "boss", "turbo", "onestep"),
                        help="auto (default): the one-step student at --steps 1 when the model has one, else euler")
    sample.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the model's), on the "
                        "latent channels the model guides (the shipped 2-RF: colour only)")
    sample.add_argument("--reflow", action="store_true", help="sample the 2-RF model")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    sample.add_argument("--num", type=int, default=1, help="number of samples (default: 1)")
    sample.set_defaults(handler=_cmd_sample)

    gen.set_defaults(handler=lambda args: _missing_subcommand(gen))


def _add_parallel_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=1,
                        help="objects at a time; >1 runs them as parallel processes on Ray (default: 1, in-process)")
    parser.add_argument("--address", default=None, help="Ray cluster address (auto, HOST:PORT, ray://HOST:PORT)")


def _missing_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _positive(name: str, value: int | None, maximum: int) -> None:
    if value is not None and not 1 <= value <= maximum:
        raise InputError(f"{name} must be between 1 and {maximum}, got {value}")


def _cmd_corpus(args: argparse.Namespace) -> int:
    from recon4d.gen.corpus import CorpusConfig, build_corpus

    _positive("--count", args.count, 10_000_000)
    _positive("--views", args.views, 1000)
    _positive("--size", args.size, 4096)
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"output {args.out} exists and is not a directory")
    config = CorpusConfig(count=args.count, seed=args.seed, views=args.views or CorpusConfig.views, width=args.size,
                          height=args.size)
    summary = build_corpus(args.out, config, address=args.address, workers=args.workers)
    print(json.dumps(summary, indent=1))
    return 1 if summary["failed"] and not summary["objects"] else 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from recon4d.gen.encode import EncodeConfig
    from recon4d.gen.encode_batch import encode_any

    _positive("--gaussians", args.gaussians, 1_000_000)
    _positive("--steps", args.steps, 1_000_000)
    overrides = {k: v for k, v in {"num_gaussians": args.gaussians, "steps": args.steps}.items() if v is not None}
    config = EncodeConfig(seed=args.seed, **overrides)
    summary = encode_any(args.source, args.out, config, which=args.which, time=args.time, address=args.address,
                         workers=args.workers)
    print(json.dumps(summary, indent=1))
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    from recon4d.gen.decode import decode_latent
    from recon4d.gen.latents import load_latent

    latent = load_latent(args.latent)
    path = decode_latent(latent, args.out, preview=not args.no_preview)
    print(path)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from recon4d.gen.config import pipeline_config

    overrides = {"stages": args.stages, "steps": args.steps, "batch": args.batch, "lr": args.lr,
                 "sampler": args.sampler, "loss": args.loss, "render_steps": args.render_steps,
                 "reflow_steps": args.reflow_steps,
                 "distill_steps": args.distill_steps, "refiner_steps": args.refiner_steps, "size": args.size,
                 "seed": args.seed}
    config = pipeline_config(args.config, {k: v for k, v in overrides.items() if v is not None})
    config = _with_boss_finetune_flags(config, args)
    if not args.latents.is_dir():
        raise InputError(f"{args.latents} is not a latents folder", hint="make one with `recon4d gen encode`")
    from recon4d.device import resolve_device
    from recon4d.gen.pipeline import run_pipeline

    summary = run_pipeline(args.latents, args.out, config, resolve_device(args.device))
    from recon4d import distributed

    if distributed.is_rank0():
        print(json.dumps(summary, indent=1, default=str))
    distributed.shutdown()
    return 0


def _with_boss_finetune_flags(config, args: argparse.Namespace):  # noqa: ANN001, ANN202 - PipelineConfig
    """--boss-finetune-steps / --boss-budgets applied to the config's boss_finetune section."""
    import dataclasses

    updates = {}
    if args.boss_finetune_steps is not None:
        _positive("--boss-finetune-steps", args.boss_finetune_steps, 1_000_000)
        updates["steps"] = args.boss_finetune_steps
    if args.boss_budgets is not None:
        try:
            budgets = tuple(int(k) for k in args.boss_budgets.split(",") if k.strip())
        except ValueError:
            raise InputError(f"--boss-budgets must be a comma list of step counts, got {args.boss_budgets!r}") from None
        if not budgets:
            raise InputError("--boss-budgets is empty")
        for k in budgets:
            _positive("--boss-budgets entry", k, 1000)
        updates["budgets"] = budgets
    return dataclasses.replace(config, boss_finetune=dataclasses.replace(config.boss_finetune, **updates))


def _cmd_sample(args: argparse.Namespace) -> int:
    from recon4d.gen.sample import SampleRequest, check_request, sample_to_dirs

    request = SampleRequest(args.prompt, steps=args.steps, solver=args.solver, cfg=args.cfg, seed=args.seed,
                            num=args.num, reflow=args.reflow)
    check_request(request)
    from recon4d.device import resolve_device

    for path in sample_to_dirs(request, args.out, args.model, resolve_device(args.device)):
        print(path)
    return 0
