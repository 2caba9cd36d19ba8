"""``laudnet model list`` and ``laudnet model macs``."""

from __future__ import annotations

import argparse

from ..macs import CONVENTIONS, count_macs
from ..models.registry import create_meta_model, list_models
from ..models.structure import model_shape, parse_input_size
from ..reporting import dumps, format_table, to_jsonable
from .common import CommandError, add_spec_arguments, spec_kwargs


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("model", help="the available models and their MACs")
    commands = group.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)

    p = commands.add_parser("list", help="list the available models")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=list_command)

    p = commands.add_parser("macs", help="dense and dynamic MACs per stage of a model")
    p.add_argument("model", help="model name (see `laudnet model list`)")
    add_spec_arguments(p)
    p.add_argument("--density", type=float, default=None,
                   help="every gate at this density, in [0, 1] (0: every gate off; default: all on)")
    p.add_argument("--input", default="224", help="input size: 224 or HxW such as 427x640")
    p.add_argument("--convention", choices=CONVENTIONS, default="laudnet",
                   help="laudnet: convs and fully connected layers (torch's flop counter / 2); official: the "
                        "official LAUDNet code's count, as in the paper's tables (pooling, masker pooling, "
                        "conv2 at the kept-channel fraction squared, SE always; G may split RegNet's conv groups)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=macs_command)


def list_command(args: argparse.Namespace) -> int:
    rows = []
    for name in list_models():
        model = create_meta_model(name)
        params = sum(p.numel() for p in model.parameters())
        rows.append({"name": name, "gmacs_224": model_shape(model, 224).dense_macs / 1e9, "params_m": params / 1e6})
    if args.json:
        print(dumps(rows))
    else:
        print(format_table(["model", "GMACs @224", "params (M)"],
                           [[r["name"], r["gmacs_224"], r["params_m"]] for r in rows]))
    return 0


def _check_granularities(args: argparse.Namespace) -> None:
    """Granularities are positive: a dash-led value such as ``-S -2`` is a negative number, not a per-stage list."""
    for flag, value in (("--spatial-granularity/-S", args.spatial_granularity),
                        ("--channel-granularity/-G", args.channel_granularity)):
        if value is not None and "" in str(value).split("-"):
            raise CommandError(f"{flag}: expected a positive integer or four dash-separated ones (4 or 4-4-2-1), "
                               f"got {value!r}")


def macs_command(args: argparse.Namespace) -> int:
    _check_granularities(args)
    # The official code lets RegNet's channel groups split conv groups (its recipe's G=1); so does its convention.
    options = {"split_conv_groups": True} if args.convention == "official" else {}
    model = create_meta_model(args.model, **spec_kwargs(args), **options)
    report = count_macs(model, parse_input_size(args.input), args.density, args.convention)
    if args.json:
        print(dumps({**to_jsonable(report), "macs_ratio": report.macs_ratio}))
        return 0
    h, w = report.input_size
    print(f"{report.model}  {report.spec}  input {h}x{w}  density {report.density:g}  ({report.convention} convention)")
    rows = [
        [f"stage {s.stage + 1}", s.mode, s.blocks, s.dense_macs / 1e9, s.dynamic_macs / 1e9,
         s.dynamic_macs / s.dense_macs if s.dense_macs else 1.0]
        for s in report.stages
    ]
    rows.append(["total", "", "", report.dense_macs / 1e9, report.dynamic_macs / 1e9, report.macs_ratio])
    print(format_table(["", "mode", "blocks", "dense GMACs", "dynamic GMACs", "ratio"], rows))
    return 0
