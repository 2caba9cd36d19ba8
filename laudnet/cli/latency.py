"""``laudnet latency predict | search | plot | calibrate | validate | suggest``."""

from __future__ import annotations

import argparse
import os
import sys

from ..dynamic.spec import MODES
from ..io import atomic_open, check_writable
from ..latency import LatencyReport, list_presets, predict, save_hardware, search_granularity
from ..latency.design.plot import PLOT_MODES, curves_png, latency_curves
from ..latency.design.search import GranularityResult
from ..latency.design.suggest import measure_suggestion, suggest, write_config
from ..latency.device.calibrate import calibrate
from ..latency.costs import BACKENDS
from ..latency.device.validate import validate, write_report
from ..reporting import dumps, format_table, to_jsonable
from .common import ProgressBars, add_spec_arguments, load_warning, parse_duration, positive_int

HARDWARE_HELP = (f"preset ({', '.join(list_presets())}), a YAML spec or a profile from `laudnet latency calibrate` "
                 "(default: v100)")


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("latency", help="latency prediction, device profiles and design by latency")
    commands = group.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)

    p = commands.add_parser("predict", help="predict a model's latency on a device",
                            description="Predict the latency of a (dynamic) model on a device.")
    _add_model_options(p)
    add_spec_arguments(p, default_mode=None)
    p.set_defaults(spatial_granularity=None)  # unset: take S from --stats or the model
    _add_density_options(p, required=False)
    p.add_argument("--per-block", action="store_true", help="print every block, not only stages")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=predict_command)

    p = commands.add_parser("search", help="choose per stage the granularity with the lowest predicted latency",
                            description="Search the spatial (S) or channel (G) granularity of each stage by predicted "
                                        "latency.")
    _add_model_options(p)
    p.add_argument("--mode", required=True, help=f"one mode or one per stage ({', '.join(MODES)})")
    _add_density_options(p, required=True)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=search_command)

    p = commands.add_parser("plot", help="plot predicted latency against density for each mode",
                            description="Draw whole-model latency against density for each dynamic mode, with the "
                                        "static line.")
    _add_model_options(p)
    p.add_argument("-o", "--output", required=True, help="PNG file to write")
    p.add_argument("--modes", default="-".join(PLOT_MODES),
                   help=f"dash-separated modes to draw (default: {'-'.join(PLOT_MODES)})")
    p.add_argument("--spatial-granularity", "-S", default="1", metavar="S", help="S of spatial modes (default 1)")
    p.add_argument("--channel-granularity", "-G", default=None, metavar="G",
                   help="G of channel modes (default: the model's)")
    p.add_argument("--points", type=int, default=11, help="densities from 0 to 1 (default 11)")
    p.set_defaults(func=plot_command)

    p = commands.add_parser(
        "calibrate", help="benchmark the sparse engine on this device and write a hardware profile",
        description="Micro-benchmark the sparse engine's operators and time blocks where they run on this device, "
                    "at a fixed thread count, then fit the hardware model and a correction per operator kind. "
                    "The profile works as --hardware wherever a preset does. Run it on a quiet machine.")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device to calibrate (default cpu)")
    p.add_argument("-o", "--output", default="my-device.yaml", help="profile to write (default my-device.yaml)")
    p.add_argument("--budget", default="5m", help="time for the measurements, e.g. 300, 90s, 5m (default 5m)")
    p.add_argument("--backend", default=None, choices=BACKENDS,
                   help="engine to price (default: onnxruntime on the cpu, torch on cuda: what convert runs)")
    p.add_argument("--threads", type=positive_int, default=None, help="threads (default: all cores); recorded")
    p.add_argument("--name", default=None, help="name of the profile (default: the processor's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=calibrate_command)

    p = commands.add_parser(
        "validate", help="compare a calibrated profile's predictions with measured engine latency",
        description="Time the sparse engine on configurations the calibration did not see and report predicted "
                    "against measured latency: per-block error distribution, fraction within 10%%, whole-model "
                    "errors, Spearman rank correlation; with -o a JSON report and a scatter plot.")
    p.add_argument("--hardware", required=True, help="a profile written by `laudnet latency calibrate`")
    p.add_argument("-o", "--output", default=None, help="folder for validation.json and validation.png")
    p.add_argument("--repeats", type=positive_int, default=None, help="timed rounds (default: what fits --budget)")
    p.add_argument("--budget", default="4m", help="time for the measurements when --repeats is not given")
    p.add_argument("--per-block", action="store_true", help="print every block")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=validate_command)

    p = commands.add_parser(
        "suggest", help="the mode, granularities and density predicted to meet a latency target, as a training config",
        description="Search the dynamic modes, the per-stage granularity and the gate density whose predicted "
                    "whole-model latency meets --target-ms on --hardware, keep the one computing the most, and "
                    "write it as a training config (laudnet train --config).")
    p.add_argument("model", help="model name, e.g. laud_resnet50")
    p.add_argument("--hardware", required=True, help=HARDWARE_HELP)
    p.add_argument("--target-ms", type=float, required=True, help="latency target, ms per batch")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size (default 1)")
    p.add_argument("--input", type=int, default=224, help="input size N (NxN; default 224)")
    p.add_argument("--modes", default="-".join(PLOT_MODES),
                   help=f"dash-separated modes to try (default {'-'.join(PLOT_MODES)})")
    p.add_argument("-o", "--output", default=None, help="training config to write (default: <model>-<T>ms.yaml)")
    p.add_argument("--measure", action="store_true",
                   help="also time the suggestion with the sparse engine here (a calibrated profile's device)")
    p.add_argument("--json", action="store_true", help="print the suggestion as JSON")
    p.set_defaults(func=suggest_command)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name, e.g. laud_resnet50")
    parser.add_argument("--hardware", default="v100", help=HARDWARE_HELP)
    parser.add_argument("--batch", type=positive_int, help="batch size (default: the hardware's)")
    parser.add_argument("--input", default="224", help="input size, N or HxW (default 224)")


