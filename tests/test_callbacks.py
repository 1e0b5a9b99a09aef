"""Callback registration, priorities, default callbacks, state threading, small built-ins."""

from __future__ import annotations

import io

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from functrain.callbacks import (
    Callback,
    CallbackList,
    CheckpointCallback,
    CurvesPlot,
    IterTimer,
    Logger,
    Priority,
    ProgressBar,
    SamplerSeed,
    get_priority,
)
from functrain.loops import EpochBasedTrainLoop, IterBasedTrainLoop, Runner, ValLoop
from functrain.state import TrainState


def null_step(state, batch):
    return state.replace(params={"w": state.params["w"] + 1}), {
        "loss": torch.tensor(1.0 / (1 + state.iteration))
    }


def make_runner(tmp_path, loop=None, **kwargs):
    return Runner(
        state=TrainState(params={"w": torch.zeros(())}, buffers={}, opt_state=()),
        train_step=null_step,
        train_loop=loop or EpochBasedTrainLoop([0, 1, 2], max_epochs=2),
        work_dir=tmp_path,
        log_level="WARNING",
        **kwargs,
    )


class Tag(Callback):
    def __init__(self, tag, priority=None, log=None):
        self.name = tag
        if priority is not None:
            self.priority = priority
        self.log = log if log is not None else []

    def before_train(self, runner, state):
        self.log.append(self.name)


def test_priority_values_and_names():
    assert [get_priority(p) for p in ("highest", "VERY_HIGH", "high", "above_normal")] == [
        0,
        10,
        30,
        40,
    ]
    assert [get_priority(p) for p in ("NORMAL", "below_normal", "LOW", "very_low", "LOWEST")] == [
        50,
        60,
        70,
        90,
        100,
    ]
    assert get_priority(Priority.LOW) == 70 and get_priority(0) == 0 and get_priority(100) == 100
    with pytest.raises(ValueError, match="between 0 and 100"):
        get_priority(101)
    with pytest.raises(ValueError, match="unknown priority 'urgent'"):
        get_priority("urgent")
    with pytest.raises(TypeError):
        get_priority(1.5)


def test_order_is_priority_then_registration_and_replace_keeps_the_slot():
    log: list = []
    cbs = CallbackList()
    for tag, prio in [("a", "LOW"), ("b", 10), ("c", "LOW"), ("d", "HIGHEST"), ("e", 70)]:
        cbs.add(Tag(tag, prio, log))
    assert cbs.names() == ["d", "b", "a", "c", "e"]
    x, y = Tag("x", "LOW", log), Tag("y", "HIGH", log)
    old_a = cbs.replace("a", x)  # same priority: same place, takes the name "a"
    assert old_a.name == "a" and cbs.get("a") is x and x.name == "a"
    assert cbs.names() == ["d", "b", "a", "c", "e"]
    cbs.replace("c", y)  # a new priority moves it
    assert cbs.get("c") is y
    assert cbs.names() == ["d", "b", "c", "a", "e"]
    removed = cbs.remove("b")
    assert removed.name == "b" and cbs.names() == ["d", "c", "a", "e"]
    with pytest.raises(KeyError, match="no callback named 'zzz'"):
        cbs.remove("zzz")
    with pytest.raises(ValueError, match="already registered"):
        cbs.add(Tag("d"))
    # dispatch tables follow the order
    for fn in cbs.handlers("before_train"):
        fn(None, None)
    assert log == ["d", "c", "a", "e"]  # the replacements, under the names they took
    assert cbs.handlers("after_train_iter") == []  # nobody overrides it: not dispatched


