"""Per-block and per-model statistics of one dynamic forward pass.

Densities are fractions in [0, 1] per sample (shape ``(B,)``): of conv1 / conv2 / conv3
positions computed, and of bottleneck channels kept. MACs are per image. Tensors keep
their autograd history, so the sparsity loss can be built from them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

DENSITY_FIELDS: tuple[str, ...] = ("conv1_density", "conv2_density", "conv3_density", "channel_density")


@dataclass
class BlockStats:
    """What one residual block computed for each sample of a batch."""

    name: str
    stage: int
    dynamic: bool
    conv1_density: torch.Tensor
    conv2_density: torch.Tensor
    conv3_density: torch.Tensor
    channel_density: torch.Tensor
    dense_macs: int
    dynamic_macs: torch.Tensor
    spatial_mask: torch.Tensor | None = None
    channel_mask: torch.Tensor | None = None

    @property
    def macs_ratio(self) -> torch.Tensor:
        """Dynamic MACs (masker included) over the static block's MACs, per sample."""
        return self.dynamic_macs / self.dense_macs


@dataclass
class ModelStats:
    """Statistics of a whole backbone: its blocks and the total MACs."""

    blocks: list[BlockStats]
    dense_macs: int
    dynamic_macs: torch.Tensor

    @property
    def macs_ratio(self) -> torch.Tensor:
        """Dynamic over static MACs of the whole model, per sample."""
        return self.dynamic_macs / self.dense_macs


@dataclass
class DensityMeter:
    """Accumulates batch statistics over a data set (e.g. an evaluation pass)."""

    count: int = 0
    macs_ratio_sum: float = 0.0
    dynamic_macs_sum: float = 0.0
    dense_macs: int = 0
    blocks: dict[str, dict[str, float]] = field(default_factory=dict)

    def update(self, stats: ModelStats) -> None:
        batch = int(stats.dynamic_macs.shape[0])
        self.count += batch
        self.dense_macs = stats.dense_macs
        self.macs_ratio_sum += float(stats.macs_ratio.detach().sum())
        self.dynamic_macs_sum += float(stats.dynamic_macs.detach().sum())
        for block in stats.blocks:
            entry = self.blocks.setdefault(
                block.name, {"stage": block.stage, **{k: 0.0 for k in DENSITY_FIELDS}, "macs_ratio": 0.0}
            )
            for key in DENSITY_FIELDS:
                entry[key] += float(getattr(block, key).detach().sum())
            entry["macs_ratio"] += float(block.macs_ratio.detach().sum())

    def totals(self) -> torch.Tensor:
        """Sums as one float64 tensor, for all-reducing across processes (see :meth:`load_totals`)."""
        values = [float(self.count), self.macs_ratio_sum, self.dynamic_macs_sum]
        for entry in self.blocks.values():
            values.extend(entry[k] for k in (*DENSITY_FIELDS, "macs_ratio"))
        return torch.tensor(values, dtype=torch.float64)

    def load_totals(self, totals: torch.Tensor) -> None:
        """Replace the sums with reduced ``totals`` laid out as by :meth:`totals`."""
        values = totals.tolist()
        self.count, self.macs_ratio_sum, self.dynamic_macs_sum = int(values[0]), values[1], values[2]
        keys = (*DENSITY_FIELDS, "macs_ratio")
        for i, entry in enumerate(self.blocks.values()):
            for j, key in enumerate(keys):
                entry[key] = values[3 + i * len(keys) + j]

    @property
    def macs_ratio(self) -> float:
        return self.macs_ratio_sum / max(self.count, 1)

    def block_summary(self) -> list[dict]:
        """Mean densities and MACs ratio per block, in model order."""
        n = max(self.count, 1)
        return [
            {"name": name, "stage": int(e["stage"]), **{k: e[k] / n for k in (*DENSITY_FIELDS, "macs_ratio")}}
            for name, e in self.blocks.items()
        ]
