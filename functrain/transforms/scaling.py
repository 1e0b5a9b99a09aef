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
from functrain.transforms.hyperparams import initial_value, value_at
from functrain.transforms.kernel_specs import Decay, Scalar
from functrain.transforms.members import PerMember, per_member
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

    In a chain with :func:`mask_multipliers`, each parameter group's learning rate is its
    ``lr_mult`` times the base one; a :class:`functrain.schedules.Schedule` is re-based at
    ``base * lr_mult`` as mmengine's schedulers do per param group (the same thing except
    for absolute floors such as cosine's ``eta_min``). The state records the base value.

    Example:
        >>> tx = chain(scale_by_adam(), scale_by_learning_rate(lambda step: 1e-3 * 0.99**step))
    """
    check_nonnegative("lr", learning_rate, allow_schedule=True)
    learning_rate = per_member("lr", learning_rate)
    # Per-member values are constants: kept in the state and read back (settable) like a float.
    members = isinstance(learning_rate, PerMember)
    scheduled = is_schedule(learning_rate) and not members
    sign = -1.0 if flip_sign else 1.0

    def evaluate(count: Tensor, schedule: Schedule = learning_rate) -> Tensor:
        return torch.as_tensor(schedule(count), dtype=torch.float64, device=count.device)

    def init(params: list[Tensor], info: TreeInfo) -> LearningRateState:
        device = params[0].device if params else torch.device("cpu")
        count = torch.zeros((), dtype=torch.int64, device=device)
        if scheduled:
            lr = evaluate(count)
        elif members:
            lr = learning_rate.on(device).clone()
        else:
            lr = torch.tensor(float(learning_rate), dtype=torch.float64, device=device)
        return LearningRateState(count, lr)

    rebased: dict[float, Schedule] = {}

    def group_lr(lr: Tensor, count: Tensor, lr_mult: float) -> Tensor:
        if lr_mult == 1.0:
            return lr
        if not scheduled:
            return lr * lr_mult
        # mmengine steps each param group's lr from base_lr * lr_mult; for a schedule with
        # an absolute floor (cosine eta_min) that differs from lr_mult * schedule(t).
        if lr_mult not in rebased:
            base = getattr(learning_rate, "base", None)
            with_base = getattr(learning_rate, "with_base", None)
            rebased[lr_mult] = (
                with_base(base * lr_mult)
                if isinstance(base, float) and with_base is not None
                else (lambda step: learning_rate(step) * lr_mult)
            )
        return evaluate(count, rebased[lr_mult])

    def factor(
        state: LearningRateState, info: TreeInfo
    ) -> tuple[Tensor | list[Tensor], LearningRateState]:
        """``-lr`` (``sign * lr``), one value per group when the chain has multipliers."""
        lr = evaluate(state.count) if scheduled else state.lr
        new_state = LearningRateState(state.count + 1, lr)
        if info.multipliers is None:
            return lr * sign, new_state
        return [group_lr(lr, state.count, lm) * sign for lm, _ in info.multipliers], new_state

    def update(
        updates: list[Tensor],
        state: LearningRateState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], LearningRateState]:
        f, state = factor(state, info)
        if isinstance(f, list):
            return info.foreach(
                lambda g, us: fe.mul(us, f[g], info.donate), updates, with_group=True
            ), state
        return info.foreach(lambda us: fe.mul(us, f, info.donate), updates), state

    name = (
        f"scale_by_learning_rate({learning_rate!r})"
        if scheduled or members
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
            :class:`DecayState` holding the value in force; foreach path only). In a chain
            with :func:`mask_multipliers` each group's coefficient is times its
            ``decay_mult``.

    Example:
        >>> sgd_l2 = chain(add_decayed_weights(1e-4), trace(0.9), scale_by_learning_rate(0.1))
    """
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    weight_decay = per_member("weight_decay", weight_decay)
    if is_schedule(weight_decay):  # a schedule, or per-member values (a constant one)
        return _scheduled_decay(weight_decay)
    weight_decay = float(weight_decay)

    def fn(
        updates: list[Tensor], params: list[Tensor] | None, multipliers: tuple[float, float]
    ) -> list[Tensor]:
        wd = weight_decay * multipliers[1]
        if wd == 0.0:
            return updates
        _require_params(params)
        return fe.add(updates, params, False, alpha=wd)

    return stateless_foreach(
        fn,
        name=f"add_decayed_weights({weight_decay:g})",
        fusion=Decay(weight_decay),
        with_multipliers=True,
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

        def group(g: int, us: list[Tensor], ps: list[Tensor]) -> list[Tensor]:
            decay_mult = info.group_multipliers(g)[1]
            return fe.add(
                us, fe.mul(ps, wd * decay_mult if decay_mult != 1.0 else wd, False), False
            )

        out = info.foreach(group, updates, params, with_group=True)
        return out, DecayState(state.count + 1, wd)

    return from_flat(FlatTransform(init, update, name=f"add_decayed_weights({weight_decay!r})"))
