"""The README's quick start runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_opens_with_the_two_commands():
    first_block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]


def test_quick_start_code_runs():
    code = re.search(r"## Quick start\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    state = namespace["state"]
    assert float(state[0].norm) > 0
    assert 0 < float(state[2].lr) <= 3e-3


def test_schedules_code_runs():
    code = re.search(r"## Schedules\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    lr = namespace["lr"]
    # LinearLR warm-up from 0.02 * 0.001, then MultiStepLR at epochs 8 and 11.
    assert lr(0) == pytest.approx(0.02 * 0.001)
    assert lr(600) == pytest.approx(0.02)
    assert lr(8 * 1000) == pytest.approx(0.002)
    assert lr(11 * 1000) == pytest.approx(0.0002)


def test_multipliers_code_runs():
    code = re.search(
        r"## Per-parameter multipliers.*?```python\n(.*?)```", README.read_text(), re.S
    ).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    mults = namespace["mults"]
    assert mults["0.weight"].lr_mult == 0.1 and mults["1.weight"].decay_mult == 0.0


def test_combinators_code_runs():
    code = re.search(
        r"## Combinators, accumulation.*?```python\n(.*?)```", README.read_text(), re.S
    ).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert "lr" in " ".join(namespace["ft"].values_in_force(namespace["state"]))


def test_training_loop_code_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = re.search(r"## Training loop\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    state = namespace["state"]
    assert state.epoch == 12 and state.iteration == 12 * 4
    assert (tmp_path / "work_dirs" / "readme" / "last_checkpoint").exists()


def test_configs_code_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = re.search(
        r"## Configs and the `functrain`.*?```python\n(.*?)```", README.read_text(), re.S
    ).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    state = namespace["state"]
    assert state.epoch == 2 and state.iteration == 2 * 40
    assert (tmp_path / "work_dirs" / "readme_config" / "epoch_2.pth").exists()


def test_config_registry_example_ports_the_seed_classes(monkeypatch):
    from functrain.config import HOOKS, OPTIMIZERS

    # Register into copies: examples/configs/my_project registers its own MyOptimizer/MyHook.
    for registry, name in ((OPTIMIZERS, "MyOptimizer"), (HOOKS, "MyHook")):
        entries = {k: v for k, v in registry._entries.items() if k != name}
        monkeypatch.setattr(registry, "_entries", entries)
    code = re.search(
        r"## Configs and the `functrain`.*?```python\n.*?```.*?```python\n(.*?)```",
        README.read_text(),
        re.S,
    ).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert OPTIMIZERS.get("MyOptimizer") is namespace["MyOptimizer"]
    assert HOOKS.get("MyHook") is namespace["MyHook"]


def test_distributed_code_runs_in_one_process():
    code = re.search(
        r"## Distributed data parallel.*?```python\n(.*?)```", README.read_text(), re.S
    ).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    state = namespace["state"]
    assert state.opt_state is not None and float(namespace["metrics"]["loss"]) > 0
