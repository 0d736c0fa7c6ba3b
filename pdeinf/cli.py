"""`pdeinf data | train | influence | reproduce`.

Each sub-command lives in the module that owns it; that module exposes
`add_parser(subparsers)` which registers a parser whose `func(args) -> int` runs it.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from pdeinf.errors import InputError

_COMMANDS = {
    "data": "pdeinf.data.cli",
    "train": "pdeinf.training.cli",
    "influence": "pdeinf.influence.cli",
    "reproduce": "pdeinf.pipeline",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdeinf",
        description="Influence (gradient coherence) of autoregressive PDE surrogates.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _COMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"pdeinf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pdeinf {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
