"""`pdeinf data | train | influence | reproduce`.

Each sub-command is registered by the module that owns it, which sets a `func(args) -> int`.
Any pdeinf error is printed as one line: exit status 2 for bad input (`InputError`), 1 for any
other failure (`NumericalError`, ...), 128 + the signal number when stopped by a signal.
"""
from __future__ import annotations

import argparse
import signal
import sys

from pdeinf.data import cli as data_cli
from pdeinf.errors import InputError, PdeinfError
from pdeinf.pipeline import cli as pipeline_cli
from pdeinf.training import cli as training_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdeinf", description="Influence (gradient coherence) of autoregressive PDE surrogates.")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in (data_cli.add_parser, training_cli.add_parser, pipeline_cli.add_influence_parser,
                     pipeline_cli.add_reproduce_parser):
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"pdeinf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except PdeinfError as err:
        print(f"pdeinf {args.command}: failed: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # e.g. a results folder made read-only mid-run, a full disk
        where = f"{err.filename}: " if err.filename else ""
        print(f"pdeinf {args.command}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # SIGINT, or SIGTERM during a pipeline run
        for stop in (signal.SIGINT, signal.SIGTERM):  # exiting: a further one must not cut the line
            signal.signal(stop, signal.SIG_IGN)
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"pdeinf {args.command}: stopped by {signal.Signals(signum).name}; rerun the same "
              "command to resume", file=sys.stderr)
        return 128 + signum
