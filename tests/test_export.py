"""ONNX export: the skipping inside the graph, decided by the graph, equal to the masked model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from helpers import randomize_
from laudnet import create_model
from laudnet.cli import main
from laudnet.errors import UsageError
from laudnet.sparse import SparseModel, convert, set_gate_density
from laudnet.sparse import blocked
from laudnet.sparse import export as export_module
from laudnet.sparse.export import executed_macs, executed_nodes, export_model, export_onnx, ort_session

SIZE = (61, 83)
CASES = [
    ("laud_resnet50", "static", {}),
    ("laud_resnet50", "spatial", {"spatial_granularity": "1-2-4-7"}),
    ("laud_resnet50", "channel", {"channel_granularity": "1-2-4-1"}),
    ("laud_resnet50", "layer", {}),
    ("laud_resnet50", "both", {"spatial_granularity": "2-7-1-4", "channel_granularity": "4-1-2-4"}),
    ("laud_regnet_y_400mf", "spatial", {"spatial_granularity": "4-1-2-1"}),
    ("laud_regnet_y_400mf", "channel", {"channel_granularity": "16-8-16-40"}),
    ("laud_regnet_y_400mf", "layer", {}),
    ("laud_regnet_y_400mf", "both", {"spatial_granularity": 2, "channel_granularity": "8-8-8-8"}),
]


def _model(name: str, mode: str, density: float = 0.5, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    extra = {"width_multiplier": 0.25} if "resnet" in name else {}
    model = randomize_(create_model(name, mode=mode, **kwargs, **extra), seed).eval()
    if mode != "static":
        set_gate_density(model, density, torch.randn(4, 3, *SIZE, generator=torch.Generator().manual_seed(seed)))
    return model


def _relative(got: np.ndarray, want: torch.Tensor) -> float:
    want = want.detach().numpy()
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("name, mode, kwargs", CASES, ids=[f"{n}-{m}" for n, m, _ in CASES])
def test_exported_graph_decides_and_equals_the_masked_model(name, mode, kwargs, tmp_path):
    model = _model(name, mode, **kwargs)
    example = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "model.onnx"
    export_onnx(model, path, example)
    session = ort_session(path)
    batch = 1 if mode in ("channel", "both") else 3
    images = torch.randn(batch, 3, *SIZE, generator=torch.Generator().manual_seed(2))  # not the example
    with torch.no_grad():
        want = model(images, return_stats=True)
    got = session.run(None, {"images": images.numpy()})[0]
    assert _relative(got, want.logits) <= 1e-4
    # Executed multiply-accumulates (from ONNX Runtime's own profile) are the reported dynamic MACs.
    assert executed_macs(onnx.load(path), images) == pytest.approx(float(want.stats.dynamic_macs.sum()), rel=1e-9)


def test_blocks_whose_channels_are_all_off_add_the_bias_at_their_computed_positions_only():
    model = _model("laud_resnet50", "both", channel_granularity=2)
    for _, block in model.named_dynamic_blocks():
        decision = block.masker_channel.layers[-1]
        with torch.no_grad():
            decision.bias[: decision.out_features // 2] = -1e4  # every channel group off, positions as decided
    images = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(images, return_stats=True)
    assert bool((want.stats.blocks[0].spatial_mask.float().mean() < 1).all())
    got = ort_session(export_model(model, images)).run(None, {"images": images.numpy()})[0]
    assert _relative(got, want.logits) <= 1e-4


def test_masks_are_decided_in_the_graph_per_image():
    model = _model("laud_resnet50", "spatial", spatial_granularity=2)
    graph = export_model(model, torch.zeros(1, 3, *SIZE))
    session = ort_session(graph)
    first, second = (torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(s)) for s in (5, 6))
    with torch.no_grad():
        masks = [model(x, return_stats=True).stats.blocks[0].spatial_mask for x in (first, second)]
        assert not torch.equal(masks[0], masks[1])
        for x in (first, second):
            assert _relative(session.run(None, {"images": x.numpy()})[0], model(x)) <= 1e-4
    assert {"NonZero", "Gather", "ScatterND", "If"} <= _op_types(graph)


def _op_types(graph: onnx.ModelProto) -> set[str]:
    found = set()

    def visit(g):
        for node in g.node:
            found.add(node.op_type)
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    visit(attribute.g)

    visit(graph.graph)
    return found


def test_a_batch_with_mixed_gates_and_any_image_size_for_layer_skipping():
    model = _model("laud_resnet50", "layer", density=0.5)
    graph = export_model(model, torch.zeros(1, 3, *SIZE))
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    session = ort_session(graph)
    for size in ((64, 48), (97, 75)):
        images = torch.randn(4, 3, *size, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            stats = model(images, return_stats=True).stats
        assert any(0 < float(b.conv3_density.mean()) < 1 for b in stats.blocks), "no block with mixed gates"
        assert _relative(session.run(None, {"images": images.numpy()})[0], model(images)) <= 1e-4


def test_openvino_runs_the_file_with_the_same_logits(tmp_path):
    import openvino as ov

    core = ov.Core()
    for name, mode, kwargs in (CASES[1], CASES[2], CASES[3], CASES[8]):
        model = _model(name, mode, **kwargs)
        path = tmp_path / f"{mode}.onnx"
        images = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(4))
        export_onnx(model, path, images)
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        got = compiled.create_infer_request().infer({0: images.numpy()})
        with torch.no_grad():
            assert _relative(next(iter(got.values())), model(images)) <= 1e-4, (name, mode)


def test_the_self_check_refuses_a_graph_that_differs(tmp_path, monkeypatch):
    model = _model("laud_resnet50", "layer")
    lower = export_module.lower

    def corrupted(*args, **kwargs):
        graph = lower(*args, **kwargs)
        weight = max(graph.graph.initializer, key=lambda t: np.prod(t.dims))
        values = onnx.numpy_helper.to_array(weight) * 1.01
        weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
        return graph

    monkeypatch.setattr(export_module, "lower", corrupted)
    with pytest.raises(UsageError, match="differ from the model's"):
        export_onnx(model, tmp_path / "bad.onnx", torch.randn(1, 3, *SIZE))
    assert list(tmp_path.iterdir()) == []


def test_the_onnxruntime_engine_is_the_exported_graph():
    model = _model("laud_regnet_y_400mf", "spatial", spatial_granularity=2)
    engine = convert(model, backend="onnxruntime")
    images = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        assert _relative(engine(images).numpy(), model(images)) <= 1e-4


def _some_samples_only(model: torch.nn.Module, images: torch.Tensor) -> bool:
    """Whether some gated block runs for some samples of ``images`` and not for others."""
    with torch.no_grad():
        blocks = model(images, return_stats=True).stats.blocks
    return any(0 < int((b.conv3_density > 0).sum()) < len(images) for b in blocks if b.dynamic)


@pytest.mark.parametrize("name", ["laud_resnet50", "laud_regnet_y_400mf"])
@pytest.mark.parametrize("density", [0.0, 0.3, 0.7, 1.0])
def test_the_onnxruntime_engine_skips_layers_sample_by_sample(name, density):
    """Layer gates decided per sample in a batch (some blocks run for some samples only): the engine's
    session, whose blocked values cross the ``If`` boundaries, returns the masked model's logits."""
    model = _model(name, "layer", density=density)
    images = torch.randn(5, 3, *SIZE, generator=torch.Generator().manual_seed(3))
    assert _some_samples_only(model, images) == (0 < density < 1)
    with torch.no_grad():
        want = model(images)
        assert _relative(convert(model, backend="onnxruntime")(images).numpy(), want) <= 1e-4


