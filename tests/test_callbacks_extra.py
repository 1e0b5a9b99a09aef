"""EMA (vs mmengine's ExponentialMovingAverage), early stopping (vs EarlyStoppingHook) and
ReduceOnPlateau feeding."""

from __future__ import annotations

import copy
import math
import types

import pytest
import torch

import functrain as ft
from functrain.callbacks import (
    EMA,
    Callback,
    CheckpointCallback,
    EarlyStopping,
    ReduceOnPlateauCallback,
)
from functrain.checkpoint import load_checkpoint
from functrain.loops import EpochBasedTrainLoop, IterBasedTrainLoop, Runner, ValLoop
from functrain.schedules import ReduceOnPlateau
from functrain.state import TrainState
from functrain.step import make_eval_step, make_train_step

mmengine = pytest.importorskip("mmengine")
from loop_helpers import data, loss_fn  # noqa: E402
from mmengine.hooks import EarlyStoppingHook  # noqa: E402
from mmengine.model import ExponentialMovingAverage  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)
    )


class Snapshots(Callback):
    priority = "HIGHEST"

    def __init__(self):
        self.params = []

    def after_train_iter(self, runner, state, batch_idx, **kwargs):
        self.params.append({k: v.clone() for k, v in state.params.items()})


@pytest.mark.parametrize(("interval", "begin_iter"), [(1, 0), (2, 3)])
def test_ema_matches_mmengine_exponential_moving_average(tmp_path, interval, begin_iter):
    m = model()
    tx = ft.adam(lr=0.05)
    snaps = Snapshots()
    ema = EMA(momentum=0.2, interval=interval, begin_iter=begin_iter)
    runner = Runner(
        state=TrainState.create(m, tx),
        train_step=make_train_step(m, loss_fn, tx),
        train_loop=IterBasedTrainLoop(data(3), max_iters=9),
        callbacks=[snaps, ema],
        default_callbacks=False,
        work_dir=tmp_path,
    )
    state = runner.train()
    # mmengine's EMAHook: before begin_iter copy, after it update_parameters()
    src = copy.deepcopy(m)
    reference = ExponentialMovingAverage(src, momentum=0.2, interval=interval)
    for i, params in enumerate(snaps.params):
        with torch.no_grad():
            for k, p in src.named_parameters():
                p.copy_(params[k])
        if i + 1 >= begin_iter:
            reference.update_parameters(src)
        else:
            for k, p in reference.module.named_parameters():
                p.data.copy_(params[k])
    for k, p in reference.module.named_parameters():
        assert torch.equal(state.callbacks["ema"]["params"][k], p), k
    assert state.callbacks["ema"]["steps"] == int(reference.steps)


def test_ema_is_swapped_in_for_validation_and_checkpoints(tmp_path):
    m = model()
    tx = ft.sgd(lr=0.1)
    seen = []

    def eval_fn(forward, batch):
        return {"acc": torch.ones(())}

    class Peek(Callback):
        def before_val_iter(self, runner, state, batch_idx, data_batch=None):
            seen.append(
                (
                    torch.equal(
                        state.params["0.weight"], state.callbacks["ema"]["params"]["0.weight"]
                    ),
                    state.params["0.weight"].clone(),
                )
            )

    runner = Runner(
        state=TrainState.create(m, tx),
        train_step=make_train_step(m, loss_fn, tx),
        train_loop=EpochBasedTrainLoop(data(3), max_epochs=2),
        val_loop=ValLoop([0], make_eval_step(m, eval_fn)),
        callbacks=[EMA(momentum=0.1), Peek()],
        default_callbacks={"checkpoint": CheckpointCallback(interval=1), "logger": None},
        work_dir=tmp_path,
        log_level="WARNING",
    )
    state = runner.train()
    # in validation the state's params are the average, and the raw ones are kept aside
    assert [same for same, _ in seen] == [False, False]
    assert torch.equal(seen[-1][1], state.callbacks["ema"]["params"]["0.weight"])
    assert not torch.equal(state.params["0.weight"], state.callbacks["ema"]["params"]["0.weight"])
    # the file's params are the average; resuming swaps them back
    ckpt = load_checkpoint(tmp_path / "epoch_2.pth")
    assert torch.equal(
        ckpt["state"]["params"]["0.weight"], state.callbacks["ema"]["params"]["0.weight"]
    )
    assert torch.equal(
        ckpt["state"]["callbacks"]["ema"]["params"]["0.weight"], state.params["0.weight"]
    )


def test_ema_argument_errors():
    with pytest.raises(ValueError, match="momentum must be in range"):
        EMA(momentum=1.5)
    with pytest.raises(ValueError, match="should not be both set"):
        EMA(begin_iter=2, begin_epoch=1)