def test_default_callbacks_first_then_user_ones_and_replacement_by_name(tmp_path):
    runner = make_runner(tmp_path, callbacks=[Tag("mine", "NORMAL")])
    assert runner.callbacks.names() == [
        "timer",
        "sampler_seed",
        "mine",
        "logger",
        "terminate_on_nan",
        "checkpoint",
    ]
    custom_logger = Logger(interval=1)
    runner = make_runner(
        tmp_path,
        callbacks=[Tag("mine", "BELOW_NORMAL")],
        default_callbacks={
            "timer": None,
            "logger": custom_logger,
            "extra": Tag("extra", "HIGHEST"),
        },
    )
    # the replaced logger keeps the name, the user's callback of equal priority comes after it
    assert runner.callbacks.names() == [
        "extra",
        "sampler_seed",
        "logger",
        "mine",
        "terminate_on_nan",
        "checkpoint",
    ]
    assert runner.callbacks.get("logger") is custom_logger
    assert make_runner(tmp_path, default_callbacks=False).callbacks.names() == []
    runner.callbacks.remove("checkpoint")
    runner.callbacks.replace("sampler_seed", SamplerSeed())
    assert "checkpoint" not in runner.callbacks and len(runner.callbacks) == 5


def test_callbacks_thread_the_state(tmp_path):
    class Bump(Callback):
        priority = "HIGH"

        def after_train_iter(self, runner, state, batch_idx, data_batch=None, outputs=None):
            return state.with_callback_state("bump", self.get_state(state, 0) + 1)

    class Check(Callback):
        priority = "LOW"

        def __init__(self):
            self.seen = []

        def after_train_iter(self, runner, state, batch_idx, data_batch=None, outputs=None):
            assert runner.state is state
            self.seen.append(state.callbacks["bump"])

    check = Check()
    runner = make_runner(tmp_path, callbacks=[Bump(), check], default_callbacks=False)
    final = runner.train()
    assert check.seen == [1, 2, 3, 4, 5, 6] and final.callbacks["bump"] == 6
    assert torch.equal(final.params["w"], torch.tensor(6.0))


def test_returning_something_else_is_an_error(tmp_path):
    class Bad(Callback):
        def before_train(self, runner, state):
            return {"not": "a state"}

    with pytest.raises(TypeError, match=r"Bad.*before_train returned a dict"):
        make_runner(tmp_path, callbacks=[Bad()], default_callbacks=False).train()


def test_duck_typed_callbacks_and_custom_names(tmp_path):
    calls = []

    class Plain:  # no base class: any object with event methods works
        priority = "LOW"

        def after_train_epoch(self, runner, state):
            calls.append(runner.epoch)

    runner = make_runner(tmp_path, default_callbacks=False)
    runner.register_callback(Plain(), name="plain", priority="HIGHEST")
    runner.train()
    assert calls == [0, 1] and runner.callbacks.names() == ["plain"]


def test_sampler_seed_sets_the_epoch(tmp_path):
    ds = TensorDataset(torch.arange(8.0))
    sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True)
    epochs = []
    original = sampler.set_epoch
    sampler.set_epoch = lambda e: (epochs.append(e), original(e))
    loader = DataLoader(ds, batch_size=4, sampler=sampler)
    make_runner(
        tmp_path,
        loop=EpochBasedTrainLoop(loader, max_epochs=3),
        default_callbacks={"checkpoint": None},
    ).train()
    assert epochs == [0, 1, 2]
    # the iteration loop restarts the data with the next epoch (mmengine's infinite iterator)
    epochs.clear()
    make_runner(
        tmp_path,
        loop=IterBasedTrainLoop(loader, max_iters=5),
        default_callbacks={"checkpoint": None},
    ).train()
    assert epochs == [0, 1, 2]


def test_iter_timer_records_times_and_eta(tmp_path):
    etas = []

    class Watch(Callback):
        priority = "LOW"

        def after_train_iter(self, runner, state, batch_idx, **kwargs):
            etas.append(runner.history.info["eta"])

    runner = make_runner(
        tmp_path, callbacks=[Watch()], default_callbacks={"logger": None, "checkpoint": None}
    )
    runner.train()
    assert len(runner.history.values("train/time")) == 6
    assert len(runner.history.values("train/data_time")) == 6
    assert etas[-1] == 0.0 and all(e >= 0 for e in etas)
    assert isinstance(runner.callbacks.get("timer"), IterTimer)