def _add_density_options(parser: argparse.ArgumentParser, required: bool) -> None:
    densities = parser.add_mutually_exclusive_group(required=required)
    densities.add_argument("--density", type=float, help="fraction of every gate that is active, in [0, 1]")
    densities.add_argument("--stats", help="summary.json of a run: per-block densities (and its spec)")
    parser.add_argument("--reference-compatible", action="store_true",
                        help="residual total as the paper's script: leave out stride-1 projection shortcuts")


def predict_command(args: argparse.Namespace) -> int:
    report = predict(
        args.model, args.hardware, mode=args.mode, density=args.density, stats=args.stats,
        spatial_granularity=args.spatial_granularity, channel_granularity=args.channel_granularity,
        batch=args.batch, input_size=args.input, reference_compatible=args.reference_compatible,
    )
    print(dumps(report) if args.json else format_latency(report, per_block=args.per_block))
    return 0


def format_latency(report: LatencyReport, per_block: bool = False) -> str:
    """Per-stage (or per-block) table and totals of a report, for people."""
    title = (
        f"{report.model} on {report.hardware}, batch {report.batch}, "
        f"{report.input_size[0]}x{report.input_size[1]}, {report.spec.describe()}"
    )
    if per_block:
        rows = [
            [b.name, b.stage + 1, b.mode, _density_text(b), b.residual_ms(report.reference_compatible)]
            for b in report.blocks
        ]
        table = format_table(["block", "stage", "mode", "density", "ms/batch"], rows)
    else:
        rows = []
        for i, (spec, ms) in enumerate(zip(report.spec.stages, report.stages_ms)):
            n = sum(1 for b in report.blocks if b.stage == i)
            rows.append([i + 1, spec.mode, spec.spatial_granularity, spec.channel_granularity, n, ms,
                         100 * ms / report.residual_ms if report.residual_ms else 0.0])
        table = format_table(["stage", "mode", "S", "G", "blocks", "ms/batch", "%"], rows)
    residual_label = "residual stages" + (" (reference-compatible)" if report.reference_compatible else "")
    totals = format_table(
        ["total", "ms"],
        [
            ["stem", report.stem_ms],
            [residual_label, report.residual_ms],
            ["head", report.head_ms],
            ["whole model, per batch", report.model_ms],
            ["whole model, per image", report.per_image_ms],
        ],
    )
    return f"{title}\n\n{table}\n\n{totals}"


