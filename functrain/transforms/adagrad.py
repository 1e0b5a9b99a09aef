"""Adagrad's update rule, as ``torch.optim.Adagrad`` computes it (torch's fused CPU/CUDA kernel
on the fast path); the ``adagrad`` composition is in :mod:`functrain.transforms.alias`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from functrain.transforms import foreach as fe
from functrain.transforms import optim_parts as parts
from functrain.transforms.base import (
    FlatTransform,
    GradientTransformation,
    from_flat,
    state_record,
    static_field,
)
from functrain.transforms.hyperparams import Schedule
from functrain.transforms.kernel_specs import Kernel, group_value
from functrain.transforms.validation import check_nonnegative
from functrain.tree import TreeInfo, foreach_clone

# The alias is served by __getattr__ (end of module).
__all__ = ["AdagradLearningRate", "ScaleByAdagradState", "adagrad", "scale_by_adagrad"]  # noqa: F822


@state_record
class ScaleByAdagradState:
    """State of :func:`scale_by_adagrad`.

    Attributes:
        count: number of steps taken, a 0-d float32 tensor (torch's ``step``).
        sum_of_squares: running sums of squared gradients, one tensor per leaf (``sum``).
        paths: dotted leaf paths the state was built for (static).
    """

    count: Tensor
    sum_of_squares: tuple[Tensor, ...]
    paths: tuple[str, ...] = static_field()


def scale_by_adagrad(
    eps: float = 1e-10, initial_accumulator_value: float = 0.0, *, maximize: bool = False
) -> GradientTransformation:
    """Divide updates by the root of the running sum of squared gradients (Adagrad).

    ``s = s + g**2`` (``s`` starts at ``initial_accumulator_value``); the update is
    ``g / (sqrt(s) + eps)``. Follow it with ``scale_by_learning_rate`` (see :func:`adagrad`
    for torch's ``lr_decay``).

    Args:
        eps: added to the denominator, >= 0 (per member under :func:`functrain.ensemble`).
        initial_accumulator_value: initial value of ``s``, >= 0.
        maximize: ascend: the incoming gradients are negated first.

    Example:
        >>> tx = chain(scale_by_adagrad(), scale_by_learning_rate(1e-2))
    """
    check_nonnegative("eps", eps, allow_members=True)
    check_nonnegative("initial_accumulator_value", initial_accumulator_value)
    eps = parts.constant("eps", eps)
    initial = float(initial_accumulator_value)

    def init(params: list[Tensor], info: TreeInfo) -> ScaleByAdagradState:
        parts.check_members(params, eps)
        return ScaleByAdagradState(
            parts.step_counter(parts.device_of(params)),
            parts.full(params, initial),
            paths=info.paths,
        )

    def update(
        updates: list[Tensor],
        state: ScaleByAdagradState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], ScaleByAdagradState]:
        parts.check_state_paths("scale_by_adagrad", state.paths, info)
        donate = info.donate

        def group(g: list[Tensor], s: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
            if maximize:
                g = fe.neg(g, donate)
            s = fe.addcmul(s, g, g, 1.0, donate)
            std = fe.add(fe.sqrt(s, False), parts.on(eps, s[0].device), donate)
            return fe.div(g, std, donate), s

        direction, sums = info.foreach(group, updates, list(state.sum_of_squares))
        count = parts.increment(state.count, donate)
        return direction, ScaleByAdagradState(count, tuple(sums), state.paths)

    def fused(
        params: list[Tensor],
        grads: list[Tensor],
        state: ScaleByAdagradState,
        info: TreeInfo,
        *,
        lr: float | Tensor,
        weight_decay: float,
        decoupled: bool,
        grad_scale: Tensor | None = None,
    ) -> tuple[list[Tensor], ScaleByAdagradState]:
        parts.check_state_paths("scale_by_adagrad", state.paths, info)
        count = parts.increment(state.count, info.donate)
        sums = list(state.sum_of_squares)
        if not info.donate:
            # torch's kernel writes into all three: give it copies (bitwise: x * 1).
            params, grads, sums = foreach_clone(params), foreach_clone(grads), foreach_clone(sums)

        def group(p: list[Tensor], g: list[Tensor], s: list[Tensor]) -> list[Tensor]:
            device = p[0].device
            # lr_decay is already in ``lr`` (see adagrad): the kernel gets lr_decay=0.
            torch._fused_adagrad_(
                p,
                g,
                s,
                [count.to(device)] * len(p),
                lr=group_value(lr, 0, device),
                lr_decay=0.0,
                weight_decay=weight_decay,
                eps=eps,
                maximize=maximize,
                grad_scale=None if grad_scale is None else group_value(grad_scale, 0, device),
                found_inf=None,
            )
            return p

        info.foreach(group, params, grads, sums)
        return params, ScaleByAdagradState(count, tuple(sums), state.paths)

    name = (
        f"scale_by_adagrad(eps={parts.name_of(eps)}, initial_accumulator_value={initial:g}, "
        f"maximize={maximize})"
    )
    # torch's kernel takes eps as a number: a per-member eps has no fused form.
    fusion = (
        None if parts.any_members(eps) else Kernel(fused, decoupled_decay=False, maximize=maximize)
    )
    return from_flat(FlatTransform(init, update, name=name, fusion=fusion))


class AdagradLearningRate:
    """torch's Adagrad step size as a schedule: ``lr(step) / (1 + step * lr_decay)``.

    ``step`` counts the updates applied so far (torch's ``step - 1``). Evaluated by
    :func:`scale_by_learning_rate`, so the value in force is the decayed one.

    Example:
        >>> AdagradLearningRate(0.1, 0.5)(torch.tensor(2))
        tensor(0.0500, dtype=torch.float64)
    """

    def __init__(self, lr: float | Schedule, lr_decay: float) -> None:
        self.lr = lr
        self.lr_decay = float(lr_decay)

    def __call__(self, step: Any) -> Tensor:
        step = torch.as_tensor(step)
        # float64, as torch evaluates it in Python floats; (1 + s * d) in torch's order.
        base = parts.evaluate(self.lr, step)
        return base / (1 + step.to(torch.float64) * self.lr_decay)

    def __repr__(self) -> str:
        return f"AdagradLearningRate(lr={parts.name_of(self.lr)}, lr_decay={self.lr_decay:g})"


# The alias (its chain(...)) lives in alias.py, which imports this module.
__getattr__ = parts.reexport_alias(__name__, "adagrad")