def test_progress_bar_draws_when_forced(tmp_path):
    out = io.StringIO()
    bar = ProgressBar(stream=out, force=True, min_interval=0.0)
    make_runner(tmp_path, callbacks=[bar], default_callbacks=False).train()
    text = out.getvalue()
    assert "6/6 iters" in text and text.endswith("\n") and bar.draws == 6
    quiet = ProgressBar(stream=io.StringIO())  # not a terminal: draws nothing
    make_runner(tmp_path, callbacks=[quiet], default_callbacks=False).train()
    assert quiet.draws == 0


def test_curves_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    plot = CurvesPlot()
    runner = make_runner(
        tmp_path,
        loop=EpochBasedTrainLoop([0, 1, 2, 3], max_epochs=3),
        val_loop=ValLoop([0], lambda s, b: {"acc": s.params["w"] / 12}),
        callbacks=[plot],
        default_callbacks={"logger": Logger(interval=2), "checkpoint": CheckpointCallback()},
    )
    runner.train()
    assert plot.path == tmp_path / "curves.png"
    assert plot.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["step"] for r in runner.log_records if r["mode"] == "val"] == [1, 2, 3]


def test_every_event_is_a_written_out_method_with_mmengine_arguments():
    # mmengine's Hook methods, with ``state`` after ``runner``: help() and IDEs show them.
    import inspect

    import mmengine.hooks

    from functrain.callbacks import EVENTS

    for event in EVENTS:
        method = Callback.__dict__[event]  # defined on the class, not synthesised onto it
        assert method.__doc__, event
        ours = list(inspect.signature(method).parameters)
        theirs = list(inspect.signature(getattr(mmengine.hooks.Hook, event)).parameters)
        assert ours == [theirs[0], theirs[1], "state", *theirs[2:]], event


def test_inherited_noops_are_not_dispatched_but_overrides_are():
    class OnlyIter(Callback):
        def after_train_iter(self, runner, state, batch_idx, data_batch=None, outputs=None):
            return None

    cbs = CallbackList([OnlyIter()])
    assert [f.__name__ for f in cbs.handlers("after_train_iter")] == ["after_train_iter"]
    assert cbs.handlers("before_train_iter") == []


def test_deferred_history_values_are_computed_only_when_read(tmp_path):
    """FirstGroupScalars records fn(iteration) deferred: the logger's reads (every 2
    iterations here) compute it, the other iterations never do, and what is read equals
    fn(iteration) of the iteration it was recorded at."""
    import json

    from functrain.callbacks.history import ScalarHistory
    from functrain.config.hooks import FirstGroupScalars

    calls: list[int] = []

    def lr(i: int) -> float:
        calls.append(i)
        return 0.5**i

    runner = make_runner(
        tmp_path,
        EpochBasedTrainLoop([0, 1, 2, 3, 4], max_epochs=2),
        callbacks=[FirstGroupScalars({"lr": lr})],
        default_callbacks={"logger": Logger(interval=2), "checkpoint": None},
    )
    runner.train()
    assert calls == [1, 3, 6, 8]  # batch_idx 1 and 3 of each epoch (ignore_last)
    (path,) = tmp_path.glob("*/scalars.json")
    logged = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["lr"] for r in logged] == [0.5**1, 0.5**3, 0.5**6, 0.5**8]
    assert runner.history.values("train/lr") == [0.5**i for i in range(10)]
    assert calls[4:] == [0, 2, 4, 5, 7, 9]  # the rest, computed once each when asked for

    history = ScalarHistory(max_length=3)
    for i in range(5):
        history.defer("x", lambda i: torch.tensor(float(i)), i)
    assert history.values("x", window=1) == [torch.tensor(4.0)]
    assert history.mean("x") == torch.tensor(3.0)
    assert "x" in history and history.current("x") == torch.tensor(4.0)
