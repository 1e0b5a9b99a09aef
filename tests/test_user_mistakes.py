"""Mistakes users make with configs, the command line, checkpoints and the Python API that
used to pass silently, print a raw traceback or give misleading advice (issue 12).

Each test fails on the code before its fix: a negative learning rate through
``--cfg-options`` trained (the lr became a schedule, which skipped ``sgd``'s check);
schedules that leave the valid range were accepted; ``momentum=1.5`` was accepted; a corrupt
checkpoint under ``--resume`` printed a traceback and exited 1; a checkpoint holding pickled
code was refused with torch's advice to re-run with ``weights_only=False``; and the rest of
the rows below gave a traceback or a message at the wrong key.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import functrain as ft
from functrain.checkpoint import (
    CheckpointError,
    find_loadable_checkpoint,
    first_foreign_object,
    load_checkpoint,
)
from functrain.cli import main
from functrain.config import ConfigError, build_runner
from functrain.config.file import ConfigFileError, parse_cfg_options
from functrain.schedules import cosine_annealing_lr, linear_lr
from functrain.transforms.validation import MOMENTUM, check_schedule, first_out_of_range

sys.path.insert(0, str(Path(__file__).parent))
from test_config_errors import base_config, put, render  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "configs"


def one_error_line(err: str) -> str:
    """The single ``functrain: error:`` line the command line prints, never a traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("functrain: error: "), lines[0]
    return lines[0]


# ----------------------------------------------------------------------------------------
# Hyperparameter ranges through configs, schedules and --cfg-options
# ----------------------------------------------------------------------------------------


def test_negative_lr_through_cfg_options_exits_2(tmp_path, capsys):
    """The user's report: the example config with lr=-0.1 trained with a climbing loss."""
    work = tmp_path / "work"
    argv = ["train", str(EXAMPLES / "digits_multistep_1x.py"), "--work-dir", str(work),
            "--device", "cpu", "--cfg-options", "optim_wrapper.optimizer.lr=-0.1"]  # fmt: skip
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("functrain: error: optim_wrapper.optimizer.lr: ")
    assert "Invalid lr: -0.1; lr must be >= 0" in line
    assert not work.exists()


def cosine_after_warmup(**kw: Any) -> list[dict[str, Any]]:
    """The base config's warmup, then a by-iteration cosine from iteration 5 (10 iterations
    per epoch: the base config trains 10 iterations)."""
    return [
        dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=5),
        dict(by_epoch=False, begin=5, **kw),
    ]


RANGE_ROWS = {
    # name: (edit, error path, hints)
    "momentum-1.5": (
        put("optim_wrapper.optimizer.momentum", 1.5),
        "optim_wrapper.optimizer.momentum",
        ("Invalid momentum: 1.5", "[0, 1]"),
    ),
    "lr-nan": (
        put("optim_wrapper.optimizer.lr", float("nan")),
        "optim_wrapper.optimizer.lr",
        ("NaN",),
    ),  # fmt: skip
    "adam-beta1-one": (
        put("optim_wrapper.optimizer", dict(type="Adam", lr=0.01, betas=(1.0, 0.999))),
        "optim_wrapper.optimizer.betas",
        ("Invalid betas[0]: 1.0", "[0, 1)"),
    ),
    "cosine-eta_min-negative": (
        put(
            "param_scheduler", cosine_after_warmup(type="CosineAnnealingLR", T_max=5, eta_min=-0.01)
        ),  # fmt: skip
        "param_scheduler[1]",
        # cos over 5 iterations from 0.01 to -0.01 crosses zero in its 4th iteration (8).
        (
            "CosineAnnealingLR (param_scheduler[1])",
            "lr to -0.00309",
            "at iteration 8",
            "lr must be >= 0",
        ),  # fmt: skip
    ),
    "momentum-schedule-above-1": (
        put(
            "param_scheduler",
            cosine_after_warmup(type="CosineAnnealingMomentum", T_max=5, eta_min=1.5),
        ),  # fmt: skip
        "param_scheduler[1]",
        # 0.9 + 0.6 * (1 - cos(2 pi / 5)) / 2 = 1.107 at the cosine's second iteration.
        (
            "CosineAnnealingMomentum",
            "momentum to 1.107",
            "at iteration 7",
            "momentum must be in [0, 1]",
        ),  # fmt: skip
    ),
    "adam-momentum-schedule-to-1": (
        lambda cfg: cfg.update(
            optim_wrapper=dict(optimizer=dict(type="Adam", lr=0.01)),
            param_scheduler=dict(
                type="CosineAnnealingMomentum", T_max=5, eta_min=1.0, by_epoch=False
            ),  # fmt: skip
        ),
        "param_scheduler",
        ("drives betas[0] to 1.0 at iteration 5", "betas[0] must be in [0, 1)"),
    ),
    "poly-eta_min-negative": (
        put("param_scheduler", dict(type="PolyLR", eta_min=-0.001, by_epoch=False)),
        "param_scheduler",
        ("PolyLR (param_scheduler) drives lr to", "lr must be >= 0"),
    ),
    "ema-momentum-1.5": (
        lambda cfg: cfg.update(custom_hooks=[dict(type="EMAHook", momentum=1.5)]),
        "custom_hooks[0].momentum",
        ("momentum must be in range",),
    ),
    "logger-interval-0": (
        put("default_hooks.logger.interval", 0),
        "default_hooks.logger.interval",
        ("interval must be greater than 0",),
    ),
    "max_epochs-negative": (put("train_cfg.max_epochs", -1), "train_cfg.max_epochs", (">= 0",)),
}


