"""The loop demo (examples/train_digits.py) trains, logs, validates, checkpoints and plots;
the loop benchmark runs."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import torch

from functrain.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_digits_demo(tmp_path):
    threads = torch.get_num_threads()
    try:
        demo = load(ROOT / "examples" / "train_digits.py")
        result = demo.main(work_dir=str(tmp_path), epochs=6, quiet=True)
        # resuming with more epochs continues from the last checkpoint
        resumed = demo.main(work_dir=str(tmp_path), epochs=7, quiet=True, resume=True)
    finally:
        torch.set_num_threads(threads)
    assert result["test_acc"] > 0.9 and result["best_val_acc"] > 0.9  # chance is 0.1
    names = {p.name for p in tmp_path.iterdir()}
    assert {"epoch_5.pth", "epoch_6.pth", "epoch_7.pth", "last_checkpoint"} <= names
    assert "epoch_4.pth" not in names  # max_keep_ckpts=3
    assert any(n.startswith("best_acc_epoch_") for n in names)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert load_checkpoint(tmp_path / "epoch_7.pth")["meta"]["epoch"] == 7
    assert resumed["test_acc"] > 0.9
    logs = sorted(tmp_path.glob("*/scalars.json"))
    assert len(logs) == 2  # one log dir per run
    records = [json.loads(line) for line in logs[0].read_text().splitlines()]
    assert any("lr" in r and "grad_norm" in r for r in records)
    assert [r["step"] for r in records if "acc" in r and "lr" not in r] == [1, 2, 3, 4, 5, 6]


def test_train_digits_from_the_command_line(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "train_digits.py"),
            "--epochs",
            "2",
            "--work-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    assert "Epoch(train) [2][" in out and "Epoch(val) [2]" in out and "test accuracy" in out


def test_loop_benchmark_runs(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "loop.py"),
            "--epochs",
            "1",
            "--samples",
            "512",
            "--width",
            "32",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    # rows: default callbacks, + checkpoints, grad="func", compiled
    assert "plain torch loop" in out and len(re.findall(r"ratio \d+\.\d+", out)) == 4
