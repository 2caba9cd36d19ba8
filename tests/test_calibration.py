"""Calibrated device profiles: the fit, the profile file, validation's split, and suggest."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml

from laudnet.classification import TrainConfig
from laudnet.cli import main
from laudnet.latency import PRESETS, Hardware, get_hardware, load_hardware, predict, save_hardware
from laudnet.latency.calibrated import pricing as engine
from laudnet.latency.device.calibrate import (
    FIT_CONFIGS, Sample, calibrate, fit_costs, fit_hardware, initial_hardware, node_operation, operator_cases,
    predicted_seconds,
)
from laudnet.latency.costs import EngineCosts, prior_coefficients
from laudnet.latency.hardware import load_record
from laudnet.latency.device import measure
from laudnet.latency.device.measure import EngineConfig, NodeTime, measure_engines
from laudnet.latency.design.suggest import suggest, write_config
from laudnet.latency.device.validate import HELD_OUT, compare, held_out, validate, write_report
from laudnet.models.structure import model_shape
from laudnet.sparse.plan import EngineOp, block_ops, expected_work, gathers

# A CPU-like device whose engine costs are the analytic model itself (the prior).
CPU = Hardware("test-cpu", 2, 8, 3.0e9, 15e9, l2_bandwidth_ratio=3.0, transaction_words=16, launch_time_s=5e-6,
               engine=EngineCosts("cpu", 2))


@pytest.fixture(scope="module")
def cases():
    return operator_cases(FIT_CONFIGS[:4], per_kind=12)


# ---------------------------------------------------------------------------- the fit


def test_fit_recovers_hardware_parameters_from_synthetic_operators(cases):
    start = initial_hardware("cpu", 2)  # its SIMD lanes are this machine's (8 with AVX2, 16 with AVX-512)
    true = dataclasses.replace(start, frequency_hz=2.2e9, dram_bandwidth=9e9, l2_bandwidth_ratio=6.0,
                               launch_time_s=3e-6, engine=None)
    samples = [Sample(str(op.dims), engine.analytic_seconds(true, op), (op,)) for op, _, _ in cases]
    fitted = fit_hardware(start, samples)
    for name in ("frequency_hz", "dram_bandwidth", "l2_bandwidth_ratio", "launch_time_s"):
        assert getattr(fitted, name) == pytest.approx(getattr(true, name), rel=1e-3), name
    assert (fitted.n_pes, fitted.lanes_per_pe) == (true.n_pes, true.lanes_per_pe)


def _samples(hw, cases):
    """Operator samples and block samples made by ``hw``'s own predictions."""
    ops = [Sample(str(op.dims), 0.0, (op,)) for op, _, _ in cases]
    shape = model_shape("laud_resnet50", 160)
    blocks = [
        Sample(b.name, 0.0, block_ops(b, config.spec.stages[b.stage], expected_work(
            b, config.spec.stages[b.stage], 1, cells=config.density, channel=config.density)), (("block", 1.0),))
        for config in FIT_CONFIGS[:4] for b in shape.blocks
    ]
    return [dataclasses.replace(s, seconds=predicted_seconds(hw, s)) for s in ops + blocks]


def test_fit_of_analytic_measurements_keeps_the_analytic_model(cases):
    fitted = fit_costs(CPU, _samples(CPU, cases), "cpu", 2)
    for kind in ("matmul", "conv", "gather", "scatter", "elementwise"):
        assert fitted.of(kind)["analytic"] == pytest.approx(1.0, abs=0.02), kind
    assert fitted.of("block")["launch"] == pytest.approx(0.0, abs=0.1)