@pytest.mark.parametrize("row", list(RANGE_ROWS), ids=list(RANGE_ROWS))
def test_config_mistake_is_a_config_error_at_its_key(row, tmp_path):
    edit, path, hints = RANGE_ROWS[row]
    cfg = base_config()
    edit(cfg)
    with pytest.raises(ConfigError) as info:
        build_runner(cfg, work_dir=tmp_path / "work", device="cpu")
    assert info.value.path == path, str(info.value)
    for hint in hints:
        assert hint in str(info.value), f"{hint!r} not in {info.value}"
    assert not (tmp_path / "work").exists()


def test_a_schedule_that_stays_in_range_for_the_run_is_accepted(tmp_path):
    """The range is checked over the iterations that run: a cosine to a negative eta_min
    whose negative part lies after the end of training is fine (mmengine never reaches it)."""
    cfg = base_config()
    cfg["param_scheduler"] = cosine_after_warmup(type="CosineAnnealingLR", T_max=50,
                                                 eta_min=-0.01)  # fmt: skip
    built = build_runner(cfg, work_dir=tmp_path / "work", device="cpu")
    lr = built.plan.schedules["lr"](torch.arange(10))
    assert bool((lr >= 0).all()) and float(lr[9]) < float(lr[5])


def test_work_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a directory") as info:
        build_runner(base_config(), work_dir=tmp_path / "afile", device="cpu")
    assert info.value.path == "work_dir"
    config = tmp_path / "config.py"
    config.write_text(render(base_config()))
    assert main(["train", str(config), "--work-dir", str(tmp_path / "afile")]) == 2
    assert "work_dir: " in one_error_line(capsys.readouterr().err)


def test_cfg_options_dict_call_is_an_error_not_a_recursion():
    with pytest.raises(ConfigFileError, match="set a dict's keys one at a time"):
        parse_cfg_options(["optim_wrapper.optimizer=dict(type='Adam',lr=0.01)"])
    with pytest.raises(ConfigFileError, match="cannot parse"):
        parse_cfg_options(["model.out_indices=[dict(a=1,b=2)]"])
    # Values mmengine's syntax does express are unchanged.
    assert parse_cfg_options(["a=[(1,2),[x,y]]", "b=f(x)"]) == {
        "a": [(1, 2), ["x", "y"]],
        "b": "f(x)",
    }


# ----------------------------------------------------------------------------------------
# The Python API: the same rules, schedules checked where their horizon is known
# ----------------------------------------------------------------------------------------


def test_momentum_above_one_is_rejected_by_the_python_api():
    for make in (lambda m: ft.sgd(lr=0.1, momentum=m), lambda m: ft.rmsprop(momentum=m)):
        with pytest.raises(
            ValueError, match=r"Invalid momentum: 1.5; momentum must be in \[0, 1\]"
        ):
            make(1.5)
        make(1.0)  # a plain running sum: allowed


