"""GPU speed of the sparse engine on Triton kernels, next to static ResNets and the latency predictor.

One command, under 8 minutes on one GPU (224², random weights):

1. static torchvision ResNet-50 / ResNet-101, channels-last, cuDNN eager in fp32 and fp16, and
   ``torch.compile(mode="max-autotune")`` in fp16 (compiles run while ``--compile-budget`` lasts);
2. the engine (``TritonKernels``, fp16 by default) on LAUD-ResNet-50 per mode — spatial S=4-4-2-1,
   channel, layer — at gate densities 0.25 / 0.5 / 0.75 (``laudnet.sparse.set_gate_density`` on
   16 images), with its latency ratio to the cuDNN fp16 channels-last static model, the realised
   MACs ratio on the timed batch and the efficiency (latency ratio ÷ MACs ratio: 1.0 means latency
   falls exactly with MACs);
3. ``laudnet latency calibrate --device cuda`` and ``laudnet latency validate`` on the profile
   (``--cli-budget`` each), their output printed;
4. ``laudnet latency predict --hardware h100`` for the static models beside the measured latency.

Timing is ``laudnet.timing.fastest_in_blocks`` (every call synchronised); batch 1 and 64.

    python benchmarks/gpu_speed.py [--batches 1 64] [--densities 0.25 0.5 0.75] [--compile-budget 60]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from laudnet import create_model
from laudnet.reporting import format_table
from laudnet.sparse import SparseModel, set_gate_density
from laudnet.sparse.triton import TritonKernels
from laudnet.timing import fastest_in_blocks

STATIC = ("resnet50", "resnet101")
ENGINE_CONFIGS = (("spatial", {"spatial_granularity": "4-4-2-1"}), ("channel", {}), ("layer", {}))
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SIZE = 224


def time_ms(fn: Callable[[], object], blocks: int = 3, calls: int = 5) -> float:
    with torch.no_grad():
        return fastest_in_blocks({"fn": fn}, blocks=blocks, calls=calls, warmup=2, device="cuda")["fn"]


def static_latency(batches: list[int], compile_budget: float) -> dict[tuple[str, str, int], float]:
    """ms of each static model, keyed ``(model, variant, batch)``; variants eager-fp32, eager-fp16, compiled-fp16."""
    results: dict[tuple[str, str, int], float] = {}
    rows = []
    compile_spent = 0.0
    for name in STATIC:
        base = getattr(torchvision.models, name)().eval().cuda()
        for batch in batches:
            x = torch.randn(batch, 3, SIZE, SIZE, device="cuda").contiguous(memory_format=torch.channels_last)
            for label, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
                model, xd = base.to(dtype=dtype, memory_format=torch.channels_last), x.to(dtype)
                results[name, f"eager-{label}", batch] = time_ms(lambda m=model, x=xd: m(x))
        model = base.to(dtype=torch.float16, memory_format=torch.channels_last)
        for batch in sorted(batches, reverse=True):
            if compile_spent >= compile_budget:
                print(f"{name} batch {batch}: torch.compile skipped (--compile-budget {compile_budget:.0f}s spent)",
                      flush=True)
                continue
            x = torch.randn(batch, 3, SIZE, SIZE, device="cuda", dtype=torch.float16).contiguous(
                memory_format=torch.channels_last)
            torch._dynamo.reset()
            compiled = torch.compile(model, mode="max-autotune")
            start = time.perf_counter()
            with torch.no_grad():
                compiled(x)
            torch.cuda.synchronize()
            spent = time.perf_counter() - start
            compile_spent += spent
            results[name, "compiled-fp16", batch] = time_ms(lambda m=compiled, x=x: m(x))
            print(f"{name} batch {batch}: compiled in {spent:.0f}s", flush=True)
        for batch in batches:
            rows.append([name, batch, results[name, "eager-fp32", batch], results[name, "eager-fp16", batch],
                         results.get((name, "compiled-fp16", batch), float("nan"))])
    print("\nStatic models, channels-last, ms per batch "
          f"(cuDNN TF32 convolutions: {torch.backends.cudnn.allow_tf32})")
    print(format_table(["model", "batch", "eager fp32", "eager fp16", "max-autotune fp16"], rows))
    return results


def engine_latency(batches: list[int], densities: list[float], dtypes: list[str],
                   static: dict[tuple[str, str, int], float]) -> None:
    """The engine on LAUD-ResNet-50 per mode, density, batch and dtype, against cuDNN fp16 static."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(max(batches + [16]), 3, SIZE, SIZE, generator=generator).cuda()
    rows = []
    for mode, kwargs in ENGINE_CONFIGS:
        model = create_model("laud_resnet50", mode=mode, **kwargs).eval().cuda()
        engines = {label: SparseModel(model, TritonKernels(DTYPES[label])).eval() for label in dtypes}
        for density in densities:
            set_gate_density(model, density, images[:16])
            for batch in batches:
                x = images[:batch]
                with torch.no_grad():
                    macs = float(model(x, return_stats=True).stats.macs_ratio.mean())
                reference = static["resnet50", "eager-fp16", batch]
                for label, engine in engines.items():
                    ms = time_ms(lambda m=engine, x=x: m(x))
                    ratio = ms / reference
                    rows.append([mode, density, batch, label, macs, ms, reference, ratio, ratio / macs])
                print(f"{mode} density {density} batch {batch}: " + ", ".join(
                    f"{r[3]} {r[5]:.2f} ms" for r in rows[-len(engines):]), flush=True)
    print("\nEngine (Triton) on LAUD-ResNet-50 vs static ResNet-50 cuDNN fp16 channels-last; "
          "efficiency = latency ratio / MACs ratio")
    print(format_table(["mode", "density", "batch", "dtype", "MACs ratio", "engine ms", "static ms", "latency ratio",
                        "efficiency"], rows))


