"""The examples run end to end and learn something."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_learns_digits():
    metrics = load("quickstart").main(epochs=6, seed=1)
    # Chance is 0.1; a few epochs of AdamW on the MLP reach well above 0.9.
    assert metrics["test_acc"] > 0.9
    assert metrics["train_acc"] > 0.9


def test_quickstart_script_runs_from_the_command_line():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--epochs", "2"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    assert "test accuracy" in out and "grad_norm" in out


def test_step_benchmark_runs_and_prints_ratios():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step.py"), "--repeats", "1", "--small-only"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    assert "vs torch fused" in out and "apply_gradients donate" in out
