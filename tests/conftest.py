"""pytest fixtures: a seeded generator and one shared, trained run."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors. It must be chosen before
# triton is first imported (by any test module, or by torch itself), so it is chosen here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
