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
    corpus.add_argument("--views", type=int, default=24, help="views per object (default: 24)")
    corpus.add_argument("--size", type=int, default=64, help="image width = height in pixels (default: 64)")
    _add_parallel_flags(corpus)
    corpus.set_defaults(handler=_cmd_corpus)

    encode = sub.add_parser("encode", help="fit every object (or a fit's object) to G Gaussians: scene latents")
    encode.add_argument("source", type=Path, help="corpus folder, object folder, or `recon4d fit` output directory")
    encode.add_argument("-o", "--out", type=Path, required=True, help="latents folder")
    encode.add_argument("--gaussians", type=int, default=None, help="Gaussians per object G (default: 1024)")
    encode.add_argument("--steps", type=int, default=None, help="optimisation steps per object (default: 150)")
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
    config = CorpusConfig(count=args.count, seed=args.seed, views=args.views, width=args.size, height=args.size)
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
