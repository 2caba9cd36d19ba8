"""What several commands share: model-spec options, value checks, progress bars."""

from __future__ import annotations

import argparse
import os
from typing import Callable

import torch

from ..errors import UsageError


class CommandError(UsageError):
    """A combination of options that makes no sense; the CLI prints the message and exits with code 2."""


def add_spec_arguments(parser: argparse.ArgumentParser, default_mode: str | None = "static") -> None:
    """``--mode``, ``--spatial-granularity`` and ``--channel-granularity`` (one value or one per stage)."""
    parser.add_argument("--mode", default=default_mode,
                        help="static | spatial | channel | layer | both, or one per stage: spatial-spatial-channel-static")
    parser.add_argument("--spatial-granularity", "-S", default="1", metavar="S",
                        help="spatial mask cell size in output pixels: 4, or per stage: 4-4-2-1")
    parser.add_argument("--channel-granularity", "-G", default=None, metavar="G",
                        help="channels per channel-mask group: 2, or per stage: 2-2-2-2 (default: the finest valid)")


def spec_kwargs(args: argparse.Namespace) -> dict:
    """Builder keyword arguments from :func:`add_spec_arguments`'s options."""
    return {
        "mode": args.mode,
        "spatial_granularity": args.spatial_granularity,
        "channel_granularity": args.channel_granularity,
    }


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def set_threads(threads: int | None) -> int:
    """Use ``threads`` torch threads (``None``: leave the default); returns the count in use."""
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# The largest batch of images a benchmark or export builds (values, not bytes): 64 images of 1024x1024.
MAX_IMAGE_VALUES = 64 * 3 * 1024 * 1024


def check_image_size(hw: tuple[int, int], batch: int) -> None:
    """Refuse, before allocating anything, a batch of images too large to handle here."""
    values = batch * 3 * hw[0] * hw[1]
    if values > MAX_IMAGE_VALUES:
        raise CommandError(f"{batch} images of {hw[0]}x{hw[1]} are {values * 4 / 2**30:.1f} GiB of input; the limit is "
                           f"{MAX_IMAGE_VALUES * 4 / 2**30:.2f} GiB (e.g. 64 images of 1024x1024)")


def parse_duration(text: str) -> float:
    """Seconds in ``"300"``, ``"90s"``, ``"5m"`` or ``"1h"``."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    value = text.strip().lower()
    scale = units.get(value[-1:], None)
    number = value[:-1] if scale else value
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        raise CommandError(f"duration: expected seconds or a number with s, m or h (e.g. 5m), got {text!r}") from None
    if seconds <= 0:
        raise CommandError(f"duration must be positive, got {text!r}")
    return seconds


class ProgressBars:
    """tqdm bars for the stages of a long job (``bars(stage, done, total)``), or nothing when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit="step", leave=True)
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def stage(self, name: str) -> Callable[[int, int], None]:
        return lambda done, total: self(name, done, total)


def load_warning(load: tuple[float, ...]) -> str | None:
    """A warning when other processes keep this machine busy (measurements would be slowed)."""
    cores = os.cpu_count() or 1
    if load[0] > 0.3 * cores:
        return (f"warning: load average {load[0]:.2f} on {cores} cores: other processes will slow the measurements "
                "(run on a quiet machine)")
    return None