def test_layer_models_with_large_activations_run_one_image_at_a_time():
    """Layer gates over large activations: the engine's graph takes one image at a time (where the
    batch graph would gather and scatter the images a block runs for); small images keep the batch
    graph, and so do models without layer gates (channel masks take one image in any case)."""
    from laudnet.models.registry import create_meta_model

    def one_at_a_time(name: str, hw: tuple[int, int], **kwargs) -> bool:
        return export_module.one_image_at_a_time(create_meta_model(name, **kwargs), hw)

    assert one_at_a_time("laud_resnet50", (800, 1216), mode="layer")
    assert one_at_a_time("laud_resnet50", (448, 448), mode="layer")
    assert not one_at_a_time("laud_resnet50", (224, 224), mode="layer")
    assert one_at_a_time("laud_regnet_y_800mf", (800, 1216), mode="layer")
    assert not one_at_a_time("laud_resnet50", (224, 224), mode="spatial", spatial_granularity="4-4-2-1")
    assert not one_at_a_time("laud_resnet50", (800, 1216), mode="static")


@pytest.mark.parametrize("threshold, batch", [(0, 1), (10**9, None)])
def test_the_engine_runs_a_batch_of_layer_gated_images_either_way(monkeypatch, threshold, batch):
    """One image at a time or the batch graph, the engine returns the masked model's logits on a
    batch whose blocks run for some images only."""
    monkeypatch.setattr(export_module, "ONE_IMAGE_ACTIVATION", threshold)
    model = _model("laud_resnet50", "layer", density=0.5)
    images = torch.randn(5, 3, *SIZE, generator=torch.Generator().manual_seed(3))
    assert _some_samples_only(model, images)
    engine = convert(model, backend="onnxruntime")
    with torch.no_grad():
        assert _relative(engine(images).numpy(), model(images)) <= 1e-4
    assert engine.session(SIZE)[1] == batch


