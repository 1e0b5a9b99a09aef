"""``TerminateOnNaN``: stop training at the first non-finite loss (Lightning's
``detect_anomaly``-free "terminate on NaN"), without a host sync per iteration.

A run whose loss turns ``nan`` or ``inf`` otherwise trains on silently, writing checkpoints of
ruined weights. The runner registers this callback by default (name ``"terminate_on_nan"``):

- every iteration it keeps a reference to the step's ``outputs["loss"]`` (no device work, no
  transfer);
- every ``interval`` iterations (by default the ``logger`` callback's interval, the
  iterations where the logger already reads its values from the device), at the end of each
  epoch (of the run, for the iteration-based loop) and before a checkpoint is written, it
  reads the losses kept since the last check in one transfer; if one is not finite it raises
  :class:`NonFiniteLossError`, whose one-line message names the first iteration whose loss
  was not finite, that value, the last finite loss and its iteration.

Iterations are ``runner.iter`` values (0-based, as the callbacks see them; mmengine's log
shows ``runner.iter + 1``). The loop stops at the check that finds the loss, at most
``interval - 1`` iterations after it went bad; no checkpoint is written in between.

The callback stands aside when the optimizer chain handles non-finite steps itself: a
:func:`functrain.apply_if_finite` or :func:`functrain.loss_scaling` state inside
``state.opt_state`` (checked at ``before_train``).

Ensembles (``runner.members`` = N): the step's loss has one value per member. A member
whose loss is not finite is stopped, like a member that stops early (its entry of the
``active_members`` mask is cleared, :func:`functrain.stop_members`, so its weights stay as
they were at the check), a warning names it and its label, and the other members train on:
one diverging learning rate does not end a sweep. The run raises
:class:`NonFiniteLossError` only when every member has gone non-finite. Checks happen at
the intervals and epoch ends (not before each checkpoint: a checkpoint may hold a member
that went non-finite since the last check; it is stopped at the next check).

Turning it off: ``Runner(default_callbacks={"terminate_on_nan": None})`` in code,
``default_hooks=dict(terminate_on_nan=None)`` in a config (where
``dict(type='TerminateOnNaN', interval=1)`` configures it).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from functrain.callbacks.base import Callback
from functrain.callbacks.history import ScalarHistory

__all__ = ["NonFiniteLossError", "TerminateOnNaN", "handles_non_finite"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became ``nan`` or ``inf`` (raised by :class:`TerminateOnNaN`).

    Attributes:
        iteration: ``runner.iter`` of the first iteration whose loss was not finite.
        value: that loss (``nan``, ``inf`` or ``-inf``).
        last_finite: the last finite loss before it (``None`` when there was none).
        last_finite_iteration: its ``runner.iter`` (``None`` likewise).
        checked_at: ``runner.iter`` when the check ran (the run stopped there).
    """

    def __init__(
        self,
        iteration: int,
        value: float,
        last_finite: float | None,
        last_finite_iteration: int | None,
        checked_at: int,
    ) -> None:
        self.iteration = iteration
        self.value = value
        self.last_finite = last_finite
        self.last_finite_iteration = last_finite_iteration
        self.checked_at = checked_at
        before = (
            f"the last finite loss was {last_finite:.6g} at iteration {last_finite_iteration}"
            if last_finite is not None
            else "no finite loss before it"
        )
        super().__init__(
            f"training stopped: the loss is {value} at iteration {iteration} (runner.iter, "
            f"from 0; found by the check at iteration {checked_at}); {before}. Use "
            "apply_if_finite / loss_scaling in the optimizer chain to skip such steps, or "
            "remove the terminate_on_nan callback to train on"
        )


def handles_non_finite(opt_state: Any) -> bool:
    """Whether ``opt_state`` holds an :func:`~functrain.apply_if_finite` or
    :func:`~functrain.loss_scaling` state (transforms that skip non-finite steps)."""
    from functrain.transforms.combinators import ApplyIfFiniteState
    from functrain.transforms.loss_scaling import LossScaleState
    from functrain.transforms.state_path import find

    return bool(find(opt_state, lambda node: isinstance(node, ApplyIfFiniteState | LossScaleState)))


