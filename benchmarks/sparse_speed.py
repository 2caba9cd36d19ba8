"""Sparse engine speed on ResNet-50: engine latency ÷ static torchvision latency, next to the MACs ratio.

Batch 1, 224², fp32, all cores (or --threads). Spatial and channel masks are the model's own
decisions with masker biases set by ``laudnet.sparse.set_gate_density`` on random images
(maskers of the untrained model get random weights first); the density is searched by
bisection until the realised MACs ratio on the timed image is closest to the target. Layer
skipping has one decision per block, too coarse to steer through one image's quantiles, so
the gates of a seeded random order of blocks are forced off one by one until the ratio is
closest to the target. At ratio 1.0 every gate is forced on. Forced or not, the maskers run
and their MACs count. The engine and
torchvision's ResNet-50 in NCHW and channels-last are timed in interleaved rounds after a
warm-up; the table shows medians and the engine ÷ the faster static layout.

    python benchmarks/sparse_speed.py [--repeats 20] [--configs channel:G=16 layer spatial:S=4-4-2-1]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from laudnet import create_model
from laudnet.reporting import dumps, format_table
from laudnet.sparse import set_gate_density, convert
from laudnet.sparse.benchmark import compare_latency

TARGETS = (0.25, 0.5, 0.75, 1.0)
GOALS = {("channel", 0.5): 0.60, ("layer", 0.5): 0.55, ("spatial", 0.5): 0.70}
DEFAULT_CONFIGS = ("channel", "channel:G=32", "layer", "spatial", "spatial:S=4", "spatial:S=7")


def parse_config(config: str) -> tuple[str, dict[str, str]]:
    """``mode[:S=..][:G=..]`` (per-stage values allowed: ``spatial:S=4-4-2-1``) to a mode and builder arguments."""
    mode, *options = config.split(":")
    names = {"S": "spatial_granularity", "G": "channel_granularity"}
    kwargs = {}
    for option in options:
        key, _, value = option.partition("=")
        if key not in names or not value:
            raise ValueError(f"config {config!r}: expected mode[:S=..][:G=..], got option {option!r}")
        kwargs[names[key]] = value
    return mode, kwargs


def macs_ratio(model, images: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(images, return_stats=True).stats.macs_ratio.mean())


def skip_blocks(model, target: float, timed: torch.Tensor, seed: int) -> float:
    """Force off the gates of blocks in a seeded random order until the MACs ratio is closest to ``target``.

    Returns the fraction of blocks left on.
    """
    blocks = [block for _, block in model.named_dynamic_blocks()]
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed)).tolist()
    model.set_forced_gates(True)
    best = (abs(macs_ratio(model, timed) - target), 0)
    for count, index in enumerate(order, start=1):
        blocks[index].masker_spatial.force = False
        ratio = macs_ratio(model, timed)
        best = min(best, (abs(ratio - target), count))
        if ratio < target:
            break
    model.set_forced_gates(True)
    for index in order[: best[1]]:
        blocks[index].masker_spatial.force = False
    return 1.0 - best[1] / len(blocks)


def set_macs_ratio(model, target: float, calibration: torch.Tensor, timed: torch.Tensor, steps: int, seed: int) -> float:
    """Set ``model``'s masks so that the MACs ratio on ``timed`` is closest to ``target``; returns the density."""
    if target >= 1.0:
        model.set_forced_gates(True)
        return 1.0
    if set(model.dynamic_spec.modes) == {"layer"}:
        return skip_blocks(model, target, timed, seed)
    lo, hi, best = 0.0, 1.0, (float("inf"), 0.0)
    for _ in range(steps):
        density = (lo + hi) / 2
        set_gate_density(model, density, calibration)
        ratio = macs_ratio(model, timed)
        best = min(best, (abs(ratio - target), density))
        lo, hi = (density, hi) if ratio < target else (lo, density)
    set_gate_density(model, best[1], calibration)
    return best[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                        help="mode[:S=..][:G=..], S and G one value or one per stage: spatial:S=4-4-2-1")
    parser.add_argument("--targets", nargs="+", type=float, default=list(TARGETS), help="MACs ratios")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (medians)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls of each candidate first")
    parser.add_argument("--steps", type=int, default=8, help="bisection steps for the density")
    parser.add_argument("--calibration-images", type=int, default=8, help="random images the densities are set on")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    calibration = torch.randn(args.calibration_images, 3, 224, 224)
    timed = calibration[:1]
    load_before = os.getloadavg()
    rows = []
    for config in args.configs:
        mode, kwargs = parse_config(config)
        model = create_model("laud_resnet50", mode=mode, **kwargs).eval()
        engine = convert(model)
        for target in args.targets:
            density = set_macs_ratio(model, target, calibration, timed, args.steps, args.seed)
            result = compare_latency(model, timed, engine, args.warmup, args.repeats, measure_masked=False)
            model.set_forced_gates(None)
            rows.append({
                "mode": mode,
                "S": kwargs.get("spatial_granularity", "1") if mode in ("spatial", "both") else "-",
                "G": kwargs.get("channel_granularity", "1") if mode in ("channel", "both") else "-",
                "target": target, "density": density, "macs_ratio": result.macs_ratio,
                "engine_ms": result.engine_ms, "static_ms": result.static_ms, "static_layout": result.static_layout,
                "engine_vs_static": result.engine_vs_static,
                "goal": GOALS.get((mode, target), 1.05 if target >= 1.0 else None),
            })
            print(f"{config} target {target}: {rows[-1]['engine_vs_static']:.3f}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    if args.json:
        print(dumps({"threads": torch.get_num_threads(), "load_before": load_before, "load_after": load_after,
                     "rows": rows}))
        return 0
    print(f"ResNet-50, batch 1, 224x224, fp32, {torch.get_num_threads()} threads, {args.repeats} rounds; "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(format_table(
        ["mode", "S", "G", "target", "MACs ratio", "engine ms", "static ms", "static layout", "engine/static", "goal"],
        [[r["mode"], r["S"], r["G"], r["target"], r["macs_ratio"], r["engine_ms"], r["static_ms"], r["static_layout"],
          r["engine_vs_static"], "" if r["goal"] is None else f"<= {r['goal']:.2f}"] for r in rows],
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
