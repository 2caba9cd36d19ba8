"""A run's metric records: ``metrics.csv`` (rewritten atomically) and TensorBoard scalars."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..io import write_text


class MetricsLog:
    """Writes the per-epoch history of a run to ``OUTPUT/metrics.csv`` and ``OUTPUT/tensorboard/``."""

    def __init__(self, output: Path) -> None:
        self.output = Path(output)
        self._tensorboard = None

    def write(self, history: list[dict]) -> None:
        """Rewrite the CSV with every record and add the newest record's scalars to TensorBoard."""
        buffer = io.StringIO()
        out = csv.DictWriter(buffer, fieldnames=list(history[0]))
        out.writeheader()
        out.writerows(history)
        write_text(self.output / "metrics.csv", buffer.getvalue())
        writer = self._writer()
        if writer is not None:
            record = history[-1]
            for key, value in record.items():
                if key != "epoch":
                    writer.add_scalar(key, value, record["epoch"])
            writer.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def _writer(self):
        if self._tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional at run time
                return None
            self._tensorboard = SummaryWriter(str(self.output / "tensorboard"))
        return self._tensorboard
