"""``laudnet detect train | eval | predict``."""

from __future__ import annotations

import argparse

from PIL import Image

from ..detection import (
    CocoMetrics, DetectionConfig, DetectionEvalResult, detector_from_checkpoint, evaluate_checkpoint, image_tensor,
    predict, read_image, save_prediction, train_detector,
)
from ..detection.sparse import convert_detector
from ..errors import UsageError
from ..io import load_checkpoint
from ..reporting import dumps, format_table
from ..training.config import add_config_arguments, overrides_from_args
from ..training.tables import STAGE_HEADERS, stage_rows, summary_stage_rows
from .common import CommandError

# The largest image ``detect predict`` reads: PIL's own limit against decompression bombs (about 9459×9459).
MAX_IMAGE_PIXELS = 89_478_485


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
    p.add_argument("--masked", action="store_true",
                   help="run the masked backbone instead of the sparse engine (the same detections; for comparison)")
    p.set_defaults(func=eval_command)

    p = commands.add_parser("predict", help="draw a checkpoint's detections on an image")
    p.add_argument("image", help="an image file")
    p.add_argument("--checkpoint", required=True, help="a laudnet detection checkpoint")
    p.add_argument("-o", "--output", default="detections.png", help="PNG to write")
    p.add_argument("--score", type=float, default=0.5, help="draw detections scoring at least this")
    p.add_argument("--show-masks", action="store_true", help="add the backbone's spatial masks, one panel per stage")
    p.add_argument("--masked", action="store_true", help="run the masked backbone instead of the sparse engine")
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
                                 progress=not args.json, engine=not args.masked)
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
    lines.append(f"{result.inference_ms:.1f} ms per image, backbone on the {result.runner}")
    lines.append(format_table(STAGE_HEADERS, stage_rows(result.blocks)))
    return "\n".join(lines)


def predict_command(args: argparse.Namespace) -> int:
    if not 0.0 <= args.score <= 1.0:
        raise CommandError(f"--score must be in [0, 1], got {args.score}")
    checkpoint = load_checkpoint(args.checkpoint)
    model = detector_from_checkpoint(checkpoint, source=args.checkpoint)
    if not args.masked:
        try:
            model = convert_detector(model, backend="torch")
        except UsageError as error:
            raise CommandError(f"{error}; pass --masked to run the masked model") from None
    _check_image_size(args.image)
    array = read_image(args.image)
    prediction = predict(model, image_tensor(array))
    if args.show_masks and not prediction.backbone_masks:
        raise CommandError(f"{args.checkpoint} has no spatial or layer dynamics to show")
    drawn = save_prediction(args.output, array, prediction, list(checkpoint.get("classes") or []), args.score,
                            args.show_masks)
    print(f"wrote {args.output}: {drawn} detections with score >= {args.score:.2f}, "
          f"backbone MACs ratio {prediction.macs_ratio:.3f}")
    return 0


def _check_image_size(path: str) -> None:
    """Refuse an image too large to decode, from its header alone (before gigabytes are allocated)."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # read the size of any image; the limit is checked here
    try:
        with Image.open(path) as image:
            width, height = image.size
    except OSError:
        return  # not an image: read_image says so
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    if width * height > MAX_IMAGE_PIXELS:
        raise CommandError(f"{path} is {width}x{height} ({width * height / 1e6:.0f} megapixels); detect predict reads "
                           f"images of at most {MAX_IMAGE_PIXELS / 1e6:.1f} megapixels (about 9459x9459): downscale it")
