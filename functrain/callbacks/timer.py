"""``IterTimer``: per-iteration ``time``, ``data_time`` and ``eta`` (mmengine's IterTimerHook)."""

from __future__ import annotations

import time
from typing import Any

from functrain.callbacks.base import Callback

__all__ = ["IterTimer"]


class IterTimer(Callback):
    """Records ``{mode}/data_time`` (from the end of the previous iteration to the start of
    this one: data loading) and ``{mode}/time`` (a whole iteration) in ``runner.history``, and
    ``runner.history.info["eta"]`` in seconds, exactly as mmengine's ``IterTimerHook``.

    Times are host wall-clock times: on a GPU, with no sync per iteration, an iteration's
    ``time`` measures the host's side until the device queue fills up.
    """

    priority = "NORMAL"

    def __init__(self) -> None:
        self.time_sec_tot = 0.0
        self.time_sec_test_val = 0.0
        self.start_iter = 0
        self.t = time.perf_counter()

    def before_train(self, runner: Any, state: Any) -> None:
        self.start_iter = runner.iter
        self.time_sec_tot = 0.0

    def _before_epoch(self, runner: Any, state: Any) -> None:
        self.t = time.perf_counter()

    def _after_epoch(self, runner: Any, state: Any, **kwargs: Any) -> None:
        self.time_sec_test_val = 0.0

    def _before_iter(self, runner: Any, state: Any, mode: str) -> None:
        runner.history.update(f"{mode}/data_time", time.perf_counter() - self.t)

    def _after_iter(self, runner: Any, state: Any, batch_idx: int, mode: str) -> None:
        now = time.perf_counter()
        iter_time = now - self.t
        runner.history.update(f"{mode}/time", iter_time)
        self.t = now
        if mode == "train":
            self.time_sec_tot += iter_time
            avg = self.time_sec_tot / (runner.iter - self.start_iter + 1)
            runner.history.info["eta"] = avg * (runner.max_iters - runner.iter - 1)
        else:
            loader = runner.val_dataloader if mode == "val" else runner.test_dataloader
            self.time_sec_test_val += iter_time
            avg = self.time_sec_test_val / (batch_idx + 1)
            runner.history.info["eta"] = avg * (len(loader) - batch_idx - 1)

    def before_train_epoch(self, runner: Any, state: Any) -> None:
        self._before_epoch(runner, state)

    def before_val_epoch(self, runner: Any, state: Any) -> None:
        self._before_epoch(runner, state)

    def before_test_epoch(self, runner: Any, state: Any) -> None:
        self._before_epoch(runner, state)

    def after_train_epoch(self, runner: Any, state: Any) -> None:
        self._after_epoch(runner, state)

    def after_val_epoch(self, runner: Any, state: Any, metrics: Any = None) -> None:
        self._after_epoch(runner, state)

    def after_test_epoch(self, runner: Any, state: Any, metrics: Any = None) -> None:
        self._after_epoch(runner, state)

    def before_train_iter(self, runner: Any, state: Any, batch_idx: int, data_batch: Any = None):
        self._before_iter(runner, state, "train")

    def before_val_iter(self, runner: Any, state: Any, batch_idx: int, data_batch: Any = None):
        self._before_iter(runner, state, "val")

    def before_test_iter(self, runner: Any, state: Any, batch_idx: int, data_batch: Any = None):
        self._before_iter(runner, state, "test")

    def after_train_iter(self, runner: Any, state: Any, batch_idx: int, **kwargs: Any) -> None:
        self._after_iter(runner, state, batch_idx, "train")

    def after_val_iter(self, runner: Any, state: Any, batch_idx: int, **kwargs: Any) -> None:
        self._after_iter(runner, state, batch_idx, "val")

    def after_test_iter(self, runner: Any, state: Any, batch_idx: int, **kwargs: Any) -> None:
        self._after_iter(runner, state, batch_idx, "test")
