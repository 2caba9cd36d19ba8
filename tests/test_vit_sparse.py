"""The LAUD-ViT sparse engine: the masked model's logits, its exact MACs, in torch and ONNX Runtime."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from laudnet.errors import UsageError
from laudnet.models import create_model
from laudnet.sparse import compare_latency, convert, export_onnx, set_gate_density
from laudnet.sparse.export import executed_macs
from laudnet.sparse.vit import SparseViT
from laudnet.sparse.vit_onnx import OrtViTEngine, export_vit_onnx, lower_vit

MODES = ("static", "spatial", "channel", "layer", "both", "spatial+layer", "channel+layer", "spatial+channel+layer")
TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=4, num_classes=10)


def _model(mode: str, density: float, images: torch.Tensor):
    torch.manual_seed(0)
    model = create_model("laud_deit_small", mode=mode, **TINY).eval()
    set_gate_density(model, density, images)
    return model


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("mode", MODES)
def test_engines_compute_the_masked_model(mode, images):
    model = _model(mode, 0.5, images)
    with torch.no_grad():
        want = model(images)
        stats = model(images, return_stats=True).stats
    if mode != "static":  # samples differ: some run more, some less (padding, subsets of samples)
        assert float(stats.macs_ratio.max() - stats.macs_ratio.min()) > 0.01
    torch_engine, ort_engine = convert(model, backend="torch"), convert(model, backend="onnxruntime")
    assert isinstance(torch_engine, SparseViT) and isinstance(ort_engine, OrtViTEngine)
    assert _relative(torch_engine(images), want) <= 1e-4
    assert _relative(ort_engine(images), want) <= 1e-4
    assert _relative(ort_engine(images[:1]), want[:1]) <= 1e-4


@pytest.mark.parametrize("mode", ["spatial", "channel+layer", "spatial+channel+layer"])
def test_engines_execute_exactly_the_reported_macs(mode, images):
    model = _model(mode, 0.5, images)
    one = images[:1]
    with torch.no_grad():
        reported = float(model(one, return_stats=True).stats.dynamic_macs[0])
    with FlopCounterMode(display=False) as counter:
        convert(model, backend="torch")(one)
    assert counter.get_total_flops() // 2 == round(reported)
    assert executed_macs(lower_vit(model, batch_one=True), one) == round(reported)


def test_gates_all_off_and_all_on(images):
    model = _model("spatial+channel+layer", 0.0, images)
    with torch.no_grad():
        want = model(images)
    assert _relative(convert(model, backend="torch")(images), want) <= 1e-4
    assert _relative(convert(model, backend="onnxruntime")(images[:1]), want[:1]) <= 1e-4
    full = _model("spatial", 1.0, images)
    graph = lower_vit(full, batch_one=False)
    assert {"NonZero", "GatherND", "ScatterND"} <= {n.op_type for n in graph.graph.node}


def test_export_writes_a_checked_graph(tmp_path, images):
    model = _model("spatial+layer", 0.5, images)
    check = export_onnx(model, tmp_path / "vit.onnx", images)  # laudnet.sparse.export_onnx takes ViTs too
    assert check.relative_error <= 1e-4
    graph = onnx.load(str(tmp_path / "vit.onnx"))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    heads = _model("channel", 0.5, images)
    with pytest.raises(UsageError, match="batch 1 only"):
        export_vit_onnx(heads, tmp_path / "heads.onnx", images, batch=4)
    with pytest.raises(UsageError, match="inference-only"):
        convert(model, backend="torch").train()


def test_latency_comparison_runs_for_vits(images):
    result = compare_latency(_model("spatial", 0.5, images), images[:1], calls=1, blocks=1, warmup=0)
    assert result.static_model == "laud_deit_small static"
    assert set(result.engine) == {"onnxruntime", "torch"} and result.static_ms > 0
    assert 0.4 < result.macs_ratio < 0.7
