"""The per-stage density table both tasks print after evaluation and store in ``summary.json``."""

from __future__ import annotations

def stage_rows(blocks: list[dict]) -> list[list]:
    """Per-stage means of block densities and MACs ratios, for the table printed after evaluation."""
    rows = []
    for stage in sorted({b["stage"] for b in blocks}):
        members = [b for b in blocks if b["stage"] == stage]
        mean = lambda key: sum(b[key] for b in members) / len(members)  # noqa: E731
        rows.append([f"stage {stage + 1}", len(members), mean("conv1_density"), mean("conv2_density"),
                     mean("conv3_density"), mean("channel_density"), mean("macs_ratio")])
    return rows


STAGE_HEADERS = ["", "blocks", "conv1", "conv2", "conv3", "channels", "MACs ratio"]


def stage_summary(blocks: list[dict]) -> list[dict]:
    """:func:`stage_rows` as records (``stage`` from 0), as ``summary.json`` stores them."""
    keys = ["stage", "blocks", "conv1_density", "conv2_density", "conv3_density", "channel_density", "macs_ratio"]
    return [dict(zip(keys, [i, *row[1:]])) for i, row in enumerate(stage_rows(blocks))]


def summary_stage_rows(stages: list[dict]) -> list[list]:
    """The rows of :data:`STAGE_HEADERS` from :func:`stage_summary`'s records (a run's ``summary.json``)."""
    return [[f"stage {s['stage'] + 1}", s["blocks"], s["conv1_density"], s["conv2_density"], s["conv3_density"],
             s["channel_density"], s["macs_ratio"]] for s in stages]
