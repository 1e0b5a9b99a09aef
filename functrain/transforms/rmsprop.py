"""RMSprop, as ``torch.optim.RMSprop``: ``scale_by_rms`` (plain or centered) plus momentum."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from functrain.transforms import _torch_common as tc
from functrain.transforms import foreach as fe
from functrain.transforms.adam import check_state_paths
from functrain.transforms.base import (
    FlatTransform,
    GradientTransformation,
    chain,
    from_flat,
    state_record,
    static_field,
)
from functrain.transforms.hyperparams import Schedule
from functrain.transforms.kernel_specs import Kernel
from functrain.transforms.momentum import trace
from functrain.transforms.scaling import add_decayed_weights, scale, scale_by_learning_rate
from functrain.transforms.validation import check_nonnegative, is_schedule
from functrain.tree import TreeInfo

__all__ = ["ScaleByRmsState", "rmsprop", "scale_by_rms"]


@state_record
class ScaleByRmsState:
    """State of :func:`scale_by_rms`.

    Attributes:
        count: number of steps taken, a 0-d float32 tensor (torch's ``step``).
        square_avg: running averages of squared gradients, one tensor per leaf.
        grad_avg: running averages of gradients when ``centered``, else empty.
        paths: dotted leaf paths the state was built for (static).
    """

    count: Tensor
    square_avg: tuple[Tensor, ...]
    grad_avg: tuple[Tensor, ...]
    paths: tuple[str, ...] = static_field()


def scale_by_rms(
    alpha: float = 0.99, eps: float = 1e-8, *, centered: bool = False, maximize: bool = False
) -> GradientTransformation:
    """Divide updates by a running root mean square of the gradients (RMSprop's direction).

    ``v = alpha*v + (1-alpha)*g**2``; the update is ``g / (sqrt(v) + eps)``. With ``centered``,
    also ``m = alpha*m + (1-alpha)*g`` and the update is ``g / (sqrt(v - m**2) + eps)``. Follow
    it with ``trace(momentum)`` and ``scale_by_learning_rate(lr)`` (see :func:`rmsprop`).

    Args:
        alpha: smoothing constant, >= 0 (torch does not bound it above).
        eps: added to the denominator, >= 0.
        centered: normalise by the estimated variance instead of the raw second moment.
        maximize: ascend: the incoming gradients are negated first.

    Example:
        >>> tx = chain(scale_by_rms(0.9, centered=True), scale_by_learning_rate(1e-3))
    """
    check_nonnegative("alpha", alpha)
    check_nonnegative("eps", eps)
    alpha, eps = float(alpha), float(eps)

    def init(params: list[Tensor], info: TreeInfo) -> ScaleByRmsState:
        device = tc.device_of(params)
        grad_avg = tc.zeros(params) if centered else ()
        return ScaleByRmsState(tc.step_counter(device), tc.zeros(params), grad_avg, info.paths)

    def update(
        updates: list[Tensor],
        state: ScaleByRmsState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], ScaleByRmsState]:
        check_state_paths("scale_by_rms", state.paths, info)
        donate = info.donate

        def group(g: list[Tensor], v: list[Tensor], *m: list[Tensor]) -> tuple[list[Tensor], ...]:
            if maximize:
                g = fe.neg(g, donate)
            v = fe.addcmul(fe.mul(v, alpha, donate), g, g, 1 - alpha, donate)
            if centered:
                mean = fe.lerp(m[0], g, 1 - alpha, donate)
                avg = fe.sqrt(fe.addcmul(v, mean, mean, -1.0, False), donate)
            else:
                avg = fe.sqrt(v, False)
            avg = fe.add(avg, eps, donate)
            direction = fe.div(g, avg, donate)
            return (direction, v, mean) if centered else (direction, v)

        lists = (updates, list(state.square_avg)) + ((list(state.grad_avg),) if centered else ())
        direction, square_avg, *grad_avg = info.foreach(group, *lists)
        count = tc.increment(state.count, donate)
        return direction, ScaleByRmsState(
            count, tuple(square_avg), tuple(grad_avg[0]) if centered else (), state.paths
        )

    def fused(
        params: list[Tensor],
        grads: list[Tensor],
        state: ScaleByRmsState,
        info: TreeInfo,
        *,
        lr: float | Tensor,
        weight_decay: float,
        decoupled: bool,
        grad_scale: Tensor | None = None,
    ) -> tuple[list[Tensor], ScaleByRmsState]:
        check_state_paths("scale_by_rms", state.paths, info)
        count = tc.increment(state.count, info.donate)
        bufs = (state.square_avg, state.grad_avg)
        params, grads, (square_avg, grad_avg) = tc.kernel_inputs(params, grads, bufs, info)

        def group(p: list[Tensor], g: list[Tensor], v: list[Tensor], *m: list[Tensor]) -> None:
            tc.prepare_grads(
                p,
                g,
                grad_scale=grad_scale,
                maximize=maximize,
                weight_decay=weight_decay,
                decoupled=decoupled,
                lr=lr,
            )
            torch._foreach_mul_(v, alpha)
            torch._foreach_addcmul_(v, g, g, 1 - alpha)
            if centered:
                torch._foreach_lerp_(m[0], g, 1 - alpha)
                avg = torch._foreach_addcmul(v, m[0], m[0], value=-1)
                torch._foreach_sqrt_(avg)
            else:
                avg = torch._foreach_sqrt(v)
            torch._foreach_add_(avg, eps)
            tc.addcdiv_scaled_(p, g, avg, -lr)

        lists = (params, grads, square_avg) + ((grad_avg,) if centered else ())
        tc.per_group(info, group, *lists)
        return params, ScaleByRmsState(count, tuple(square_avg), tuple(grad_avg), state.paths)

    name = f"scale_by_rms(alpha={alpha:g}, eps={eps:g}, centered={centered}, maximize={maximize})"
    fusion = Kernel(fused, decoupled_decay=False, maximize=maximize)
    return from_flat(FlatTransform(init, update, name=name, fusion=fusion))


def rmsprop(
    lr: float | Schedule = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float | Schedule = 0.0,
    momentum: float | Schedule = 0.0,
    centered: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """RMSprop, as ``torch.optim.RMSprop``: ``weight_decay`` is L2 (added to the gradient).

    ``chain(add_decayed_weights(weight_decay), scale_by_rms(alpha, eps, centered=centered,
    maximize=maximize), [trace(momentum)], scale_by_learning_rate(lr))``. torch's momentum
    buffer ``buf = momentum * buf + g / avg`` (from zeros) is exactly ``trace``'s (which starts
    from the first update), so the momentum is a separate member; it is present when
    ``momentum > 0`` or scheduled. With ``maximize`` and a weight decay the gradient is negated
    first (``scale(-1)``), as torch does.

    :func:`functrain.apply_gradients` runs it as one in-place foreach step without momentum,
    and with momentum as ``scale_by_rms`` followed by torch's fused SGD-momentum kernel.

    Args:
        lr: learning rate or schedule (torch's default 1e-2).
        alpha: smoothing constant, >= 0.
        eps: added to the denominator.
        weight_decay: L2 coefficient, or a schedule.
        momentum: momentum factor >= 0, or a schedule.
        centered: normalise by the estimated variance of the gradient.
        maximize: ascend the objective.

    Example:
        >>> tx = rmsprop(lr=1e-3, momentum=0.9, centered=True)
    """
    check_nonnegative("lr", lr, allow_schedule=True)
    check_nonnegative("alpha", alpha)
    check_nonnegative("eps", eps)
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    check_nonnegative("momentum", momentum, allow_schedule=True)
    negate_first = bool(maximize and weight_decay)
    with_momentum = is_schedule(momentum) or momentum > 0
    return chain(
        *([scale(-1.0)] if negate_first else []),
        add_decayed_weights(weight_decay),
        scale_by_rms(alpha, eps, centered=centered, maximize=maximize and not negate_first),
        *([trace(momentum)] if with_momentum else []),
        scale_by_learning_rate(lr),
    )
