"""End-to-end training: learning, mask placement, resume after SIGKILL, DDP, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from laudnet.cli import main
from laudnet.io import load_checkpoint
from laudnet.models import model_from_checkpoint
from laudnet.classification import SyntheticShapes

from helpers import TINY_RUN

CHANCE = 1 / TINY_RUN["synthetic_classes"]


def test_short_run_learns_and_meets_its_target(trained_run):
    output, summary = trained_run
    assert summary["top1"] > 0.8, f"accuracy {summary['top1']:.3f} (chance {CHANCE:.2f})"
    assert abs(summary["macs_ratio"] - TINY_RUN["target"]) <= 0.05
    on_disk = json.loads((output / "summary.json").read_text())
    assert {"top1", "top5", "macs_ratio", "target", "blocks"} <= set(on_disk)
    assert len(on_disk["blocks"]) == 8 and on_disk["target"] == TINY_RUN["target"]
    for name in ("last.pth", "best.pth", "last.safetensors", "metrics.csv", "config.yaml", "pretrain/summary.json"):
        assert (output / name).exists(), name
    history = load_checkpoint(output / "last.pth")["history"]
    assert len(history) == TINY_RUN["epochs"] and history[-1]["temperature"] == pytest.approx(0.1)


def test_spatial_masks_cover_the_object(trained_run):
    """Cells over the object are kept far more often than cells overall."""
    output, _ = trained_run
    model = model_from_checkpoint(output / "last.pth").eval()
    data = SyntheticShapes(size=128, num_classes=TINY_RUN["synthetic_classes"], image_size=TINY_RUN["image_size"],
                           object_size=TINY_RUN["synthetic_object_size"], seed=0, split="val")
    images = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():
        stats = model(images, return_stats=True).stats
    first = stats.blocks[0]  # stage 1: a 12×12 grid of 4-pixel cells over the 48-pixel image
    cells = first.spatial_mask[:, 0]
    stride = TINY_RUN["image_size"] // cells.shape[-1]
    on_object, count = 0.0, 0
    for i in range(len(data)):
        box = data.object_box(i)
        region = cells[i, box.top // stride:(box.bottom - 1) // stride + 1, box.left // stride:(box.right - 1) // stride + 1]
        on_object += float(region.sum())
        count += region.numel()
    object_rate, density = on_object / count, float(cells.mean())
    print(f"stage-1 cells on over the object {object_rate:.3f}, overall density {density:.3f}")
    assert object_rate > 2 * density


def test_target_one_keeps_the_masks_on(trained_run, tmp_path):
    """Without a MACs reduction to meet, fine-tuning a pretrained model keeps the model near its full MACs,
    far above what the same weights reach at target 0.6. The quadratic loss has almost no pull near the
    target itself, so under Gumbel noise and the task's gradient a block may close part of its cells in
    one epoch: runs of this test saw the model at 0.92-0.99 of its MACs, single blocks at 0.58-0.95 and
    the blocks' mean at 0.86-0.96 (training on two threads is not bit-reproducible)."""
    from laudnet.classification import train
    from laudnet.classification import TrainConfig

    pretrained = trained_run[0] / "pretrain" / "last.pth"
    config = {**TINY_RUN, "pretrain_epochs": 0, "epochs": 1, "target": 1.0, "synthetic_train_size": 640,
              "weights": str(pretrained), "output": str(tmp_path / "full")}
    summary = train(TrainConfig.from_dict(config), progress=False)
    print("densities:", [round(b["conv3_density"], 3) for b in summary["blocks"]], "MACs", summary["macs_ratio"])
    assert summary["macs_ratio"] >= 0.9
    assert summary["macs_ratio"] >= trained_run[1]["macs_ratio"] + 0.25
    densities = [block["conv3_density"] for block in summary["blocks"]]
    assert sum(densities) / len(densities) >= 0.8
    for block in summary["blocks"]:
        assert block["conv3_density"] >= 0.5, block["name"]


