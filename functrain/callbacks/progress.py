"""``ProgressBar``: a one-line progress bar on interactive terminals."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from functrain.callbacks.base import Callback
from functrain.ranks import is_main_process

__all__ = ["ProgressBar"]


class ProgressBar(Callback):
    """Draw ``[#####.....] 120/500 iters, 35.2 it/s`` on ``stream`` while training and
    validating, redrawn at most every ``min_interval`` seconds (no device sync: it shows
    counters only). Does nothing when ``stream`` is not a terminal, unless ``force``, and
    on ranks other than 0 under ``torch.distributed``.

    Args:
        stream: where to draw (default ``sys.stderr``).
        width: bar width in characters.
        min_interval: seconds between redraws.
        force: draw even when ``stream`` is not interactive.
    """

    priority = "LOWEST"

    def __init__(
        self,
        stream: TextIO | None = None,
        width: int = 30,
        min_interval: float = 0.1,
        force: bool = False,
    ) -> None:
        self.stream = stream
        self.width = width
        self.min_interval = min_interval
        self.force = force
        self._last = 0.0
        self._start = 0.0
        self._start_iter = 0
        self.draws = 0

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def _active(self) -> bool:
        if not is_main_process():
            return False
        out = self._out()
        return self.force or (hasattr(out, "isatty") and out.isatty())

    def _draw(self, done: int, total: int, unit: str, rate: float, final: bool = False) -> None:
        frac = done / total if total else 0.0
        filled = int(self.width * frac)
        bar = "#" * filled + "." * (self.width - filled)
        self._out().write(f"\r[{bar}] {done}/{total} {unit}, {rate:.1f} it/s")
        if final:
            self._out().write("\n")
        self._out().flush()
        self.draws += 1

    def before_train(self, runner: Any, state: Any) -> None:
        self._start, self._start_iter = time.perf_counter(), runner.iter

    def after_train_iter(self, runner: Any, state: Any, batch_idx: int, **kwargs: Any) -> None:
        if not self._active():
            return
        now = time.perf_counter()
        last = runner.iter + 1 == runner.max_iters
        if now - self._last < self.min_interval and not last:
            return
        self._last = now
        rate = (runner.iter + 1 - self._start_iter) / max(now - self._start, 1e-9)
        self._draw(runner.iter + 1, runner.max_iters, "iters", rate, final=last)

    def after_val_epoch(self, runner: Any, state: Any, metrics: Any = None) -> None:
        if self._active():
            self._out().write("\r" + " " * (self.width + 40) + "\r")
            self._out().flush()
