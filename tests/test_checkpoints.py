"""Checkpoints that cannot surprise: every unreadable file is one line saying why, and a checkpoint
loads only into the model (architecture and dynamic spec) it was trained as."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from laudnet import create_model
from laudnet.errors import CheckpointError, CheckpointWarning, MissingFileError
from laudnet.io import load_checkpoint, save_torch, write_text
from laudnet.models import checkpoint_metadata, model_from_checkpoint

from helpers import randomize_, randomize_maskers_

TINY = dict(width_multiplier=0.125, layers=(1, 1, 1, 1), num_classes=3)


def _laudnet_checkpoint(path, **kwargs):
    model = randomize_maskers_(randomize_(create_model("laud_resnet50", **TINY, **kwargs), 1), 2)
    torch.save({"model": model.state_dict(), "model_config": checkpoint_metadata(model), "epoch": 1}, path)
    return model


# -- unreadable files ------------------------------------------------------------------------

def test_every_unreadable_checkpoint_is_one_line_saying_why(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.zeros(1000)}}, good)
    data = good.read_bytes()
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(100)}, legacy, _use_new_zipfile_serialization=False)
    cases = {
        "empty.pth": (b"", "the file is empty (0 bytes"),
        "truncated.pth": (data[: len(data) // 2], "it is truncated or corrupt (an incomplete torch zip archive"),
        "legacy.pth": (legacy.read_bytes()[:-20], "it is truncated or corrupt (the pickled data ends early)"),
        "notes.pth": (b"my notes, not weights", "it is not a checkpoint (expected a torch .pth/.pt file or a "),
        "empty.safetensors": (b"", "the file is empty"),
        "cut.safetensors": (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":", "it is truncated or not a safetensors file"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(path)
        text = str(error.value)
        assert text.startswith(f"cannot read checkpoint {path}: ") and message in text and "\n" not in text, text
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match="holds a Tensor, expected a dict of tensors"):
        load_checkpoint(tmp_path / "tensor.pth")
    with pytest.raises(MissingFileError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pth")


def test_a_malicious_pickle_never_runs_and_its_global_is_named(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    text = str(error.value)
    assert "it holds code or Python objects that laudnet will not load (it needs the global posix.mkdir)" in text
    assert "weights_only=False" not in text and "\n" not in text
    assert not marker.exists()


# -- what a checkpoint holds -------------------------------------------------------------------

def test_a_checkpoint_of_another_spec_is_an_error_naming_both(tmp_path):
    path = tmp_path / "layer.pth"
    trained = _laudnet_checkpoint(path, mode="layer")
    with pytest.raises(CheckpointError, match=rf"{path} was trained as laud_resnet50 layer-layer-layer-layer; this "
                                              r"model is laud_resnet50 spatial-spatial-spatial-spatial S=1-1-1-1 "
                                              r"\(stage 1: layer vs spatial S=1;.*model_from_checkpoint"):
        create_model("laud_resnet50", mode="spatial", weights=path, **TINY)
    path4 = tmp_path / "s4.pth"
    _laudnet_checkpoint(path4, mode="spatial", spatial_granularity="4-4-2-1")
    with pytest.raises(CheckpointError, match=r"stage 1: spatial S=4 vs spatial S=1; stage 2: spatial S=4 vs spatial "
                                              r"S=1; stage 3: spatial S=2 vs spatial S=1\)"):
        create_model("laud_resnet50", mode="spatial", weights=path4, **TINY)
    before_bn = tmp_path / "before_bn.pth"
    _laudnet_checkpoint(before_bn, mode="channel", channel_mask_placement="before_bn")
    with pytest.raises(CheckpointError, match="channel_mask_placement: 'before_bn' vs 'after_act'"):
        create_model("laud_resnet50", mode="channel", weights=before_bn, **TINY)
    # Asked for: the backbone only, with a warning saying what differs.
    with pytest.warns(CheckpointWarning, match="stage 1: layer vs spatial S=1.*loading its backbone only"):
        model = create_model("laud_resnet50", mode="spatial", weights=path, strict_spec=False, **TINY)
    trained_state = trained.state_dict()
    for key, value in model.state_dict().items():
        if ".masker_" in key:
            assert not torch.equal(value, trained_state[key]), key
        else:
            assert torch.equal(value, trained_state[key]), key
    assert "strict_spec" not in model.build_config["kwargs"]


def test_static_checkpoints_start_any_dynamic_model_and_rebuilds_are_exact(tmp_path):
    static = tmp_path / "static.pth"
    _laudnet_checkpoint(static, mode="static")
    model = create_model("laud_resnet50", mode="both", spatial_granularity=2, weights=static, **TINY)
    assert torch.equal(model.state_dict()["conv1.weight"], torch.load(static)["model"]["conv1.weight"])
    path = tmp_path / "both.pth"
    trained = _laudnet_checkpoint(path, mode="both", spatial_granularity="2-2-1-1", channel_granularity=4).eval()
    rebuilt = model_from_checkpoint(path).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), trained(x), rtol=0, atol=0)


def test_wrong_architecture_detection_checkpoints_and_missing_maskers(tmp_path):
    path = tmp_path / "regnet.pth"
    regnet = create_model("laud_regnet_y_400mf", mode="spatial", num_classes=3)
    torch.save({"model": regnet.state_dict(), "model_config": checkpoint_metadata(regnet)}, path)
    with pytest.raises(CheckpointError, match=r"regnet.pth holds a laud_regnet_y_400mf spatial.* model; this model is "
                                              r"a laud_resnet50$"):
        create_model("laud_resnet50", weights=path, **TINY)
    detection = tmp_path / "detector.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "model_config": {"name": "faster_rcnn", "kwargs": {}}}, detection)
    with pytest.raises(CheckpointError, match=rf"{detection} is a laudnet detection checkpoint \(faster_rcnn\); "
                                              rf"evaluate it with `laudnet detect eval --checkpoint {detection}`"):
        model_from_checkpoint(detection)
    bare = tmp_path / "no_maskers.pth"
    model = create_model("laud_resnet50", mode="spatial", **TINY)
    backbone = {k: v for k, v in model.state_dict().items() if ".masker_" not in k}
    torch.save({"model": backbone, "model_config": checkpoint_metadata(model)}, bare)
    with pytest.warns(CheckpointWarning, match="describes a dynamic model .* but holds no masker weights"):
        model_from_checkpoint(bare)
    torch.save({"model": backbone}, bare)
    with pytest.raises(CheckpointError, match=r"has no 'model_config', so it is not a laudnet checkpoint .*"
                                              r"laudnet.models.from_official\(path\)"):
        model_from_checkpoint(bare)


# -- files laudnet writes ----------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_text(tmp_path / "summary.json", "{}")
        save_torch({"a": torch.zeros(1)}, tmp_path / "last.pth")
    finally:
        os.umask(previous)
    for name in ("summary.json", "last.pth"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "summary.json"]