def _fake_runner():
    return types.SimpleNamespace(
        train_loop=types.SimpleNamespace(stop_training=False),
        logger=types.SimpleNamespace(info=lambda msg: None),
    )


@pytest.mark.parametrize(
    ("kwargs", "scores"),
    [
        (dict(monitor="acc", patience=2), [0.5, 0.55, 0.58, 0.7, 0.65, 0.66]),
        (dict(monitor="loss", patience=3, min_delta=0.01), [2.0, 1.0, 0.995, 0.992, 0.991, 1.5]),
        (dict(monitor="acc", stopping_threshold=0.8), [0.5, 0.79, 0.81, 0.3]),
        (dict(monitor="loss"), [1.0, float("nan"), 0.5]),
        (
            dict(monitor="val_acc", rule="greater", min_delta=0.0, patience=1),
            [0.1, 0.2, 0.2, 0.15, 0.3],
        ),
    ],
)
def test_early_stopping_decisions_match_mmengine(tmp_path, kwargs, scores):
    hook = EarlyStoppingHook(**kwargs)
    mm_runner = _fake_runner()
    expected = []
    for s in scores:
        hook.after_val_epoch(mm_runner, {kwargs["monitor"]: s})
        expected.append((mm_runner.train_loop.stop_training, hook.wait_count))
    cb = EarlyStopping(**kwargs)
    state = TrainState(params={}, buffers={}, opt_state=())
    runner = Runner(
        state=state,
        train_step=lambda s, b: (s, {}),
        train_loop=EpochBasedTrainLoop([0], 1),
        default_callbacks=False,
    )
    got = []
    for s in scores:
        state = cb.after_val_epoch(runner, state, {kwargs["monitor"]: s})
        got.append((runner.stop_training, state.callbacks["early_stopping"]["wait_count"]))
    assert got == expected
    assert any(stop for stop, _ in expected)
    best = state.callbacks["early_stopping"]["best_score"]
    assert best == hook.best_score or (math.isnan(best) and math.isnan(hook.best_score))


def test_early_stopping_rule_inference_and_missing_metric():
    assert EarlyStopping(monitor="top1_acc").rule == "greater"
    assert EarlyStopping(monitor="val_loss").rule == "less"
    with pytest.raises(ValueError, match="Cannot infer the rule"):
        EarlyStopping(monitor="psnr")
    strict = EarlyStopping(monitor="acc", strict=True)
    state = TrainState(params={}, buffers={}, opt_state=())
    with pytest.raises(RuntimeError, match="acc"):
        strict.after_val_epoch(_fake_runner(), state, {"loss": 1.0})
    with pytest.warns(UserWarning, match="Skip early stopping"):
        assert (
            EarlyStopping(monitor="acc").after_val_epoch(_fake_runner(), state, {"loss": 1.0})
            is None
        )


def test_reduce_on_plateau_writes_the_learning_rate_the_next_steps_use(tmp_path):
    """w is one scalar, loss = w, so each SGD step moves w by exactly -lr in force."""
    lin = torch.nn.Linear(1, 1, bias=False)
    tx = ft.sgd(lr=0.4)

    def linear_loss(forward, batch):
        return forward(torch.ones(1, 1)).sum()

    moves = []

    class Moves(Callback):
        priority = "HIGHEST"

        def before_train_iter(self, runner, state, batch_idx, data_batch=None):
            self.w = state.params["weight"].clone()

        def after_train_iter(self, runner, state, batch_idx, **kwargs):
            moves.append(round(float(self.w - state.params["weight"]), 6))

    class Flat:
        def reset(self):
            pass

        def process(self, outputs, batch):
            pass

        def evaluate(self):
            return {"loss": 1.0}

    plateau = ReduceOnPlateau(monitor="loss", patience=0, factor=0.5)
    runner = Runner(
        state=TrainState.create(lin, tx),
        train_step=make_train_step(lin, linear_loss, tx),
        train_loop=EpochBasedTrainLoop([0, 1], max_epochs=4),
        val_loop=ValLoop([0], lambda s, b: None, Flat()),
        callbacks=[Moves(), ReduceOnPlateauCallback(plateau)],
        default_callbacks=False,
        work_dir=tmp_path,
    )
    state = runner.train()
    # first validation sets the best; each later one is a plateau and halves the lr
    assert moves == [0.4, 0.4, 0.4, 0.4, 0.2, 0.2, 0.1, 0.1]
    assert float(state.opt_state[-1].lr) == pytest.approx(0.05)
    ps = state.callbacks["reduce_on_plateau"]
    assert ps.value == pytest.approx(0.05) and ps.epochs == 4
