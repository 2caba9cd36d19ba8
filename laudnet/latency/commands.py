"""``laudnet latency``, ``laudnet search-granularity`` and ``laudnet latency-plot``."""

from __future__ import annotations

import argparse
import io

from ..dynamic.spec import MODES
from ..io import atomic_open
from ..models.commands import add_spec_arguments
from ..reporting import dumps, format_table
from .hardware import list_presets
from .model import LatencyReport, predict
from .search import GranularityResult, search_granularity

PLOT_MODES: tuple[str, ...] = ("spatial", "channel", "layer", "both")


def register(subparsers: argparse._SubParsersAction) -> None:
    hardware_help = f"preset ({', '.join(list_presets())}) or path to a YAML spec (default: v100)"

    parser = subparsers.add_parser(
        "latency",
        help="predict a model's latency on a device",
        description="Predict the latency of a (dynamic) model from the analytical hardware model.",
    )
    _add_common(parser, hardware_help)
    add_spec_arguments(parser, default_mode=None)
    parser.set_defaults(spatial_granularity=None)  # unset: take S from --stats or the model
    densities = parser.add_mutually_exclusive_group()
    densities.add_argument("--density", type=float, help="fraction of every gate that is active, in [0, 1]")
    densities.add_argument("--stats", help="summary.json of a run: per-block densities (and its spec)")
    parser.add_argument(
        "--reference-compatible", action="store_true",
        help="residual total as the paper's script: leave out stride-1 projection shortcuts",
    )
    parser.add_argument("--per-block", action="store_true", help="print every block, not only stages")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run_latency)

    parser = subparsers.add_parser(
        "search-granularity",
        help="choose per stage the granularity with the lowest predicted latency",
        description="Search the spatial (S) or channel (G) granularity of each stage by predicted latency.",
    )
    _add_common(parser, hardware_help)
    parser.add_argument("--mode", required=True, help=f"one mode or one per stage ({', '.join(MODES)})")
    densities = parser.add_mutually_exclusive_group(required=True)
    densities.add_argument("--density", type=float, help="fraction of every gate that is active, in [0, 1]")
    densities.add_argument("--stats", help="summary.json of a run: per-block densities")
    parser.add_argument("--reference-compatible", action="store_true", help="leave out stride-1 projections")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run_search)

    parser = subparsers.add_parser(
        "latency-plot",
        help="plot predicted latency against density for each mode",
        description="Draw whole-model latency against density for each dynamic mode, with the static line.",
    )
    _add_common(parser, hardware_help)
    parser.add_argument("-o", "--output", required=True, help="PNG file to write")
    parser.add_argument(
        "--modes", default="-".join(PLOT_MODES), help=f"dash-separated modes to draw (default: {'-'.join(PLOT_MODES)})"
    )
    parser.add_argument("--spatial-granularity", "-S", default="1", metavar="S", help="S of spatial modes (default 1)")
    parser.add_argument(
        "--channel-granularity", "-G", default=None, metavar="G", help="G of channel modes (default: the model's)"
    )
    parser.add_argument("--points", type=int, default=11, help="densities from 0 to 1 (default 11)")
    parser.set_defaults(func=run_plot)


def _add_common(parser: argparse.ArgumentParser, hardware_help: str) -> None:
    parser.add_argument("model", help="model name, e.g. laud_resnet50")
    parser.add_argument("--hardware", default="v100", help=hardware_help)
    parser.add_argument("--batch", type=int, help="batch size (default: the hardware's)")
    parser.add_argument("--input", default="224", help="input size, N or HxW (default 224)")


def run_latency(args: argparse.Namespace) -> int:
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


def run_search(args: argparse.Namespace) -> int:
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


def run_plot(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    modes = [m for m in args.modes.split("-") if m]
    unknown = [m for m in modes if m not in MODES or m == "static"]
    if unknown or not modes:
        raise ValueError(f"--modes: expected dynamic modes among {', '.join(PLOT_MODES)}, got {args.modes!r}")
    if args.points < 2:
        raise ValueError(f"--points must be at least 2, got {args.points}")
    common = dict(batch=args.batch, input_size=args.input)
    static = predict(args.model, args.hardware, mode="static", **common)
    densities = [i / (args.points - 1) for i in range(args.points)]
    figure, axes = plt.subplots(figsize=(6, 4))
    for mode in modes:
        reports = [
            predict(
                args.model, args.hardware, mode=mode, density=d, spatial_granularity=args.spatial_granularity,
                channel_granularity=args.channel_granularity, **common,
            )
            for d in densities
        ]
        label = reports[0].spec.describe().split(" ", 1)[-1] if mode != "layer" else ""
        axes.plot(densities, [r.model_ms for r in reports], marker="o", markersize=3, label=f"{mode} {label}".strip())
    axes.axhline(static.model_ms, color="black", linestyle="--", label="static")
    axes.set_xlabel("density")
    axes.set_ylabel(f"latency (ms per batch of {static.batch})")
    axes.set_title(f"{static.model} on {static.hardware}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    with atomic_open(args.output, "wb") as handle:
        handle.write(buffer.getvalue())
    print(f"wrote {args.output}")
    return 0
