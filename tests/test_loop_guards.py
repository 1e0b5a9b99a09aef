"""Runs that would otherwise "succeed" silently: a loss that turns non-finite (the default
``terminate_on_nan`` callback stops the run) and a loop with nothing to train (a warning)."""

from __future__ import annotations

import pytest
import torch
from loop_helpers import data, loss_fn

import functrain as ft
import functrain.callbacks.terminate_on_nan as terminate_on_nan
from functrain.callbacks import (
    Callback,
    CheckpointCallback,
    Logger,
    NonFiniteLossError,
    TerminateOnNaN,
)
from functrain.loops import EpochBasedTrainLoop, IterBasedTrainLoop, Runner
from functrain.state import TrainState
from functrain.step import make_train_step

BAD = 13  # runner.iter whose batch holds a nan


def batches(n: int, bad: int | None = BAD) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = data(n)
    if bad is not None:
        out[bad][0][0, 0] = float("nan")
    return out


class Losses(Callback):
    """Reads every loss on the host (a test may sync)."""

    def __init__(self) -> None:
        self.values: dict[int, float] = {}

    def after_train_iter(self, runner, state, batch_idx, data_batch=None, outputs=None):
        self.values[runner.iter] = float(outputs["loss"])


def make_runner(tmp_path, loop, tx=None, callbacks=(), **defaults):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    tx = tx if tx is not None else ft.sgd(0.1)
    return Runner(
        state=TrainState.create(model, tx),
        train_step=make_train_step(model, loss_fn, tx),
        train_loop=loop,
        callbacks=callbacks,
        default_callbacks={"logger": Logger(interval=5), **defaults},
        work_dir=tmp_path,
        log_level="ERROR",
    )


def test_a_nan_loss_stops_the_run_at_the_next_log_interval_naming_the_iteration(tmp_path):
    losses = Losses()
    runner = make_runner(
        tmp_path,
        EpochBasedTrainLoop(batches(20), max_epochs=1),
        callbacks=[losses],
        checkpoint=CheckpointCallback(interval=5, by_epoch=False, max_keep_ckpts=-1),
    )
    with pytest.raises(NonFiniteLossError) as info:
        runner.train()
    err = info.value
    # Checked with the logger (interval 5, by batch_idx): the window 10..14 holds BAD = 13.
    assert (err.iteration, err.checked_at) == (BAD, 14)
    assert str(err.value) == "nan"
    # The same tensor read on the host by both: exactly equal.
    assert (err.last_finite_iteration, err.last_finite) == (BAD - 1, losses.values[BAD - 1])
    line = str(err)
    assert "\n" not in line and f"at iteration {BAD} " in line
    assert f"{losses.values[BAD - 1]:.6g} at iteration {BAD - 1}" in line
    assert max(losses.values) == 14  # stopped at the check, not at the end of the run
    assert isinstance(err, FloatingPointError)
    # the checkpoints before the nan were written; the one due after iteration 14 was not
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["iter_10.pth", "iter_5.pth"]


def test_no_checkpoint_of_weights_trained_on_a_nan_loss(tmp_path):
    # Checked every 100 iterations only, but a checkpoint every iteration: the save after
    # iteration BAD checks first and refuses.
    runner = make_runner(
        tmp_path,
        EpochBasedTrainLoop(batches(20), max_epochs=1),
        terminate_on_nan=TerminateOnNaN(interval=100),
        checkpoint=CheckpointCallback(interval=1, by_epoch=False, max_keep_ckpts=-1),
    )
    with pytest.raises(NonFiniteLossError, match=f"at iteration {BAD} ") as info:
        runner.train()
    assert info.value.checked_at == BAD
    assert max(int(p.stem.split("_")[1]) for p in tmp_path.glob("iter_*.pth")) == BAD


def test_iteration_based_loop_checks_at_the_end_of_the_run(tmp_path):
    loop = IterBasedTrainLoop(batches(20), max_iters=BAD + 2, val_interval=100)
    runner = make_runner(tmp_path, loop, terminate_on_nan=TerminateOnNaN(interval=100))
    with pytest.raises(NonFiniteLossError) as info:
        runner.train()
    assert (info.value.iteration, info.value.checked_at) == (BAD, BAD + 1)


