"""`torchrun --nproc_per_node=2 -m functrain.cli train CONFIG --launcher pytorch` (gloo on CPU):
the launch works, the ranks train in step, only rank 0 writes, and mmengine's
ZeroRedundancyOptimizer config (sharded optimizer state) gives the unsharded run's numbers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "configs" / "digits_multistep_1x.py"
SHORT = ["train_cfg.max_epochs=1", "default_hooks.logger.interval=10"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(work_dir: Path, *options: str) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        str(torchrun), "--nproc_per_node=2", f"--master_port={free_port()}",
        "-m", "functrain.cli", "train", str(CONFIG), "--launcher", "pytorch", "--device", "cpu",
        "--work-dir", str(work_dir), "--cfg-options", *SHORT, *options,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def final_state(work_dir: Path) -> dict:
    checkpoint = torch.load(work_dir / "epoch_1.pth", weights_only=True, map_location="cpu")
    return checkpoint["state"]


def test_torchrun_two_ranks_plain_and_sharded(tmp_path):
    plain, sharded = tmp_path / "plain", tmp_path / "zero"
    run = torchrun(plain)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("outputs (logs, checkpoints, plots) in") == 1  # rank 0 only
    run = torchrun(
        sharded,
        "optim_wrapper.optimizer.type=ZeroRedundancyOptimizer",
        "optim_wrapper.optimizer.optimizer_type=SGD",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = final_state(plain), final_state(sharded)
    assert a["iteration"] == b["iteration"] == 20  # 630 training samples / (2 ranks x 16)
    for name, value in a["params"].items():
        scale = value.abs().max().clamp_min(1e-12)
        assert (b["params"][name] - value).abs().max() / scale <= 1e-6, name
    for name in ("plain", "zero"):
        logs = list((tmp_path / name).glob("*/*.log"))
        assert len(logs) == 1, logs  # one text log: rank 0's


def test_unsupported_launcher_is_rejected(capsys):
    from functrain.cli import main

    with pytest.raises(SystemExit):  # argparse lists the supported launchers
        main(["train", str(CONFIG), "--launcher", "slurm"])
    assert "invalid choice: 'slurm'" in capsys.readouterr().err