class TerminateOnNaN(Callback):
    """Raise :class:`NonFiniteLossError` when the training loss stops being finite.

    Args:
        interval: check every this many iterations (by ``batch_idx``, as the logger counts);
            ``None`` (default): the ``logger`` callback's interval when one is registered,
            else 10. Each check is one host transfer; ``1`` checks every iteration.
        key: the metric to watch (``"loss"``).
    """

    priority = "LOW"  # after the logger (which shows the window), before the checkpoint
    name = "terminate_on_nan"

    def __init__(self, interval: int | None = None, key: str = "loss") -> None:
        if interval is not None and (
            isinstance(interval, bool) or not isinstance(interval, int) or interval < 1
        ):
            raise ValueError(f"TerminateOnNaN: interval must be an integer >= 1, got {interval!r}")
        self.interval = interval
        self.key = key
        self._every = interval or 10
        self._active = True
        self._pending: list[tuple[int, Any]] = []  # (runner.iter, loss) since the last check
        self._last_finite: tuple[int, float] | None = None
        self._bad_members: dict[int, tuple[int, float]] = {}  # member -> (iter, loss)

    def before_train(self, runner: Any, state: Any) -> None:
        """Reset; decide the interval and whether the chain already handles bad steps."""
        self._pending, self._last_finite = [], None
        self._bad_members: dict[int, tuple[int, float]] = {}
        self._active = not handles_non_finite(state.opt_state)
        logger = runner.callbacks.get("logger") if "logger" in runner.callbacks else None
        self._every = self.interval or getattr(logger, "interval", None) or 10

    def after_train_iter(
        self,
        runner: Any,
        state: Any,
        batch_idx: int,
        data_batch: Any = None,
        outputs: Any = None,
    ) -> None:
        """Keep this step's loss; check the kept ones every ``interval`` iterations."""
        loss = outputs.get(self.key) if self._active and outputs is not None else None
        if loss is None:
            return None
        self._pending.append((runner.iter, loss))
        if self.every_n_inner_iters(batch_idx, self._every):
            return self._check_run(runner, state, runner.iter)
        return None

    def after_train_epoch(self, runner: Any, state: Any) -> Any:
        """Check the losses kept since the last check."""
        return self._check_run(runner, state, runner.iter - 1)

    def before_save_checkpoint(self, runner: Any, state: Any, checkpoint: Any) -> None:
        """Never write a checkpoint of weights trained on a non-finite loss (a plain run;
        an ensemble's members are checked at the intervals and epoch ends only)."""
        if not getattr(runner, "members", None):
            self._check(runner.iter)

    def _check_run(self, runner: Any, state: Any, now: int) -> Any:
        members = getattr(runner, "members", None)
        if members:
            return self._check_members(runner, state, now, members)
        self._check(now)
        return None

    def _check_members(self, runner: Any, state: Any, now: int, n: int) -> Any:
        """Ensembles: one transfer for the window's ``[N]`` losses; a member whose loss is
        not finite is stopped (:func:`functrain.stop_members`: frozen from the next step,
        with the weights it had then, as early stopping freezes one) and named in a
        warning; the others train on. When every member has gone non-finite the run
        raises :class:`NonFiniteLossError` (for the first one); when the last active member
        goes non-finite after others stopped early, the run ends (``stop_training``)."""
        from functrain.callbacks.members import describe
        from functrain.ensembles import stop_members, stopped_members

        if not self._pending:
            return None
        pending, self._pending = self._pending, []
        rows = torch.stack([v.detach().double().reshape(n) for _, v in pending]).tolist()
        bad: dict[int, tuple[int, float]] = {}
        for (iteration, _), row in zip(pending, rows, strict=True):
            for i, value in enumerate(row):
                if i not in self._bad_members and i not in bad and not math.isfinite(value):
                    bad[i] = (iteration, value)
        if not bad:
            return None
        for i, (iteration, value) in sorted(bad.items()):
            runner.logger.warning(
                f"member {describe(runner, i)}: the loss is {value} at iteration {iteration} "
                f"(found by the check at iteration {max(now, iteration)}); the member is "
                "stopped, the others train on"
            )
        self._bad_members.update(bad)
        if len(self._bad_members) == n:
            first = min(self._bad_members.items(), key=lambda kv: kv[1][0])
            raise NonFiniteLossError(first[1][0], first[1][1], None, None, now)
        state = stop_members(state, list(bad), n)
        if len(stopped_members(state)) == n:
            runner.stop_training = True
        return state

    def _check(self, now: int) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        # One transfer for the whole window (the only host sync this callback makes).
        values = ScalarHistory.read({str(i): v for i, (_, v) in enumerate(pending)}).values()
        for (iteration, _), value in zip(pending, values, strict=True):
            if not math.isfinite(value):
                last = self._last_finite
                raise NonFiniteLossError(
                    iteration,
                    value,
                    last[1] if last is not None else None,
                    last[0] if last is not None else None,
                    max(now, iteration),
                )
            self._last_finite = (iteration, value)
