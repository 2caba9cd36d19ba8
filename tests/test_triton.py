"""The sparse engine on Triton kernels against the masked model.

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, which
``conftest.py`` sets before anything imports triton) on CPU tensors; with one they run compiled on CUDA. Either way the block work
must be Triton launches: no torch product, convolution or activation gather/scatter runs outside
the maskers.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

triton = pytest.importorskip("triton", reason="triton cannot be imported")

from helpers import randomize_, randomize_maskers_

from laudnet import create_model
from laudnet.sparse import SparseModel, convert, set_gate_density
from laudnet.sparse.triton import TritonKernels, ops

INTERPRET = triton.knobs.runtime.interpret
DEVICE = "cpu" if INTERPRET else "cuda"
TINY_RESNET = {"width_multiplier": 0.25, "layers": [1, 1, 1, 1]}
RESNET_SIZE, REGNET_SIZE = (97, 130), (61, 83)

# torch operations that would be block work done without Triton (index_select counts on floats only).
FORBIDDEN = {"addmm", "mm", "bmm", "baddbmm", "matmul", "linear", "convolution", "_convolution",
             "cudnn_convolution", "index_add", "index_add_", "index_copy", "index_copy_", "index_put",
             "index_put_", "scatter", "scatter_add", "gather"}

CASES = [
    ("laud_resnet50", "spatial", {"spatial_granularity": 1}),
    ("laud_resnet50", "spatial", {"spatial_granularity": "4-4-2-1"}),
    ("laud_resnet50", "channel", {"channel_granularity": "4-4-2-2"}),
    ("laud_resnet50", "layer", {}),
    ("laud_resnet50", "both", {"spatial_granularity": "2-4-1-1", "channel_granularity": 4}),
    ("laud_regnet_y_400mf", "spatial", {"spatial_granularity": "4-4-2-1"}),
    ("laud_regnet_y_400mf", "channel", {"channel_granularity": "8-8-8-8"}),
    ("laud_regnet_y_400mf", "layer", {}),
    ("laud_regnet_y_400mf", "both", {"spatial_granularity": 2, "channel_granularity": "16-8-16-40"}),
]


@pytest.fixture(scope="module", autouse=True)
def fast_interpreter():
    """The interpreter checks every int32 operation for overflow (compiled kernels do not): that
    triples its run time, so the checks are off for these tests."""
    if not INTERPRET:
        yield
        return
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    options = builder.options
    builder.options = dataclasses.replace(options, sanitize_overflow=False)
    yield
    builder.options = options


class AtenOps(TorchDispatchMode):
    """Counts the aten operations run outside the maskers, as ``(name, on floats)``."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[tuple[str, bool]] = Counter()
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused:
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            self.ops[func.overloadpacket.__name__, first is not None and first.is_floating_point()] += 1
        return func(*args, **(kwargs or {}))

    def torch_block_work(self) -> list[str]:
        return sorted({name for (name, floats) in self.ops if name in FORBIDDEN or (name == "index_select" and floats)})


class WatchedKernels(TritonKernels):
    """Triton kernels whose maskers and mask selections (torch, allowed) are not recorded; their
    decisions are kept in ``masks``, or replayed from ``masks`` when given."""

    def __init__(self, recorder: AtenOps, dtype: torch.dtype = torch.float32, masks: list | None = None) -> None:
        super().__init__(dtype)
        self.recorder = recorder
        self.replay = masks is not None
        self.masks = list(masks) if masks is not None else []

    def compute_masks(self, role, program, x):
        if self.replay:
            return self.masks.pop(0)
        with self.paused():
            self.masks.append(super().compute_masks(role, program, x))
        return self.masks[-1]

    def index_select(self, role, x, dim, index):
        if role != "masker":
            return super().index_select(role, x, dim, index)
        with self.paused():
            return super().index_select(role, x, dim, index)

    @contextlib.contextmanager
    def paused(self):
        self.recorder.paused = True
        try:
            yield
        finally:
            self.recorder.paused = False


def _build(name: str, mode: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    extra = TINY_RESNET if name == "laud_resnet50" else {}
    return randomize_(create_model(name, mode=mode, **extra, **kwargs), 0).eval().to(DEVICE)


def _images(name: str, batch: int = 2) -> torch.Tensor:
    size = RESNET_SIZE if name == "laud_resnet50" else REGNET_SIZE
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1)).to(DEVICE)


def _run(model, x, dtype: torch.dtype = torch.float32, tolerance: float = 1e-3, masks: list | None = None):
    """The Triton engine's logits within ``tolerance`` (relative) of the masked model's, with no torch
    block work (``masks``: decisions to replay); returns the masked model's statistics, the launches
    and the engine's decisions."""
    recorder = AtenOps()
    kernels = WatchedKernels(recorder, dtype, masks)
    engine = SparseModel(model, kernels).eval()
    with torch.no_grad():
        want = model(x, return_stats=True)
        ops.LAUNCHES.clear()
        with recorder:
            got = engine(x)
    assert got.dtype == dtype
    error = float((got.float() - want.logits).abs().max() / want.logits.abs().max())
    assert error <= tolerance, f"relative error {error:.2e}"
    assert recorder.torch_block_work() == [], "block work ran as torch operations"
    return want.stats, Counter(ops.LAUNCHES), kernels.masks


