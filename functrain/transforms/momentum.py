"""Heavy-ball and Nesterov momentum as torch.optim.SGD computes them (``trace``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from functrain.transforms import foreach as fe
from functrain.transforms.adam import check_state_paths
from functrain.transforms.base import (
    FlatTransform,
    GradientTransformation,
    from_flat,
    state_record,
    static_field,
)
from functrain.transforms.fusion import Kernel
from functrain.transforms.validation import check_nonnegative
from functrain.tree import TreeInfo, foreach_clone

__all__ = ["TraceState", "trace"]


@state_record
class TraceState:
    """State of :func:`trace`.

    Attributes:
        momentum_buffer: one buffer per leaf, or ``None`` before the first step (torch
            initialises the buffer with the first gradient, without dampening).
        paths: dotted leaf paths the state was built for (static).
    """

    momentum_buffer: tuple[Tensor, ...] | None
    paths: tuple[str, ...] = static_field()


def trace(
    momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False
) -> GradientTransformation:
    """Momentum exactly as ``torch.optim.SGD``.

    First step: ``buf = g``; later: ``buf = momentum * buf + (1 - dampening) * g``. The
    update is ``g + momentum * buf`` with ``nesterov``, else ``buf``. With ``momentum=0`` the
    update is ``g`` and the state holds no buffers.

    Args:
        momentum: momentum factor >= 0.
        dampening: dampening for momentum.
        nesterov: Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.

    Example:
        >>> tx = chain(trace(0.9, nesterov=True), scale_by_learning_rate(0.1))
    """
    check_nonnegative("momentum", momentum)
    if isinstance(dampening, bool) or not isinstance(dampening, int | float):
        raise ValueError(f"dampening must be a number, got {dampening!r}")
    momentum, dampening = float(momentum), float(dampening)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(
            f"Nesterov momentum requires a momentum and zero dampening "
            f"(got momentum={momentum:g}, dampening={dampening:g})"
        )

    def init(params: list[Tensor], info: TreeInfo) -> TraceState:
        return TraceState(None, paths=info.paths)

    def update(
        updates: list[Tensor],
        state: TraceState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], TraceState]:
        check_state_paths("trace", state.paths, info)
        if momentum == 0.0:
            return updates, state
        donate = info.donate
        if state.momentum_buffer is None:
            buf = foreach_clone(updates)
        else:
            buf = info.foreach(
                lambda b, g: fe.add(fe.mul(b, momentum, donate), g, donate, alpha=1 - dampening),
                list(state.momentum_buffer),
                updates,
            )
        if nesterov:
            out = info.foreach(lambda g, b: fe.add(g, b, False, alpha=momentum), updates, buf)
        else:
            # A copy: later transforms may scale the update in place when donating.
            out = foreach_clone(buf)
        return out, TraceState(tuple(buf), state.paths)

    def fused(
        params: list[Tensor],
        grads: list[Tensor],
        state: TraceState,
        info: TreeInfo,
        *,
        lr: float | Tensor,
        weight_decay: float,
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

        def group(p: list[Tensor], g: list[Tensor], *b: list[Tensor]) -> list[Tensor]:
            torch._fused_sgd_(
                p,
                g,
                b[0] if b else [],
                weight_decay=weight_decay,
                momentum=momentum,
                lr=lr.to(p[0].device) if isinstance(lr, Tensor) else lr,
                dampening=dampening,
                nesterov=nesterov,
                maximize=False,
                is_first_step=first,
                grad_scale=None if grad_scale is None else grad_scale.to(p[0].device),
                found_inf=None,
            )
            return p

        info.foreach(group, params, grads, *((buf,) if buf else ()))
        return params, TraceState(tuple(buf) if momentum != 0.0 else None, state.paths)

    name = f"trace(momentum={momentum:g}, dampening={dampening:g}, nesterov={nesterov})"
    return from_flat(
        FlatTransform(init, update, name=name, fusion=Kernel(fused, decoupled_decay=False))
    )
