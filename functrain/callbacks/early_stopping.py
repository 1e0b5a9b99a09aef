"""``EarlyStopping``: stop training when a validation metric stops improving."""

from __future__ import annotations

import math
import warnings
from typing import Any

from functrain.callbacks.base import Callback
from functrain.callbacks.checkpoint import RULE_MAP, infer_rule
from functrain.callbacks.members import describe, member_values

__all__ = ["EarlyStopping"]


class EarlyStopping(Callback):
    """mmengine's ``EarlyStoppingHook``: after each validation, compare ``metrics[monitor]``
    with the best so far; after ``patience`` validations without an improvement of at least
    ``min_delta``, or when the metric reaches ``stopping_threshold``, or (``check_finite``)
    when it is nan/inf, set ``runner.stop_training``. The loop then finishes the current
    epoch (or iteration) and its validation, and stops.

    The best score and the wait count are persistent (``state.callbacks["early_stopping"]``).

    Args:
        monitor: the metric to watch.
        rule: ``"greater"`` or ``"less"``; inferred from the name when ``None`` (``acc`` ->
            greater, ``loss`` -> less).
        min_delta: minimum improvement (mmengine's default 0.1).
        strict: raise when ``monitor`` is missing (else warn and skip).
        check_finite: stop when the metric is nan or infinite.
        patience: validations without improvement tolerated.
        stopping_threshold: stop as soon as the metric is better than this.

    Ensembles (``runner.members`` = N): each member is judged on its own metric
    ``"<monitor>/<i>"`` with the rule above (the persistent state holds lists: one best
    score and wait count per member). A member that stops is frozen from the next train
    step on: :func:`functrain.stop_members` clears its entry of the ``active_members`` mask
    in the state, and :func:`functrain.make_ensemble_train_step` keeps its params, buffers
    and optimizer state bitwise (a ``torch.where`` per member, no host sync per step). The
    others go on; the run ends (``runner.stop_training``) once every member has stopped.
    """

    priority = "LOWEST"

    def __init__(
        self,
        monitor: str,
        rule: str | None = None,
        min_delta: float = 0.1,
        strict: bool = False,
        check_finite: bool = True,
        patience: int = 5,
        stopping_threshold: float | None = None,
    ) -> None:
        if rule is not None and rule not in RULE_MAP:
            raise ValueError(f'`rule` should be either "greater" or "less", but got {rule}')
        self.monitor = monitor
        self.rule = rule if rule is not None else infer_rule(monitor)
        self.min_delta = min_delta if self.rule == "greater" else -1 * min_delta
        self.strict = strict
        self.check_finite = check_finite
        self.patience = patience
        self.stopping_threshold = stopping_threshold

    def after_val_epoch(self, runner: Any, state: Any, metrics: Any = None) -> Any:
        metrics = metrics or {}
        members = getattr(runner, "members", None)
        if members:
            return self._members(runner, state, metrics, members)
        if self.monitor not in metrics:
            self._missing(metrics, self.monitor)
            return None
        cs = dict(self.get_state(state) or {})
        best = cs.get("best_score", -math.inf if self.rule == "greater" else math.inf)
        wait = cs.get("wait_count", 0)
        stop, best, wait, message = self._judge(float(metrics[self.monitor]), best, wait)
        if stop:
            runner.stop_training = True
            runner.logger.info(message)
        return self.set_state(state, {"best_score": best, "wait_count": wait})

    def _missing(self, metrics: Any, wanted: str) -> None:
        if self.strict:
            raise RuntimeError(
                f"Early stopping conditioned on metric `{wanted} is not available. "
                f"Please check available metrics {metrics}, or set `strict=False` in "
                "`EarlyStopping`."
            )
        warnings.warn(
            f"Skip early stopping process since the evaluation results ({metrics.keys()}) "
            f"do not include `monitor` ({wanted}).",
            stacklevel=3,
        )

    def _members(self, runner: Any, state: Any, metrics: Any, n: int) -> Any:
        """Per member: member i's ``"<monitor>/<i>"`` judged as a single run's metric; a
        member that stops is frozen from the next step on (:func:`functrain.stop_members`);
        the run stops once every member has stopped (here or by another callback)."""
        from functrain.ensembles import stop_members, stopped_members

        scores = member_values(metrics, self.monitor, n)
        if scores is None:
            self._missing(metrics, f"{self.monitor}/<member>")
            return None
        init = -math.inf if self.rule == "greater" else math.inf
        cs = dict(self.get_state(state) or {})
        best = list(cs.get("best_score", [init] * n))
        wait = list(cs.get("wait_count", [0] * n))
        # Members stopped before (by this callback or another, e.g. TerminateOnNaN): read
        # from the mask once per validation, which synchronises anyway.
        already = set(stopped_members(state))
        newly = []
        for i, score in enumerate(scores):
            if i in already:
                continue
            stop, best[i], wait[i], message = self._judge(score, best[i], wait[i])
            if stop:
                newly.append(i)
                runner.logger.info(f"member {describe(runner, i)} stops: {message}")
        if newly:
            state = stop_members(state, newly, n)
        if len(already) + len(newly) == n:
            runner.stop_training = True
            runner.logger.info("every member has stopped: training ends")
        return self.set_state(state, {"best_score": best, "wait_count": wait})

    def _judge(self, score: float, best: float, wait: int) -> tuple[bool, float, int, str]:
        """mmengine's decision for one score: ``(stop, best, wait, message)``."""
        compare = RULE_MAP[self.rule]
        stop, message = False, ""
        if self.check_finite and not math.isfinite(score):
            stop = True
            message = (
                f"Monitored metric {self.monitor} = {score} is infinite. "
                f"Previous best value was {best:.3f}."
            )
        elif self.stopping_threshold is not None and compare(score, self.stopping_threshold):
            stop = True
            best = score
            message = (
                f"Stopping threshold reached: `{self.monitor}` = {score} is {self.rule} than "
                f"{self.stopping_threshold}."
            )
        elif compare(best + self.min_delta, score):
            wait += 1
            if wait >= self.patience:
                stop = True
                message = (
                    f"the monitored metric did not improve in the last {wait} records. "
                    f"best score: {best:.3f}. "
                )
        else:
            best, wait = score, 0
        return stop, best, wait, message