def _masks_differ(stats) -> bool:
    masks = [m for b in stats.blocks for m in (b.spatial_mask, b.channel_mask) if m is not None]
    return any(not torch.equal(m[0], m[1]) for m in masks)


@pytest.mark.parametrize("name, mode, kwargs", CASES, ids=[f"{n}-{m}" + "".join(f"-{v}" for v in k.values())
                                                          for n, m, k in CASES])
def test_triton_engine_equals_masked_model(name, mode, kwargs):
    model = _build(name, mode, **kwargs)
    x = _images(name)
    set_gate_density(model, 0.5, x)
    stats, launches, _ = _run(model, x)
    if mode != "layer":
        assert _masks_differ(stats), "the two samples should have different masks"
    if mode in ("spatial", "both"):
        # conv1 gathered into the zero-padded buffer, conv2 on its windows, conv3 scatter-added.
        assert launches["gathered_rows>scatter"] + launches["rows>scatter"] > 0
        assert launches["windows>store"] > 0 and launches["rows>scatter_add"] > 0
    if mode in ("channel", "both"):
        assert launches["sliced_weights"] > 0  # products reading the active channels' weights in place
    if mode == "layer":
        # Samples whose gate is on run their branch alone (its conv2 is one launch); the others launch nothing.
        computed = sum(int((b.conv3_density > 0).sum()) for b in stats.blocks)
        skipped = sum(int((b.conv3_density == 0).sum()) for b in stats.blocks)
        assert computed > 0 and skipped > 0
        assert launches["image>store"] == 1 + computed  # the stem, and one conv2 per computing sample


@pytest.mark.parametrize("density", [0.0, 1.0])
def test_all_off_and_all_on(density):
    """All gates off: only shortcuts (the projection's ReLU in its epilogue); all on: the dense path."""
    model = _build("laud_resnet50", "both", spatial_granularity=2, channel_granularity=4)
    x = _images("laud_resnet50")
    set_gate_density(model, density, x)
    _, launches, _ = _run(model, x)
    assert launches["windows>store"] == launches["rows>scatter_add"] == 0
    blocks = len(list(model.named_dynamic_blocks()))
    assert launches["image>store"] == (1 if density == 0.0 else 1 + blocks)  # the stem, and every dense conv2


def test_buffer_filled_in_conv1s_epilogue_and_skipped_channels():
    """Where conv2 reads every position conv1's rows go straight into the padded buffer; with every
    channel off, the branch is conv3's bias, scattered where computed."""
    model = _build("laud_resnet50", "spatial", spatial_granularity=1)
    x = _images("laud_resnet50", batch=1)
    set_gate_density(model, 0.9, x)
    _, launches, _ = _run(model, x)
    assert launches["rows>scatter"] > 0
    model = _build("laud_resnet50", "both", spatial_granularity=2, channel_granularity=4)
    x = _images("laud_resnet50")
    set_gate_density(model, 0.5, x)
    for _, block in model.named_dynamic_blocks():
        block.masker_channel.force = False
    stats, launches, _ = _run(model, x)
    assert all(torch.all(b.channel_density == 0) for b in stats.blocks)
    assert launches["scatter_add"] > 0 and launches["windows>store"] == 0


def test_sub_batches_sharing_a_channel_mask():
    """Samples with the same channel mask run together: gathered, and scattered back in conv3's epilogue."""
    model = randomize_maskers_(_build("laud_resnet50", "channel", channel_granularity="8-16-32-64"), 0).to(DEVICE)
    x = torch.randn(6, 3, 64, 48, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    set_gate_density(model, 0.5, x)
    _, launches, _ = _run(model, x)
    assert launches["rows>scatter_add"] > 0


def test_convert_builds_the_triton_engine():
    model = _build("laud_resnet50", "layer")
    engine = convert(model, backend="triton")
    assert isinstance(engine, SparseModel) and isinstance(engine.kernels, TritonKernels)


def _low_precision(dtype: torch.dtype, name: str, mode: str, tolerance: float, **kwargs) -> None:
    """Activations in ``dtype``, products accumulated in float32. Decisions on rounded activations may
    flip where a gate sits at its threshold, so the float32 engine's (the model's) are replayed."""
    model = _build(name, mode, **kwargs)
    x = _images(name)
    set_gate_density(model, 0.5, x)
    *_, masks = _run(model, x)
    _run(model, x, dtype, tolerance, masks=masks)


def test_float16():
    _low_precision(torch.float16, "laud_resnet50", "both", 1e-2, spatial_granularity=2, channel_granularity=4)


@pytest.mark.skipif(INTERPRET, reason="numpy has no bfloat16: Triton's interpreter cannot run bfloat16 products")
def test_bfloat16():
    _low_precision(torch.bfloat16, "laud_regnet_y_400mf", "both", 5e-2, spatial_granularity=2,
                   channel_granularity="16-8-16-40")


def test_unsupported_dtype():
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        TritonKernels(torch.float64)
