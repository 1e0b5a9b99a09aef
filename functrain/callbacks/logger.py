"""``Logger``: training and validation logs to the terminal, a JSON-lines file and TensorBoard.

mmengine's ``LoggerHook`` + ``LogProcessor``: every ``interval`` iterations of an epoch (and
at the end of an epoch unless ``ignore_last``), one line with the learning rate, momentum,
ETA, the window means of ``time`` / ``data_time`` / the step's losses / ``grad_norm``; after
each validation, the metrics. The step's metrics and ``grad_norm`` stay on the device until a
line is written: one host transfer per log line, none in between.

``lr``, ``momentum`` and ``grad_norm`` are read from the optimizer state: the first
``LearningRateState.lr``, ``ScaleByAdamState.b1`` or ``TraceState.momentum``, and
``ClipState.norm`` (the pre-clip global norm) of the chain.

Under ``torch.distributed`` every rank computes the same records (``runner.log_records``),
but only rank 0 prints them and writes the JSON lines and TensorBoard files (the runner's
logger on other ranks shows warnings and errors only). The values are rank 0's: the losses
of rank 0's batches, as mmengine logs.

When the runner has a ``visualizer`` (a config's ``visualizer=dict(...)``), every record
written to ``scalars.json`` also goes to it (``runner.visualizer.add_scalars``), as mmengine's
``LoggerHook`` sends its records to ``runner.visualizer``.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from pathlib import Path
from typing import Any

from functrain.callbacks.base import Callback, ScalarHistory
from functrain.callbacks.checkpoint import infer_rule
from functrain.callbacks.members import describe, expand_members, split_members, summary
from functrain.ranks import is_main_process
from functrain.transforms.state_path import get as get_at
from functrain.transforms.state_values import hyperparameter_paths

__all__ = ["Logger"]


def _fmt(value: float, digits: int) -> str:
    if value != 0 and (abs(value) < 10**-(digits) or abs(value) >= 1e6):
        return f"{value:.{digits}e}"
    return f"{value:.{digits}f}"


class Logger(Callback):
    """Log training progress and validation metrics (mmengine's ``LoggerHook``).

    Args:
        interval: log every ``interval`` iterations of an epoch (by ``batch_idx``).
        ignore_last: skip the last iterations of an epoch when fewer than ``interval``
            remain (mmengine's option; with ``False`` the end of each epoch is logged).
        window_size: number of recent values averaged for keys matching ``mean_pattern``
            (mmengine's ``LogProcessor.window_size``); other keys show their current value.
        mean_pattern: regular expression of the keys to average.
        json_file: write each log line as JSON (``{"lr": ..., "loss": ..., "step": ...}``) to
            ``runner.log_dir / "scalars.json"``, mmengine's local visualisation backend format.
        tensorboard: also write TensorBoard scalars to ``runner.log_dir / "tensorboard"``:
            ``True`` requires the ``tensorboard`` package, ``None`` uses it when installed.
        log_metric_by_epoch: the ``step`` of validation records is the epoch (else the
            iteration), as mmengine.
        num_digits: digits after the decimal point.

    Ensembles (``runner.members`` = N): a value with one entry per member (the step's
    ``[N]`` losses, per-member ``lr`` and ``grad_norm``, validation metrics ``acc/i``) is
    written to ``scalars.json`` / TensorBoard / ``runner.log_records`` as ``"<name>/<i>"``
    for every member; the terminal line stays one line: ``loss[min/med/max]: a/b/c`` per
    value and ``best: #i (label) loss: x`` (the lowest loss; after validation the best by
    the first metric whose rule mmengine infers). Still one host transfer per line.
    """

    priority = "BELOW_NORMAL"

    def __init__(
        self,
        interval: int = 10,
        ignore_last: bool = True,
        window_size: int = 10,
        mean_pattern: str = r".*(loss|time|data_time|grad_norm).*",
        json_file: bool = True,
        tensorboard: bool | None = False,
        log_metric_by_epoch: bool = True,
        num_digits: int = 4,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int):
            raise TypeError("interval must be an integer")
        if interval <= 0:
            raise ValueError("interval must be greater than 0")
        if not isinstance(ignore_last, bool):
            raise TypeError("ignore_last must be a boolean")
        if window_size <= 0:
            raise ValueError("window_size must be greater than 0")
        self.interval = interval
        self.ignore_last = ignore_last
        self.window_size = window_size
        self.mean_pattern = re.compile(mean_pattern)
        self.json_file = json_file
        self.tensorboard = tensorboard
        self.log_metric_by_epoch = log_metric_by_epoch
        self.num_digits = num_digits
        self.json_path: Path | None = None
        self._writer: Any = None
        self._paths: dict[str, Any] | None = None

    # -- set-up ------------------------------------------------------------------------------
    def before_run(self, runner: Any, state: Any) -> None:
        main = is_main_process()
        self.json_path = runner.log_dir / "scalars.json" if self.json_file and main else None
        self._paths = None
        if self.tensorboard is not False and main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if self.tensorboard:
                    raise ImportError(
                        "Logger(tensorboard=True) needs the tensorboard package "
                        "(pip install tensorboard)"
                    ) from None
            else:
                self._writer = SummaryWriter(str(runner.log_dir / "tensorboard"))

    def after_run(self, runner: Any, state: Any) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _hyper_paths(self, state: Any) -> dict[str, Any]:
        if self._paths is None:
            self._paths = hyperparameter_paths(state.opt_state)
        return self._paths

    # -- training ----------------------------------------------------------------------------
    def after_train_iter(
        self, runner: Any, state: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        norm_path = self._hyper_paths(state).get("grad_norm")
        if norm_path is not None:
            # A reference to this step's norm tensor: no copy, no sync.
            runner.history.update("train/grad_norm", get_at(state.opt_state, norm_path))
        loader = runner.train_dataloader
        n = len(loader) if hasattr(loader, "__len__") else 0
        end_of_epoch = n > 0 and batch_idx + 1 == n
        if self.every_n_inner_iters(batch_idx, self.interval) or (
            end_of_epoch and (not self.ignore_last or n <= self.interval)
        ):
            self._log_train(runner, state, batch_idx, n)

    def _log_train(self, runner: Any, state: Any, batch_idx: int, n: int) -> None:
        history: ScalarHistory = runner.history
        values: dict[str, Any] = {}
        for name, path in self._hyper_paths(state).items():
            if name != "grad_norm":
                values[name] = get_at(state.opt_state, path)
        for key in history.keys():
            if not key.startswith("train/"):
                continue
            name = key[len("train/") :]
            if self.mean_pattern.fullmatch(name):
                values[name] = history.mean(key, self.window_size)
            else:
                values[name] = history.current(key)
        members = getattr(runner, "members", None)
        if members:
            values = expand_members(values, members)  # [N] values -> "name/i" entries
        scalars = ScalarHistory.read(values)  # the one host transfer of this line
        by_epoch = getattr(runner.train_loop, "by_epoch", True)
        if by_epoch:
            width = len(str(n))
            head = f"Epoch(train) [{runner.epoch + 1}][{batch_idx + 1:>{width}}/{n}]"
        else:
            width = len(str(runner.max_iters))
            head = f"Iter(train) [{runner.iter + 1:>{width}}/{runner.max_iters}]"
        parts = [head]
        if members:
            shared, per = split_members(scalars, members)
        else:
            shared, per = scalars, {}
        if "lr" in shared:
            parts.append(f"lr: {shared['lr']:.{self.num_digits}e}")
        eta = runner.history.info.get("eta")
        if eta is not None:
            parts.append(f"eta: {datetime.timedelta(seconds=int(eta))}")
        order = ["time", "data_time"] + [k for k in shared if k not in ("lr", "time", "data_time")]
        parts += [f"{k}: {_fmt(shared[k], self.num_digits)}" for k in order if k in shared]
        parts += self._member_parts(runner, per, "less", "loss")
        runner.logger.info("  ".join(parts))
        record = dict(scalars)
        if by_epoch:
            record["epoch"] = runner.epoch + 1
        record["iter"] = runner.iter + 1
        record["step"] = runner.iter + 1
        self._write("train", record, runner)

    # -- validation / test -------------------------------------------------------------------
    def after_val_iter(self, runner: Any, state: Any, batch_idx: int, **kwargs: Any) -> None:
        self._eval_iter(runner, batch_idx, "val")

    def after_test_iter(self, runner: Any, state: Any, batch_idx: int, **kwargs: Any) -> None:
        self._eval_iter(runner, batch_idx, "test")

    def _eval_iter(self, runner: Any, batch_idx: int, mode: str) -> None:
        if not self.every_n_inner_iters(batch_idx, self.interval):
            return
        loader = runner.val_dataloader if mode == "val" else runner.test_dataloader
        n = len(loader) if hasattr(loader, "__len__") else 0
        head = f"{'Epoch' if self._by_epoch(runner) else 'Iter'}({mode}) [{batch_idx + 1}/{n}]"
        parts = [head]
        eta = runner.history.info.get("eta")
        if eta is not None:
            parts.append(f"eta: {datetime.timedelta(seconds=int(eta))}")
        for key in (f"{mode}/time", f"{mode}/data_time"):
            if key in runner.history:
                value = runner.history.mean(key, self.window_size)
                parts.append(f"{key.split('/')[1]}: {_fmt(float(value), self.num_digits)}")
        runner.logger.info("  ".join(parts))

    def before_val_epoch(self, runner: Any, state: Any) -> None:
        runner.history.clear("val/")

    def before_test_epoch(self, runner: Any, state: Any) -> None:
        runner.history.clear("test/")

    def after_val_epoch(self, runner: Any, state: Any, metrics: Any = None) -> None:
        self._eval_epoch(runner, metrics or {}, "val")

    def after_test_epoch(self, runner: Any, state: Any, metrics: Any = None) -> None:
        self._eval_epoch(runner, metrics or {}, "test")

    def _by_epoch(self, runner: Any) -> bool:
        return runner.train_loop is None or getattr(runner.train_loop, "by_epoch", True)

    def _eval_epoch(self, runner: Any, metrics: dict[str, Any], mode: str) -> None:
        values: dict[str, Any] = {}
        for k, v in metrics.items():
            try:
                values[k] = float(v)
            except (TypeError, ValueError):
                continue
        for key in (f"{mode}/data_time", f"{mode}/time"):
            if key in runner.history:
                values[key.split("/")[1]] = float(runner.history.mean(key))
        loader = runner.val_dataloader if mode == "val" else runner.test_dataloader
        n = len(loader) if hasattr(loader, "__len__") else 0
        if self._by_epoch(runner):
            head = f"Epoch({mode}) [{runner.epoch}][{n}/{n}]"
        else:
            head = f"Iter({mode}) [{n}/{n}]"
        members = getattr(runner, "members", None)
        shared, per = split_members(values, members) if members else (values, {})
        parts = [head] + [f"{k}: {_fmt(v, self.num_digits)}" for k, v in shared.items()]
        parts += self._member_parts(runner, per, None, None)
        runner.logger.info("  ".join(parts))
        record = dict(values)
        if mode == "val":
            record["step"] = runner.epoch if self.log_metric_by_epoch else runner.iter
        self._write(mode, record, runner)

    def _member_parts(
        self, runner: Any, per: dict[str, list[float]], rule: str | None, like: str | None
    ) -> list[str]:
        """The terminal words for per-member values: ``name[min/med/max]: a/b/c`` each,
        then the best member by the first value whose rule is known (``like`` in its name
        with ``rule``; else mmengine's inference: ``acc`` greater, ``loss`` less)."""
        if not per:
            return []
        digits = self.num_digits
        parts = [f"{k}[min/med/max]: {summary(v, digits, _fmt)}" for k, v in per.items()]
        for name, vals in per.items():
            if like is not None:
                if like not in name:
                    continue
                r = rule
            else:
                try:
                    r = infer_rule(name)
                except ValueError:
                    continue
            finite = [(x, i) for i, x in enumerate(vals) if math.isfinite(x)]
            if not finite:
                continue
            best, i = max(finite) if r == "greater" else min(finite)
            parts.append(f"best: {describe(runner, i)} {name}: {_fmt(best, digits)}")
            break
        return parts

    # -- outputs -----------------------------------------------------------------------------
    def _write(self, mode: str, record: dict[str, Any], runner: Any) -> None:
        runner.log_records.append({"mode": mode, **record})
        if mode == "test":
            return  # test metrics are in runner.log_records and the text log, not the curves
        if self.json_path is not None:
            with open(self.json_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        visualizer = getattr(runner, "visualizer", None)
        if visualizer is not None and "step" in record:
            # The same record and step to every visualization backend (rank 0 only: the
            # visualizer does nothing elsewhere); trackers name the curves "<mode>/<key>".
            scalars = {k: v for k, v in record.items() if k != "step"}
            visualizer.add_scalars(scalars, step=record["step"], prefix=f"{mode}/")
        if self._writer is not None and "step" in record:
            step = record["step"]
            for k, v in record.items():
                if k not in ("step", "epoch", "iter"):
                    self._writer.add_scalar(f"{mode}/{k}", v, step)
