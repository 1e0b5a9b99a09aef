"""``ReduceOnPlateauCallback``: feed validation metrics to a ReduceOnPlateau schedule."""

from __future__ import annotations

from typing import Any

import attrs
import torch

from functrain.callbacks.base import Callback
from functrain.schedules import PlateauState, ReduceOnPlateau
from functrain.transforms.state_path import Path, format_path, get, replace
from functrain.transforms.state_values import recorded_paths

__all__ = ["ReduceOnPlateauCallback"]

_PARAMS = ("lr", "momentum")


class ReduceOnPlateauCallback(Callback):
    """Drive a :class:`functrain.schedules.ReduceOnPlateau` from the loop, as mmengine's
    ``ParamSchedulerHook`` drives ``ReduceOnPlateauLR``: ``epoch_end`` after each training
    epoch, ``update(metrics)`` after each validation, and the new value written into the
    optimizer state (every learning rate the state records for ``param="lr"``).

    The transform must read the value back from its state (the ``settable`` entries of
    :data:`functrain.transforms.state_values.HYPERPARAMETERS`): a constant ``lr`` of
    ``scale_by_learning_rate`` or :func:`functrain.from_torch_optimizer`. A scheduled ``lr``
    is recomputed from its schedule each step and overrides the plateau value. functrain's
    momentum transforms (``trace``, ``scale_by_adam``...) take their momentum / ``b1`` as a
    number when they are built (torch's fused kernels take it so) and only record it, so
    ``param="momentum"`` is refused at ``before_train``, as
    :func:`functrain.set_hyperparam` refuses it, rather than writing a value nothing reads.
    The :class:`PlateauState` is persistent (``state.callbacks["reduce_on_plateau"]``).

    Ensembles (``runner.members`` = N): one plateau per member (the persistent state is
    a list of N :class:`PlateauState`), each fed member i's metrics (``"<monitor>/<i>"``);
    the values are written as one ``[N]`` tensor, so the ``lr`` must be given per member
    (``lr=[...]``, a ``[N]`` tensor in the state; refused at ``before_train`` otherwise).

    Args:
        plateau: the schedule (``monitor``, ``rule``, ``factor``, ``patience``...).
        param: ``"lr"`` or ``"momentum"``.
    """

    priority = "LOW"

    def __init__(self, plateau: ReduceOnPlateau, param: str = "lr") -> None:
        if param not in _PARAMS:
            raise ValueError(f"param must be 'lr' or 'momentum', got {param!r}")
        self.plateau = plateau
        self.param = param

    def _paths(self, opt_state: Any) -> list[Path]:
        """Where the state records ``self.param``; raises unless every one is settable."""
        found = recorded_paths(opt_state, self.param)
        if not found:
            raise ValueError(
                f"ReduceOnPlateauCallback: the optimizer state holds no {self.param} to drive"
            )
        for row, path in found:
            if not row.settable:
                raise ValueError(
                    f"ReduceOnPlateauCallback(param={self.param!r}): the {self.param} at "
                    f"{format_path(path)} ({row.record.__name__}.{row.field}) is recorded "
                    "for logging only; the transform does not read it from its state, so a "
                    "plateau could not change it. Schedule it instead (a momentum param "
                    "scheduler) or drive the lr"
                )
        return [path for _, path in found]

    def before_train(self, runner: Any, state: Any) -> Any:
        paths = self._paths(state.opt_state)  # refuses an unsettable param before training
        members = getattr(runner, "members", None)
        if members:
            for path in paths:
                leaf = get(state.opt_state, path)
                if not (isinstance(leaf, torch.Tensor) and tuple(leaf.shape) == (members,)):
                    raise ValueError(
                        f"ReduceOnPlateauCallback: with {members} members the {self.param} at "
                        f"{format_path(path)} must be one value per member (a [{members}] "
                        f"tensor: give {self.param}=[...] with {members} values), so that "
                        "each member's plateau can change its own"
                    )
        if self.get_state(state) is not None:
            return None
        first = get(state.opt_state, paths[0])
        if members:
            # One plateau per member, from member i's value (one read, at start).
            return self.set_state(state, [self.plateau.init(v) for v in first.tolist()])
        return self.set_state(state, self.plateau.init(float(first)))  # one read, at start

    def after_train_epoch(self, runner: Any, state: Any) -> Any:
        ps = self.get_state(state)
        if isinstance(ps, list):
            return self.set_state(state, [self.plateau.epoch_end(p) for p in ps])
        return None if ps is None else self.set_state(state, self.plateau.epoch_end(ps))

    def after_val_epoch(self, runner: Any, state: Any, metrics: Any = None) -> Any:
        ps: PlateauState | list[PlateauState] | None = self.get_state(state)
        if ps is None or not metrics:
            return None
        if isinstance(ps, list):
            return self._members(runner, state, ps, metrics)
        new = self.plateau.update(ps, metrics)
        state = self.set_state(state, new)
        if new.value != ps.value:
            opt_state = state.opt_state
            for path in self._paths(opt_state):
                old = get(opt_state, path)
                opt_state = replace(
                    opt_state,
                    path,
                    torch.full_like(old, new.value) if isinstance(old, torch.Tensor) else new.value,
                )
            state = state.replace(opt_state=opt_state)
            runner.logger.info(f"ReduceOnPlateau: {self.param} set to {new.value:.4e}")
        return state

    def _members(self, runner: Any, state: Any, ps: list[PlateauState], metrics: Any) -> Any:
        """One plateau per member on member i's metrics (``"<name>/<i>"``); the new values
        written as one ``[N]`` tensor into every recorded ``param``."""
        from functrain.callbacks.members import split_members

        n = len(ps)
        _, per = split_members(metrics, n)
        new = [self.plateau.update(p, {k: v[i] for k, v in per.items()}) for i, p in enumerate(ps)]
        state = self.set_state(state, new)
        if [p.value for p in new] != [p.value for p in ps]:
            opt_state = state.opt_state
            values = [p.value for p in new]
            for path in self._paths(opt_state):
                old = get(opt_state, path)
                fresh = torch.tensor(values, dtype=old.dtype, device=old.device)
                opt_state = replace(opt_state, path, fresh)
            state = state.replace(opt_state=opt_state)
            changed = [i for i in range(n) if new[i].value != ps[i].value]
            runner.logger.info(
                f"ReduceOnPlateau: {self.param} of members {changed} set to "
                + ", ".join(f"{values[i]:.4e}" for i in changed)
            )
        return state

    def __repr__(self) -> str:
        return f"ReduceOnPlateauCallback({attrs.asdict(self.plateau)!r}, param={self.param!r})"