def _count(graph: onnx.GraphProto, ops: tuple[str, ...], branches_only: bool = False) -> int:
    """Nodes of the ``ops`` in the graph and its ``If`` branches (in the branches alone)."""
    own = 0 if branches_only else sum(node.op_type in ops for node in graph.node)
    return own + sum(_count(a.g, ops) for node in graph.node for a in node.attribute
                     if a.type == onnx.AttributeProto.GRAPH)


REORDERS = ("ReorderInput", "ReorderOutput")


def test_blocked_values_cross_the_if_boundaries():
    """ONNX Runtime alone reorders every value entering or leaving a gated block's ``If`` to NCHW and
    back; the engine's session keeps them blocked, with the residual sum and ReLU fused again."""
    model = _model("laud_resnet50", "layer")
    graph = export_module.lower(SparseModel(model), SIZE, None, portable=False)
    assert _count(blocked.optimised(graph).graph, REORDERS, branches_only=True) > 0
    rewritten = blocked.keep_blocked(graph)
    assert _count(rewritten.graph, REORDERS, branches_only=True) == 0
    branch = next(a.g for n in rewritten.graph.node if n.op_type == "If" for a in n.attribute
                  if a.name == "then_branch")
    assert [n.op_type for n in branch.node] == ["Conv"] * 3
    assert len(branch.node[-1].input) == 4  # conv3 takes the shortcut as its fused sum


@pytest.mark.parametrize("mode", ["static", "layer"])
def test_residual_sums_after_an_se_are_fused(mode):
    """After RegNetY's SE (its channel scaling runs unblocked), ONNX Runtime adds the residual as a
    flattened ``Add`` and a separate ``Relu``; the engine's session fuses both into conv3, and
    returns the model's logits."""
    model = _model("laud_regnet_y_400mf", mode)
    graph = export_module.lower(SparseModel(model), SIZE, None, portable=False)
    if mode == "static":  # ONNX Runtime alone
        assert _unfused_after_conv(blocked.optimised(graph).graph) > 0
    rewritten = blocked.keep_blocked(graph)
    assert _unfused_after_conv(rewritten.graph) == 0
    images = torch.randn(2, 3, *SIZE)
    outputs = export_module.ort_session(rewritten, layout=False).run(None, {"images": images.numpy()})[0]
    with torch.no_grad():
        assert _relative(outputs, model(images)) <= 1e-4


def test_a_branch_adds_the_input_it_reorders_for_its_first_convolution():
    """A channel-masked block with every channel on runs the static convolutions, blocked, but hands
    on NCHW (its other branch convolves NCHW): ONNX Runtime alone reorders conv3's output back, then
    adds the residual and applies the ReLU unfused; the engine's session adds the block's input as the
    branch already reorders it for conv1, fused into conv3, and returns the masked model's logits."""
    model = _model("laud_resnet50", "channel", density=1.0)
    graph = export_module.lower(SparseModel(model), SIZE, None, portable=False)
    unblocked = ("ReorderOutput",)  # the reorder back to NCHW
    assert _unfused_after_conv(blocked.optimised(graph).graph, unblocked) > 0
    rewritten = blocked.keep_blocked(graph)
    assert _unfused_after_conv(rewritten.graph, unblocked) == 0
    images = torch.randn(1, 3, *SIZE)
    outputs = export_module.ort_session(rewritten, layout=False).run(None, {"images": images.numpy()})[0]
    with torch.no_grad():
        assert _relative(outputs, model(images)) <= 1e-4


