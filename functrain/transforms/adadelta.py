"""Adadelta's update rule, as ``torch.optim.Adadelta`` computes it; the ``adadelta``
composition is in :mod:`functrain.transforms.alias`."""

from __future__ import annotations

from typing import Any

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
from functrain.transforms.kernel_specs import Kernel
from functrain.transforms.validation import check_nonnegative
from functrain.tree import TreeInfo

# The alias is served by __getattr__ (end of module).
__all__ = ["ScaleByAdadeltaState", "adadelta", "scale_by_adadelta"]  # noqa: F822


@state_record
class ScaleByAdadeltaState:
    """State of :func:`scale_by_adadelta`.

    Attributes:
        count: number of steps taken, a 0-d float32 tensor (torch's ``step``).
        square_avg: running averages of squared gradients, one tensor per leaf.
        acc_delta: running averages of squared updates, one per leaf.
        paths: dotted leaf paths the state was built for (static).
    """

    count: Tensor
    square_avg: tuple[Tensor, ...]
    acc_delta: tuple[Tensor, ...]
    paths: tuple[str, ...] = static_field()


def check_rho(rho: Any) -> float:
    """``0 <= rho <= 1``, as torch.optim.Adadelta checks it."""
    if isinstance(rho, bool) or not isinstance(rho, int | float) or not 0.0 <= rho <= 1.0:
        raise ValueError(f"Invalid rho value: {rho!r}; rho must be a number in [0, 1]")
    return float(rho)


def scale_by_adadelta(
    rho: float = 0.9, eps: float = 1e-6, *, maximize: bool = False
) -> GradientTransformation:
    """Rescale updates as Adadelta (Zeiler, 2012) does.

    ``v = rho*v + (1-rho)*g**2``; the update is ``d = sqrt(a + eps) / sqrt(v + eps) * g``, and
    then ``a = rho*a + (1-rho)*d**2``. Follow it with ``scale_by_learning_rate(lr)`` (torch's
    default lr is 1.0).

    Args:
        rho: decay rate of both running averages, in [0, 1].
        eps: added inside both square roots, >= 0 (per member under
            :func:`functrain.ensemble`).
        maximize: ascend: the incoming gradients are negated first.

    Example:
        >>> tx = chain(scale_by_adadelta(0.9), scale_by_learning_rate(1.0))
    """
    rho = check_rho(rho)
    check_nonnegative("eps", eps, allow_members=True)
    eps = parts.constant("eps", eps)

    def init(params: list[Tensor], info: TreeInfo) -> ScaleByAdadeltaState:
        parts.check_members(params, eps)
        device = parts.device_of(params)
        return ScaleByAdadeltaState(
            parts.step_counter(device), parts.zeros(params), parts.zeros(params), info.paths
        )

    def rule(
        g: list[Tensor], v: list[Tensor], a: list[Tensor], inplace: bool
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """The algorithm: ``delta`` and the new ``(square_avg, acc_delta)``."""
        v = fe.addcmul(fe.mul(v, rho, inplace), g, g, 1 - rho, inplace)
        epsilon = parts.on(eps, v[0].device)
        # New buffers: sqrt may run in place on them only where autograd is not watching.
        std = fe.sqrt(fe.add(v, epsilon, False), inplace)
        delta = fe.sqrt(fe.add(a, epsilon, False), inplace)
        delta = fe.mul(fe.div(delta, std, inplace), g, inplace)
        a = fe.addcmul(fe.mul(a, rho, inplace), delta, delta, 1 - rho, inplace)
        return delta, v, a

    def update(
        updates: list[Tensor],
        state: ScaleByAdadeltaState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], ScaleByAdadeltaState]:
        parts.check_state_paths("scale_by_adadelta", state.paths, info)
        donate = info.donate

        def group(g: list[Tensor], v: list[Tensor], a: list[Tensor]) -> tuple[list[Tensor], ...]:
            if maximize:
                g = fe.neg(g, donate)
            return rule(g, v, a, donate)

        lists = (updates, list(state.square_avg), list(state.acc_delta))
        direction, square_avg, acc_delta = info.foreach(group, *lists)
        count = parts.increment(state.count, donate)
        return direction, ScaleByAdadeltaState(
            count, tuple(square_avg), tuple(acc_delta), state.paths
        )

    def fused(
        params: list[Tensor],
        grads: list[Tensor],
        state: ScaleByAdadeltaState,
        info: TreeInfo,
        *,
        lr: float | Tensor,
        **prologue: Any,
    ) -> tuple[list[Tensor], ScaleByAdadeltaState]:
        """The one-pass step (see :mod:`~functrain.transforms.optim_parts`)."""
        parts.check_state_paths("scale_by_adadelta", state.paths, info)
        donate = info.donate
        count = parts.increment(state.count, donate)

        def body(
            p: list[Tensor], g: list[Tensor], v: list[Tensor], a: list[Tensor]
        ) -> tuple[list[Tensor], ...]:
            delta, v, a = rule(g, v, a, donate)
            # torch's single-tensor step: p.add_(delta, alpha=-lr).
            return fe.add_scaled(p, delta, -lr, donate), v, a

        bufs = (state.square_avg, state.acc_delta)
        params, square_avg, acc_delta = parts.one_pass(
            info, body, params, grads, *bufs, maximize=maximize, lr=lr, **prologue
        )
        return params, ScaleByAdadeltaState(count, tuple(square_avg), tuple(acc_delta), state.paths)

    name = f"scale_by_adadelta(rho={rho:g}, eps={parts.name_of(eps)}, maximize={maximize})"
    # Per-member values (an ensemble) run on the update path only.
    fusion = (
        None if parts.any_members(eps) else Kernel(fused, decoupled_decay=False, maximize=maximize)
    )
    return from_flat(FlatTransform(init, update, name=name, fusion=fusion))


# The alias (its chain(...)) lives in alias.py, which imports this module.
__getattr__ = parts.reexport_alias(__name__, "adadelta")
