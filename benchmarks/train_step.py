"""Training-step time of LAUD models in each mode relative to the static model.

A step is forward (with statistics), cross-entropy + λ·sparsity loss, backward and an SGD
update, on the same batch. Modes are measured round-robin in one process, after warm-up,
and the median per mode is divided by the static model's median.

    python benchmarks/train_step.py [--model laud_resnet50] [--batch 16] [--size 160] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from laudnet import create_model
from laudnet.reporting import format_table
from laudnet.training.losses import sparsity_loss

CONFIGS = [
    ("static", {"mode": "static"}),
    ("spatial S=4-4-2-1", {"mode": "spatial", "spatial_granularity": "4-4-2-1"}),
    ("spatial S=1", {"mode": "spatial", "spatial_granularity": 1}),
    ("channel G=1", {"mode": "channel"}),
    ("layer", {"mode": "layer"}),
    ("both S=4-4-2-1", {"mode": "both", "spatial_granularity": "4-4-2-1"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="laud_resnet50")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--steps", type=int, default=10, help="measured steps per mode")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    setups = []
    for name, kwargs in CONFIGS:
        model = create_model(args.model, **kwargs).to(device).train()
        model.set_temperature(1.0)
        setups.append((name, model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)))

    def step(model, optimizer) -> None:
        out = model(images, return_stats=True)
        loss = F.cross_entropy(out.logits, labels) + 10 * sparsity_loss(out.stats, 0.5, 0.5).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {name: [] for name, _, _ in setups}
    for round_ in range(args.warmup + args.steps):
        for name, model, optimizer in setups:
            start = time.perf_counter()
            step(model, optimizer)
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)

    static = statistics.median(times["static"])
    rows = [[name, statistics.median(t) * 1000, statistics.median(t) / static] for name, t in times.items()]
    print(f"{args.model}, batch {args.batch}, {args.size}x{args.size}, {device}, {torch.get_num_threads()} threads, "
          f"median of {args.steps} steps")
    print(format_table(["mode", "step ms", "÷ static"], rows))


if __name__ == "__main__":
    main()
