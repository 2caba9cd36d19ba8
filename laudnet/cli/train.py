"""``laudnet train`` and ``laudnet eval``: image classification."""

from __future__ import annotations

import argparse

from ..classification import TrainConfig, evaluate_checkpoint, train
from ..reporting import dumps, format_table
from ..training.config import add_config_arguments, overrides_from_args
from ..training.tables import STAGE_HEADERS, stage_rows, summary_stage_rows


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="fine-tune a LAUD model to a MACs target (torchrun for many processes)")
    p.add_argument("--config", default=None, help="YAML config (see configs/); options below override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last.pth")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(p, TrainConfig)
    p.set_defaults(func=train_command)

    p = subparsers.add_parser("eval", help="accuracy, MACs ratio and per-block densities of a checkpoint")
    p.add_argument("--checkpoint", required=True,
                   help="a laudnet checkpoint (last.pth / best.pth), or an official LAUDNet one (give --data)")
    p.add_argument("--data", default=None, help="'synthetic' or an ImageNet-layout folder (default: the training data)")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the training batch size)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=eval_command)


def train_command(args: argparse.Namespace) -> int:
    config = TrainConfig.load(args.config, overrides_from_args(args))
    summary = train(config, resume=args.resume, progress=not args.no_progress)
    print(f"top-1 {summary['top1']:.4f}  top-5 {summary['top5']:.4f}  "
          f"MACs ratio {summary['macs_ratio']:.3f} (target {summary['target']:.2f})")
    print(format_table(STAGE_HEADERS, summary_stage_rows(summary["stages"])))
    print(f"outputs in {config.output}/ (summary.json, last.pth, best.pth, metrics.csv)")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    result = evaluate_checkpoint(args.checkpoint, data=args.data, batch_size=args.batch_size, device=args.device,
                                 workers=args.workers, progress=not args.json)
    if args.json:
        print(dumps(result))
        return 0
    print(f"{args.checkpoint}: top-1 {result.top1:.4f}  top-5 {result.top5:.4f}  loss {result.loss:.4f}  "
          f"MACs ratio {result.macs_ratio:.3f}  ({result.count} images)")
    print(format_table(STAGE_HEADERS, stage_rows(result.blocks)))
    return 0
