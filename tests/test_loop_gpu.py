"""On a GPU the loop does not synchronise with the host between log intervals."""

from __future__ import annotations

import pytest
import torch

import functrain as ft
from functrain.callbacks import Callback, Logger
from functrain.loops import EpochBasedTrainLoop, Runner
from functrain.schedules import cosine_annealing_lr
from functrain.state import TrainState
from functrain.step import make_train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class SyncGuard(Callback):
    """Makes any host sync an error from the start of an iteration to the logger's turn in an
    iteration that logs (and through the whole iteration otherwise)."""

    priority = "HIGHEST"

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.guarded = 0

    def before_train_iter(self, runner, state, batch_idx, data_batch=None):
        torch.cuda.set_sync_debug_mode("error")

    def after_train_iter(self, runner, state, batch_idx, data_batch=None, outputs=None):
        if (batch_idx + 1) % self.interval == 0:
            torch.cuda.set_sync_debug_mode("default")
        else:
            self.guarded += 1

    def before_train_epoch(self, runner, state):
        torch.cuda.set_sync_debug_mode("default")

    def after_train_epoch(self, runner, state):
        torch.cuda.set_sync_debug_mode("default")


def test_no_host_sync_between_log_intervals_on_gpu(tmp_path):
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 64),
        torch.nn.BatchNorm1d(64),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(64, 10),
    ).to(device)
    tx = ft.chain(
        ft.clip(1.0), ft.adamw(lr=cosine_annealing_lr(1e-3, T_max=300), weight_decay=1e-2)
    )

    def loss_fn(forward, batch):
        x, y = batch
        logits = forward(x)
        return torch.nn.functional.cross_entropy(logits, y), {
            "acc": (logits.argmax(-1) == y).float().mean()
        }

    g = torch.Generator(device="cpu").manual_seed(0)
    batches = [
        (
            torch.randn(16, 32, generator=g).to(device),
            torch.randint(0, 10, (16,), generator=g).to(device),
        )
        for _ in range(50)
    ]
    guard = SyncGuard(interval=25)
    runner = Runner(
        state=TrainState.create(model, tx),
        train_step=make_train_step(model, loss_fn, tx),
        train_loop=EpochBasedTrainLoop(batches, max_epochs=6),
        callbacks=[guard],
        default_callbacks={"logger": Logger(interval=25), "checkpoint": None},
        work_dir=tmp_path,
        log_level="WARNING",
    )
    try:
        state = runner.train()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert state.iteration == 300 and guard.guarded == 288
    assert all(t.device.type == "cuda" for t in state.params.values())
    assert len([r for r in runner.log_records if r["mode"] == "train"]) == 12
