"""The engine's execution plan (``laudnet.sparse.plan``) against what the engine dispatches."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import randomize_, randomize_maskers_
from laudnet import create_model
from laudnet.models.structure import model_shape
from laudnet.sparse import convert
from laudnet.sparse.kernels import TorchKernels
from laudnet.sparse.plan import (
    BlockWork, block_ops, expected_conv1_density, expected_work, gathers, head_ops, stem_ops, work_of_masks,
)

# Ops that only make views: no kernel runs.
_VIEWS = {
    "view", "_unsafe_view", "permute", "t", "unsqueeze", "squeeze", "select", "expand", "alias", "narrow", "slice",
    "as_strided", "detach", "lift_fresh", "split", "_reshape_alias",
}


def _numel(shape) -> int:
    return math.prod(shape)


def _op(name: str, args: tuple, out, parameters: frozenset = frozenset()) -> tuple:
    """An aten call as the plan describes it: ``(kind, dims)``; ``parameters``: storages of weights."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if name == "addmm":
        a, b = args[1], args[2]
        return "matmul", (a.shape[0], a.shape[1], b.shape[1])
    if name == "baddbmm":
        a, b = args[1], args[2]
        return "grouped_matmul", (a.shape[0], a.shape[1], a.shape[2], b.shape[2])
    if name == "convolution":
        x, w = args[0], args[1]
        groups = args[8]
        kind = "grouped_conv" if groups > 1 else "conv"
        return kind, (x.shape[0], x.shape[1], w.shape[0], x.shape[2], x.shape[3], w.shape[2], args[3][0], groups)
    if name == "index_select":
        src, dim, index = args
        kind = "slice" if src.untyped_storage().data_ptr() in parameters else "gather"
        return kind, (_numel(src.shape[:dim]) * index.numel(), _numel(src.shape[dim + 1:]))
    if name in ("index_add_", "index_copy_"):
        index, src = args[2], args[3]
        return "scatter", (index.numel(), _numel(src.shape[1:]))
    if name == "mean":
        return "reduce", (args[0].numel(), out.numel())
    if name == "max_pool2d_with_indices":
        return "max_pool", tuple(args[0].shape)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    sizes = [o.numel() for o in outs if isinstance(o, torch.Tensor)]
    if not name.startswith("new_"):  # a new tensor's size is its own, not its template's
        sizes += [t.numel() for t in tensors]
    return "elementwise", (max(sizes),)


class _Recorder(TorchDispatchMode):
    """Records kernel-running aten ops, except those of the maskers (``compute_masks``)."""

    def __init__(self, parameters: frozenset = frozenset()) -> None:
        super().__init__()
        self.ops: list[tuple] = []
        self.in_maskers = False
        self.parameters = parameters

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        if name not in _VIEWS and not self.in_maskers:
            self.ops.append(_op(name, args, out, self.parameters))
        return out


def _trace_blocks(model, images):
    """Per block: (shape, masks, recorded ops), running the engine block by block."""
    engine = convert(model, backend="torch")
    shape = model_shape(model, tuple(images.shape[-2:]))
    engine(images)  # warm caches (gather tables)
    results = []
    kernels = TorchKernels()
    with torch.no_grad():
        x = engine.program.stem(kernels, images)
        for block_shape, block in zip(shape.blocks, engine.blocks):
            source = block.source
            masks = source.compute_masks(x)
            recorder = _Recorder(frozenset(b.untyped_storage().data_ptr() for b in block.buffers()))
            compute_masks = source.compute_masks

            def traced_masks(inputs, compute_masks=compute_masks, recorder=recorder):
                recorder.in_maskers = True
                try:
                    return compute_masks(inputs)
                finally:
                    recorder.in_maskers = False

            source.compute_masks = traced_masks
            inputs = x.clone()  # the block may overwrite its input
            try:
                with recorder:
                    y = block(kernels, inputs)
            finally:
                del source.compute_masks
            results.append((block_shape, masks, recorder.ops))
            x = y
    return results


CASES = [
    ("laud_resnet50", dict(mode="static")),
    ("laud_resnet50", dict(mode="spatial", spatial_granularity=1)),
    ("laud_resnet50", dict(mode="spatial", spatial_granularity="4-2-2-1")),
    ("laud_resnet50", dict(mode="channel", channel_granularity=4)),
    ("laud_resnet50", dict(mode="layer")),
    ("laud_resnet50", dict(mode="both", spatial_granularity=2, channel_granularity=2)),
    ("laud_regnet_y_400mf", dict(mode="spatial", spatial_granularity=2)),
    ("laud_regnet_y_400mf", dict(mode="channel", channel_granularity="16-8-16-8")),
    ("laud_regnet_y_400mf", dict(mode="both", spatial_granularity=1, channel_granularity=8)),
    ("laud_regnet_y_400mf", dict(mode="static")),
]