def test_fit_recovers_known_corrections(cases):
    costs = {kind: prior_coefficients(kind) for kind in ("matmul", "gather", "elementwise", "block")}
    costs["matmul"].update(analytic=0.7, launch=2.0)
    costs["gather"].update(analytic=1.5, rows=3.0)
    costs["elementwise"].update(launch=1.0)
    costs["block"].update(launch=8.0)
    true = dataclasses.replace(CPU, engine=EngineCosts.build("cpu", 2, costs))
    samples = _samples(true, cases)
    fitted = dataclasses.replace(CPU, engine=fit_costs(CPU, samples, "cpu", 2, ridge=1e-6))
    errors = [abs(predicted_seconds(fitted, s) / s.seconds - 1) for s in samples]
    assert max(errors) < 0.01
    assert fitted.engine.of("block")["launch"] == pytest.approx(8.0, rel=0.05)
    assert fitted.engine.of("matmul")["analytic"] == pytest.approx(0.7, rel=0.05)


# ---------------------------------------------------------------------------- the profile file


def _profile(tmp_path, **costs):
    hw = dataclasses.replace(CPU, engine=EngineCosts.build("cpu", 2, costs or {"matmul": {"analytic": 0.8},
                                                                                  "block": {"launch": 7.5}}))
    path = tmp_path / "my-device.yaml"
    save_hardware(hw, path, {"fitted_on": [c.describe() for c in FIT_CONFIGS], "threads": 2})
    return hw, path


def test_profile_round_trips(tmp_path):
    hw, path = _profile(tmp_path)
    assert load_hardware(path) == hw
    assert load_record(path)["fitted_on"][0] == FIT_CONFIGS[0].describe()
    assert get_hardware(str(path)).calibrated and not PRESETS["v100"].calibrated
    by_path = predict("laud_resnet50", str(path), mode="spatial", density=0.5, spatial_granularity=2)
    assert by_path.model_ms == predict("laud_resnet50", hw, mode="spatial", density=0.5, spatial_granularity=2).model_ms
    assert by_path.blocks[0].ops_ms["overhead"] == pytest.approx(7.5 * 5e-6 * 1e3)
    text = path.read_text()
    assert "engine:" in text and "calibration:" in text


def test_profile_records_the_backend_it_prices(tmp_path):
    hw = dataclasses.replace(CPU, engine=EngineCosts.build("cpu", 2, {}, "onnxruntime"))
    save_hardware(hw, tmp_path / "ort.yaml")
    assert load_hardware(tmp_path / "ort.yaml").engine.backend == "onnxruntime"
    # Profiles written before the backend was recorded priced the torch engine.
    data = yaml.safe_load((tmp_path / "ort.yaml").read_text())
    del data["engine"]["backend"]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(data))
    assert load_hardware(tmp_path / "old.yaml").engine.backend == "torch"
    ort = predict("laud_resnet50", hw, mode="static").model_ms
    assert ort != predict("laud_resnet50", CPU, mode="static").model_ms  # fused passes are not priced


def test_a_calibrated_profile_prices_the_engine_plan():
    report = predict("laud_resnet50", CPU, mode="spatial", density=0.5, spatial_granularity=4)
    assert {"masker", "conv1", "conv2", "conv3", "scatter_add", "overhead"} <= set(report.blocks[1].ops_ms)
    assert report.stem_ms > 0 and report.head_ms > 0
    static = predict("laud_resnet50", CPU, mode="static")
    assert report.model_ms < static.model_ms
    skipped = predict("laud_resnet50", CPU, mode="layer", density=0.0)
    assert set(skipped.blocks[1].ops_ms) >= {"masker", "residual"}
    assert skipped.model_ms < report.model_ms


def test_channel_density_between_whole_groups_is_priced_as_a_mix():
    """Two groups per block: density 0.75 keeps one group in half the calls and both in the others."""
    def ms(density):
        return predict("laud_resnet50", CPU, mode="channel", density=density,
                       channel_granularity=[32, 64, 128, 256]).model_ms

    half, full = ms(0.5), ms(1.0)
    assert half < full
    assert ms(0.75) == pytest.approx((half + full) / 2, rel=1e-6)
    assert half < ms(0.6) < ms(0.75) < ms(0.9) < full


