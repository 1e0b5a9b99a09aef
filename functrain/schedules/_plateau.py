"""ReduceOnPlateau: the one schedule that depends on validation metrics, kept functional."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import attrs

from functrain.schedules._args import float_arg, int_arg
from functrain.schedules._piece import INF

__all__ = ["PlateauState", "ReduceOnPlateau"]


@attrs.frozen
class PlateauState:
    """The state of a :class:`ReduceOnPlateau` schedule (an immutable record).

    Attributes:
        value: the hyperparameter value in force.
        best: the best monitored metric so far (``inf``/``-inf`` before the first one).
        num_bad_epochs: validations without improvement since the last improvement.
        cooldown_counter: validations left before bad epochs count again.
        epochs: training epochs finished (mmengine's ``_global_step``).
        last_step: validations seen inside the window, minus one (mmengine's ``last_step``).

    Example:
        >>> ReduceOnPlateau().init(0.1).value
        0.1
    """

    value: float
    best: float
    num_bad_epochs: int = 0
    cooldown_counter: int = 0
    epochs: int = 0
    last_step: int = -1


@attrs.frozen
class ReduceOnPlateau:
    """Reduce a value when a monitored metric stops improving (mmengine ReduceOnPlateauLR).

    Functional interface for the training loop::

        state = plateau.init(lr)               # before training
        state = plateau.epoch_end(state)       # after each training epoch
        state = plateau.update(state, metrics) # after each validation
        lr = state.value

    The semantics are mmengine's, including the window: a validation counts only when
    ``begin <= epochs finished < end``. One difference: before the first validation the
    best value is ``+inf``/``-inf`` where mmengine uses ``±1e9``, so a metric beyond 1e9
    counts as an improvement here.

    Args:
        monitor: the metric name to read from the metrics mapping.
        rule: ``'less'`` (lower is better) or ``'greater'``.
        factor: multiplier applied on a plateau, in [0, 1).
        patience: validations without improvement tolerated before reducing.
        threshold: minimal relative or absolute improvement (>= 0).
        threshold_rule: ``'rel'`` or ``'abs'``.
        cooldown: validations to wait after a reduction before counting bad epochs again.
        min_value: lower bound of the value.
        eps: reductions smaller than this are skipped.
        begin, end: window in finished training epochs.

    Example:
        >>> plateau = ReduceOnPlateau(patience=0, factor=0.5)
        >>> state = plateau.init(1.0)
        >>> for loss in [3.0, 3.0, 3.0]:
        ...     state = plateau.update(plateau.epoch_end(state), {"loss": loss})
        >>> state.value
        0.25
    """

    monitor: str = "loss"
    rule: str = "less"
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    threshold_rule: str = "rel"
    cooldown: int = 0
    min_value: float = 0.0
    eps: float = 1e-8
    begin: int = 0
    end: int = INF

    def __attrs_post_init__(self) -> None:
        name = "ReduceOnPlateau"
        if not isinstance(self.monitor, str):
            raise ValueError(f"{name}: `monitor` must be a str, got {self.monitor!r}")
        if self.rule not in ("less", "greater"):
            raise ValueError(f"{name}: `rule` must be 'less' or 'greater', got {self.rule!r}")
        if self.threshold_rule not in ("rel", "abs"):
            raise ValueError(
                f"{name}: `threshold_rule` must be 'rel' or 'abs', got {self.threshold_rule!r}"
            )
        fields = {
            "factor": float_arg(name, "factor", self.factor, lo=0, hi=1, hi_open=True),
            "threshold": float_arg(name, "threshold", self.threshold, lo=0),
            "min_value": float_arg(name, "min_value", self.min_value),
            "eps": float_arg(name, "eps", self.eps, lo=0),
            "patience": int_arg(name, "patience", self.patience, minimum=0),
            "cooldown": int_arg(name, "cooldown", self.cooldown, minimum=0),
            "begin": int_arg(name, "begin", self.begin, minimum=0),
            "end": int_arg(name, "end", self.end),
        }
        if fields["end"] <= fields["begin"]:
            raise ValueError(
                f"{name}: `end` must be larger than `begin`, got begin={self.begin}, end={self.end}"
            )
        for key, value in fields.items():
            object.__setattr__(self, key, value)

    def init(self, value: float) -> PlateauState:
        """Start from ``value`` (the hyperparameter's initial value).

        Args:
            value: initial value.

        Returns:
            A fresh :class:`PlateauState`.

        Example:
            >>> ReduceOnPlateau(rule="greater").init(0.1).best
            -inf
        """
        start = float_arg("ReduceOnPlateau.init", "value", value)
        worse = math.inf if self.rule == "less" else -math.inf
        return PlateauState(value=start, best=worse)

    def epoch_end(self, state: PlateauState) -> PlateauState:
        """Count one finished training epoch (mmengine calls ``step()`` without metrics).

        Args:
            state: the current state.

        Returns:
            The state with ``epochs`` incremented.

        Example:
            >>> p = ReduceOnPlateau()
            >>> p.epoch_end(p.init(0.1)).epochs
            1
        """
        return attrs.evolve(state, epochs=state.epochs + 1)

    def update(self, state: PlateauState, metrics: Mapping[str, Any] | float) -> PlateauState:
        """Feed the result of a validation run.

        Args:
            state: the current state.
            metrics: a mapping holding ``monitor`` (as mmengine's evaluator returns), or
                the monitored number itself. 0-d tensors are read with ``float()``.

        Returns:
            The new state; ``state.value`` is the value to use from now on.

        Example:
            >>> p = ReduceOnPlateau(patience=0)
            >>> s = p.update(p.init(1.0), {"loss": 2.0})
            >>> p.update(s, 2.0).value
            0.1
        """
        if not (state.epochs >= self.begin and state.epochs < self.end):
            return state
        metric = self._read(metrics)
        best, bad, cooldown = state.best, state.num_bad_epochs + 1, state.cooldown_counter
        if self._is_better(metric, best):
            best, bad = metric, 0
        if cooldown > 0:
            cooldown -= 1
            bad = 0  # bad epochs do not count during the cooldown
        value = state.value
        if bad > self.patience:
            new = max(float(value) * self.factor, self.min_value)
            if value - new > self.eps:
                value = new
            cooldown, bad = self.cooldown, 0
        return PlateauState(
            value=value,
            best=best,
            num_bad_epochs=bad,
            cooldown_counter=cooldown,
            epochs=state.epochs,
            last_step=state.last_step + 1,
        )

    def _read(self, metrics: Mapping[str, Any] | float) -> float:
        if isinstance(metrics, Mapping):
            if self.monitor not in metrics:
                raise KeyError(
                    f"ReduceOnPlateau: metric {self.monitor!r} is not in the metrics "
                    f"{sorted(metrics)}; set `monitor` to one of them"
                )
            metrics = metrics[self.monitor]
        if isinstance(metrics, numbers.Real):
            return float(metrics)
        return float(metrics)  # a 0-d tensor: validation already synchronised the device

    def _is_better(self, a: float, best: float) -> bool:
        if self.rule == "less":
            if self.threshold_rule == "rel":
                return a < best * (1.0 - self.threshold)
            return a < best - self.threshold
        if self.threshold_rule == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    @classmethod
    def from_mmengine(cls, cfg: Mapping[str, Any]) -> ReduceOnPlateau:
        """Build from an mmengine ``ReduceOnPlateau*`` config dict.

        Args:
            cfg: e.g. ``dict(type='ReduceOnPlateauLR', monitor='loss', patience=2)``.

        Returns:
            The :class:`ReduceOnPlateau`.

        Example:
            >>> ReduceOnPlateau.from_mmengine(dict(type='ReduceOnPlateauLR', patience=2)).patience
            2
        """
        from functrain.schedules._mmengine import plateau_kwargs

        return cls(**plateau_kwargs(cfg))