@pytest.mark.parametrize("bias", [-1.5, 0.3, 4.0])
@pytest.mark.parametrize("name,kwargs", CASES)
def test_plan_lists_what_the_engine_dispatches(name, kwargs, bias):
    torch.manual_seed(0)
    extra = {"width_multiplier": 0.25} if "resnet" in name else {}
    model = randomize_maskers_(randomize_(create_model(name, **kwargs, **extra)), bias=bias).eval()
    images = torch.randn(1, 3, 61, 83, generator=torch.Generator().manual_seed(0))
    for shape, masks, traced in _trace_blocks(model, images):
        work = work_of_masks(shape, masks, 1)
        planned = [op for op in block_ops(shape, shape.spec, work) if op.count > 0]
        assert all(op.count == 1 for op in planned)
        composite = [op.kind for op in planned if op.kind.endswith("_masker")]
        assert composite == [k for k, present in (("spatial_masker", shape.spec.has_spatial),
                                                  ("channel_masker", shape.spec.has_channel)) if present]
        expected = Counter((op.kind, op.dims) for op in planned if not op.kind.endswith("_masker"))
        missing, extra = expected - Counter(traced), Counter(traced) - expected
        assert not missing and not extra, f"{shape.name} {shape.spec} {work}: planned only {missing}, ran only {extra}"


@pytest.mark.parametrize("name,kwargs", [
    ("laud_resnet50", dict(mode="spatial", spatial_granularity=2)),
    ("laud_regnet_y_400mf", dict(mode="spatial", spatial_granularity=1)),
])
def test_plan_of_a_batch_gathers_every_sample_together(name, kwargs):
    torch.manual_seed(0)  # weights for which every sample keeps some positions in every block
    extra = {"width_multiplier": 0.25} if "resnet" in name else {}
    model = randomize_maskers_(randomize_(create_model(name, **kwargs, **extra)), bias=4.0).eval()
    images = torch.randn(2, 3, 61, 83, generator=torch.Generator().manual_seed(0))
    for shape, masks, traced in _trace_blocks(model, images):
        planned = block_ops(shape, shape.spec, work_of_masks(shape, masks, 2))
        assert Counter(traced) == Counter((op.kind, op.dims) for op in planned if not op.kind.endswith("_masker"))


def test_stem_and_head_plans():
    model = randomize_(create_model("laud_resnet50", mode="static", width_multiplier=0.25)).eval()
    shape = model_shape(model, (61, 83))
    recorder = _Recorder()
    engine, images = convert(model, backend="torch"), torch.randn(1, 3, 61, 83)
    with recorder:
        engine(images)
    planned = [(op.kind, op.dims) for op in stem_ops(shape, 1) + head_ops(shape, 1)]
    assert recorder.ops[: len(stem_ops(shape, 1))] == planned[: len(stem_ops(shape, 1))]
    assert recorder.ops[-2:] == planned[-2:]
    # ONNX Runtime's blocked stem conv reads the images as they are, its ReLU fused.
    assert [op.kind for op in stem_ops(shape, 1, "onnxruntime")] == ["conv", "max_pool"]


