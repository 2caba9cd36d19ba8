"""``laudnet detect train | eval | predict``."""

from __future__ import annotations

import argparse

from ..detection import (
    CocoMetrics, DetectionConfig, DetectionEvalResult, detector_from_checkpoint, evaluate_checkpoint, image_tensor,
    predict, read_image, save_prediction, train_detector,
)
from ..io import load_checkpoint
from ..reporting import dumps, format_table
from ..training.config import add_config_arguments, overrides_from_args
from ..training.tables import STAGE_HEADERS, stage_rows, summary_stage_rows
from .common import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    detect = subparsers.add_parser("detect", help="object detection / instance segmentation with LAUD backbones")
    commands = detect.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)

    p = commands.add_parser("train", help="train RetinaNet / Faster R-CNN / Mask R-CNN to a backbone MACs target")
    p.add_argument("--config", default=None, help="YAML config (see configs/detection/); options below override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last.pth")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(p, DetectionConfig)
    p.set_defaults(func=train_command)

    p = commands.add_parser("eval", help="COCO bbox / segm mAP, MACs ratio and densities of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="a laudnet detection checkpoint (last.pth / best.pth)")
    p.add_argument("--data", default=None, help="'synthetic' or a COCO root (default: the training data)")
    p.add_argument("--annotations", default=None, help="validation annotation file, relative to --data or absolute")
    p.add_argument("--images", default=None, help="validation image folder, relative to --data or absolute")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the training batch size)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=eval_command)

    p = commands.add_parser("predict", help="draw a checkpoint's detections on an image")
    p.add_argument("image", help="an image file")
    p.add_argument("--checkpoint", required=True, help="a laudnet detection checkpoint")
    p.add_argument("-o", "--output", default="detections.png", help="PNG to write")
    p.add_argument("--score", type=float, default=0.5, help="draw detections scoring at least this")
    p.add_argument("--show-masks", action="store_true", help="add the backbone's spatial masks, one panel per stage")
    p.set_defaults(func=predict_command)


def _metrics_line(name: str, m: CocoMetrics) -> str:
    return f"{name} mAP {m.ap:.4f}  AP50 {m.ap50:.4f}  AP75 {m.ap75:.4f}  APs {m.ap_small:.4f}  " \
           f"APm {m.ap_medium:.4f}  APl {m.ap_large:.4f}"


def train_command(args: argparse.Namespace) -> int:
    config = DetectionConfig.load(args.config, overrides_from_args(args))
    summary = train_detector(config, resume=args.resume, progress=not args.no_progress)
    print(_metrics_line("bbox", CocoMetrics(**summary["bbox"])))
    if summary["segm"] is not None:
        print(_metrics_line("segm", CocoMetrics(**summary["segm"])))
    print(f"backbone MACs ratio {summary['macs_ratio']:.3f} (target {summary['target']:.2f})")
    print(format_table(STAGE_HEADERS, summary_stage_rows(summary["stages"])))
    print(f"outputs in {config.output}/ (summary.json, last.pth, best.pth, metrics.csv)")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    result = evaluate_checkpoint(args.checkpoint, data=args.data, annotations=args.annotations, images=args.images,
                                 batch_size=args.batch_size, device=args.device, workers=args.workers,
                                 progress=not args.json)
    if args.json:
        print(dumps(result))
        return 0
    print(f"{args.checkpoint}:")
    print(_result_text(result))
    return 0


def _result_text(result: DetectionEvalResult) -> str:
    lines = [_metrics_line("bbox", result.bbox)]
    if result.segm is not None:
        lines.append(_metrics_line("segm", result.segm))
    aim = f" (target {result.target:.2f})" if result.target is not None else ""
    lines.append(f"backbone MACs ratio {result.macs_ratio:.3f}{aim}  ({result.images} images, "
                 f"{result.detections} detections)")
    lines.append(format_table(STAGE_HEADERS, stage_rows(result.blocks)))
    return "\n".join(lines)


def predict_command(args: argparse.Namespace) -> int:
    if not 0.0 <= args.score <= 1.0:
        raise CommandError(f"--score must be in [0, 1], got {args.score}")
    checkpoint = load_checkpoint(args.checkpoint)
    model = detector_from_checkpoint(checkpoint, source=args.checkpoint)
    array = read_image(args.image)
    prediction = predict(model, image_tensor(array))
    if args.show_masks and not prediction.backbone_masks:
        raise CommandError(f"{args.checkpoint} has no spatial or layer dynamics to show")
    drawn = save_prediction(args.output, array, prediction, list(checkpoint.get("classes") or []), args.score,
                            args.show_masks)
    print(f"wrote {args.output}: {drawn} detections with score >= {args.score:.2f}, "
          f"backbone MACs ratio {prediction.macs_ratio:.3f}")
    return 0