def test_regnet_channel_search_compares_with_one_conv_group_not_one_channel():
    """RegNetY's finest channel group is one conv group (16 channels here): G=1 would split it."""
    from laudnet.latency import search_granularity

    result = search_granularity("laud_regnet_y_800mf", CPU, "channel", 0.125)
    assert result.baseline_ms > 0
    assert all(stage.channel_granularity % 16 == 0 for stage in result.spec.stages)


@pytest.mark.parametrize(
    "engine_text,message",
    [
        ("engine: 3\n", "engine must be a mapping"),
        ("engine: {device: cpu}\n", "engine: missing threads"),
        ("engine: {device: tpu, threads: 2}\n", "engine device must be one of cpu, cuda"),
        ("engine: {device: cpu, threads: 0}\n", "threads must be a positive integer"),
        ("engine: {device: cpu, threads: 2, speed: 1}\n", "unknown keys speed"),
        ("engine: {device: cpu, threads: 2, backend: openvino}\n", "backend must be one of torch, onnxruntime"),
        ("engine: {device: cuda, threads: 2, backend: onnxruntime}\n", "onnxruntime runs on the cpu"),
        ("engine: {device: cpu, threads: 2, costs: {matmull: {analytic: 1}}}\n", "unknown kind 'matmull'"),
        ("engine: {device: cpu, threads: 2, costs: {matmul: {flops: 1}}}\n", "unknown feature 'flops'"),
        ("engine: {device: cpu, threads: 2, costs: {matmul: {analytic: -1}}}\n", "analytic must be a number >= 0"),
        ("engine: {device: cpu, threads: 2, costs: {matmul: 1}}\n", "expected a mapping of feature weights"),
        ("calibration: [1, 2]\n", "calibration must be a mapping"),
    ],
)
def test_malformed_profile_is_a_clear_error(tmp_path, engine_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text("n_pes: 2\nlanes_per_pe: 8\nfrequency_hz: 3e9\ndram_bandwidth: 1.5e10\n" + engine_text)
    with pytest.raises(ValueError, match=message) as error:
        get_hardware(str(path))
    assert str(path) in str(error.value)


def test_missing_profile(tmp_path, capsys):
    with pytest.raises(FileNotFoundError):
        validate(tmp_path / "absent.yaml")
    assert main(["latency", "validate", "--hardware", str(tmp_path / "absent.yaml")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "not found" in error[0]


# ---------------------------------------------------------------------------- validation


def test_validation_holds_out_every_fitted_configuration():
    fitted = {c.describe() for c in FIT_CONFIGS}
    assert not fitted & {c.describe() for c in HELD_OUT}
    assert {c.model for c in HELD_OUT} >= {"laud_resnet50", "laud_regnet_y_400mf", "laud_regnet_y_800mf"}
    assert {m for c in HELD_OUT for m in c.spec.modes} >= {"static", "spatial", "channel", "layer", "both"}
    # Other shapes as well: input sizes and a model the fit never saw.
    assert {(c.model, c.input_size) for c in HELD_OUT} - {(c.model, c.input_size) for c in FIT_CONFIGS}
    assert {c.model for c in HELD_OUT} - {c.model for c in FIT_CONFIGS}
    with pytest.raises(ValueError, match="used for fitting: laud_resnet50 224x224 static"):
        held_out(HELD_OUT + (FIT_CONFIGS[0],), sorted(fitted))


def test_validate_refuses_uncalibrated_hardware_and_fitted_configurations(tmp_path):
    with pytest.raises(ValueError, match="not a calibrated profile"):
        validate("tx2")
    _, path = _profile(tmp_path)
    with pytest.raises(ValueError, match="used for fitting"):
        validate(path, configs=FIT_CONFIGS[:1], repeats=1)


def test_comparison_report_from_a_measured_engine(tmp_path):
    config = EngineConfig.build("laud_resnet50", 64, "spatial", "2", density=0.5)
    (measurement,) = measure_engines([config], repeats=1, warmup=1)
    blocks, model = compare(CPU, measurement)
    assert [b.block for b in blocks] == [b.name for b in measurement.blocks]
    assert all(b.predicted_ms > 0 and b.measured_ms > 0 for b in blocks)
    assert model.measured_ms == measurement.model_ms and model.predicted_ms > 0
    densities = [b.density.conv3 for b in measurement.blocks]
    assert 0.0 < float(np.mean(densities)) < 1.0


def test_measurements_time_every_configuration_in_visits_spread_over_the_run(monkeypatch):
    """Three rounds in two visits: A A B B A B, so that a slow phase of the machine does not fall on
    one configuration alone; every round counts, and the progress counts builds, then visits."""
    calls = []
    monkeypatch.setattr(measure, "time_call_ms", lambda fn, device="cpu": calls.append(fn) or 1.0)
    configs = [EngineConfig.build("laud_resnet50", 48, "layer", density=0.5),
               EngineConfig.build("laud_regnet_y_400mf", 48, "static")]
    steps = []
    a, b = measure_engines(configs, repeats=3, warmup=1, visits=2, progress=lambda *step: steps.append(step))
    assert [0 if fn is calls[0] else 1 for fn in calls] == [0, 0, 1, 1, 0, 1]
    assert a.repeats == b.repeats == 3 and a.model_ms == b.model_ms == 1.0
    assert steps == [(done, 6) for done in range(1, 7)]
    with pytest.raises(ValueError, match="visits must be >= 1"):
        measure_engines(configs, repeats=3, visits=0)


def test_a_measurement_at_another_reference_speed_scales_every_time():
    config = EngineConfig.build("laud_resnet50", 48, "spatial", "2", density=0.5)
    (m,) = measure_engines([config], repeats=2, warmup=1, backend="onnxruntime", reference=True)
    assert m.reference_ms > 0
    slow = m.at_reference(2 * m.reference_ms)  # a device twice as slow: every time doubles
    assert slow.reference_ms == 2 * m.reference_ms and slow.model_ms == pytest.approx(2 * m.model_ms)
    assert [b.ms for b in slow.blocks] == pytest.approx([2 * b.ms for b in m.blocks])
    assert slow.stem_ms == pytest.approx(2 * m.stem_ms) and slow.head_ms == pytest.approx(2 * m.head_ms)
    assert [n.seconds for n in slow.nodes] == pytest.approx([2 * n.seconds for n in m.nodes])
    (plain,) = measure_engines([config], repeats=1, warmup=1)
    with pytest.raises(ValueError, match="timed no reference workload"):
        plain.at_reference(10.0)


def test_onnxruntime_measurement_times_every_block_of_the_engine_graph():
    config = EngineConfig.build("laud_resnet50", 64, "spatial", "2", density=0.5)
    (m,) = measure_engines([config], repeats=2, warmup=1, backend="onnxruntime")
    assert m.backend == "onnxruntime" and len(m.blocks) == 16
    assert all(b.ms > 0 for b in m.blocks) and m.stem_ms > 0 and m.head_ms > 0
    # The spans of a profiled run, less the profiler's cost per node, add up to about a plain run
    # (not to twice it, as they would if the nodes inside an ``If`` counted again).
    assert m.stem_ms + sum(b.ms for b in m.blocks) + m.head_ms == pytest.approx(m.model_ms, rel=0.4)
    # Every gathering block's products on rows are nodes the profile sizes as the plan does.
    products = {node_operation(n).dims for n in m.nodes if n.op_name in ("Gemm", "FusedGemm")}
    for block, b in zip(m.shape.blocks, m.blocks):
        spec = config.spec.stages[block.stage]
        if gathers(block, spec, b.work, "onnxruntime"):
            planned = {op.dims for op in block_ops(block, spec, b.work, "onnxruntime") if op.kind == "matmul"}
            assert (b.work.conv3_rows, block.width, block.out_channels) in planned & products, block.name
    kinds = {op.kind for op in map(node_operation, m.nodes) if op is not None}
    assert {"conv", "matmul", "gather", "scatter", "max_pool", "reduce"} <= kinds
    assert {n.op_name for n in m.nodes if n.constant_input} >= {"Gather"}  # gather tables are constants


def test_node_operation_reads_sizes_from_the_profile():
    def node(op, inputs, outputs, constant=False):
        return NodeTime("x", op, 1e-5, inputs, outputs, constant)

    conv = node_operation(node("Conv", ((2, 64, 28, 28), (128, 32, 3, 3)), ((2, 128, 14, 14),)))
    assert conv == EngineOp("grouped_conv", "node", (2, 64, 128, 28, 28, 3, 2, 2))
    assert node_operation(node("FusedGemm", ((300, 64),), ((300, 256),))).dims == (300, 64, 256)
    assert node_operation(node("MatMul", ((8, 100, 72),), ((8, 100, 16),))).kind == "grouped_matmul"
    assert node_operation(node("Gather", ((500, 64), (120,)), ((120, 64),), True)).kind == "slice"
    assert node_operation(node("Gather", ((500, 64), (120,)), ((120, 64),))).kind == "gather"
    assert node_operation(node("ScatterND", ((500, 64), (120, 1), (120, 64)), ((500, 64),))).dims == (120, 64)
    assert node_operation(node("Shape", ((500, 64),), ((2,),))) is None
    assert node_operation(node("Gather", ((3136, 1), (40,)), ((40, 1),))) is None  # an index table


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_validation_report_and_plot(tmp_path, backend):
    """A whole (tiny) validation: two passes, statistics in range, JSON and PNG written."""
    hw, profile = _profile(tmp_path)
    hw = dataclasses.replace(hw, engine=dataclasses.replace(hw.engine, backend=backend))
    save_hardware(hw, profile, {"fitted_on": [], "reference_ms": 10.0, "reference_backend": backend})
    configs = [EngineConfig.build("laud_resnet50", 48, "layer", density=0.5),
               EngineConfig.build("laud_regnet_y_400mf", 48, "channel", channel_granularity="8", density=0.5)]
    report = validate(profile, configs, repeats=1)
    assert len(report.models) == 2 and len(report.blocks) == 16 + 16
    assert 0.0 <= report.within_10 <= 1.0 and 0.0 <= report.repeat_within_10 <= 1.0
    assert -1.0 <= report.spearman <= 1.0 and report.repeat_median >= 0.0
    assert report.repeats == 2  # one round in each of the two passes
    assert report.speed_ratio > 0  # the reference workload, timed now, against the recorded 10 ms
    assert 0.0 <= report.within_10_as_measured <= 1.0
    # A profile with no reference for its backend (made before, or for another engine): compared at
    # the fastest speed the validation saw, no ratio to a calibration.
    save_hardware(hw, profile, {"fitted_on": [], "reference_ms": 10.0, "reference_backend": "other"})
    assert validate(profile, configs[:1], repeats=1).speed_ratio is None
    assert report.backend == backend
    json_path, png_path = write_report(report, tmp_path / "report")
    assert json.loads(json_path.read_text())["hardware"] == "test-cpu"
    assert png_path.read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------- suggest


def test_suggest_writes_a_config_that_trains(tmp_path):
    static = predict("laud_resnet50", CPU, mode="static", input_size=96).model_ms
    target = 0.7 * static
    result = suggest("laud_resnet50", CPU, target, input_size=96, modes=("spatial", "layer"))
    assert result.choice.feasible and result.choice.predicted_ms <= target
    assert {o.mode for o in result.options} == {"spatial", "layer"}
    assert 0.0 < result.choice.density < 1.0 and 0.0 < result.choice.macs_ratio < 1.0
    path = tmp_path / "suggested.yaml"
    write_config(result, path)
    config = TrainConfig.load(path)
    assert (config.model, config.image_size) == ("laud_resnet50", 96)
    assert config.target == pytest.approx(result.choice.macs_ratio, abs=1e-4)
    assert config.mode.split("-")[0] == result.choice.mode
    assert path.read_text().startswith("# laudnet suggest")


def test_suggest_explains_targets_it_cannot_help_with():
    static = predict("laud_resnet50", CPU, mode="static", input_size=96).model_ms
    with pytest.raises(ValueError, match="already meets"):
        suggest("laud_resnet50", CPU, 2 * static, input_size=96, modes=("layer",))
    with pytest.raises(ValueError, match="no mode of laud_resnet50 meets"):
        suggest("laud_resnet50", CPU, 0.01 * static, input_size=96, modes=("layer",))
    with pytest.raises(ValueError, match="target latency must be a positive"):
        suggest("laud_resnet50", CPU, -1.0)


def test_suggest_cli(tmp_path, capsys):
    _, profile = _profile(tmp_path)
    static = predict("laud_resnet50", profile, mode="static", input_size=96).model_ms
    output = tmp_path / "config.yaml"
    code = main(["latency", "suggest", "laud_resnet50", "--hardware", str(profile), "--target-ms", f"{0.75 * static:.3f}",
                 "--input", "96", "--modes", "layer-spatial", "-o", str(output), "--json", "--measure"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["written"] == str(output) and printed["choice"]["feasible"]
    assert printed["measured_ms"] > 0 and printed["predicted_for_measured_masks_ms"] > 0
    assert yaml.safe_load(output.read_text())["model"] == "laud_resnet50"
    TrainConfig.load(output)


def test_calibrating_the_onnxruntime_engine(tmp_path):
    configs = (EngineConfig.build("laud_resnet50", 64, "spatial", "2", density=0.5),
               EngineConfig.build("laud_regnet_y_400mf", 64, "channel", channel_granularity="8", density=0.5))
    result = calibrate("cpu", threads=1, budget_s=1.0, configs=configs)  # ONNX Runtime: the CPU default
    hw = result.hardware
    assert hw.engine.backend == "onnxruntime" and result.record["backend"] == "onnxruntime"
    assert "onnxruntime" in result.record
    # the speed every measurement was scaled to: the reference workload, on the engine priced
    assert result.record["reference_ms"] > 0 and result.record["reference_backend"] == "onnxruntime"
    fitted = {k.kind for k in result.kinds if k.samples}
    assert {"conv", "matmul", "grouped_matmul", "gather", "slice", "scatter"} <= fitted
    assert len(result.block_samples) == 2 * (16 + 2)  # every block, the stem and the head of both models
    assert all(s.seconds > 0 for s in result.operator_samples + result.block_samples)
    assert predict("laud_resnet50", hw, mode="spatial", density=0.5, spatial_granularity=2, input_size=64).model_ms > 0
    with pytest.raises(ValueError, match="cannot calibrate backend 'triton'"):
        calibrate("cpu", budget_s=1.0, backend="triton", configs=configs)


def test_calibrate_cli_rejects_a_bad_budget(capsys):
    assert main(["latency", "calibrate", "--budget", "soon"]) == 2
    assert "duration" in capsys.readouterr().err


def test_a_measurement_takes_its_parts_from_its_fastest_rounds():
    """A block's time is its mean over the fastest rounds, not its own minimum wherever it fell: here
    the block's fastest reading lies in a slow round. The parts add up to the fastest plain run."""
    rounds = [[1.0, 2.0, 1.0], [3.0, 1.5, 3.0], [1.0, 2.2, 0.8], [3.0, 1.6, 3.1]]
    parts = measure.typical_parts(rounds, model_ms=4.0)
    assert parts == pytest.approx([1.0, 2.1, 0.9])
    assert measure.typical_parts(rounds, model_ms=2.0) == pytest.approx([0.5, 1.05, 0.45])
