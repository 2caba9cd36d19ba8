"""``laudnet detect train | eval | predict``."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
from PIL import Image

from ..io import load_checkpoint
from ..reporting import dumps, format_table
from ..train.config import add_config_arguments, config_from_checkpoint, load_config, overrides_from_args
from ..train.distributed import init_distributed, shutdown
from ..train.engine import STAGE_HEADERS, summary_stage_rows
from ..train.runner import ShardSampler, make_loader
from .config import DetectionConfig
from .data import collate
from .engine import detection_split, detector_from_checkpoint, stage_table, train_detector
from .evaluation import CocoMetrics, DetectionEvalResult, evaluate_detector
from .predict import predict, save_prediction
from ..errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    detect = subparsers.add_parser("detect", help="object detection / instance segmentation with LAUD backbones")
    commands = detect.add_subparsers(dest="detect_command", metavar="COMMAND", required=True)

    p = commands.add_parser("train", help="train RetinaNet / Faster R-CNN / Mask R-CNN to a backbone MACs target")
    p.add_argument("--config", default=None, help="YAML config (see configs/detection/); options below override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last.pth")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(p, DetectionConfig)
    p.set_defaults(func=_cmd_train)

    p = commands.add_parser("eval", help="COCO bbox / segm mAP, MACs ratio and densities of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="a laudnet detection checkpoint (last.pth / best.pth)")
    p.add_argument("--data", default=None, help="'synthetic' or a COCO root (default: the training data)")
    p.add_argument("--annotations", default=None, help="validation annotation file, relative to --data or absolute")
    p.add_argument("--images", default=None, help="validation image folder, relative to --data or absolute")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the training batch size)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_eval)

    p = commands.add_parser("predict", help="draw a checkpoint's detections on an image")
    p.add_argument("image", help="an image file")
    p.add_argument("--checkpoint", required=True, help="a laudnet detection checkpoint")
    p.add_argument("-o", "--output", default="detections.png", help="PNG to write")
    p.add_argument("--score", type=float, default=0.5, help="draw detections scoring at least this")
    p.add_argument("--show-masks", action="store_true", help="add the backbone's spatial masks, one panel per stage")
    p.set_defaults(func=_cmd_predict)


def _metrics_line(name: str, m: CocoMetrics) -> str:
    return f"{name} mAP {m.ap:.4f}  AP50 {m.ap50:.4f}  AP75 {m.ap75:.4f}  APs {m.ap_small:.4f}  " \
           f"APm {m.ap_medium:.4f}  APl {m.ap_large:.4f}"


def _print_result(result: DetectionEvalResult, target: float | None = None) -> None:
    print(_metrics_line("bbox", result.bbox))
    if result.segm is not None:
        print(_metrics_line("segm", result.segm))
    aim = f" (target {target:.2f})" if target is not None else ""
    print(f"backbone MACs ratio {result.macs_ratio:.3f}{aim}  ({result.images} images, {result.detections} detections)")
    print(stage_table(result))


def _cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config, overrides_from_args(args), DetectionConfig)
    summary = train_detector(config, resume=args.resume, progress=not args.no_progress)
    print(_metrics_line("bbox", CocoMetrics(**summary["bbox"])))
    if summary["segm"] is not None:
        print(_metrics_line("segm", CocoMetrics(**summary["segm"])))
    print(f"backbone MACs ratio {summary['macs_ratio']:.3f} (target {summary['target']:.2f})")
    print(format_table(STAGE_HEADERS, summary_stage_rows(summary["stages"])))
    print(f"outputs in {config.output}/ (summary.json, last.pth, best.pth, metrics.csv)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint)
    config = config_from_checkpoint(checkpoint, DetectionConfig, data=args.data, batch_size=args.batch_size,
                                    val_annotations=args.annotations, val_images=args.images)
    model = detector_from_checkpoint(checkpoint, source=args.checkpoint)
    env = init_distributed(args.device)
    try:
        val = detection_split(config, "val")
        loader = make_loader(val, max(config.batch_size // env.world_size, 1), ShardSampler(len(val), env),
                             args.workers, env.device, drop_last=False, collate_fn=collate)
        result = evaluate_detector(model.to(env.device), loader, val.coco(), val.category_ids, env,
                                   progress=not args.json)
    finally:
        shutdown(env)
    if args.json:
        print(dumps({**dataclasses.asdict(result), "target": config.target}))
        return 0
    print(f"{args.checkpoint}:")
    _print_result(result, config.target)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    if not 0.0 <= args.score <= 1.0:
        raise UsageError(f"--score must be in [0, 1], got {args.score}")
    checkpoint = load_checkpoint(args.checkpoint)
    model = detector_from_checkpoint(checkpoint, source=args.checkpoint)
    try:
        with Image.open(args.image) as file:
            array = np.array(file.convert("RGB"))
    except OSError as error:
        raise UsageError(f"cannot read image {args.image}: {error}") from None
    prediction = predict(model, torch.from_numpy(array).permute(2, 0, 1).float().div(255))
    if args.show_masks and not prediction.backbone_masks:
        raise UsageError(f"{args.checkpoint} has no spatial or layer dynamics to show")
    drawn = save_prediction(args.output, array, prediction, list(checkpoint.get("classes") or []), args.score,
                            args.show_masks)
    print(f"wrote {args.output}: {drawn} detections with score >= {args.score:.2f}, "
          f"backbone MACs ratio {prediction.macs_ratio:.3f}")
    return 0