def _unfused_after_conv(graph: onnx.GraphProto, through: tuple[str, ...] = ("Reshape",)) -> int:
    """``Add`` and ``Relu`` nodes (in the graph and its branches) that read a convolution's output,
    directly or through nodes of the ``through`` ops."""
    made = {out: node for node in graph.node for out in node.output}

    def source(name: str) -> str:
        node = made.get(name)
        return source(node.input[0]) if node is not None and node.op_type in through else name

    convs = {out for node in graph.node if node.op_type == "Conv" for out in node.output}
    count = sum(node.op_type in ("Add", "Relu") and any(source(i) in convs for i in node.input) for node in graph.node)
    return count + sum(_unfused_after_conv(a.g, through) for node in graph.node for a in node.attribute
                       if a.type == onnx.AttributeProto.GRAPH)


def test_rows_meet_blocked_convolutions_through_one_reorder():
    """Between NHWC rows and a blocked convolution (a stage's first gathered block, a block whose
    positions are all on), ONNX Runtime alone transposes and then reorders; the engine's session
    reorders NHWC directly, so no transpose is left."""
    model = _model("laud_resnet50", "spatial", density=1.0, spatial_granularity="1-2-4-7")
    graph = export_module.lower(SparseModel(model), SIZE, None, portable=False)
    assert _count(blocked.optimised(graph).graph, ("Transpose",)) > 0
    assert _count(blocked.keep_blocked(graph).graph, ("Transpose",)) == 0


def _convs_on_gathered_weights(graph: onnx.GraphProto) -> int:
    """``Conv`` nodes (in the graph and its ``If`` branches) whose weights a ``Gather`` makes."""
    gathered = {out for node in graph.node if node.op_type == "Gather" for out in node.output}
    count = sum(node.op_type == "Conv" and node.input[1] in gathered for node in graph.node)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                count += _convs_on_gathered_weights(attribute.g)
    return count


@pytest.mark.parametrize("mode, kwargs", [("channel", {"channel_granularity": "1-2-4-1"}),
                                          ("spatial-channel-layer-both", {"spatial_granularity": 2})])
def test_the_onnxruntime_engine_convolves_the_active_channels(mode, kwargs):
    """For ONNX Runtime alone, channel-masked ResNet blocks convolve NCHW with gathered weights (the
    exported file keeps constant conv weights, which OpenVINO needs); the logits are the masked model's."""
    model = _model("laud_resnet50", mode, **kwargs)
    engine = convert(model, backend="onnxruntime")
    images = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        assert _relative(engine(images).numpy(), model(images)) <= 1e-4
    session_graph = export_module.lower(SparseModel(model), SIZE, None, portable=False).graph
    assert _convs_on_gathered_weights(session_graph) > 0
    assert _convs_on_gathered_weights(export_model(model, images[:1]).graph) == 0


ALL_ON = [("laud_resnet50", "spatial", {"spatial_granularity": "1-2-4-7"}),
          ("laud_regnet_y_400mf", "spatial", {"spatial_granularity": 2}),
          ("laud_resnet50", "channel", {"channel_granularity": 2}),
          ("laud_regnet_y_400mf", "channel", {"channel_granularity": "16-8-16-40"})]


