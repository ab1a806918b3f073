"""`recon4d nerf ...`: one subcommand group; each family adds its own subcommands.

Plugged into `recon4d` through the `recon4d.commands` entry point. Modules listed in
`SUBCOMMAND_MODULES` expose `add_subcommands(subparsers)`, which adds parsers with a `handler`.
"""
from __future__ import annotations

import argparse
import importlib

SUBCOMMAND_MODULES = ("recon4d.nerf.gnt_cli", "recon4d.nerf.nelf_cli")


def register(commands: argparse._SubParsersAction) -> None:
    nerf = commands.add_parser("nerf", help="generalizable NeRF (GNT-MOVE) and light fields distilled from splats")
    sub = nerf.add_subparsers(dest="nerf_command", metavar="NERF_COMMAND", parser_class=type(nerf))
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that family is not built yet
                continue
            raise
        module.add_subcommands(sub)
    nerf.set_defaults(handler=lambda args: _missing_subcommand(nerf))


def _missing_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
