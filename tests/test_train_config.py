"""Training configuration: recipes, base files, overrides and errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from laudnet import create_model
from laudnet.classification import TrainConfig
from laudnet.training.config import add_config_arguments, overrides_from_args

ROOT = Path(__file__).resolve().parents[1] / "configs"
# Classification recipes; configs/detection/ holds detection configs (tested in test_detection_train.py).
CONFIGS = sorted(p for p in ROOT.rglob("*.yaml") if ROOT / "detection" not in p.parents)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name != "base.yaml"], ids=lambda p: p.stem)
def test_every_recipe_loads_and_builds_its_model(path):
    config = TrainConfig.load(path)
    with torch.device("meta"):
        model = create_model(config.model, mode=config.mode, spatial_granularity=config.spatial_granularity,
                             channel_granularity=config.channel_granularity, **config.model_kwargs)
    assert not model.dynamic_spec.is_static


def test_imagenet_recipes_follow_the_official_hyperparameters():
    config = TrainConfig.load(Path(__file__).resolve().parents[1] / "configs/imagenet/regnet_y_400mf_channel.yaml")
    assert (config.epochs, config.batch_size, config.lr, config.weight_decay) == (100, 1024, 0.08, 5e-5)
    assert (config.lambda_sparsity, config.alpha_distill, config.distill_temperature) == (10.0, 0.5, 4.0)
    assert (config.t0, config.t_last, config.temperature_schedule, config.target) == (5.0, 0.1, "exp", 0.5)
    assert config.backbone_lr_mult == 0.1 and config.nesterov


def test_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("epochs: 7\nlr: 0.5\n")
    (tmp_path / "run.yaml").write_text("base: base.yaml\nlr: 0.25\n")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainConfig)
    args = parser.parse_args(["--batch-size", "8", "--mode", "spatial-spatial-channel-static",
                              "--model-kwargs", "{layers: [1, 1, 1, 1]}", "--nesterov", "false"])
    config = TrainConfig.load(tmp_path / "run.yaml", overrides_from_args(args))
    assert (config.epochs, config.lr, config.batch_size) == (7, 0.25, 8)
    assert config.mode == "spatial-spatial-channel-static" and config.model_kwargs == {"layers": [1, 1, 1, 1]}
    assert config.nesterov is False
    config.save(tmp_path / "saved.yaml")
    assert TrainConfig.load(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize("text, message", [
    ("epochs: [1, 2]\n", "epochs must be an integer"),
    ("learning_rate: 0.1\n", "unknown config keys learning_rate"),
    ("- a\n- b\n", "must hold a mapping"),
    ("epochs: [1\n", "not valid YAML"),
    ("base: run.yaml\n", "includes itself"),
    ("optimizer: lamb\n", "optimizer must be one of sgd, adamw"),
    ("device: tpu\n", "device must be auto, cpu, cuda"),
])
def test_bad_config_files(tmp_path, text, message):
    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises(ValueError, match=message):
        TrainConfig.load(tmp_path / "run.yaml")


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        TrainConfig.load(tmp_path / "nope.yaml")


def test_defaults_are_the_official_recipe():
    config = TrainConfig()
    assert (config.lambda_sparsity, config.alpha_distill, config.distill_temperature, config.target) == (10.0, 0.5, 4.0, 0.5)
