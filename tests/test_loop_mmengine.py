"""The loops emit the same (event, epoch, iter, batch_idx) sequence as mmengine's Runner.

mmengine's sequence is recorded here, from a real ``mmengine.runner.Runner`` with a recording
hook, for the same settings; nothing is copied by hand.
"""

from __future__ import annotations

import time

import pytest
import torch

from functrain.callbacks import EVENTS, Callback, EarlyStopping
from functrain.loops import EpochBasedTrainLoop, IterBasedTrainLoop, Runner, ValLoop
from functrain.state import TrainState

mmengine = pytest.importorskip("mmengine")
from mmengine.evaluator import BaseMetric  # noqa: E402
from mmengine.hooks import EarlyStoppingHook, Hook  # noqa: E402
from mmengine.model import BaseModel  # noqa: E402
from mmengine.runner import Runner as MMRunner  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors: with several intra-op threads on a busy 2-core machine each op can wait
    # tens of milliseconds for OpenMP workers.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# mmengine side


class _ToyModel(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)

    def forward(self, x, y=None, mode="tensor"):
        out = self.lin(x)
        if mode == "loss":
            return {"loss": ((out.squeeze(-1) - y) ** 2).mean()}
        return [out]


class _ConstantMetric(BaseMetric):
    default_prefix = ""

    def process(self, data_batch, data_samples):
        self.results.append(1.0)

    def compute_metrics(self, results):
        return {"acc": 1.0}


def _mm_recorder(events: list) -> Hook:
    class Recorder(Hook):
        priority = "HIGHEST"

    for name in Hook.stages:

        def record(self, runner, _name=name, **kwargs):
            events.append((_name, runner.epoch, runner.iter, kwargs.get("batch_idx")))

        setattr(Recorder, name, record)
    return Recorder()


def _mm_loader(n_samples: int) -> dict:
    data = [dict(x=torch.randn(2), y=torch.tensor(0.0)) for _ in range(n_samples)]
    return dict(
        dataset=data,
        batch_size=2,
        sampler=dict(type="DefaultSampler", shuffle=False),
        collate_fn=dict(type="default_collate"),
    )


def mmengine_events(tmp_path, name: str, train_cfg: dict, n_train: int, hooks=()) -> list:
    events: list = []
    runner = MMRunner(
        model=_ToyModel(),
        work_dir=str(tmp_path / f"mm_{name}"),
        experiment_name=f"functrain_{name}_{time.monotonic_ns()}",
        train_dataloader=_mm_loader(n_train),
        val_dataloader=_mm_loader(2),
        val_evaluator=[_ConstantMetric()],
        train_cfg=train_cfg,
        val_cfg=dict(),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)),
        default_hooks=dict(
            runtime_info=None,
            timer=None,
            sampler_seed=None,
            logger=None,
            param_scheduler=None,
            checkpoint=None,
        ),
        custom_hooks=[_mm_recorder(events), *hooks],
        log_level="ERROR",
        default_scope=None,
    )
    runner.train()
    return events


# --------------------------------------------------------------------------------------------
# functrain side


class Recorder(Callback):
    priority = "HIGHEST"

    def __init__(self) -> None:
        self.events: list = []


for _name in EVENTS:

    def _record(self, runner, state, _name=_name, **kwargs):
        assert runner.epoch == state.epoch and runner.iter == state.iteration
        self.events.append((_name, runner.epoch, runner.iter, kwargs.get("batch_idx")))

    setattr(Recorder, _name, _record)


def _null_step(state, batch):
    return state, {"loss": torch.zeros(())}


def functrain_events(train_loop, callbacks=(), tmp_path=None) -> list:
    rec = Recorder()
    runner = Runner(
        state=TrainState(params={}, buffers={}, opt_state=()),
        train_step=_null_step,
        train_loop=train_loop,
        val_loop=ValLoop([0], lambda state, batch: {"acc": torch.ones(())}),
        callbacks=[rec, *callbacks],
        default_callbacks=False,
        work_dir=tmp_path,
    )
    runner.train()
    return rec.events


def val_points(events: list) -> list[tuple[int, int]]:
    return [(e, i) for name, e, i, _ in events if name == "before_val"]


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    # mmengine's IterBasedTrainLoop sleeps 2 s whenever it restarts its data iterator.
    monkeypatch.setattr(mmengine.runner.loops.time, "sleep", lambda s: None)


def test_epoch_loop_matches_mmengine_with_dynamic_intervals(tmp_path):
    cfg = dict(max_epochs=12, val_interval=5, dynamic_intervals=[(11, 2)])
    expected = mmengine_events(
        tmp_path, "epoch", dict(type="EpochBasedTrainLoop", **cfg), n_train=4
    )
    got = functrain_events(EpochBasedTrainLoop([0, 1], **cfg), tmp_path=tmp_path)
    assert [e for e, _ in val_points(expected)] == [5, 10, 12]
    assert got == expected
    # counters as hooks see them: after_train_epoch before the increment
    assert ("after_train_epoch", 0, 2, None) in got
    assert got[:4] == [
        ("before_run", 0, 0, None),
        ("before_train", 0, 0, None),
        ("before_train_epoch", 0, 0, None),
        ("before_train_iter", 0, 0, 0),
    ]


