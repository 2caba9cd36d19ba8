"""Detectors on the sparse engine against the same detectors on the fastest static backbone runtime.

For each detector kind and batch size, one run times the static ResNet-50 stages (torchvision's,
with the detector's backbone weights) in eager PyTorch, ONNX Runtime and OpenVINO on the padded
batch, and the engine's backbone (ONNX Runtime) in layer, channel (G = 1) and spatial (S = 4-4-2-1)
mode at gate density 0.5; then the whole detectors: the static one with the fastest static
backbone runtime in place of its backbone, and the three on the engine (FPN and heads eager in
all). Sequential blocks, fastest call (``laudnet.timing``); ONNX Runtime's thread pool does not spin.
Images are random, 800×1216 (COCO's resized size: no resize, no padding); masks are the maskers'
decisions with biases set by ``laudnet.sparse.set_gate_density`` on 4 random images. The heads are
untrained, so what they detect (and the post-processing time) varies with the features: the
whole-detector difference carries that noise beside the backbone's saving.

Goals (detection issue): backbone latency ÷ static backbone ≤ 1.3 × MACs ratio (efficiency ≤ 1.3),
and the whole detector saves ≥ 70% of ``(1 − MACs ratio) × static backbone time``.

    python benchmarks/detection_speed.py                                  # both detectors, batch 1 and 2
    python benchmarks/detection_speed.py --detectors retinanet --batches 1 --input 512x768
"""

from __future__ import annotations

import argparse
import sys
import warnings

import torch

from laudnet.detection import build_detector, laud_backbone
from laudnet.detection.benchmark import compare_detectors_latency
from laudnet.models.structure import parse_input_size
from laudnet.reporting import dumps, format_table
from laudnet.sparse import set_gate_density

MODES = {"layer": {"mode": "layer"}, "channel G=1": {"mode": "channel", "channel_granularity": 1},
         "spatial S=4-4-2-1": {"mode": "spatial", "spatial_granularity": "4-4-2-1"}}
RUNTIMES = ("eager", "onnxruntime", "openvino")
GOAL_EFFICIENCY, GOAL_SAVED = 1.3, 0.70
CALIBRATION_IMAGES = 4  # gate biases are set on these (a layer gate decides once per image)


def build(kind: str, kwargs: dict, density: float, images: list[torch.Tensor]) -> torch.nn.Module:
    torch.manual_seed(0)  # the same backbone and head weights in every mode
    hw = images[0].shape[-2:]  # torchvision's resize leaves images of this size as they are
    detector = build_detector(kind, min_size=min(hw), max_size=max(hw), **kwargs).eval()
    set_gate_density(laud_backbone(detector).body, density, detector.transform(images)[0].tensors)
    return detector


def measure(kind: str, batch: int, hw: tuple[int, int], density: float, blocks: int, calls: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.rand(3, *hw, generator=generator) for _ in range(max(batch, CALIBRATION_IMAGES))]
    images = calibration[:batch]
    detectors = {label: build(kind, kwargs, density, calibration) for label, kwargs in MODES.items()}
    results = compare_detectors_latency(detectors, images, runtimes=RUNTIMES, backbone_timing=(blocks, calls),
                                        detector_timing=(blocks, calls))
    rows = []
    for label, r in results.items():
        efficiency, saved = r.backbone_efficiency(), r.ideal_saved()
        rows.append({
            "detector": kind, "batch": batch, "mode": label, "density": density, "input_hw": r.input_hw,
            "threads": r.threads, "macs_ratio": r.macs_ratio, "backbone_static": r.backbone_static,
            "best_static": r.best_static, "backbone_static_ms": r.backbone_static_ms,
            "backbone_engine_ms": r.backbone_engine["onnxruntime"], "backbone_efficiency": efficiency,
            "static_ms": r.detector_static, "engine_ms": r.detector_engine["onnxruntime"], "ideal_saved": saved,
            "meets": efficiency <= GOAL_EFFICIENCY and saved >= GOAL_SAVED,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--detectors", nargs="+", default=["faster_rcnn", "retinanet"],
                        choices=["retinanet", "faster_rcnn", "mask_rcnn"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--input", default="800x1216", help="image size HxW (before the detector's resize)")
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")  # torch's ONNX exporter announces its deprecation on every export
    if args.threads:
        torch.set_num_threads(args.threads)
    hw = parse_input_size(args.input)
    rows = []
    for kind in args.detectors:
        for batch in args.batches:
            print(f"... {kind}, batch {batch}", file=sys.stderr, flush=True)
            rows += measure(kind, batch, hw, args.density, args.blocks, args.calls)
    if args.json:
        print(dumps(rows))
        return 0
    first = rows[0]
    print(f"threads {first['threads']}, padded batch {first['input_hw'][0]}x{first['input_hw'][1]}, gate density "
          f"{args.density:g}, static backbone: torchvision resnet50 in {', '.join(RUNTIMES)} (fastest per group shown)")
    table = [[r["detector"], r["batch"], r["mode"], r["macs_ratio"], f"{r['best_static']} {r['backbone_static_ms']:.0f}",
              r["backbone_engine_ms"], r["backbone_engine_ms"] / r["backbone_static_ms"], r["backbone_efficiency"],
              r["static_ms"], r["engine_ms"], f"{r['ideal_saved']:.0%}", "yes" if r["meets"] else "no"]
             for r in rows]
    print(format_table(["detector", "batch", "backbone mode", "MACs ratio", "static backbone ms", "engine ms",
                        "latency ratio", f"efficiency (goal <= {GOAL_EFFICIENCY})", "detector static ms",
                        "detector engine ms", f"of ideal saved (goal >= {GOAL_SAVED:.0%})", "meets"], table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
