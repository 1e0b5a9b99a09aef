"""Seed blocks 14-18: a new hook, registered so that a config can name it.

An mmengine hook ports to a functrain callback by changing its base class to
:class:`functrain.Callback` and adding the ``state`` argument (the current
:class:`functrain.TrainState`) to its methods. A config uses it through ``custom_imports``
and ``custom_hooks``::

    custom_imports = dict(imports=['examples.configs.my_project.my_hook'],
                          allow_failed_imports=False)
    custom_hooks = [dict(type='MyHook', a=10, b='my_hook.jsonl', priority='NORMAL')]
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import functrain as ft
from functrain.config import HOOKS
from functrain.transforms.state_values import values_in_force


@HOOKS.register_module()
class MyHook(ft.Callback):
    """Records the learning rate, momentum and loss every ``a`` iterations and writes them,
    with one line per finished epoch, as JSON lines to ``work_dir / b`` when training ends.

    Reading the values moves them to the host, so it is done only every ``a`` iterations.

    Args:
        a: record every ``a`` training iterations.
        b: the file name, under the runner's work dir.

    Example:
        >>> runner.register_callback(MyHook(a=10, b="my_hook.jsonl"))  # doctest: +SKIP
    """

    priority = "NORMAL"

    def __init__(self, a: int = 10, b: str = "my_hook.jsonl") -> None:
        if isinstance(a, bool) or not isinstance(a, int) or a < 1:
            raise ValueError(
                f"MyHook: a (the interval in iterations) must be an int >= 1, got {a!r}"
            )
        if not isinstance(b, str) or not b or os.sep in b:
            raise ValueError(f"MyHook: b must be a plain file name, got {b!r}")
        self.a = a
        self.b = b
        self.records: list[dict[str, Any]] = []

    def before_train(self, runner: Any, state: ft.TrainState) -> None:
        # Not before_run: a test run after training (`functrain train` runs one) has its own
        # before_run / after_run and must not touch the training records.
        self.records = []

    def after_train_iter(
        self,
        runner: Any,
        state: ft.TrainState,
        batch_idx: int,
        data_batch: Any = None,
        outputs: dict[str, Any] | None = None,
    ) -> None:
        if not self.every_n_train_iters(runner, self.a):
            return
        record: dict[str, Any] = {"epoch": runner.epoch, "iter": runner.iter + 1}
        for name, value in values_in_force(state.opt_state).items():
            record[name] = float(value)
        if outputs and "loss" in outputs:
            record["loss"] = float(outputs["loss"])
        self.records.append(record)

    def after_train_epoch(self, runner: Any, state: ft.TrainState) -> None:
        self.records.append({"epoch_end": runner.epoch + 1, "iter": runner.iter})

    def after_train(self, runner: Any, state: ft.TrainState) -> None:
        out = Path(runner.work_dir) / self.b
        out.parent.mkdir(parents=True, exist_ok=True)
        # Written whole to a temporary file and renamed: never a half-written file.
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{self.b}.")
        try:
            with os.fdopen(fd, "w") as f:
                for record in self.records:
                    f.write(json.dumps(record) + "\n")
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