def test_epoch_loop_val_begin_matches_mmengine(tmp_path):
    cfg = dict(max_epochs=7, val_begin=3, val_interval=2)
    expected = mmengine_events(tmp_path, "begin", dict(type="EpochBasedTrainLoop", **cfg), 6)
    got = functrain_events(EpochBasedTrainLoop([0, 1, 2], **cfg), tmp_path=tmp_path)
    assert [e for e, _ in val_points(expected)] == [4, 6, 7]
    assert got == expected


def test_epoch_loop_dynamic_interval_takes_effect_one_epoch_early(tmp_path):
    # mmengine looks up the interval for epoch + 1 after epoch `epoch` finished: the new
    # interval already decides the validation after epoch milestone - 1.
    cfg = dict(max_epochs=7, val_begin=3, val_interval=2, dynamic_intervals=[(4, 3)])
    expected = mmengine_events(tmp_path, "dyn", dict(type="EpochBasedTrainLoop", **cfg), 2)
    got = functrain_events(EpochBasedTrainLoop([0], **cfg), tmp_path=tmp_path)
    assert [e for e, _ in val_points(expected)] == [3, 6, 7]
    assert got == expected


def test_iter_loop_matches_mmengine_with_val_begin_and_dynamic_intervals(tmp_path):
    cfg = dict(max_iters=9, val_begin=3, val_interval=2, dynamic_intervals=[(6, 3)])
    expected = mmengine_events(tmp_path, "iter", dict(type="IterBasedTrainLoop", **cfg), 4)
    got = functrain_events(IterBasedTrainLoop([0, 1], **cfg), tmp_path=tmp_path)
    assert [i for _, i in val_points(expected)] == [4, 6, 9]
    assert got == expected
    # the whole run is one epoch; batch_idx is the iteration
    assert ("after_train_iter", 0, 7, 7) in got


def test_early_stopping_matches_mmengine(tmp_path):
    # The constant metric stops training at the second validation (patience=1); the epoch in
    # progress and its validation complete, then after_train / after_run.
    cfg = dict(max_epochs=10, val_interval=2)
    expected = mmengine_events(
        tmp_path,
        "early",
        dict(type="EpochBasedTrainLoop", **cfg),
        4,
        hooks=[EarlyStoppingHook(monitor="acc", patience=1)],
    )
    got = functrain_events(
        EpochBasedTrainLoop([0, 1], **cfg), [EarlyStopping(monitor="acc", patience=1)], tmp_path
    )
    assert [e for e, _ in val_points(expected)] == [2, 4]
    assert expected[-3:] == [
        ("after_val", 4, 8, None),
        ("after_train", 4, 8, None),
        ("after_run", 4, 8, None),
    ]
    assert got == expected


def test_early_stopping_in_iter_loop_matches_mmengine(tmp_path):
    cfg = dict(max_iters=20, val_interval=3)
    expected = mmengine_events(
        tmp_path,
        "early_iter",
        dict(type="IterBasedTrainLoop", **cfg),
        4,
        hooks=[EarlyStoppingHook(monitor="acc", patience=2)],
    )
    got = functrain_events(
        IterBasedTrainLoop([0, 1], **cfg), [EarlyStopping(monitor="acc", patience=2)], tmp_path
    )
    assert [i for _, i in val_points(expected)] == [3, 6, 9]
    assert got == expected


def test_mmengine_priority_order_with_same_priorities(tmp_path):
    """Hooks of equal priority run in registration order, lower values first (mmengine)."""
    order_mm: list = []
    order_ft: list = []

    def mm_hook(tag, priority):
        class H(Hook):
            def before_train(self, runner):
                order_mm.append(tag)

        h = H()
        h.priority = priority
        return h

    def ft_cb(tag, priority):
        class C(Callback):
            def before_train(self, runner, state):
                order_ft.append(tag)

        c = C()
        c.priority = priority
        c.name = tag
        return c

    spec = [("a", "LOW"), ("b", 10), ("c", "LOW"), ("d", "HIGHEST"), ("e", 70), ("f", "NORMAL")]
    mmengine_events(
        tmp_path,
        "prio",
        dict(type="EpochBasedTrainLoop", max_epochs=1),
        2,
        hooks=[mm_hook(t, p) for t, p in spec],
    )
    functrain_events(EpochBasedTrainLoop([0], max_epochs=1), [ft_cb(t, p) for t, p in spec])
    assert order_mm == ["d", "b", "f", "a", "c", "e"]
    assert order_ft == order_mm