def _density_text(block) -> str:
    d = block.density
    if block.mode == "channel":
        return f"{d.channel:.3f}"
    if block.mode == "both":
        return f"{d.conv3:.3f} x {d.channel:.3f}"
    if block.mode in ("spatial", "layer"):
        return f"{d.conv3:.3f}"
    return "-"


def search_command(args: argparse.Namespace) -> int:
    result = search_granularity(
        args.model, args.hardware, args.mode, args.density, stats=args.stats, batch=args.batch,
        input_size=args.input, reference_compatible=args.reference_compatible,
    )
    print(dumps(result) if args.json else format_search(result))
    return 0


def format_search(result: GranularityResult) -> str:
    """Per-stage choices against S = G = 1 and static, for people."""
    rows = [
        [c.stage + 1, c.mode, " ".join(_candidate_text(c.mode, s, g) for s, g in c.candidates),
         _candidate_text(c.mode, c.spatial_granularity, c.channel_granularity),
         c.latency_ms, c.baseline_ms, c.static_ms]
        for c in result.stages
    ]
    rows.append(["all", "", "", "", result.latency_ms, result.baseline_ms, result.static_ms])
    table = format_table(["stage", "mode", "candidates", "chosen", "ms/batch", "S=G=1 ms", "static ms"], rows)
    summary = (
        f"chosen: {result.spec.describe()}: {result.latency_ms:.3f} ms per batch, "
        f"{result.baseline_ms / result.latency_ms:.2f}x faster than S=G=1, "
        f"{result.static_ms / result.latency_ms:.2f}x faster than static"
    )
    title = f"{result.model} on {result.hardware}, batch {result.batch} (residual stages)"
    return f"{title}\n\n{table}\n\n{summary}"


def _candidate_text(mode: str, s: int, g: int) -> str:
    if mode == "both":
        return f"{s}/{g}"
    if mode == "channel":
        return str(g)
    return str(s) if mode == "spatial" else "-"


def plot_command(args: argparse.Namespace) -> int:
    curves = latency_curves(args.model, args.hardware, tuple(m for m in args.modes.split("-") if m),
                            points=args.points, spatial_granularity=args.spatial_granularity,
                            channel_granularity=args.channel_granularity, batch=args.batch, input_size=args.input)
    with atomic_open(args.output, "wb") as handle:
        handle.write(curves_png(curves))
    print(f"wrote {args.output}")
    return 0


def calibrate_command(args: argparse.Namespace) -> int:
    budget = parse_duration(args.budget)
    check_writable(args.output)  # before minutes of measurements, not after
    warning = load_warning(os.getloadavg())
    if warning:
        print(warning, file=sys.stderr)
    result = calibrate(args.device, threads=args.threads, budget_s=budget, name=args.name, backend=args.backend,
                       progress=ProgressBars(not args.no_progress))
    save_hardware(result.hardware, args.output, result.record)
    hw = result.hardware
    print(f"{hw.name}: {args.device}, {hw.engine.backend} engine, {hw.engine.threads} threads; fitted {hw.frequency_hz / 1e9:.2f} GHz x "
          f"{hw.n_pes} PEs x {hw.lanes_per_pe:g} lanes, DRAM {hw.dram_bandwidth / 1e9:.1f} GB/s, "
          f"L2 x{hw.l2_bandwidth_ratio:.2f}, launch {hw.launch_time_s * 1e6:.2f} us")
    rows = [[k.kind, k.samples, 100 * k.analytic_error, 100 * k.calibrated_error] for k in result.kinds]
    print(format_table(["operator kind", "benchmarks", "analytic err %", "calibrated err %"], rows, floatfmt=".1f"))
    print(f"blocks where they run: median error {100 * result.block_error:.1f}% over "
          f"{sum(1 for s in result.block_samples if s.label.startswith('block'))} blocks")
    print(f"load average before {result.record['load_before'][0]:.2f}, after {result.record['load_after'][0]:.2f}")
    print(f"wrote {args.output}: use it as --hardware {args.output}")
    return 0