def test_eval_command_reproduces_the_summary(trained_run, capsys):
    output, summary = trained_run
    assert main(["eval", "--checkpoint", str(output / "last.pth"), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == pytest.approx(summary["top1"])
    assert result["macs_ratio"] == pytest.approx(summary["macs_ratio"])


# -- resume and DDP: real processes ----------------------------------------------------------

DDP_VAL_SIZE = 256
SMALL = [f"--{k.replace('_', '-')}={json.dumps(v)}" for k, v in {
    **TINY_RUN, "pretrain_epochs": 0, "epochs": 4, "synthetic_train_size": 640, "synthetic_val_size": DDP_VAL_SIZE,
    "batch_size": 32, "log_every": 100}.items()]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _train_cmd(output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "laudnet", "train", *SMALL, f"--output={output}", "--no-progress", *extra]


@pytest.fixture
def pretrained(trained_run) -> str:
    """The static model the shared run pre-trained: a realistic starting point for short runs."""
    return f"--weights={trained_run[0] / 'pretrain' / 'last.pth'}"


def _final(output: Path) -> tuple[dict, dict]:
    checkpoint = load_checkpoint(output / "last.pth")
    return json.loads((output / "summary.json").read_text()), checkpoint["model"]


def test_resume_after_sigkill_ends_where_the_uninterrupted_run_ends(tmp_path, pretrained):
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight, pretrained), check=True, env=_env(), capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_cmd(killed, pretrained), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "last.pth").exists():  # the first epoch is done ...
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.5)  # ... and the second is under way
    assert process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert load_checkpoint(killed / "last.pth")["epoch"] < 3

    subprocess.run(_train_cmd(killed, pretrained, "--resume"), check=True, env=_env(), capture_output=True)
    summary_a, weights_a = _final(straight)
    summary_b, weights_b = _final(killed)
    assert summary_b["top1"] == summary_a["top1"] and summary_b["macs_ratio"] == pytest.approx(summary_a["macs_ratio"])
    for key in weights_a:
        torch.testing.assert_close(weights_b[key], weights_a[key], rtol=0, atol=1e-6, msg=key)


def test_ddp_with_two_processes_trains_like_one_process(tmp_path, pretrained):
    single, double = tmp_path / "one", tmp_path / "two"
    subprocess.run(_train_cmd(single, pretrained), check=True, env=_env(), capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "laudnet"]
    result = subprocess.run(torchrun + _train_cmd(double, pretrained)[3:], env=_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    one, _ = _final(single)
    two, _ = _final(double)
    assert two["images"] == one["images"] == DDP_VAL_SIZE  # the ranks' shares are gathered, none twice
    assert (double / "last.pth").exists()
    print(f"1 process: top-1 {one['top1']:.3f} MACs {one['macs_ratio']:.3f}; "
          f"2 processes: top-1 {two['top1']:.3f} MACs {two['macs_ratio']:.3f}")
    # Two ranks are not bit-identical to one process: each draws its own Gumbel noise and normalises
    # its half batch (SyncBatchNorm needs CUDA), and short runs under a falling temperature leave
    # accuracy noisy. With batches of 16 per rank (not 8) and four epochs, runs on two machines gave
    # 0.88-0.94 (one process) and 0.59-0.88 (two); with 8 per rank and three epochs one seed gave
    # 0.30 on two ranks. So the runs are compared as two runs of one recipe: both learn, and both
    # meet the MACs target alike.
    assert min(one["top1"], two["top1"]) > 1.5 * CHANCE
    assert abs(two["macs_ratio"] - one["macs_ratio"]) <= 0.05


# -- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--data", "{missing}"], "data folder not found"),
    (["--data", "{empty}"], "has no class folders"),
    (["--target", "1.5"], "target must be in (0, 1]"),
    (["--target", "0"], "target must be in (0, 1]"),
    (["--model", "laud_vgg16"], "unknown model 'laud_vgg16'"),
    (["--mode", "spatial-sometimes-spatial-spatial"], "unknown mode 'sometimes'"),
    (["--weights", "{corrupt}"], "cannot read checkpoint"),
    (["--weights", "{regnet}"], "cannot load"),
    (["--teacher", "{corrupt}"], "cannot read checkpoint"),
])
def test_bad_input_is_one_clear_line_and_nothing_is_overwritten(tmp_path, capsys, args, message):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir(parents=True)
    (tmp_path / "corrupt.pth").write_bytes(b"\x00garbage")
    torch.save({"model": {"stem.0.weight": torch.zeros(32, 3, 3, 3)}}, tmp_path / "regnet.pth")
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("previous results")
    paths = {"missing": str(tmp_path / "missing"), "empty": str(tmp_path / "empty"),
             "corrupt": str(tmp_path / "corrupt.pth"), "regnet": str(tmp_path / "regnet.pth")}
    args = [a.format(**paths) for a in args]
    code = main(["train", *SMALL, f"--output={output}", "--no-progress", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("laudnet train: error: ") and message in err[0], err
    assert sorted(p.name for p in output.iterdir()) == ["keep.txt"]


def test_an_existing_run_is_not_overwritten_without_resume(trained_run, capsys):
    output, _ = trained_run
    before = (output / "last.pth").stat().st_mtime_ns
    code = main(["train", *SMALL, f"--output={output}", "--no-progress"])
    assert code == 2 and "pass --resume" in capsys.readouterr().err
    assert (output / "last.pth").stat().st_mtime_ns == before


def test_corrupt_checkpoint_for_eval_and_resume(tmp_path, capsys):
    bad = tmp_path / "last.pth"
    bad.write_bytes(b"truncated")
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    assert main(["train", *SMALL, f"--output={tmp_path}", "--resume", "--no-progress"]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    assert bad.read_bytes() == b"truncated"
