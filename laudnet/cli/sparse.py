"""``laudnet sparse bench`` (the engine's latency beside the static model's) and ``laudnet sparse export`` (ONNX)."""

from __future__ import annotations

import argparse

import torch

from ..detection import DETECTORS, build_detector, detector_from_checkpoint, laud_backbone
from ..detection.benchmark import compare_detector_latency
from ..models import create_model, model_from_checkpoint
from ..models.structure import parse_input_size
from ..reporting import dumps, format_table, to_jsonable
from ..sparse import compare_latency, set_gate_density
from ..sparse.export import export_onnx
from .common import CommandError, add_spec_arguments, check_image_size, positive_int, set_threads, spec_kwargs


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("sparse", help="the sparse inference engine: benchmarks, ONNX export")
    commands = group.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    p = commands.add_parser(
        "bench", help="latency of the sparse engine vs the static network in eager PyTorch, ONNX Runtime and OpenVINO",
        description="Time the sparse engine (ONNX Runtime and torch backends) and the static network (eager PyTorch "
                    "NCHW and channels-last, ONNX Runtime, OpenVINO) side by side in one run (sequential blocks, "
                    "fastest call) on random images, with the MACs ratio the masks realise and the efficiency "
                    "(latency ratio to the fastest static runtime / MACs ratio).",
    )
    p.add_argument("model", nargs="?", help="model name (see `laudnet model list`; with --detector its backbone, "
                                            "laud_resnet50 or laud_resnet101); or give --checkpoint")
    p.add_argument("--checkpoint", default=None, help="a laudnet checkpoint (with --detector: a `laudnet detect train` "
                                                      "checkpoint); its trained maskers decide unless --density")
    p.add_argument("--detector", choices=DETECTORS, default=None,
                   help="time this detector with the LAUD backbone: the backbone and the whole detector, on the engine "
                        "and on the fastest static backbone runtime")
    add_spec_arguments(p, default_mode=None)
    p.add_argument("--density", type=float, default=None,
                   help="set every masker to this density on the random images (default: the model's own gates)")
    p.add_argument("--batch", type=positive_int, default=1, help="images per call (default 1)")
    p.add_argument("--input", default=None, help="input size: 224 or HxW such as 427x640 (default 224; 800x1216 "
                                                 "with --detector, the size COCO images are resized to)")
    p.add_argument("--calibration-images", type=positive_int, default=8, help="random images --density is set on")
    p.add_argument("--masked", action="store_true", help="also time the masked model (eager PyTorch)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each candidate before each block")
    p.add_argument("--calls", type=positive_int, default=5, help="timed calls per block")
    p.add_argument("--blocks", type=positive_int, default=3, help="blocks of each candidate; the fastest call counts")
    p.add_argument("--threads", type=positive_int, default=None, help="threads of every runtime (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random images")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=bench_command)

    p = commands.add_parser(
        "export", help="write a LAUD model as one ONNX file in which the maskers decide and only the selected work runs",
        description="Export a LAUD model (a checkpoint, or a model name with random weights) to ONNX: the graph "
                    "holds the maskers and the data-dependent computation (NonZero, Gather, Gemm, ScatterND, If). "
                    "The file is checked in ONNX Runtime against the masked model before it is written.",
    )
    p.add_argument("model", nargs="?", help="model name (random weights, for trying the format); or give --checkpoint")
    p.add_argument("--checkpoint", default=None, help="a laudnet checkpoint")
    add_spec_arguments(p, default_mode=None)
    p.add_argument("--density", type=float, default=None, help="with a model name: set every masker to this density")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--input", default="224", help="image size the graph takes: 224 or HxW (any size where the mode allows)")
    p.add_argument("--batch", type=positive_int, default=None,
                   help="a fixed batch size (default: any batch where the mode allows, else 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the example images")
    p.set_defaults(func=export_command)


def _build(args: argparse.Namespace) -> torch.nn.Module:
    """The model (or with ``--detector`` the detector) the options describe."""
    detector = getattr(args, "detector", None)
    if (args.model is None) == (args.checkpoint is None):
        raise CommandError("give either a model name or --checkpoint (not both)")
    if args.checkpoint is not None:
        if args.mode is not None:
            raise CommandError("--mode/-S/-G build a new model; a --checkpoint brings its own dynamic spec")
        return detector_from_checkpoint(args.checkpoint) if detector else model_from_checkpoint(args.checkpoint)
    if args.mode is None:
        raise CommandError("--mode is required with a model name: spatial, channel, layer, both or static (or one per stage)")
    if detector:
        return build_detector(detector, args.model, **spec_kwargs(args))
    return create_model(args.model, **spec_kwargs(args))


def export_command(args: argparse.Namespace) -> int:
    model = _build(args).eval()
    h, w = parse_input_size(args.input)
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(max(args.batch or 1, 2), 3, h, w, generator=generator)
    if args.density is not None:
        if args.checkpoint is not None:
            raise CommandError("--density sets the gates of a model built from a name; a --checkpoint keeps its own")
        set_gate_density(model, args.density, images)
    check = export_onnx(model, args.output, images[: args.batch] if args.batch else images, batch=args.batch)
    graph = check.graph_input
    print(f"wrote {args.output}: {model.name} {model.dynamic_spec.describe()}, input {graph}; logits within "
          f"{check.relative_error:.1e} (relative) of the masked model's on the example")
    return 0


