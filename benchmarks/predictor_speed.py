"""How fast the latency predictor is.

1. ResNet-101 at 224², 4 modes × 5 presets × 3 densities: the 60 whole-model predictions run
   twice in one process, cold (empty caches, model walk included) and warm (every tile search
   cached).
2. New settings one after the other, as a user asks them: ResNet-50 on V100, 4 modes × 3
   densities, each prediction timed on its own in a fresh process (the first one pays for
   building the model's structure).

Speed-ups compare CPU time, which a busy machine disturbs less than wall time. With
``--official DIR`` (the ``DyNetSimulator`` folder of a LeapLabTHU/LAUDNet checkout) the paper's
simulator predicts the same settings side by side, and the tables add the speed-up and the
largest difference between the two predictions of the residual stages.

    .venv/bin/python benchmarks/predictor_speed.py [--official /path/to/DyNetSimulator]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

from laudnet.latency import get_hardware, predict, resolve_shape
from laudnet.reporting import format_table

MODEL = "laud_resnet101"
MODES = ("static", "spatial", "channel", "layer")
PRESETS = ("v100", "rtx3090", "rtx3060", "tx2", "nano")
DENSITIES = (0.25, 0.5, 0.75)
SETTINGS = list(itertools.product(MODES, PRESETS, DENSITIES))
NEW_MODEL = "laud_resnet50"
NEW_SETTINGS = list(itertools.product(MODES, ("v100",), DENSITIES))


def laudnet_residuals(model: str = MODEL, settings=SETTINGS) -> list[float]:
    """Residual-stage latency (reference-compatible, ms per batch) of every setting."""
    return [
        predict(model, hardware, mode=mode, density=None if mode == "static" else density, channel_granularity=1,
                reference_compatible=True).residual_ms
        for mode, hardware, density in settings
    ]


def each_prediction_cpu_ms() -> list[float]:
    """CPU milliseconds of each of :data:`NEW_SETTINGS` predicted one after the other, in a fresh process."""
    code = (
        "import time, json, sys; sys.path.insert(0, %r); import predictor_speed as b\n"
        "from laudnet.latency import predict\n"
        "times = []\n"
        "for mode, hw, d in b.NEW_SETTINGS:\n"
        "    t = time.process_time(); b.laudnet_residuals(b.NEW_MODEL, [(mode, hw, d)])\n"
        "    times.append(1e3 * (time.process_time() - t))\n"
        "print(json.dumps(times))\n" % str(Path(__file__).parent)
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def official_residuals(folder: Path, model: str = MODEL, settings=SETTINGS, times: list | None = None) -> list[float]:
    """The same settings through the official simulator's block functions (eval_example.py); each
    setting's CPU milliseconds are appended to ``times``."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    import eval_example as official
    from hardware_models.multi_cores import GPGPUDynamicPredictor

    blocks = resolve_shape(model).blocks
    results = []
    for mode, name, density in settings:
        start = time.process_time()
        hw = get_hardware(name)
        predictor = GPGPUDynamicPredictor(
            hw.n_pes, hw.lanes_per_pe, hw.frequency_hz, hw.dram_bandwidth, latency_mode=hw.latency_mode,
            batch_size=hw.batch_size, l2_speed_frac=hw.l2_bandwidth_ratio,
        )
        seconds = 0.0
        for b in blocks:
            shape = dict(
                c_in=b.in_channels, c_out=b.out_channels, b=b.out_channels // b.width, n_groups=b.groups,
                h=b.in_hw[0], w=b.in_hw[1], stride=b.stride, down=b.stride, is_se=b.se_channels > 0,
            )
            if mode == "static":
                seconds += official.get_static_block_latency(predictor, **shape)
                continue
            dynamic = dict(c_granul_size=1, density_conv1=density, density_conv2=density, density_conv3=density)
            if mode == "spatial":
                seconds += official.get_dynamic_block_latency_spatial(
                    predictor, granul_size=1, c_density=1.0, **dynamic, **shape
                )
            elif mode == "layer":
                seconds += official.get_skipping_block_latency(
                    predictor, granul_size=b.out_hw[0], c_density=1, **dynamic, **shape
                )
            else:
                dense = dict(dynamic, density_conv1=1.0, density_conv2=1.0, density_conv3=1.0)
                seconds += official.get_dynamic_block_latency_channel(
                    predictor, granul_size=1, c_density=density, layer=2, **dense, **shape
                )
        results.append(1e3 * seconds)
        if times is not None:
            times.append(1e3 * (time.process_time() - start))
    return results


def timed(function, *args) -> tuple[float, float, list[float]]:
    """(wall seconds, CPU seconds of this process, result) of ``function(*args)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    values = function(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, help="DyNetSimulator folder of the official LAUDNet code")
    args = parser.parse_args()

    n = len(SETTINGS)
    cold_wall, cold_cpu, ours = timed(laudnet_residuals)
    warm_wall, warm_cpu, again = timed(laudnet_residuals)
    assert again == ours, "predictions changed between passes"
    rows = [
        ["laudnet", "cold", n, cold_wall, cold_cpu, 1e3 * cold_cpu / n],
        ["laudnet", "warm", n, warm_wall, warm_cpu, 1e3 * warm_cpu / n],
    ]
    headers = ["predictor", "pass", "predictions", "wall s", "CPU s", "CPU ms / prediction"]
    if args.official:
        official_wall, official_cpu, theirs = timed(official_residuals, args.official.resolve())
        rows.insert(0, ["official", "one pass", n, official_wall, official_cpu, 1e3 * official_cpu / n])
        for row in rows:
            row.append(official_cpu / row[4])
        headers.append("CPU speed-up")
        worst = max(abs(a / b - 1) for a, b in zip(ours, theirs))
        print(f"largest difference from the official prediction over {n} settings: {100 * worst:.3f}%")
    print(f"{MODEL} 224x224: modes {', '.join(MODES)}; presets {', '.join(PRESETS)}; densities {DENSITIES}")
    print(format_table(headers, rows))

    ours_ms = each_prediction_cpu_ms()
    print(f"\n{NEW_MODEL} 224x224 on v100, each new setting timed alone, one after the other in a fresh process:")
    if args.official:
        theirs_ms: list[float] = []
        official_residuals(args.official.resolve(), NEW_MODEL, NEW_SETTINGS, theirs_ms)
        rows = [[f"{m} {d:g}", o, t_, t_ / o] for (m, _, d), o, t_ in zip(NEW_SETTINGS, ours_ms, theirs_ms)]
        rows.append(["total", sum(ours_ms), sum(theirs_ms), sum(theirs_ms) / sum(ours_ms)])
        print(format_table(["setting", "laudnet CPU ms", "official CPU ms", "speed-up"], rows))
    else:
        print(format_table(["setting", "laudnet CPU ms"],
                           [[f"{m} {d:g}", o] for (m, _, d), o in zip(NEW_SETTINGS, ours_ms)] + [["total", sum(ours_ms)]]))


if __name__ == "__main__":
    main()
