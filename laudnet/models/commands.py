"""``laudnet models`` and ``laudnet macs``; also the model arguments other commands share."""

from __future__ import annotations

import argparse

import torch

from ..macs import count_macs
from ..reporting import dumps, format_table, to_jsonable
from .registry import create_model, list_models
from .structure import model_shape, parse_input_size


def add_spec_arguments(parser: argparse.ArgumentParser, default_mode: str | None = "static") -> None:
    """``--mode``, ``--spatial-granularity`` and ``--channel-granularity`` (one value or one per stage)."""
    parser.add_argument("--mode", default=default_mode,
                        help="static | spatial | channel | layer | both, or one per stage: spatial-spatial-channel-static")
    parser.add_argument("--spatial-granularity", "-S", default="1", metavar="S",
                        help="spatial mask cell size in output pixels: 4, or per stage: 4-4-2-1")
    parser.add_argument("--channel-granularity", "-G", default=None, metavar="G",
                        help="channels per channel-mask group: 2, or per stage: 2-2-2-2 (default: the finest valid)")


def spec_kwargs(args: argparse.Namespace) -> dict:
    """Builder keyword arguments from :func:`add_spec_arguments`'s options."""
    return {
        "mode": args.mode,
        "spatial_granularity": args.spatial_granularity,
        "channel_granularity": args.channel_granularity,
    }


def build_meta_model(name: str, **kwargs) -> torch.nn.Module:
    """Build a model on the meta device: structure only, no memory for weights."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list the available models")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_models)

    p = subparsers.add_parser("macs", help="dense and dynamic MACs per stage of a model")
    p.add_argument("model", help="model name (see `laudnet models`)")
    add_spec_arguments(p)
    p.add_argument("--density", type=float, default=None, help="every gate at this density (default: all on)")
    p.add_argument("--input", default="224", help="input size: 224 or HxW such as 427x640")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_macs)


def _cmd_models(args: argparse.Namespace) -> int:
    rows = []
    for name in list_models():
        model = build_meta_model(name)
        params = sum(p.numel() for p in model.parameters())
        rows.append({"name": name, "gmacs_224": model_shape(model, 224).dense_macs / 1e9, "params_m": params / 1e6})
    if args.json:
        print(dumps(rows))
    else:
        print(format_table(["model", "GMACs @224", "params (M)"],
                           [[r["name"], r["gmacs_224"], r["params_m"]] for r in rows]))
    return 0


def _cmd_macs(args: argparse.Namespace) -> int:
    model = build_meta_model(args.model, **spec_kwargs(args))
    report = count_macs(model, parse_input_size(args.input), args.density)
    if args.json:
        print(dumps({**to_jsonable(report), "macs_ratio": report.macs_ratio}))
        return 0
    h, w = report.input_size
    print(f"{report.model}  {report.spec}  input {h}x{w}  density {report.density:g}")
    rows = [
        [f"stage {s.stage + 1}", s.mode, s.blocks, s.dense_macs / 1e9, s.dynamic_macs / 1e9,
         s.dynamic_macs / s.dense_macs if s.dense_macs else 1.0]
        for s in report.stages
    ]
    rows.append(["total", "", "", report.dense_macs / 1e9, report.dynamic_macs / 1e9, report.macs_ratio])
    print(format_table(["", "mode", "blocks", "dense GMACs", "dynamic GMACs", "ratio"], rows))
    return 0
