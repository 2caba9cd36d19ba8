"""laudnet against the official LAUDNet code: official models, saved as the official trainer saves them,
rebuilt by ``laudnet.models.from_official`` with the same logits.

For each case the official model (``imagenet_classification/models`` of a LeapLabTHU/LAUDNet
checkout) gets random weights, masker weights and BatchNorm statistics, is saved in eval mode as its
``train/main.py`` saves it (``model``, ``hyper_set = str(args)``, ``state_dict``), and is loaded with
``from_official(path)`` alone; the table gives the largest logit difference relative to the largest
logit, whether every top-1 class agrees and laudnet's MACs ratio (the masks really skip work).
The official RegNet has no layer mode (its constructor accepts channel, spatial and both).

    python benchmarks/official_checkpoints.py --official /path/to/LAUDNet/imagenet_classification
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from laudnet.models import from_official
from laudnet.reporting import format_table

SIZE = 64
CASES = (  # official arch, dyn_mode (all stages), S, G, channel masker, masker layers
    ("uni_resnet50", "spatial", "4-4-2-1", "1-1-1-1", "MLP", 2),
    ("uni_resnet50", "channel", "1-1-1-1", "2-2-2-2", "MLP", 1),
    ("uni_resnet50", "layer", "1-1-1-1", "1-1-1-1", "MLP", 2),
    ("uni_resnet50", "both", "2-2-2-1", "4-4-4-4", "conv_linear", 2),
    ("uni_resnet101", "channel", "1-1-1-1", "2-2-2-2", "MLP", 2),
    ("lad_regnet_y_400mf", "spatial", "4-4-2-1", "1-1-1-1", "MLP", 2),
    ("lad_regnet_y_400mf", "channel", "1-1-1-1", "1-1-1-1", "MLP", 2),
    ("lad_regnet_y_800mf", "both", "2-2-2-1", "1-1-1-1", "conv_linear", 2),
)


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split("-")]


def official_model(models, arch: str, mode: str, s: str, g: str, masker: str, layers: int) -> torch.nn.Module:
    """The official model with random weights (masker weights large enough to switch gates off)."""
    torch.manual_seed(0)
    net = getattr(models, arch)(input_size=SIZE, channel_dyn_granularity=_ints(g), spatial_mask_channel_group=[1] * 4,
                                mask_spatial_granularity=_ints(s), dyn_mode=[mode] * 4, lr_mult=1.0,
                                channel_masker=[masker] * 4, channel_masker_layers=[layers] * 4,
                                reduction_ratio=[16] * 4)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if "masker" in name else 0.05) + (1.0 if name.endswith("bn3.weight") else 0))
        for name, b in net.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.1)
    return net.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, type=Path,
                        help="the imagenet_classification folder of a LeapLabTHU/LAUDNet checkout")
    args = parser.parse_args()
    if not (args.official / "models" / "laud_resnet.py").is_file():
        sys.exit(f"{args.official} has no models/laud_resnet.py: give the official imagenet_classification folder")
    sys.path.insert(0, str(args.official))
    import models  # the official package

    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint.pth.tar"
        for arch, mode, s, g, masker, layers in CASES:
            net = official_model(models, arch, mode, s, g, masker, layers)
            hyper_set = str(argparse.Namespace(
                arch=arch, dyn_mode="-".join([mode] * 4), mask_spatial_granularity=s, channel_dyn_granularity=g,
                channel_masker="-".join([masker] * 4), channel_masker_layers="-".join([str(layers)] * 4),
                channel_masker_reduction="16-16-16-16", mask_channel_group="1-1-1-1", IMAGE_SIZE=SIZE))
            torch.save({"epoch": 1, "model": arch, "hyper_set": hyper_set, "state_dict": net.state_dict()}, path)
            with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                expected = net(x, 1.0)[0]
                out = from_official(path).eval()(x, return_stats=True)
            relative = float((out.logits - expected).abs().max() / expected.abs().max())
            same_top1 = bool((out.logits.argmax(1) == expected.argmax(1)).all())
            loader_warnings = sum("laudnet" in str(w.filename) for w in caught)
            rows.append([arch, mode, s, g, masker, layers, f"{relative:.1e}", "yes" if same_top1 else "NO",
                         float(out.stats.macs_ratio.mean()), loader_warnings])
    print(f"{SIZE}x{SIZE}, 4 images, eval mode")
    print(format_table(["official arch", "mode", "S", "G", "masker", "layers", "max rel. diff", "top-1 equal",
                        "MACs ratio", "warnings"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
