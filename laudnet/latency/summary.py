"""Reading the per-block densities a training or evaluation run measured (``summary.json``).

The file holds at least ``blocks``: one entry per residual block with its ``name`` and
``conv1_density``, ``conv2_density``, ``conv3_density``, ``channel_density`` (fractions in
[0, 1]); optionally the ``model`` name, its dynamic ``spec`` and the ``input_size``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from ..dynamic.spec import DynamicSpec
from ..models.structure import ModelShape, parse_input_size
from .interface import BlockDensity
from ..errors import MissingFileError, UsageError

DENSITY_KEYS: dict[str, str] = {
    "conv1": "conv1_density",
    "conv2": "conv2_density",
    "conv3": "conv3_density",
    "channel": "channel_density",
}


@dataclass(frozen=True)
class RunSummary:
    """What the latency predictor uses from a ``summary.json``."""

    path: str
    densities: dict[str, BlockDensity]
    model: str | None = None
    spec: DynamicSpec | None = None
    input_size: tuple[int, int] | None = None


def read_summary(path: Union[str, os.PathLike]) -> RunSummary:
    """Parse and validate ``path``; any problem raises a ``ValueError`` naming the file and entry."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"summary not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"summary {path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise UsageError(f"summary {path}: expected a JSON object, got {type(data).__name__}")
    blocks = data.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        raise UsageError(f"summary {path}: 'blocks' must be a non-empty list of per-block densities")
    densities = {}
    for i, entry in enumerate(blocks):
        name, density = _block_entry(path, i, entry)
        if name in densities:
            raise UsageError(f"summary {path}: block {name!r} appears twice")
        densities[name] = density
    spec = None
    if data.get("spec") is not None:
        if not isinstance(data["spec"], dict):
            raise UsageError(f"summary {path}: 'spec' must be an object with mode and granularities")
        try:
            spec = DynamicSpec.build(**data["spec"])
        except (TypeError, ValueError) as error:
            raise UsageError(f"summary {path}: bad 'spec': {error}") from None
    input_size = parse_input_size(data["input_size"]) if data.get("input_size") is not None else None
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise UsageError(f"summary {path}: 'model' must be a model name, got {model!r}")
    return RunSummary(str(path), densities, model, spec, input_size)


def block_densities(summary: RunSummary, shape: ModelShape) -> tuple[BlockDensity, ...]:
    """The summary's densities in ``shape``'s block order; the block names must match exactly."""
    names = [b.name for b in shape.blocks]
    missing = [n for n in names if n not in summary.densities]
    extra = [n for n in summary.densities if n not in set(names)]
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if extra:
            detail.append(f"unknown {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}")
        raise UsageError(
            f"summary {summary.path}: its {len(summary.densities)} blocks do not match the "
            f"{len(names)} blocks of {shape.name} ({'; '.join(detail)})"
        )
    return tuple(summary.densities[n] for n in names)


def _block_entry(path: Path, index: int, entry: Any) -> tuple[str, BlockDensity]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise UsageError(f"summary {path}: blocks[{index}] must be an object with a 'name'")
    values = {}
    for field_name, key in DENSITY_KEYS.items():
        if key not in entry:
            raise UsageError(f"summary {path}: block {entry['name']!r} lacks {key}")
        values[field_name] = entry[key]
    try:
        return entry["name"], BlockDensity(**values)
    except ValueError as error:
        raise UsageError(f"summary {path}: block {entry['name']!r}: {error}") from None
