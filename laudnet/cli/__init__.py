"""The ``laudnet`` command line: a thin layer over the library, grouped by noun.

``laudnet model list|macs``, ``laudnet train``, ``laudnet eval``, ``laudnet latency
predict|search|plot|calibrate|validate|suggest``, ``laudnet sparse bench``, ``laudnet detect
train|eval|predict``, ``laudnet viz masks``. Each group's module registers its commands and
only parses, calls the library and formats. Input a user can fix raises
:class:`~laudnet.errors.UsageError` (or the CLI's :class:`~.common.CommandError`) and becomes one
line on stderr with exit code 2; any other exception is a bug and keeps its traceback. The flat
command names of earlier releases still work, with a warning naming the new command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from .._deprecation import warn_moved
from ..errors import UsageError
from . import detect, latency, model, sparse, train, viz
from .common import CommandError

GROUPS = (model, train, latency, sparse, detect, viz)

# Command names of earlier releases and the commands they are now.
ALIASES: dict[str, tuple[str, ...]] = {
    "models": ("model", "list"),
    "macs": ("model", "macs"),
    "search-granularity": ("latency", "search"),
    "latency-plot": ("latency", "plot"),
    "calibrate": ("latency", "calibrate"),
    "validate-latency": ("latency", "validate"),
    "suggest": ("latency", "suggest"),
    "bench-sparse": ("sparse", "bench"),
    "show-masks": ("viz", "masks"),
}
LATENCY_COMMANDS = ("predict", "search", "plot", "calibrate", "validate", "suggest")

__all__ = ["ALIASES", "CommandError", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (exit code 2), like every other user error."""

    def error(self, message: str) -> None:
        raise CommandError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="laudnet",
        description="Latency-aware dynamic networks: models, training, latency prediction, sparse inference.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(subparsers)
    return parser


def resolve_aliases(argv: list[str]) -> list[str]:
    """``argv`` with an earlier release's command name replaced by today's (with a warning)."""
    position = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), None)
    if position is None:
        return argv
    name = argv[position]
    if name in ALIASES:
        new = ALIASES[name]
    elif name == "latency" and position + 1 < len(argv) and argv[position + 1] not in LATENCY_COMMANDS \
            and not argv[position + 1].startswith("-"):
        new = ("latency", "predict")  # `laudnet latency MODEL ...` predicted before the group existed
    else:
        return argv
    warn_moved(f"`laudnet {name}`", f"`laudnet {' '.join(new)}`")
    return argv[:position] + list(new) + argv[position + 1:]


def main(argv: Sequence[str] | None = None) -> int:
    args_list = resolve_aliases(list(sys.argv[1:] if argv is None else argv))
    try:
        args = build_parser().parse_args(args_list)
    except CommandError as error:
        print(f"laudnet: error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    command = " ".join(filter(None, (args.command, getattr(args, "subcommand", None))))
    try:
        return int(args.func(args) or 0)
    except UsageError as error:
        if args.verbose:
            logging.getLogger(__name__).debug("where the error was raised:", exc_info=True)
        print(f"laudnet {command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"laudnet {command}: interrupted", file=sys.stderr)
        return 130
