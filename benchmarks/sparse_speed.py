"""Sparse engine speed against the static network in the runtimes people deploy with.

For each model, batch and thread count, the static network runs in eager PyTorch (NCHW and
channels-last), ONNX Runtime and OpenVINO, and the engine (ONNX Runtime backend; the torch backend
at batch 1) runs every configuration: layer skipping, channel (the finest valid G: 1 for
ResNets, the conv group width for RegNetY), spatial (S = 4-4-2-1 and
S = 1), each at gate density 0.5 and with every gate on. All of one group are timed in the same run,
in sequential blocks, fastest call (``laudnet.timing``); ONNX Runtime's thread pool does not spin.
Masks are the model's own decisions with masker biases set by ``laudnet.sparse.set_gate_density``
on 8 random images (untrained maskers get random weights first). The table gives the realised MACs
ratio, the engine's latency over eager PyTorch and over the fastest static runtime, and the
efficiency: latency ratio / MACs ratio (1.0 = time saved in proportion to the work skipped).

    python benchmarks/sparse_speed.py                          # ResNet-50, batch 1 and 8, 1 and 2 threads
    python benchmarks/sparse_speed.py --models laud_resnet101 laud_regnet_y_800mf --batches 1 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import warnings

import torch

from laudnet import create_model
from laudnet.reporting import dumps, format_table
from laudnet.sparse import convert, set_gate_density
from laudnet.sparse.benchmark import fastest_name, named_group, static_reference, static_runners
from laudnet.timing import fastest_in_blocks

CONFIGS = (("layer", {}), ("channel", {"mode": "channel"}),
           ("spatial S=4-4-2-1", {"mode": "spatial", "spatial_granularity": "4-4-2-1"}),
           ("spatial S=1", {"mode": "spatial", "spatial_granularity": 1}))
DENSITIES = (0.5, 1.0)
# Goals of the CPU-kernels issue: efficiency at density 0.5, latency ratio with every gate on.
GOALS = {"layer": 1.2, "channel": 1.3, "spatial": 1.4, "all on": 1.05}


def build(name: str, kwargs: dict, density: float, images: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)  # the same weights in every configuration
    model = create_model(name, **({"mode": "layer"} | kwargs)).eval()
    set_gate_density(model, density, images)
    return model


def measure_group(name: str, batch: int, threads: int, blocks: int, calls: int) -> list[dict]:
    """Every configuration of one model, batch and thread count, timed in one run with the static runtimes."""
    torch.set_num_threads(threads)
    images = torch.randn(max(batch, 8), 3, 224, 224, generator=torch.Generator().manual_seed(0))
    timed = images[:batch]
    models = {(label, d): build(name, kwargs, d, images) for label, kwargs in CONFIGS for d in DENSITIES}
    static, label = static_reference(next(iter(models.values())))
    functions = {f"static/{k}": fn for k, fn in static_runners(static, timed, threads).items()}
    ratios = {}
    for (config, density), model in models.items():
        with torch.no_grad():
            ratios[config, density] = float(model(timed, return_stats=True).stats.macs_ratio.mean())
        for backend in ("onnxruntime",) + (("torch",) if batch == 1 else ()):
            engine = convert(model, backend=backend, threads=threads)
            with torch.no_grad():
                engine(timed)  # builds the ONNX Runtime session for this size
            functions[f"{config}@{density}/{backend}"] = lambda engine=engine: engine(timed)
    with torch.no_grad():
        times = fastest_in_blocks(functions, blocks=blocks, calls=calls, warmup=2)
    statics = named_group(times, "static")
    best = fastest_name(statics)
    rows = []
    for (config, density), ratio in ratios.items():
        engine_ms = times[f"{config}@{density}/onnxruntime"]
        latency = engine_ms / statics[best]
        family = config.split()[0]
        goal = GOALS["all on"] if density == 1.0 else GOALS[family]
        measure = latency if density == 1.0 else latency / ratio
        rows.append({
            "model": name, "batch": batch, "threads": threads, "config": config, "density": density,
            "macs_ratio": ratio, "engine_ms": engine_ms, "torch_engine_ms": times.get(f"{config}@{density}/torch"),
            "static": statics, "best_static": best, "static_model": label,
            "vs_eager": engine_ms / statics["eager"], "vs_best": latency, "efficiency": latency / ratio,
            "goal": goal, "meets": measure <= goal,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["laud_resnet50"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--blocks", type=int, default=3, help="blocks of each candidate")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per block")
    parser.add_argument("--json", action="store_true", help="print every measurement as JSON")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch's legacy ONNX exporter says it is legacy
    rows = []
    for name in args.models:
        for batch in args.batches:
            for threads in args.threads:
                group = measure_group(name, batch, threads, args.blocks, args.calls)
                rows.extend(group)
                print(f"measured {name} batch {batch} threads {threads}", file=sys.stderr)
    if args.json:
        print(dumps(rows))
        return
    table = [[r["model"].removeprefix("laud_"), r["batch"], r["threads"], r["config"], r["density"], r["macs_ratio"],
              r["static"]["eager"], r["static"]["onnxruntime"], r["static"]["openvino"], r["engine_ms"],
              r["torch_engine_ms"] if r["torch_engine_ms"] is not None else float("nan"), r["vs_eager"], r["vs_best"],
              r["efficiency"], r["goal"], "yes" if r["meets"] else "no"] for r in rows]
    print("224x224, fp32; ms per batch; engine = ONNX Runtime backend; vs best = engine / fastest static runtime; "
          "goal: efficiency at density 0.5, latency ratio with every gate on")
    print(format_table(["model", "batch", "thr", "config", "density", "MACs", "eager", "ORT", "OpenVINO", "engine",
                        "torch eng.", "vs eager", "vs best", "efficiency", "goal", "meets"], table, floatfmt=".2f"))


if __name__ == "__main__":
    main()
