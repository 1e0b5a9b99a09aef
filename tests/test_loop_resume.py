"""A run interrupted after iteration k and resumed ends BITWISE where the uninterrupted run ends.

The model has BatchNorm (buffers threaded through the step) and dropout (global RNG), the
optimizer a clip, AdamW and a cosine schedule, the data is shuffled (by the global RNG, by a
loader generator, or by a seeded sampler with ``set_epoch``), an EMA callback keeps state,
and validation runs in between (it must not disturb the random stream).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import functrain as ft
from functrain.callbacks import EMA, Callback, CheckpointCallback, EarlyStopping
from functrain.loops import EpochBasedTrainLoop, IterBasedTrainLoop, Runner, ValLoop
from functrain.schedules import cosine_annealing_lr
from functrain.state import TrainState
from functrain.step import make_eval_step, make_train_step


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors: with several intra-op threads on a busy 2-core machine each op can wait
    # tens of milliseconds for OpenMP workers.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Crash(Exception):
    pass


class CrashAt(Callback):
    """Simulates a crash: raises in ``before_train_iter`` of iteration ``at``."""

    priority = "LOWEST"

    def __init__(self, at: int) -> None:
        self.at = at

    def before_train_iter(self, runner, state, batch_idx, data_batch=None):
        if runner.iter == self.at:
            raise Crash


def loss_fn(forward, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(forward(x), y)


def metrics_fn(forward, batch):
    x, y = batch
    return {"acc": (forward(x).argmax(-1) == y).float()}


def build(
    tmp_path,
    loop,
    data,
    *,
    crash_at=None,
    resume=False,
    ckpt=None,
    max_epochs=4,
    val_interval=3,
    accumulate=False,
):
    torch.manual_seed(0)
    x = torch.randn(40, 6)
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).long()
    ds = TensorDataset(x, y)
    accumulate = accumulate or data.endswith("+accumulate")
    data = data.removesuffix("+accumulate")
    if data == "global":
        loader = DataLoader(ds, batch_size=8, shuffle=True)
    elif data == "generator":
        loader = DataLoader(
            ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3)
        )
    else:
        sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=5)
        loader = DataLoader(ds, batch_size=8, sampler=sampler)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(16, 2),
    )
    total = 20
    tx = ft.chain(
        ft.clip(0.5),
        ft.adamw(lr=cosine_annealing_lr(0.05, T_max=total), weight_decay=0.01),
    )
    if accumulate:  # mmengine's accumulative_counts=3, the last window shortened
        tx = ft.accumulate(tx, 3, max_iters=total)
    train_loop = (
        EpochBasedTrainLoop(loader, max_epochs=max_epochs, val_interval=1)
        if loop == "epoch"
        else IterBasedTrainLoop(loader, max_iters=total, val_interval=val_interval)
    )
    callbacks = [EMA(momentum=0.3, begin_iter=2)]
    if crash_at is not None:
        callbacks.append(CrashAt(crash_at))
    checkpoint = ckpt or CheckpointCallback(interval=1, by_epoch=False, max_keep_ckpts=2)
    return Runner(
        state=TrainState.create(model, tx),
        train_step=make_train_step(model, loss_fn, tx),
        train_loop=train_loop,
        val_loop=ValLoop(
            DataLoader(ds, batch_size=16, shuffle=True), make_eval_step(model, metrics_fn)
        ),
        callbacks=callbacks,
        default_callbacks={"checkpoint": checkpoint},
        work_dir=tmp_path,
        resume=resume,
        log_level="WARNING",
    )


def leaves(state: TrainState):
    tree = (state.params, state.buffers, state.opt_state, state.callbacks)
    return [
        (p, v)
        for p, v in zip(*reversed(_flatten_with_paths(tree)), strict=True)
        if isinstance(v, torch.Tensor)
    ]


def _flatten_with_paths(tree):
    import optree

    paths, values, _ = optree.tree_flatten_with_path(tree, namespace="functrain")
    return values, paths


def assert_same_state(a: TrainState, b: TrainState) -> None:
    assert (a.iteration, a.epoch) == (b.iteration, b.epoch)
    la, lb = leaves(a), leaves(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, ta), (_, tb) in zip(la, lb, strict=True):
        assert ta.dtype == tb.dtype and torch.equal(ta, tb), f"differs at {path}"
    assert a.callbacks["ema"]["steps"] == b.callbacks["ema"]["steps"]


CASES = [
    ("epoch", "global", 6),  # mid-epoch (epoch 1, batch 1)
    ("epoch", "global+accumulate", 7),  # in the middle of an accumulation window
    ("epoch", "generator", 9),  # last batch of epoch 1 is done, after_train_epoch is not
    ("epoch", "sampler", 13),
    ("iter", "global", 7),  # second pass over the data, 2 batches in
    ("iter", "sampler", 16),  # fourth pass (set_epoch(3)), 1 batch in
    ("iter", "generator", 10),  # a pass boundary: the checkpoint ends pass 1 exactly
]


@pytest.mark.parametrize(("loop", "data", "k"), CASES)
def test_resume_after_iteration_k_is_bitwise_identical(tmp_path, loop, data, k):
    reference = build(tmp_path / "ref", loop, data).train()

    crashed = build(tmp_path / "run", loop, data, crash_at=k)
    with pytest.raises(Crash):
        crashed.train()
    assert crashed.iter == k
    resumed_runner = build(tmp_path / "run", loop, data, resume=True)
    resumed = resumed_runner.train()
    assert_same_state(resumed, reference)
    # the random stream continues identically too
    after_resumed = torch.rand(3)
    build(tmp_path / "ref2", loop, data).train()
    assert torch.equal(after_resumed, torch.rand(3))


def test_resume_from_epoch_checkpoint_repeats_nothing(tmp_path):
    ckpt = lambda: CheckpointCallback(interval=1)  # noqa: E731 - by epoch
    reference = build(tmp_path / "ref", "epoch", "global", ckpt=ckpt()).train()
    crashed = build(tmp_path / "run", "epoch", "global", crash_at=12, ckpt=ckpt())
    with pytest.raises(Crash):
        crashed.train()
    resumed_runner = build(tmp_path / "run", "epoch", "global", resume=True, ckpt=ckpt())
    seen = []

    class Watch(Callback):
        def before_train_epoch(self, runner, state):
            seen.append((runner.epoch, runner.iter))

    resumed_runner.register_callback(Watch())
    assert_same_state(resumed_runner.train(), reference)
    assert seen == [(2, 10), (3, 15)]  # epochs 0 and 1 were in epoch_2.pth; epoch 2 redone


def test_validation_does_not_change_the_training_random_stream(tmp_path):
    """Validation is RNG-neutral: validating every iteration or never trains bitwise alike
    (the validation loader shuffles, which draws from the global generator)."""
    rarely = build(tmp_path / "a", "iter", "global", val_interval=1000).train()
    often = build(tmp_path / "b", "iter", "global", val_interval=1).train()
    for (path, ta), (_, tb) in zip(leaves(rarely), leaves(often), strict=True):
        if not path[0] == "callbacks":
            assert torch.equal(ta, tb), path


def test_early_stopping_state_survives_resume(tmp_path):
    stop = EarlyStopping(monitor="acc", rule="greater", min_delta=2.0, patience=3)
    first = build(tmp_path, "epoch", "global", ckpt=CheckpointCallback(interval=1), max_epochs=2)
    first.register_callback(stop)
    state = first.train()
    assert state.callbacks["early_stopping"]["wait_count"] == 1  # best from epoch 1, then 1 miss
    second = build(tmp_path, "epoch", "global", resume=True, ckpt=CheckpointCallback(interval=1))
    second.register_callback(
        EarlyStopping(monitor="acc", rule="greater", min_delta=2.0, patience=3)
    )
    final = second.train()
    # two more misses (epochs 3 and 4) reach patience 3 at epoch 4 = max_epochs
    assert final.callbacks["early_stopping"]["wait_count"] == 3
    assert second.stop_training


def test_checkpoints_written_before_the_split_still_name_a_readable_data_position():
    # Checkpoints written when DataPosition lived in functrain/loops.py name it so.
    from functrain.checkpoint import decode, encode
    from functrain.data_position import DataPosition

    old = encode(DataPosition(3, 7, phase="iter_end"))
    old["__record__"] = "functrain.loops:DataPosition"
    assert decode(old) == DataPosition(3, 7, phase="iter_end")
