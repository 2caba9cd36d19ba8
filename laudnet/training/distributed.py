"""Process-group set-up for one CPU, one GPU, or many processes started by ``torchrun``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UsageError


@dataclass(frozen=True)
class DistEnv:
    """Where this process runs and which part of the work it does."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` means this process's local GPU; ``cuda:N``, ``cpu``."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cpu":
        return torch.device("cpu")
    if preference != "cuda" and not (preference.startswith("cuda:") and preference[5:].isdigit()):
        raise UsageError(f"device must be auto, cpu, cuda or cuda:N, got {preference!r}")
    if not torch.cuda.is_available():
        raise UsageError(f"device {preference!r} was requested but no CUDA device is available; use --device cpu")
    return torch.device(preference if ":" in preference else f"cuda:{local_rank}")


def init_distributed(device_preference: str = "auto") -> DistEnv:
    """Join the process group ``torchrun`` describes in the environment, or run alone.

    Uses NCCL for CUDA and gloo for CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, world_size, local_rank, device)


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum ``tensor`` over processes (a no-op when alone). Returns the reduced tensor."""
    if not env.distributed:
        return tensor
    backend_device = env.device if env.device.type == "cuda" else torch.device("cpu")
    reduced = tensor.to(backend_device).clone()
    dist.all_reduce(reduced)
    return reduced.to(tensor.device)


def shutdown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
