"""How fast the latency predictor is: ResNet-101 at 224², 4 modes × 5 presets × 3 densities.

The 60 whole-model predictions run twice in one process: cold (empty caches, model walk
included) and warm (every tile search cached). Speed-ups compare CPU time of this
process, which a busy machine disturbs less than wall time. With ``--official DIR`` (the
``DyNetSimulator`` folder of a LeapLabTHU/LAUDNet checkout) the paper's simulator predicts
the same 60 settings side by side, and the table adds the speed-up and the largest
difference between the two predictions of the residual stages.

    .venv/bin/python benchmarks/predictor_speed.py [--official /path/to/DyNetSimulator]
"""

from __future__ import annotations

import argparse
import itertools
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


def laudnet_residuals() -> list[float]:
    """Residual-stage latency (reference-compatible, ms per batch) of every setting."""
    return [
        predict(MODEL, hardware, mode=mode, density=None if mode == "static" else density, channel_granularity=1,
                reference_compatible=True).residual_ms
        for mode, hardware, density in SETTINGS
    ]


def official_residuals(folder: Path) -> list[float]:
    """The same settings through the official simulator's block functions (eval_example.py)."""
    sys.path.insert(0, str(folder))
    import eval_example as official
    from hardware_models.multi_cores import GPGPUDynamicPredictor

    blocks = resolve_shape(MODEL).blocks
    results = []
    for mode, name, density in SETTINGS:
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


if __name__ == "__main__":
    main()