def test_a_finite_schedule_is_checked_over_its_horizon_when_built():
    bad = cosine_annealing_lr(0.1, T_max=10, eta_min=-0.01, end=10)
    with pytest.raises(ValueError, match=r"Invalid lr: the schedule gives -0\.0073.* at step 9"):
        ft.sgd(lr=bad)
    with pytest.raises(ValueError, match="Invalid weight_decay: the schedule gives"):
        ft.adamw(weight_decay=bad)
    ft.sgd(lr=linear_lr(0.1, start_factor=0.1, end=5))  # in range: accepted


def test_an_open_ended_schedule_has_no_horizon_and_is_accepted():
    """Documented decision: without ``end`` a schedule runs forever, so the factory cannot
    evaluate all of it; the config builder, which knows the training length, does."""
    ft.sgd(lr=cosine_annealing_lr(0.1, T_max=10, eta_min=-0.01))
    ft.sgd(lr=lambda step: -1.0)


def test_check_schedule_takes_step_by_step_callables():
    """A user schedule written for one int step at a time is still checked."""

    def schedule(step: int) -> float:
        if isinstance(step, torch.Tensor):
            raise TypeError("one step at a time")
        return 1.0 if step < 3 else 1.25

    assert first_out_of_range(schedule, 10, MOMENTUM) == (3, 1.25)
    with pytest.raises(ValueError, match="momentum must be in"):
        check_schedule("momentum", schedule, MOMENTUM, steps=10)


# ----------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def pickled_code(tmp_path) -> tuple[Path, Path]:
    """A file shaped like a functrain checkpoint whose pickle calls ``os.system``, and the
    marker file that would exist if it ran."""
    marker = tmp_path / "it_ran"
    path = tmp_path / "evil.pth"
    torch.save({"format": "functrain.checkpoint", "version": 1,
                "state": {"params": {"w": _RunsCode(marker)}}}, path)  # fmt: skip
    return path, marker


def test_pickled_code_is_refused_with_the_right_advice(pickled_code):
    path, marker = pickled_code
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert f"{os.system.__module__}.system" in text  # posix.system (nt.system on Windows)
    assert "not tensors or plain containers" in text and "tampered with" in text
    assert "weights_only" not in text
    assert not marker.exists()


