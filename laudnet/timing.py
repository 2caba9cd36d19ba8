"""How laudnet times code: one call, and candidates side by side in sequential blocks.

Interference on a shared machine only adds time, so a candidate's latency is its fastest call.
Candidates are timed in blocks — several consecutive calls of one candidate, then the next —
repeated round-robin, so a slow phase of the machine slows every candidate alike and one
candidate's thread pools (ONNX Runtime's and OpenVINO's keep spinning after a call) never run
during another's calls.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from .errors import UsageError


def time_call_ms(fn: Callable[[], object], device: str | torch.device = "cpu") -> float:
    """Milliseconds of one call of ``fn``; on CUDA, from an idle device to the end of its work."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000.0


def fastest(values: Sequence[float]) -> float:
    """The time the device needs when nothing interferes: the minimum over calls.

    On the 2-core VM laudnet is developed on, consecutive calls of one model vary by ±15% in
    phases lasting several calls, so medians of separate runs differed by up to 25% while their
    minima agreed within a few percent.
    """
    return min(values)


def fastest_in_blocks(
    functions: dict[str, Callable[[], object]], *, blocks: int = 3, calls: int = 5, warmup: int = 2,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """The fastest call (ms) of each function, timed in ``blocks`` rounds of ``calls`` consecutive calls.

    Each block starts with ``warmup`` untimed calls. On a CUDA ``device`` every call is
    synchronised, so the time is the kernels', not the launch's.
    """
    if blocks < 1 or calls < 1 or warmup < 0:
        raise UsageError(f"blocks and calls must be >= 1 and warmup >= 0, got {blocks}, {calls}, {warmup}")
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(blocks):
        for name, fn in functions.items():
            for _ in range(warmup):
                fn()
            samples[name].extend(time_call_ms(fn, device) for _ in range(calls))
    return {name: fastest(values) for name, values in samples.items()}
