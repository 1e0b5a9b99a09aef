"""``ReduceOnPlateauCallback``: feed validation metrics to a ReduceOnPlateau schedule."""

from __future__ import annotations

from typing import Any

import attrs
import torch

from functrain.callbacks._opt_state import find_records, get_at, replace_at
from functrain.callbacks.base import Callback
from functrain.schedules import PlateauState, ReduceOnPlateau
from functrain.transforms.adam import ScaleByAdamState
from functrain.transforms.momentum import TraceState
from functrain.transforms.scaling import LearningRateState

__all__ = ["ReduceOnPlateauCallback"]

_TARGETS = {
    "lr": ((LearningRateState, "lr"),),
    "momentum": ((ScaleByAdamState, "b1"), (TraceState, "momentum")),
}


class ReduceOnPlateauCallback(Callback):
    """Drive a :class:`functrain.schedules.ReduceOnPlateau` from the loop, as mmengine's
    ``ParamSchedulerHook`` drives ``ReduceOnPlateauLR``: ``epoch_end`` after each training
    epoch, ``update(metrics)`` after each validation, and the new value written into the
    optimizer state (every ``LearningRateState.lr`` for ``param="lr"``, or the momentum /
    Adam ``b1`` in force for ``param="momentum"``).

    The transform must hold the value as a settable number (a constant ``lr``; a scheduled
    one is recomputed from its schedule each step and would override the plateau value).
    The :class:`PlateauState` is persistent (``state.callbacks["reduce_on_plateau"]``).

    Args:
        plateau: the schedule (``monitor``, ``rule``, ``factor``, ``patience``...).
        param: ``"lr"`` or ``"momentum"``.
    """

    priority = "LOW"

    def __init__(self, plateau: ReduceOnPlateau, param: str = "lr") -> None:
        if param not in _TARGETS:
            raise ValueError(f"param must be 'lr' or 'momentum', got {param!r}")
        self.plateau = plateau
        self.param = param

    def _paths(self, opt_state: Any) -> list[Any]:
        paths = []
        for cls, field in _TARGETS[self.param]:
            paths += [
                p + (("attr", field),)
                for p in find_records(opt_state, lambda x, cls=cls: isinstance(x, cls))
            ]
        if not paths:
            raise ValueError(
                f"ReduceOnPlateauCallback: the optimizer state holds no {self.param} to drive"
            )
        return paths

    def before_train(self, runner: Any, state: Any) -> Any:
        if self.get_state(state) is not None:
            return None
        first = get_at(state.opt_state, self._paths(state.opt_state)[0])
        return self.set_state(state, self.plateau.init(float(first)))  # one read, at start

    def after_train_epoch(self, runner: Any, state: Any) -> Any:
        ps = self.get_state(state)
        return None if ps is None else self.set_state(state, self.plateau.epoch_end(ps))

    def after_val_epoch(self, runner: Any, state: Any, metrics: Any = None) -> Any:
        ps: PlateauState | None = self.get_state(state)
        if ps is None or not metrics:
            return None
        new = self.plateau.update(ps, metrics)
        state = self.set_state(state, new)
        if new.value != ps.value:
            opt_state = state.opt_state
            for path in self._paths(opt_state):
                old = get_at(opt_state, path)
                opt_state = replace_at(
                    opt_state,
                    path,
                    torch.full_like(old, new.value) if isinstance(old, torch.Tensor) else new.value,
                )
            state = state.replace(opt_state=opt_state)
            runner.logger.info(f"ReduceOnPlateau: {self.param} set to {new.value:.4e}")
        return state

    def __repr__(self) -> str:
        return f"ReduceOnPlateauCallback({attrs.asdict(self.plateau)!r}, param={self.param!r})"