def run_cli(*args: str, echo: bool = True) -> str:
    """A ``laudnet`` command's output (printed as it is with ``echo``; errors always)."""
    command = [sys.executable, "-m", "laudnet", *args]
    print(f"\n$ laudnet {' '.join(args)}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    print((done.stdout if echo else "") + done.stderr, end="", flush=True)
    if done.returncode:
        print(f"(exit status {done.returncode})")
    return done.stdout


def predictor_vs_measured(batches: list[int], static: dict[tuple[str, str, int], float]) -> None:
    rows = []
    for name in STATIC:
        for batch in batches:
            out = run_cli("latency", "predict", f"laud_{name}", "--hardware", "h100", "--batch", str(batch), "--json",
                          echo=False)
            try:
                predicted = float(json.loads(out)["model_ms"])
            except (ValueError, KeyError):
                predicted = float("nan")
            fp32, fp16 = static[name, "eager-fp32", batch], static[name, "eager-fp16", batch]
            rows.append([name, batch, predicted, fp32, predicted / fp32, fp16, predicted / fp16])
    print("\nPredicted (h100 preset) vs measured static latency, ms per batch")
    print(format_table(["model", "batch", "predicted", "eager fp32", "pred/fp32", "eager fp16", "pred/fp16"], rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--densities", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--engine-dtypes", nargs="+", choices=list(DTYPES), default=["fp16"])
    parser.add_argument("--compile-budget", type=float, default=60.0,
                        help="seconds of max-autotune compilation: no compile starts after them (default 60)")
    parser.add_argument("--cli-budget", default="2m", help="--budget of latency calibrate and validate (default 2m)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_speed.py needs a CUDA GPU: torch.cuda.is_available() is False")
    torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {SIZE}x{SIZE}", flush=True)
    static = static_latency(args.batches, args.compile_budget)
    engine_latency(args.batches, args.densities, args.engine_dtypes, static)
    with tempfile.TemporaryDirectory() as folder:
        profile = str(Path(folder) / "gpu.yaml")
        run_cli("latency", "calibrate", "--device", "cuda", "-o", profile, "--budget", args.cli_budget, "--no-progress")
        if Path(profile).exists():
            run_cli("latency", "validate", "--hardware", profile, "--budget", args.cli_budget, "--no-progress")
    predictor_vs_measured(args.batches, static)
    print(f"\ntotal {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
