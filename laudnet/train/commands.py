"""``laudnet train`` and ``laudnet eval``."""

from __future__ import annotations

import argparse

from ..io import load_checkpoint
from ..models import model_from_checkpoint
from ..reporting import dumps, format_table
from .config import add_config_arguments, config_from_checkpoint, load_config, overrides_from_args
from .distributed import init_distributed, shutdown
from .data import build_datasets
from .engine import STAGE_HEADERS, evaluate, stage_rows, summary_stage_rows, train
from .runner import ShardSampler, make_loader


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="fine-tune a LAUD model to a MACs target (torchrun for many processes)")
    p.add_argument("--config", default=None, help="YAML config (see configs/); options below override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last.pth")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(p)
    p.set_defaults(func=_cmd_train)

    p = subparsers.add_parser("eval", help="accuracy, MACs ratio and per-block densities of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="a laudnet checkpoint (last.pth / best.pth)")
    p.add_argument("--data", default=None, help="'synthetic' or an ImageNet-layout folder (default: the training data)")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the training batch size)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_eval)


def _cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config, overrides_from_args(args))
    summary = train(config, resume=args.resume, progress=not args.no_progress)
    print(f"top-1 {summary['top1']:.4f}  top-5 {summary['top5']:.4f}  "
          f"MACs ratio {summary['macs_ratio']:.3f} (target {summary['target']:.2f})")
    print(format_table(STAGE_HEADERS, summary_stage_rows(summary["stages"])))
    print(f"outputs in {config.output}/ (summary.json, last.pth, best.pth, metrics.csv)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    config = config_from_checkpoint(load_checkpoint(args.checkpoint), data=args.data, batch_size=args.batch_size)
    model = model_from_checkpoint(args.checkpoint)
    env = init_distributed(args.device)
    try:
        data = build_datasets(config)
        loader = make_loader(data.val, config.batch_size // env.world_size, ShardSampler(len(data.val), env),
                         args.workers, env.device, drop_last=False)
        result = evaluate(model.to(env.device), loader, env, progress=not args.json)
    finally:
        shutdown(env)
    if args.json:
        print(dumps(result))
        return 0
    print(f"{args.checkpoint}: top-1 {result.top1:.4f}  top-5 {result.top5:.4f}  loss {result.loss:.4f}  "
          f"MACs ratio {result.macs_ratio:.3f}  ({result.count} images)")
    print(format_table(STAGE_HEADERS, stage_rows(result.blocks)))
    return 0
