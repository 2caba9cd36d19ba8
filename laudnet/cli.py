"""The ``laudnet`` command line: a thin layer over the library.

Each feature package contributes its subcommands through a ``commands`` module with a
``register(subparsers)`` function; every subcommand's handler takes the parsed arguments
and returns an exit code. Errors a user can fix (bad values, missing files) become one
line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

COMMAND_MODULES: tuple[str, ...] = (
    "laudnet.models.commands",
    "laudnet.train.commands",
    "laudnet.viz.commands",
    "laudnet.latency.commands",
    "laudnet.sparse.commands",
    "laudnet.detection.commands",
)


class CommandError(Exception):
    """An error the user can fix; the CLI prints its message and exits with code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="laudnet",
        description="Latency-aware dynamic networks: models, training, latency prediction, sparse inference.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except (CommandError, ValueError, OSError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"laudnet {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"laudnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