def test_a_pickled_module_and_a_state_dict_say_what_they_are(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    with pytest.raises(CheckpointError, match=r"the first: torch\.nn\.modules\.linear\.Linear"):
        load_checkpoint(tmp_path / "module.pth")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "sd.pth")
    with pytest.raises(CheckpointError, match=r"a dict of 2 tensors \(a model's state_dict\?\)"):
        load_checkpoint(tmp_path / "sd.pth")
    with pytest.raises(CheckpointError, match="is a directory, not a file"):
        load_checkpoint(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A config trained 2 epochs through the command line: ``work/epoch_{1,2}.pth``."""
    root = tmp_path_factory.mktemp("trained")
    cfg = base_config()
    cfg["train_cfg"]["max_epochs"] = 2
    (root / "config.py").write_text(render(cfg))
    assert main(["train", str(root / "config.py"), "--work-dir", str(root / "work"),
                 "--device", "cpu"]) == 0  # fmt: skip
    return root


def copy_run(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(trained / "work", tmp_path / "work")
    (tmp_path / "work" / "last_checkpoint").write_text(str(tmp_path / "work" / "epoch_2.pth"))
    return tmp_path / "config.py", tmp_path / "work"


def test_real_checkpoints_hold_no_foreign_objects(trained):
    for path in (trained / "work").glob("*.pth"):
        assert first_foreign_object(path) is None, path


def test_corrupt_latest_checkpoint_under_resume_names_the_previous_one(trained, tmp_path, capsys):
    shutil.copy(trained / "config.py", tmp_path / "config.py")
    config, work = copy_run(trained, tmp_path)
    data = (work / "epoch_2.pth").read_bytes()
    (work / "epoch_2.pth").write_bytes(data[: len(data) // 2])  # a truncated write
    capsys.readouterr()
    argv = ["train", str(config), "--work-dir", str(work), "--device", "cpu"]
    assert main([*argv, "--resume"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot read checkpoint '{work / 'epoch_2.pth'}' (truncated or corrupt file?)" in line
    assert f"the previous checkpoint '{work / 'epoch_1.pth'}' loads" in line
    assert line.endswith(f"--resume {work / 'epoch_1.pth'}")
    assert find_loadable_checkpoint(work) == work / "epoch_1.pth"
    # The advice works: resuming from it trains the second epoch again.
    assert main([*argv, "--resume", str(work / "epoch_1.pth")]) == 0
    assert "trained 2 epochs" in capsys.readouterr().out
    assert load_checkpoint(work / "epoch_2.pth")["state"]["epoch"] == 2


def test_resume_and_load_from_mistakes_exit_2_with_one_line(
    trained, pickled_code, tmp_path, capsys
):
    shutil.copy(trained / "config.py", tmp_path / "config.py")
    config, work = copy_run(trained, tmp_path)
    evil, marker = pickled_code
    argv = ["train", str(config), "--work-dir", str(work), "--device", "cpu"]
    no_optimizer = tmp_path / "weights_only.pth"
    ckpt = load_checkpoint(work / "epoch_1.pth")
    del ckpt["state"]["opt_state"]  # what CheckpointCallback(save_optimizer=False) writes
    torch.save(ckpt, no_optimizer)
    cases = [
        (["--resume", str(evil)], ("not tensors or plain containers", "epoch_2.pth")),
        (["--resume", str(no_optimizer)], ("has no optimizer state", "load_from")),
        (["--cfg-options", f"load_from={evil}"], ("not tensors or plain containers",)),
        (["--resume", str(work / "nope.pth")], ("does not exist", "--resume")),
        (
            ["--cfg-options", f"load_from={work / 'epoch_1.pth'}", "model.width=16"],
            ("does not match the model", "params.backbone.0.weight"),
        ),  # fmt: skip
    ]
    capsys.readouterr()
    for extra, hints in cases:
        assert main([*argv, *extra]) == 2, extra
        line = one_error_line(capsys.readouterr().err)
        for hint in hints:
            assert hint in line, (extra, line)
    assert not marker.exists()


def test_resume_with_no_checkpoint_says_it_starts_over(tmp_path, capsys):
    cfg = base_config()
    (tmp_path / "config.py").write_text(render(cfg))
    argv = ["train", str(tmp_path / "config.py"), "--work-dir", str(tmp_path / "typo"),
            "--device", "cpu", "--resume"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "functrain: note: --resume: no checkpoint in" in err and "training from the start" in err


def test_schedules_are_checked_when_built_never_per_step(monkeypatch):
    import functrain.transforms.validation as validation

    calls = []
    real = validation.first_out_of_range
    monkeypatch.setattr(validation, "first_out_of_range", lambda *a: calls.append(a[1]) or real(*a))
    tx = ft.sgd(lr=linear_lr(0.1, start_factor=0.1, end=5), momentum=0.9)
    built = len(calls)
    assert built >= 1 and calls[0] == 6  # steps 0..5: constant after the window ends at 5
    params = {"w": torch.ones(3)}
    state = tx.init(params)
    for _ in range(3):
        _, state = tx.update({"w": torch.ones(3)}, state, params)
    assert len(calls) == built


def test_resume_pointer_to_a_missing_file_is_an_error_not_a_fresh_start(trained, tmp_path, capsys):
    """A work dir copied from another machine: last_checkpoint holds a path that is not here.
    functrain used to train from scratch without a word."""
    shutil.copy(trained / "config.py", tmp_path / "config.py")
    config, work = copy_run(trained, tmp_path)
    (work / "last_checkpoint").write_text("/elsewhere/work/epoch_2.pth")
    capsys.readouterr()
    argv = ["train", str(config), "--work-dir", str(work), "--device", "cpu", "--resume"]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "names '/elsewhere/work/epoch_2.pth', which does not exist" in line
    assert f"--resume {work / 'epoch_2.pth'}" in line


def test_a_diverging_run_stops_with_one_line_and_status_1(tmp_path, capsys):
    """An lr of 1e30 makes the loss NaN after the first step: the command line stops at the
    next check with one line naming the iteration, writes no checkpoint after it, exits 1."""
    work = tmp_path / "work"
    argv = ["train", str(EXAMPLES / "digits_multistep_1x.py"), "--work-dir", str(work),
            "--device", "cpu", "--cfg-options", "optim_wrapper.optimizer.lr=1e30",
            "train_cfg.max_epochs=2"]  # fmt: skip
    assert main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert lines[0].startswith("functrain: training stopped: the loss is nan at iteration 1")
    assert "last finite loss" in lines[0]
    assert not list(work.rglob("*.pth"))
