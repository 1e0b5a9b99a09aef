"""Heavy-ball and Nesterov momentum as ``torch.optim.SGD`` computes them (``trace``, with
torch's fused SGD kernel on the fast path); the ``sgd`` composition is in
:mod:`functrain.transforms.alias`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from functrain.transforms import foreach as fe
from functrain.transforms.base import (
    FlatTransform,
    GradientTransformation,
    from_flat,
    state_record,
    static_field,
)
from functrain.transforms.hyperparams import Schedule, in_force, initial_value, value_at
from functrain.transforms.kernel_specs import Kernel, for_members, group_value
from functrain.transforms.members import per_member
from functrain.transforms.optim_parts import check_state_paths
from functrain.transforms.validation import check_momentum, is_schedule
from functrain.tree import TreeInfo, foreach_clone

__all__ = ["TraceState", "trace"]


@state_record
class TraceState:
    """State of :func:`trace`.

    Attributes:
        count: number of updates applied (0-d int64); a scheduled momentum is evaluated here.
        momentum: the momentum in force, a 0-d float64 tensor.
        momentum_buffer: one buffer per leaf, or ``None`` before the first step (torch
            initialises the buffer with the first gradient, without dampening).
        paths: dotted leaf paths the state was built for (static).
    """

    count: Tensor
    momentum: Tensor
    momentum_buffer: tuple[Tensor, ...] | None
    paths: tuple[str, ...] = static_field()


def trace(
    momentum: float | Schedule = 0.0, dampening: float = 0.0, nesterov: bool = False
) -> GradientTransformation:
    """Momentum exactly as ``torch.optim.SGD``.

    First step: ``buf = g``; later: ``buf = momentum * buf + (1 - dampening) * g``. The
    update is ``g + momentum * buf`` with ``nesterov``, else ``buf``. With ``momentum=0`` the
    update is ``g`` and the state holds no buffers.

    Args:
        momentum: momentum factor >= 0, or a schedule of the step (mmengine's momentum
            schedulers; evaluated each step on the device, foreach path only).
        dampening: dampening for momentum.
        nesterov: Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.

    Example:
        >>> tx = chain(trace(0.9, nesterov=True), scale_by_learning_rate(0.1))
    """
    check_momentum("momentum", momentum, allow_schedule=True)
    momentum = per_member("momentum", momentum)  # per-member values run as a schedule
    if isinstance(dampening, bool) or not isinstance(dampening, int | float):
        raise ValueError(f"dampening must be a number, got {dampening!r}")
    scheduled = is_schedule(momentum)
    momentum = momentum if scheduled else float(momentum)
    dampening = float(dampening)
    if nesterov and ((not scheduled and momentum <= 0) or dampening != 0):
        raise ValueError(
            f"Nesterov momentum requires a momentum and zero dampening "
            f"(got momentum={momentum!r}, dampening={dampening:g})"
        )

    def init(params: list[Tensor], info: TreeInfo) -> TraceState:
        device = params[0].device if params else torch.device("cpu")
        count = torch.zeros((), dtype=torch.int64, device=device)
        buffers = None
        if info.members is not None and momentum != 0.0 and dampening == 0.0:
            # Stacked members: zero buffers from the start (momentum * 0 + g is exactly torch's
            # first-step buf = g without dampening), so the state never changes structure and
            # apply_if_finite / loss_scaling can skip one member's first step alone.
            buffers = tuple(torch.zeros_like(p) for p in params)
        return TraceState(count, initial_value(momentum, device), buffers, paths=info.paths)

    def update(
        updates: list[Tensor],
        state: TraceState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], TraceState]:
        check_state_paths("trace", state.paths, info)
        count = state.count + 1
        if momentum == 0.0:
            return updates, TraceState(count, state.momentum, None, state.paths)
        donate = info.donate
        mom = value_at(momentum, state.count)
        if state.momentum_buffer is None:
            buf = foreach_clone(updates)
        else:
            buf = info.foreach(
                lambda b, g: fe.add(fe.mul(b, mom, donate), g, donate, alpha=1 - dampening),
                list(state.momentum_buffer),
                updates,
            )
        if nesterov:
            out = info.foreach(
                lambda g, b: (
                    fe.add(g, b, False, alpha=mom)
                    if isinstance(mom, float)
                    else fe.add(g, fe.mul(b, mom, False), False)
                ),
                updates,
                buf,
            )
        else:
            # A copy: later transforms may scale the update in place when donating.
            out = foreach_clone(buf)
        return out, TraceState(
            count, in_force(momentum, mom, state.momentum), tuple(buf), state.paths
        )

    def fused(
        params: list[Tensor],
        grads: list[Tensor],
        state: TraceState,
        info: TreeInfo,
        *,
        lr: float | Tensor | list[float | Tensor],
        weight_decay: float | list[float],
        decoupled: bool,
        grad_scale: Tensor | None = None,
    ) -> tuple[list[Tensor], TraceState]:
        check_state_paths("trace", state.paths, info)
        first = state.momentum_buffer is None
        if momentum == 0.0:
            buf: list[Tensor] = []
        elif first:
            buf = [torch.empty_like(g) for g in grads]
        else:
            buf = list(state.momentum_buffer)
        if not info.donate:
            params = foreach_clone(params)
            if not first:
                buf = foreach_clone(buf)

        def group(index: int, p: list[Tensor], g: list[Tensor], *b: list[Tensor]) -> list[Tensor]:
            device = p[0].device

            def call(p: list[Tensor], g: list[Tensor], b: list[Tensor], lr: float | Tensor) -> None:
                torch._fused_sgd_(
                    p,
                    g,
                    b,
                    weight_decay=group_value(weight_decay, index, None),
                    momentum=momentum,
                    lr=lr,
                    dampening=dampening,
                    nesterov=nesterov,
                    maximize=False,
                    is_first_step=first,
                    grad_scale=None if grad_scale is None else group_value(grad_scale, 0, device),
                    found_inf=None,
                )

            for_members(call, group_value(lr, index, device), p, g, b[0] if b else [])
            return p

        info.foreach(group, params, grads, *((buf,) if buf else ()), with_group=True)
        return params, TraceState(
            state.count + 1, state.momentum, tuple(buf) if momentum != 0.0 else None, state.paths
        )

    name = f"trace(momentum={momentum!r}, dampening={dampening:g}, nesterov={nesterov})"
    # torch's kernel takes momentum as a number: a scheduled momentum has no fused form.
    fusion = None if scheduled else Kernel(fused, decoupled_decay=False, per_member_lr=True)
    return from_flat(FlatTransform(init, update, name=name, fusion=fusion))