def test_with_the_callback_removed_the_run_trains_on(tmp_path):
    losses = Losses()
    runner = make_runner(
        tmp_path,
        EpochBasedTrainLoop(batches(20), max_epochs=1),
        callbacks=[losses],
        terminate_on_nan=None,
    )
    state = runner.train()
    assert state.iteration == 20 and len(losses.values) == 20
    assert torch.isnan(state.params["weight"]).all()  # what the guard exists to prevent


@pytest.mark.parametrize(
    "tx",
    [
        ft.apply_if_finite(ft.sgd(0.1), max_consecutive_errors=3),
        ft.loss_scaling(ft.sgd(0.1)),
    ],
    ids=["apply_if_finite", "loss_scaling"],
)
def test_a_chain_that_skips_non_finite_steps_is_left_alone(tmp_path, tx):
    losses = Losses()
    runner = make_runner(
        tmp_path, EpochBasedTrainLoop(batches(20), max_epochs=1), tx=tx, callbacks=[losses]
    )
    state = runner.train()
    assert state.iteration == 20
    assert torch.isnan(torch.tensor(losses.values[BAD]))  # the bad batch's loss itself
    assert torch.isfinite(state.params["weight"]).all()  # the chain skipped its step


def test_the_guard_reads_the_device_only_at_its_checks(tmp_path, monkeypatch):
    reads: list[int] = []
    runner_box: list[Runner] = []

    real = terminate_on_nan.ScalarHistory

    class CountingHistory(real):
        @staticmethod
        def read(values):
            reads.append(runner_box[0].iter)
            return real.read(values)

    monkeypatch.setattr(terminate_on_nan, "ScalarHistory", CountingHistory)
    runner = make_runner(
        tmp_path,
        EpochBasedTrainLoop(batches(20, bad=None), max_epochs=2),
        terminate_on_nan=TerminateOnNaN(interval=7),
    )
    runner_box.append(runner)
    runner.train()
    # batch_idx 6 and 13 of each epoch, then the rest at the end of the epoch (runner.iter
    # has moved past the epoch's last iteration there); the checkpoint save finds nothing new
    assert reads == [6, 13, 20, 26, 33, 40]


def test_the_interval_follows_the_logger_and_is_validated(tmp_path):
    runner = make_runner(tmp_path, EpochBasedTrainLoop(batches(3, bad=None), max_epochs=1))
    runner.train()
    assert runner.callbacks.get("terminate_on_nan")._every == 5
    with pytest.raises(ValueError, match="interval must be an integer >= 1, got 0"):
        TerminateOnNaN(interval=0)


def test_configs_reach_the_callback_through_default_hooks():
    from functrain.config.loops_hooks import build_hooks

    defaults, _ = build_hooks(
        {"default_hooks": {"terminate_on_nan": dict(type="TerminateOnNaN", interval=1)}}
    )
    guard = defaults["terminate_on_nan"]
    assert isinstance(guard, TerminateOnNaN) and guard.interval == 1
    assert guard.state_key() == "terminate_on_nan"
    off, _ = build_hooks({"default_hooks": {"terminate_on_nan": None}})
    assert off == {"terminate_on_nan": None}  # the Runner then drops the default


@pytest.mark.parametrize(
    ("make_loop", "key"),
    [
        (lambda data: EpochBasedTrainLoop(data, max_epochs=0), "max_epochs=0"),
        (lambda data: IterBasedTrainLoop(data, max_iters=0), "max_iters=0"),
    ],
)
def test_nothing_to_train_warns_and_runs_no_step(tmp_path, make_loop, key):
    with pytest.warns(UserWarning, match=f"{key}, so train\\(\\) runs no training step"):
        loop = make_loop(batches(4, bad=None))
    runner = make_runner(tmp_path, loop)
    before = runner.state.params["weight"].clone()
    state = runner.train()
    assert state.iteration == 0 and torch.equal(state.params["weight"], before)