def validate_command(args: argparse.Namespace) -> int:
    bars = ProgressBars(not args.no_progress and not args.json)
    report = validate(args.hardware, repeats=args.repeats, budget_s=parse_duration(args.budget),
                      progress=bars.stage("measurements"))
    written = write_report(report, args.output) if args.output else ()
    if args.json:
        print(dumps(report))
        return 0
    print(f"{report.hardware}: {report.device}, {report.backend} engine, {report.threads} threads, {report.repeats} "
          "rounds; load average "
          f"before {report.load_before[0]:.2f}, after {report.load_after[0]:.2f}")
    if args.per_block:
        print(format_table(["configuration", "block", "predicted ms", "measured ms", "error %"],
                           [[b.config, b.block, b.predicted_ms, b.measured_ms, 100 * b.error] for b in report.blocks]))
        print()
    print(format_table(["configuration", "predicted ms", "measured ms", "error %"],
                       [[m.config, m.predicted_ms, m.measured_ms, 100 * m.error] for m in report.models]))
    q = report.error_quantiles
    print(f"\nblocks: {len(report.blocks)}, within ±10%: {100 * report.within_10:.1f}%, median |error| "
          f"{100 * report.median_abs_error:.1f}%, error quantiles 5/25/50/75/95%: "
          + " / ".join(f"{100 * q[k]:+.1f}%" for k in ("p5", "p25", "p50", "p75", "p95")))
    print(f"Spearman rank correlation (blocks): {report.spearman:.4f}")
    print(f"measurements at the calibration's device speed (a reference workload timed with each); as measured, "
          f"{100 * report.within_10_as_measured:.1f}% of blocks are within ±10%")
    print(f"the device itself: two measurement passes of each block agree within ±10% for "
          f"{100 * report.repeat_within_10:.1f}% of blocks (median difference {100 * report.repeat_median:.1f}%)")
    if report.speed_ratio is not None:
        print(f"device speed: the reference workload takes {report.speed_ratio:.2f}x its time at calibration"
              + ("" if abs(report.speed_ratio - 1) <= 0.05 else
                 " - the device runs at another speed than when calibrated; errors include that drift"))
    for path in written:
        print(f"wrote {path}")
    return 0


def suggest_command(args: argparse.Namespace) -> int:
    modes = tuple(m for m in args.modes.split("-") if m)
    result = suggest(args.model, args.hardware, args.target_ms, batch=args.batch, input_size=args.input, modes=modes)
    output = args.output or f"{args.model}-{args.target_ms:g}ms.yaml"
    write_config(result, output)
    measured = measure_suggestion(result, args.hardware) if args.measure else None
    measured_fields = {} if measured is None else {"measured_ms": measured.measured_ms,
                                                   "predicted_for_measured_masks_ms": measured.predicted_ms}
    if args.json:
        print(dumps({**to_jsonable(result), "config": result.train_config(), "written": output, **measured_fields}))
        return 0
    print(f"{result.model} on {result.hardware}, batch {result.batch}, {result.input_size}x{result.input_size}: "
          f"target {result.target_ms:g} ms (static: {result.static_ms:.2f} ms)")
    rows = [[o.mode, "yes" if o.feasible else "no", o.spec.describe().split(" ", 1)[-1] if o.mode != "layer" else "-",
             o.density, o.predicted_ms, o.macs_ratio] for o in result.options]
    print(format_table(["mode", "meets", "granularity", "density", "predicted ms", "MACs ratio"], rows))
    c = result.choice
    print(f"\nsuggested: {c.spec.describe()}, every gate at density {c.density:.3f}, predicted {c.predicted_ms:.2f} ms, "
          f"MACs ratio {c.macs_ratio:.3f} (the training target)")
    if measured is not None:
        print(f"measured with the engine here: {measured.measured_ms:.2f} ms "
              f"({100 * (measured.measured_ms / result.target_ms - 1):+.1f}% vs the target); for the masks that ran, "
              f"the profile predicts {measured.predicted_ms:.2f} ms")
    print(f"wrote {output}: laudnet train --config {output}")
    return 0
