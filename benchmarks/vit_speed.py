"""LAUD-ViT's sparse engine against the static DeiT in the runtimes people deploy with.

For each batch, the static timm ``deit_small_patch16_224`` (exported with
``torch.onnx.export(..., dynamo=False)``) runs in ONNX Runtime and OpenVINO (f32, latency hint),
and the engine (ONNX Runtime backend) runs token skipping, head skipping and sub-block skipping at
gate density 0.5, and token skipping with every gate on. All of one batch are timed in the same run,
in sequential blocks, fastest call (``laudnet.timing``); ONNX Runtime's thread pool does not spin.
Weights are timm's initialisation (seed 0; latency does not depend on them); masks are the model's
own decisions with masker biases set by ``laudnet.sparse.set_gate_density`` on 8 random
images. The table gives the realised MACs ratio, the engine's latency over the faster static runtime,
and the goal of the ViT issue for token skipping: latency ratio <= 1.3 x MACs ratio.

    python benchmarks/vit_speed.py                      # DeiT-S, batch 1 and 8, all cores
    python benchmarks/vit_speed.py --batches 1 --threads 2 --json
"""

from __future__ import annotations

import argparse
import sys
import warnings

import timm
import torch

from laudnet import create_model
from laudnet.reporting import dumps, format_table
from laudnet.sparse import convert, set_gate_density
from laudnet.sparse.benchmark import fastest_name, named_group, static_functions
from laudnet.timing import fastest_in_blocks

# (label, mode, density)
CONFIGS = (("token", "spatial", 0.5), ("head", "channel", 0.5), ("layer", "layer", 0.5), ("token, all on", "spatial", 1.0))
GOAL = 1.3  # token skipping at density 0.5: latency ratio <= GOAL x MACs ratio


def engine(static: torch.nn.Module, mode: str, density: float, images: torch.Tensor, threads: int):
    """The ONNX Runtime engine of LAUD-DeiT-S in ``mode`` with ``static``'s weights, gates at ``density``."""
    torch.manual_seed(0)
    model = create_model("laud_deit_small", mode=mode).eval()
    model.load_state_dict(static.state_dict(), strict=False)
    set_gate_density(model, density, images)
    return model, convert(model, backend="onnxruntime", threads=threads)


def measure(batch: int, threads: int, blocks: int, calls: int) -> list[dict]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    static = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    images = torch.randn(8, 3, 224, 224)
    timed = images[:batch]
    functions = {f"static/{k}": (lambda fn=fn: fn(timed))
                 for k, fn in static_functions(static, timed, threads, ("onnxruntime", "openvino")).items()}
    ratios = {}
    for label, mode, density in CONFIGS:
        model, sparse = engine(static, mode, density, images, threads)
        sparse(timed)  # builds the session
        functions[f"engine/{label}"] = lambda sparse=sparse: sparse(timed)
        with torch.no_grad():
            ratios[label] = float(model(timed, return_stats=True).stats.macs_ratio.mean())
    times = fastest_in_blocks(functions, blocks=blocks, calls=calls, warmup=2)
    statics = named_group(times, "static")
    best = statics[fastest_name(statics)]
    rows = []
    for label, mode, density in CONFIGS:
        ms = times[f"engine/{label}"]
        rows.append({"config": label, "density": density, "batch": batch, "threads": threads,
                     "macs_ratio": ratios[label], "static_onnxruntime_ms": statics["onnxruntime"],
                     "static_openvino_ms": statics["openvino"], "engine_ms": ms, "vs_best": ms / best,
                     "goal": GOAL * ratios[label] if label == "token" else None})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    for batch in args.batches:
        rows += measure(batch, args.threads, args.blocks, args.calls)
        print(f"measured batch {batch}", file=sys.stderr)
    if args.json:
        print(dumps(rows))
        return 0
    print(f"laud_deit_small 224x224, fp32, {args.threads} threads; ms per batch; engine = ONNX Runtime backend; "
          f"vs best = engine / faster static runtime; goal (token): <= {GOAL} x MACs ratio")
    table = [[r["config"], r["density"], r["batch"], r["macs_ratio"], r["static_onnxruntime_ms"],
              r["static_openvino_ms"], r["engine_ms"], r["vs_best"], "" if r["goal"] is None else
              f"{r['goal']:.3f} {'met' if r['vs_best'] <= r['goal'] else 'MISSED'}"] for r in rows]
    print(format_table(["config", "density", "batch", "MACs ratio", "static ORT ms", "static OV ms", "engine ms",
                        "vs best", "goal"], table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
