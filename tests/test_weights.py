"""Weight loading: torchvision files, wrong architectures, and official LAUDNet checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models import RegNet_Y_400MF_Weights, ResNet50_Weights

from laudnet import create_model
from laudnet.io import load_checkpoint
from laudnet.models import convert_official_state_dict, load_state_dict
from laudnet.models.weights import resolve_weights

from helpers import randomize_, randomize_maskers_


def test_torchvision_state_dict_round_trips_through_a_local_file(tmp_path):
    torch.manual_seed(0)
    reference = randomize_(torchvision.models.resnet50()).eval()
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("laud_resnet50", mode="channel", weights=str(path)).eval()
    backbone_keys = {k for k in model.state_dict() if ".masker_" not in k}
    assert backbone_keys == set(reference.state_dict())
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-4)


def test_wrong_architecture_is_an_error_naming_keys(tmp_path):
    path = tmp_path / "regnet.pth"
    torch.save(torchvision.models.regnet_y_400mf().state_dict(), path)
    with pytest.raises(ValueError, match=r"cannot load .*regnet.pth into laud_resnet50: .*missing keys conv1.weight"):
        create_model("laud_resnet50", weights=path)


def test_shape_mismatch_is_reported_as_a_different_architecture(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(num_classes=10).state_dict(), path)
    with pytest.raises(ValueError, match=r"shape mismatch .* fc.weight: \(10, 2048\) vs \(1000, 2048\)"):
        create_model("laud_resnet50", weights=path)


def test_weights_argument_validation():
    assert resolve_weights("IMAGENET1K_V2", ResNet50_Weights) is ResNet50_Weights.IMAGENET1K_V2
    assert resolve_weights("DEFAULT", ResNet50_Weights) is ResNet50_Weights.DEFAULT
    with pytest.raises(ValueError, match="belong to another architecture; this model accepts ResNet50_Weights"):
        create_model("laud_resnet50", weights=RegNet_Y_400MF_Weights.IMAGENET1K_V1)
    with pytest.raises(ValueError, match="neither an existing file nor a ResNet50_Weights value"):
        create_model("laud_resnet50", weights="no/such/file.pth")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pth")


def test_checkpoints_never_unpickle_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(path)


# -- official LAUDNet checkpoints ------------------------------------------------------------

def _bn(x, state, prefix):
    return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                        state[f"{prefix}.weight"], state[f"{prefix}.bias"], False, 0.0, 1e-5)


def _official_logits(state: dict, x: torch.Tensor, mode: str, granularity: int) -> torch.Tensor:
    """The official LAUDNet ResNet forward in eval mode, written out from its description:
    channel masks (MLP on the pooled input) multiply conv outputs *before* BN; layer gates
    (1×1 conv on the pooled input) multiply the BN3 output."""
    x = F.max_pool2d(F.relu(_bn(F.conv2d(x, state["conv1.weight"], stride=2, padding=3), state, "bn1")), 3, 2, 1)
    for stage in range(1, 5):
        i = 0
        while f"layer{stage}.{i}.conv1.weight" in state:
            p = f"layer{stage}.{i}"
            stride = 2 if stage > 1 and i == 0 else 1
            channel = gate = None
            if mode == "channel":
                hidden = F.relu(F.linear(x.mean((2, 3)), state[f"{p}.masker_channel.conv.0.weight"],
                                         state[f"{p}.masker_channel.conv.0.bias"]))
                logits = F.linear(hidden, state[f"{p}.masker_channel.conv.2.weight"], state[f"{p}.masker_channel.conv.2.bias"])
                groups = logits.shape[1] // 2
                channel = (logits[:, :groups] >= logits[:, groups:]).float().repeat_interleave(granularity, 1)[..., None, None]
            else:
                logits = F.conv2d(F.adaptive_avg_pool2d(x, 1), state[f"{p}.masker_spatial.conv.weight"],
                                  state[f"{p}.masker_spatial.conv.bias"])
                gate = (logits[:, :1] >= logits[:, 1:]).float()
            out = F.conv2d(x, state[f"{p}.conv1.weight"])
            out = F.relu(_bn(out * channel if channel is not None else out, state, f"{p}.bn1"))
            out = F.conv2d(out, state[f"{p}.conv2.weight"], stride=stride, padding=1)
            out = F.relu(_bn(out * channel if channel is not None else out, state, f"{p}.bn2"))
            out = _bn(F.conv2d(out, state[f"{p}.conv3.weight"]), state, f"{p}.bn3")
            if gate is not None:
                out = out * gate
            identity = x
            if f"{p}.downsample.0.weight" in state:
                identity = _bn(F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=stride), state, f"{p}.downsample.1")
            x = F.relu(out + identity)
            i += 1
    return F.linear(x.mean((2, 3)), state["fc.weight"], state["fc.bias"])


@pytest.mark.parametrize("mode, granularity", [("channel", 2), ("layer", 1)])
def test_official_checkpoint_converter_reproduces_official_logits(tmp_path, mode, granularity):
    kwargs = dict(mode=mode, channel_granularity=granularity, width_multiplier=0.25, layers=(2, 1, 2, 1))
    source = randomize_maskers_(randomize_(create_model("laud_resnet50", **kwargs), 1), 2, bias=0.2)
    official = {k.replace(".masker_channel.layers.", ".masker_channel.conv."): v for k, v in source.state_dict().items()}
    path = tmp_path / "official.pth.tar"
    torch.save({"state_dict": official, "model": "uni_resnet50", "hyper_set": "Namespace(...)", "temp": 0.1}, path)

    model = create_model("laud_resnet50", channel_mask_placement="before_bn", **kwargs).eval()
    load_state_dict(model, convert_official_state_dict(load_checkpoint(path)), str(path))

    x = torch.randn(4, 3, 96, 96)
    with torch.no_grad():
        out = model(x, return_stats=True)
        expected = _official_logits(official, x, mode, granularity)
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-4)
    ratio = float(out.stats.macs_ratio.mean())
    assert 0.05 < ratio < 0.95, "the random maskers should skip part of the work"


def test_laudnet_checkpoint_rebuilds_the_model(tmp_path):
    from laudnet.models import checkpoint_metadata, model_from_checkpoint

    model = randomize_maskers_(create_model("laud_regnet_y_400mf", mode="both", spatial_granularity="4-2-2-1",
                                            num_classes=5), 4).eval()
    assert model.build_config["kwargs"]["channel_granularity"] == [8, 8, 8, 8]
    path = tmp_path / "last.pth"
    torch.save({"model": model.state_dict(), "model_config": checkpoint_metadata(model), "epoch": 3}, path)
    rebuilt = model_from_checkpoint(path).eval()
    assert rebuilt.dynamic_spec == model.dynamic_spec
    x = torch.randn(2, 3, 64, 72)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    torch.save({"model": model.state_dict()}, path)
    with pytest.raises(ValueError, match="has no 'model_config'"):
        model_from_checkpoint(path)