def test_expected_conv1_density_matches_independent_cells():
    model = create_model("laud_resnet50", mode="spatial", spatial_granularity=2, width_multiplier=0.25)
    shape = model_shape(model, (56, 72))
    block = shape.blocks[3]  # stride 2
    from laudnet.dynamic.geometry import expand_cells, input_mask

    g = torch.Generator().manual_seed(0)
    grid = ((block.out_hw[0] + 1) // 2, (block.out_hw[1] + 1) // 2)
    cells = (torch.rand(4000, 1, *grid, generator=g) < 0.3).float()
    conv3 = expand_cells(cells, 2, block.out_hw)
    measured = float(input_mask(conv3, block.in_hw, 3, block.stride).mean())
    assert expected_conv1_density(block, 2, 0.3) == pytest.approx(measured, abs=0.005)
    work = expected_work(block, block.spec, 1, cells=0.3)
    assert work.conv3_rows == round(0.3 * block.out_hw[0] * block.out_hw[1])
    assert isinstance(work, BlockWork)


@pytest.mark.parametrize("layers", [1, 2])
def test_channel_masker_is_priced_as_the_masker_that_runs(layers):
    """The plan's channel masker has the layers of the model's own masker (one Linear or an MLP)."""
    model = create_model("laud_resnet50", mode="channel", channel_granularity=2, masker_layers=layers)
    shape = model_shape(model, 224)
    for block_shape, (_, block) in zip(shape.blocks, model.named_dynamic_blocks()):
        work = expected_work(block_shape, block_shape.spec, 1, cells=1.0, channel=0.5)
        (masker,) = [op for op in block_ops(block_shape, block_shape.spec, work) if op.kind == "channel_masker"]
        weights = sum(p.numel() for n, p in block.masker_channel.named_parameters() if n.endswith("weight"))
        assert masker.traffic.weights == weights, block_shape.name
        hidden = masker.dims[4]
        assert (hidden == 0) == (layers == 1)


def test_one_and_two_layer_maskers_predict_differently():
    from laudnet.latency import predict
    from laudnet.latency.costs import EngineCosts
    from laudnet.latency.hardware import Hardware

    profile = Hardware("test-cpu", 2, 8, 3.0e9, 15e9, engine=EngineCosts("cpu", 2))
    reports = [predict(create_model("laud_resnet50", mode="channel", masker_layers=layers), profile, density=0.5)
               for layers in (1, 2)]
    masker_ms = [sum(b.ops_ms["masker"] for b in r.blocks) for r in reports]
    assert masker_ms[0] != pytest.approx(masker_ms[1], rel=1e-3)


# Products and convolutions in ONNX Runtime's profile, and the plan's kinds they are.
_ORT_PRODUCTS = {"Conv": "conv", "FusedConv": "conv", "Gemm": "product", "FusedGemm": "product", "MatMul": "product"}


@pytest.mark.parametrize("name,kwargs", [case for case in CASES if case[1]["mode"] != "both"] + [
    ("laud_resnet50", dict(mode="both", spatial_granularity=2, channel_granularity=8)),
])
def test_onnxruntime_plan_lists_the_products_the_engine_graph_runs(name, kwargs):
    """Per block, the plan for ONNX Runtime has the graph's convolutions and products on rows (by
    number and MACs; masker and SE products aside, the profile names them), and no fused pass."""
    from laudnet.sparse.executor import SparseModel
    from laudnet.sparse.export import _node_macs, executed_nodes
    from laudnet.sparse.lowering import lower

    torch.manual_seed(0)
    extra = {"width_multiplier": 0.25} if "resnet" in name else {}
    model = randomize_maskers_(randomize_(create_model(name, **kwargs, **extra)), bias=0.3).eval()
    images = torch.randn(1, 3, 61, 83, generator=torch.Generator().manual_seed(0))
    ran: dict[str, list[dict]] = {}
    # The engine's graph unblocked: ONNX Runtime's blocked layout pads the channels it convolves.
    for node in executed_nodes(lower(SparseModel(model), (61, 83), None, portable=False), images):
        scope = node["name"].split("/")
        if node["op_name"] in _ORT_PRODUCTS and not {"masker", "se"} & set(scope):
            ran.setdefault(scope[0], []).append(node)
    for shape, masks, _ in _trace_blocks(model, images):
        work = work_of_masks(shape, masks, 1)
        planned = [op for op in block_ops(shape, shape.spec, work, "onnxruntime") if op.count and op.role != "se"
                   and op.kind in ("conv", "grouped_conv", "matmul", "grouped_matmul")]
        kinds = Counter("conv" if op.kind.endswith("conv") else "product" for op in planned)
        nodes = ran.get(shape.name, [])
        assert kinds == Counter(_ORT_PRODUCTS[n["op_name"]] for n in nodes), f"{shape.name} {work}"
        assert sum(op.macs for op in planned) == sum(_node_macs(n) for n in nodes), shape.name
        torch_macs = sum(op.macs for op in block_ops(shape, shape.spec, work) if op.role != "se")
        assert sum(op.macs for op in planned) == torch_macs  # the same work, run another way
        if not gathers(shape, shape.spec, work, "onnxruntime"):
            elementwise = [op for op in block_ops(shape, shape.spec, work, "onnxruntime") if op.kind == "elementwise"]
            assert all(op.role in ("masker", "se") for op in elementwise), shape.name
