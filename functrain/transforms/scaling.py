"""Scalings of the whole update: ``scale``, ``scale_by_learning_rate``, ``add_decayed_weights``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from functrain.transforms import foreach as fe
from functrain.transforms.base import (
    EmptyState,
    FlatTransform,
    GradientTransformation,
    from_flat,
    state_record,
    stateless_foreach,
)
from functrain.transforms.fusion import Decay, Scalar
from functrain.transforms.hyperparams import initial_value, value_at
from functrain.transforms.validation import check_nonnegative, is_schedule
from functrain.tree import TreeInfo

__all__ = [
    "DecayState",
    "LearningRateState",
    "add_decayed_weights",
    "scale",
    "scale_by_learning_rate",
]

Schedule = Callable[[Any], Any]


def scale(step_size: float) -> GradientTransformation:
    """Multiply every update by the constant ``step_size``.

    Example:
        >>> negate = scale(-1.0)
    """
    if isinstance(step_size, bool) or not isinstance(step_size, int | float):
        raise ValueError(f"step_size must be a number, got {step_size!r}")
    step_size = float(step_size)

    def init(params: list[Tensor], info: TreeInfo) -> EmptyState:
        return EmptyState()

    def update(
        updates: list[Tensor], state: Any, params: list[Tensor] | None, info: TreeInfo, **extra: Any
    ) -> tuple[list[Tensor], Any]:
        return info.foreach(lambda us: fe.mul(us, step_size, info.donate), updates), state

    return from_flat(
        FlatTransform(
            init,
            update,
            name=f"scale({step_size:g})",
            fusion=Scalar(lambda state, info: (step_size, state)),
        )
    )


@state_record
class LearningRateState:
    """State of :func:`scale_by_learning_rate`.

    Attributes:
        count: number of updates applied so far (0-d int64 tensor); the schedule is evaluated
            at this step.
        lr: the learning rate in force, a 0-d float64 tensor: the value used by the last
            update (before the first update, the value the first update will use). With a
            constant learning rate, setting this field changes the learning rate without
            rebuilding the transform.
    """

    count: Tensor
    lr: Tensor


def scale_by_learning_rate(
    learning_rate: float | Schedule, *, flip_sign: bool = True
) -> GradientTransformation:
    """Multiply the updates by ``-learning_rate`` (by ``+learning_rate`` if not ``flip_sign``).

    Args:
        learning_rate: a float >= 0, or a schedule ``step -> value`` evaluated at the number
            of updates applied so far (see :mod:`functrain.schedules`). The schedule receives
            a 0-d int64 tensor on the parameters' device and must return a number or a 0-d
            tensor, without a host sync.
        flip_sign: descend (the default) rather than ascend.

    Example:
        >>> tx = chain(scale_by_adam(), scale_by_learning_rate(lambda step: 1e-3 * 0.99**step))
    """
    check_nonnegative("lr", learning_rate, allow_schedule=True)
    scheduled = is_schedule(learning_rate)
    sign = -1.0 if flip_sign else 1.0

    def evaluate(count: Tensor) -> Tensor:
        value = learning_rate(count)
        return torch.as_tensor(value, dtype=torch.float64, device=count.device)

    def init(params: list[Tensor], info: TreeInfo) -> LearningRateState:
        device = params[0].device if params else torch.device("cpu")
        count = torch.zeros((), dtype=torch.int64, device=device)
        lr = (
            evaluate(count)
            if scheduled
            else torch.tensor(float(learning_rate), dtype=torch.float64, device=device)
        )
        return LearningRateState(count, lr)

    def factor(state: LearningRateState, info: TreeInfo) -> tuple[Tensor, LearningRateState]:
        lr = evaluate(state.count) if scheduled else state.lr
        return lr * sign, LearningRateState(state.count + 1, lr)

    def update(
        updates: list[Tensor],
        state: LearningRateState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], LearningRateState]:
        f, state = factor(state, info)
        return info.foreach(lambda us: fe.mul(us, f, info.donate), updates), state

    name = (
        f"scale_by_learning_rate({learning_rate!r})"
        if scheduled
        else f"scale_by_learning_rate({float(learning_rate):g})"
    )
    return from_flat(FlatTransform(init, update, name=name, fusion=Scalar(factor)))


@state_record
class DecayState:
    """State of :func:`add_decayed_weights` with a scheduled coefficient.

    Attributes:
        count: number of updates applied (0-d int64), where the schedule is evaluated.
        weight_decay: the coefficient in force, a 0-d float64 tensor.
    """

    count: Tensor
    weight_decay: Tensor


def add_decayed_weights(weight_decay: float | Schedule = 0.0) -> GradientTransformation:
    """Add ``weight_decay * param`` to every update.

    Before an optimizer's scaling this is L2 regularisation (torch's ``weight_decay`` in SGD
    and Adam); after it, with the learning rate applied last, it is decoupled weight decay
    (AdamW).

    Args:
        weight_decay: coefficient >= 0, or a schedule of the step (then the state is a
            :class:`DecayState` holding the value in force; foreach path only).

    Example:
        >>> sgd_l2 = chain(add_decayed_weights(1e-4), trace(0.9), scale_by_learning_rate(0.1))
    """
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    if is_schedule(weight_decay):
        return _scheduled_decay(weight_decay)
    weight_decay = float(weight_decay)

    def fn(updates: list[Tensor], params: list[Tensor] | None) -> list[Tensor]:
        if weight_decay == 0.0:
            return updates
        _require_params(params)
        return fe.add(updates, params, False, alpha=weight_decay)

    return stateless_foreach(
        fn, name=f"add_decayed_weights({weight_decay:g})", fusion=Decay(weight_decay)
    )


def _require_params(params: list[Tensor] | None) -> None:
    if params is None:
        raise ValueError(
            "add_decayed_weights needs the parameters: call update(updates, state, params)"
        )


def _scheduled_decay(weight_decay: Schedule) -> GradientTransformation:
    def init(params: list[Tensor], info: TreeInfo) -> DecayState:
        device = params[0].device if params else torch.device("cpu")
        return DecayState(
            torch.zeros((), dtype=torch.int64, device=device), initial_value(weight_decay, device)
        )

    def update(
        updates: list[Tensor],
        state: DecayState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], DecayState]:
        _require_params(params)
        wd = value_at(weight_decay, state.count)
        out = info.foreach(lambda u, p: fe.add(u, fe.mul(p, wd, False), False), updates, params)
        return out, DecayState(state.count + 1, wd)

    return from_flat(FlatTransform(init, update, name=f"add_decayed_weights({weight_decay!r})"))