@pytest.mark.parametrize("name, mode, kwargs", ALL_ON, ids=[f"{n}-{m}" for n, m, _ in ALL_ON])
def test_blocks_with_every_position_or_channel_on_run_the_static_convolutions(name, mode, kwargs):
    """Where a masker keeps everything, the block runs its 3×3 convolution on the image (constant
    weights, as the static model), not products on gathered windows or channels; logits and executed
    MACs stay the masked model's."""
    model = _model(name, mode, density=1.0, **kwargs)
    images = torch.randn(1 if mode == "channel" else 2, 3, *SIZE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = model(images, return_stats=True)
        assert _relative(convert(model, backend="onnxruntime")(images).numpy(), want.logits) <= 1e-4
    graph = export_model(model, images)
    ran = executed_nodes(graph, images)
    convs = {node["name"].split("/")[0] for node in ran if node["op_name"] in ("Conv", "FusedConv")
             and "/conv2/" in node["name"]}
    assert convs == {b.name for b in want.stats.blocks if b.dynamic}
    assert executed_macs(graph, images) == pytest.approx(float(want.stats.dynamic_macs.sum()), rel=1e-9)


def test_a_block_on_rows_convolves_its_projection_where_every_position_computes():
    """A block on NHWC rows builds its projection shortcut in the branch that reads it: with every
    position on, a convolution on the image its static convolutions read (fused into conv3's residual
    sum), not a product on rows; where some positions compute, a product on rows. Logits stay the
    masked model's."""
    images = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(4))
    for density, want_ops in ((1.0, {"Conv"}), (0.5, {"Gemm"})):
        model = _model("laud_resnet50", "spatial", density=density, spatial_granularity="1-2-4-7")
        ran = executed_nodes(export_model(model, images), images)
        ops = {node["op_name"] for node in ran if node["name"].startswith(("layer1.0/", "layer2.0/"))
               and "/projection/" in node["name"] and node["op_name"] in ("Conv", "FusedConv", "Gemm")}
        assert ops == want_ops
        with torch.no_grad():
            assert _relative(convert(model, backend="onnxruntime")(images).numpy(), model(images)) <= 1e-4


@pytest.mark.parametrize("mode, granularity", [("spatial", "4-4-2-1"), ("layer", "1")])
def test_a_block_whose_cells_are_all_on_builds_no_pixel_masks(mode, granularity):
    """Where every cell (or sample gate) is on, a block goes from its masker's decisions straight to
    its static convolutions: no pixel masks, position lists or sample lists are built (no ``NonZero``,
    no dilation ``MaxPool``); where some are off they are, and both give the masked model's logits."""
    images = torch.randn(4, 3, *SIZE, generator=torch.Generator().manual_seed(0))  # the gates' density images
    for density, built in ((1.0, False), (0.5, True)):
        model = _model("laud_resnet50", mode, density=density, spatial_granularity=granularity)
        ran = executed_nodes(export_model(model, images), images)
        masks = [n["name"] for n in ran if n["name"].startswith("layer") and n["op_name"] in ("NonZero", "MaxPool")]
        assert bool(masks) == built, masks
        with torch.no_grad():
            assert _relative(convert(model, backend="onnxruntime")(images).numpy(), model(images)) <= 1e-4


def test_a_grouped_block_on_rows_gathers_conv2_windows_from_group_major_rows():
    """A block with conv groups on rows lays conv1's rows out group-major before gathering conv2's
    windows, so its transposes move conv1's rows and conv2's outputs, never the windows (nine rows
    each); logits stay the masked model's."""
    model = _model("laud_regnet_y_400mf", "spatial", spatial_granularity="4-1-2-1")
    images = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(6))
    ran = executed_nodes(export_model(model, images), images)
    moved = [export_module.profiled_shapes(n, "input_type_shape")[0] for n in ran
             if n["op_name"] == "Transpose" and "/conv2/" in n["name"]]
    assert moved and all(len(shape) == 3 for shape in moved), moved
    with torch.no_grad():
        assert _relative(convert(model, backend="onnxruntime")(images).numpy(), model(images)) <= 1e-4


def test_bad_input_is_one_line(tmp_path, capsys):
    before_bn = create_model("laud_resnet50", mode="channel", width_multiplier=0.25, channel_mask_placement="before_bn")
    with pytest.raises(UsageError, match="masks before BN"):
        export_onnx(before_bn, tmp_path / "x.onnx", torch.randn(1, 3, *SIZE))
    for argv, message in [
        (["laud_resnet50", "--mode", "channel", "--batch", "2"], "exports for batch 1 only"),
        (["laud_resnet50", "--mode", "layer", "-o", str(tmp_path / "file" / "x.onnx")], "cannot write"),
        (["--checkpoint", str(tmp_path / "none.pth")], "checkpoint not found"),
    ]:
        (tmp_path / "file").write_text("not a folder")
        output = [] if "-o" in argv else ["-o", str(tmp_path / "x.onnx")]
        assert main(["sparse", "export", *argv, *output, "--input", "64"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x.onnx").exists()
