"""Logger: when it logs (mmengine's LoggerHook), what (window means, lr / momentum / grad_norm
from the optimizer state), where (terminal, JSON lines), and no host sync in between."""

from __future__ import annotations

import json
import time

import pytest
import torch

import functrain as ft
from functrain.callbacks import Callback, Logger
from functrain.loops import EpochBasedTrainLoop, IterBasedTrainLoop, Runner, ValLoop
from functrain.schedules import cosine_annealing_lr
from functrain.state import TrainState
from functrain.step import make_train_step

mmengine = pytest.importorskip("mmengine")
from loop_helpers import data, loss_fn  # noqa: E402
from mmengine.runner import Runner as MMRunner  # noqa: E402
from test_loop_mmengine import _ConstantMetric, _mm_loader, _ToyModel  # noqa: E402


@pytest.fixture(autouse=True)
def setup(monkeypatch):
    monkeypatch.setattr(mmengine.runner.loops.time, "sleep", lambda s: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mm_logged_steps(tmp_path, train_cfg, logger_cfg, n_train):
    work = tmp_path / "mm"
    MMRunner(
        model=_ToyModel(),
        work_dir=str(work),
        experiment_name=f"log_{time.monotonic_ns()}",
        train_dataloader=_mm_loader(n_train),
        val_dataloader=_mm_loader(2),
        val_evaluator=[_ConstantMetric()],
        train_cfg=train_cfg,
        val_cfg=dict(),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)),
        default_hooks=dict(
            sampler_seed=None,
            param_scheduler=None,
            checkpoint=None,
            logger=dict(type="LoggerHook", **logger_cfg),
        ),
        log_level="ERROR",
        default_scope=None,
    ).train()
    (path,) = work.glob("*/vis_data/scalars.json")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [("val" if "acc" in r else "train", r["step"]) for r in records]


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def ft_runner(tmp_path, loop, logger, tx=None, callbacks=()):
    model = tiny_model()
    tx = tx or ft.chain(
        ft.clip(0.5), ft.adam(lr=cosine_annealing_lr(0.1, T_max=40), betas=(0.85, 0.99))
    )
    return Runner(
        state=TrainState.create(model, tx),
        train_step=make_train_step(model, loss_fn, tx),
        train_loop=loop,
        val_loop=ValLoop([0], lambda s, b: {"acc": torch.ones(())}),
        callbacks=callbacks,
        default_callbacks={"logger": logger, "checkpoint": None},
        work_dir=tmp_path / "ft",
        log_level="WARNING",
    )


def ft_logged_steps(runner):
    (path,) = runner.work_dir.glob("*/scalars.json")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [("val" if "acc" in r else "train", r["step"]) for r in records]


@pytest.mark.parametrize("ignore_last", [True, False])
@pytest.mark.parametrize("n_batches", [7, 2])
def test_epoch_logging_steps_match_mmengine(tmp_path, ignore_last, n_batches):
    cfg = dict(interval=3, ignore_last=ignore_last)
    expected = mm_logged_steps(
        tmp_path, dict(type="EpochBasedTrainLoop", max_epochs=2, val_interval=1), cfg, 2 * n_batches
    )
    runner = ft_runner(tmp_path, EpochBasedTrainLoop(data(n_batches), max_epochs=2), Logger(**cfg))
    runner.train()
    assert ft_logged_steps(runner) == expected
    assert len(expected) >= 3


def test_iter_logging_steps_match_mmengine(tmp_path):
    cfg = dict(interval=4)
    expected = mm_logged_steps(
        tmp_path, dict(type="IterBasedTrainLoop", max_iters=13, val_interval=5), cfg, 6
    )
    runner = ft_runner(
        tmp_path, IterBasedTrainLoop(data(3), max_iters=13, val_interval=5), Logger(**cfg)
    )
    runner.train()
    assert ft_logged_steps(runner) == expected


class Record(Callback):
    """Keeps each step's loss, the clip norm and the lr in force (reading them: a sync, fine
    in a test)."""

    priority = "HIGHEST"

    def __init__(self):
        self.loss, self.norm, self.lr = [], [], []

    def after_train_iter(self, runner, state, batch_idx, data_batch=None, outputs=None):
        self.loss.append(float(outputs["loss"]))
        self.norm.append(float(state.opt_state[0].norm))
        self.lr.append(float(state.opt_state[1][2].lr))


def test_logged_values_are_window_means_and_optimizer_state(tmp_path):
    rec = Record()
    runner = ft_runner(
        tmp_path,
        EpochBasedTrainLoop(data(12), max_epochs=2),
        Logger(interval=5, window_size=4),
        callbacks=[rec],
    )
    runner.train()
    train = [r for r in runner.log_records if r["mode"] == "train"]
    assert [r["step"] for r in train] == [5, 10, 17, 22]
    for r in train:
        i = r["step"]
        window = slice(i - 4, i)
        assert r["loss"] == pytest.approx(sum(rec.loss[window]) / 4, rel=1e-6)
        assert r["grad_norm"] == pytest.approx(sum(rec.norm[window]) / 4, rel=1e-6)
        assert r["lr"] == pytest.approx(rec.lr[i - 1], rel=1e-12)  # current value, not a mean
        assert r["momentum"] == pytest.approx(0.85)
        assert r["time"] > 0 and r["data_time"] >= 0
    # the terminal / text log has mmengine's layout
    (log,) = runner.work_dir.glob("*/*.log")
    text = log.read_text()
    assert "Epoch(train) [2][10/12]  lr: " in text and "eta: " in text and "grad_norm: " in text
    assert "Epoch(val) [2][1/1]  acc: 1.0000" in text


def test_sgd_momentum_is_logged_as_momentum(tmp_path):
    runner = ft_runner(
        tmp_path,
        EpochBasedTrainLoop(data(2), max_epochs=1),
        Logger(interval=1),
        tx=ft.sgd(lr=0.1, momentum=0.7),
    )
    runner.train()
    first = runner.log_records[0]
    assert first["momentum"] == pytest.approx(0.7) and first["lr"] == pytest.approx(0.1)
    assert "grad_norm" not in first  # no clip in the chain


def test_no_host_sync_between_log_intervals(tmp_path, monkeypatch):
    """Counts the tensor-to-host conversions (item, tolist, float, int, bool) per iteration:
    they happen only in iterations where the logger writes a line."""
    conversions = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            conversions.append(1)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    per_iter = []

    class Count(Callback):
        priority = "LOWEST"

        def before_train_iter(self, runner, state, batch_idx, data_batch=None):
            self.start = len(conversions)

        def after_train_iter(self, runner, state, batch_idx, data_batch=None, outputs=None):
            per_iter.append(len(conversions) - self.start)

    runner = ft_runner(
        tmp_path,
        EpochBasedTrainLoop(data(10), max_epochs=2),
        Logger(interval=4),
        callbacks=[Count()],
    )
    runner.train()
    logged = {r["step"] - 1 for r in runner.log_records if r["mode"] == "train"}
    assert logged == {3, 7, 13, 17}
    assert all(n == 0 for i, n in enumerate(per_iter) if i not in logged), per_iter
    assert all(n > 0 for i, n in enumerate(per_iter) if i in logged)


def test_bad_logger_arguments():
    with pytest.raises(ValueError, match="interval must be greater than 0"):
        Logger(interval=0)
    with pytest.raises(TypeError, match="interval must be an integer"):
        Logger(interval=2.5)
    with pytest.raises(TypeError, match="ignore_last must be a boolean"):
        Logger(ignore_last="yes")
