"""pytest fixtures: a seeded generator and one shared, trained run."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """Train :data:`helpers.TINY_RUN` once per session; returns ``(output_dir, summary)``."""
    from helpers import TINY_RUN
    from laudnet.classification import train
    from laudnet.classification import TrainConfig

    output = tmp_path_factory.mktemp("trained") / "run"
    summary = train(TrainConfig.from_dict({**TINY_RUN, "output": str(output)}), progress=False)
    return output, summary