def bench_command(args: argparse.Namespace) -> int:
    if args.detector:
        return detector_bench_command(args)
    threads = set_threads(args.threads)
    model = _build(args).eval()
    h, w = parse_input_size(args.input or "224")
    check_image_size((h, w), args.batch)
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(max(args.batch, args.calibration_images), 3, h, w, generator=generator)
    if args.density is not None:
        set_gate_density(model, args.density, images)
    result = compare_latency(model, images[: args.batch], measure_masked=args.masked, warmup=args.warmup,
                             calls=args.calls, blocks=args.blocks)
    spec = model.dynamic_spec.describe()
    summary = {"engine_ms": result.engine["onnxruntime"], "static_ms": result.static_ms,
               "best_static": result.best_static, "engine_vs_static": result.engine_vs_static(),
               "efficiency": result.efficiency()}
    if args.json:
        print(dumps({"model": model.name, "spec": spec, "density": args.density, **to_jsonable(result), **summary}))
        return 0
    density = "the model's own gates" if args.density is None else f"density {args.density:g}"
    print(f"{model.name}  {spec}  input {h}x{w}  batch {args.batch}  {density}  {threads} threads, "
          f"fastest of {result.blocks} blocks of {result.calls} calls")
    rows = _rows("static", result.static, result.static_ms) + _rows("sparse engine", result.engine, result.static_ms)
    if result.masked_ms is not None:
        rows.append(["masked model, eager", result.masked_ms, result.masked_ms / result.static_ms])
    print(format_table(["", "latency ms", f"vs static {result.best_static}"], rows))
    print(f"MACs ratio realised: {result.macs_ratio:.3f}; efficiency (engine/static latency / MACs ratio): "
          f"{result.efficiency():.2f}")
    return 0


def _rows(label: str, latencies: dict[str, float], base: float) -> list[list]:
    """Table rows ``[f"{label}, {name}", ms, ms / base]``, one per timed runtime or backend."""
    return [[f"{label}, {name}", ms, ms / base] for name, ms in latencies.items()]


def detector_bench_command(args: argparse.Namespace) -> int:
    """``laudnet sparse bench --detector KIND``: the backbone and the whole detector, engine against static."""
    if args.masked:
        raise CommandError("--masked times a classifier's masked model; with --detector the masked backbone is not timed")
    threads = set_threads(args.threads)
    h, w = parse_input_size(args.input or "800x1216")
    check_image_size((h, w), args.batch)
    detector = _build(args).eval()
    generator = torch.Generator().manual_seed(args.seed)
    images = [torch.rand(3, h, w, generator=generator) for _ in range(max(args.batch, args.calibration_images))]
    if args.density is not None:
        set_gate_density(laud_backbone(detector).body, args.density, detector.transform(images)[0].tensors)
    result = compare_detector_latency(detector, images[: args.batch], backbone_timing=(args.blocks, args.calls),
                                      detector_timing=(args.blocks, args.calls), warmup=args.warmup)
    summary = {"engine_ms": result.detector_engine["onnxruntime"], "static_ms": result.detector_static,
               "backbone_engine_ms": result.backbone_engine["onnxruntime"],
               "backbone_static_ms": result.backbone_static_ms, "best_static": result.best_static,
               "macs_ratio": result.macs_ratio, "backbone_efficiency": result.backbone_efficiency(),
               "ideal_saved": result.ideal_saved()}
    spec = laud_backbone(detector).body.dynamic_spec.describe()
    if args.json:
        print(dumps({"detector": args.detector, "backbone": result.backbone, "spec": spec, "density": args.density,
                     **to_jsonable(result), **summary}))
        return 0
    density = "the model's own gates" if args.density is None else f"density {args.density:g}"
    print(f"{args.detector} on {result.backbone}  {spec}  padded batch {result.input_hw[0]}x{result.input_hw[1]}  "
          f"batch {result.batch}  {density}  {threads} threads, fastest of {args.blocks} blocks of {args.calls} calls")
    base = result.backbone_static_ms
    rows = _rows("backbone static", result.backbone_static, base)
    rows += _rows("backbone sparse engine", result.backbone_engine, base)
    print(format_table(["", "latency ms", f"vs static {result.best_static}"], rows))
    rows = [[f"detector, backbone static {result.best_static}", result.detector_static, 1.0]]
    rows += [[f"detector, backbone sparse engine {name}", ms, ms / result.detector_static]
             for name, ms in result.detector_engine.items()]
    print(format_table(["", "latency ms", "vs static"], rows))
    print(f"backbone MACs ratio {result.macs_ratio:.3f}; backbone efficiency (latency ratio / MACs ratio) "
          f"{result.backbone_efficiency():.2f}; the detector saves {result.ideal_saved():.0%} of the ideal "
          f"(1 - MACs ratio) x backbone time")
    return 0
