"""RMSprop's update rule (``scale_by_rms``, plain or centered), as ``torch.optim.RMSprop``
computes it; the ``rmsprop`` composition (with momentum) is in :mod:`functrain.transforms.alias`."""

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
__all__ = ["ScaleByRmsState", "rmsprop", "scale_by_rms"]  # noqa: F822


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
        eps: added to the denominator, >= 0 (per member under :func:`functrain.ensemble`).
        centered: normalise by the estimated variance instead of the raw second moment.
        maximize: ascend: the incoming gradients are negated first.

    Example:
        >>> tx = chain(scale_by_rms(0.9, centered=True), scale_by_learning_rate(1e-3))
    """
    check_nonnegative("alpha", alpha)
    check_nonnegative("eps", eps, allow_members=True)
    alpha, eps = float(alpha), parts.constant("eps", eps)

    def init(params: list[Tensor], info: TreeInfo) -> ScaleByRmsState:
        parts.check_members(params, eps)
        device = parts.device_of(params)
        grad_avg = parts.zeros(params) if centered else ()
        return ScaleByRmsState(
            parts.step_counter(device), parts.zeros(params), grad_avg, info.paths
        )

    def rule(
        g: list[Tensor], v: list[Tensor], *m: list[Tensor], inplace: bool
    ) -> tuple[list[Tensor], ...]:
        """The algorithm: the denominator ``avg`` and the new ``square_avg`` (and ``grad_avg``
        when centered)."""
        v = fe.addcmul(fe.mul(v, alpha, inplace), g, g, 1 - alpha, inplace)
        if centered:
            mean = fe.lerp(m[0], g, 1 - alpha, inplace)
            avg = fe.sqrt(fe.addcmul(v, mean, mean, -1.0, False), inplace)
        else:
            avg = fe.sqrt(v, False)
        avg = fe.add(avg, parts.on(eps, avg[0].device), inplace)
        return (avg, v, mean) if centered else (avg, v)

    def update(
        updates: list[Tensor],
        state: ScaleByRmsState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], ScaleByRmsState]:
        parts.check_state_paths("scale_by_rms", state.paths, info)
        donate = info.donate

        def group(g: list[Tensor], v: list[Tensor], *m: list[Tensor]) -> tuple[list[Tensor], ...]:
            if maximize:
                g = fe.neg(g, donate)
            avg, *bufs = rule(g, v, *m, inplace=donate)
            return (fe.div(g, avg, donate), *bufs)

        lists = (updates, list(state.square_avg)) + ((list(state.grad_avg),) if centered else ())
        direction, square_avg, *grad_avg = info.foreach(group, *lists)
        count = parts.increment(state.count, donate)
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
        **prologue: Any,
    ) -> tuple[list[Tensor], ScaleByRmsState]:
        """The one-pass step (see :mod:`~functrain.transforms.optim_parts`)."""
        parts.check_state_paths("scale_by_rms", state.paths, info)
        donate = info.donate
        count = parts.increment(state.count, donate)

        def body(
            p: list[Tensor], g: list[Tensor], v: list[Tensor], *m: list[Tensor]
        ) -> tuple[list[Tensor], ...]:
            avg, *bufs = rule(g, v, *m, inplace=donate)
            # torch's single-tensor step: p.addcdiv_(grad, avg, value=-lr).
            return (fe.addcdiv_scaled(p, g, avg, -lr, donate), *bufs)

        bufs = (state.square_avg,) + ((state.grad_avg,) if centered else ())
        params, square_avg, *grad_avg = parts.one_pass(
            info, body, params, grads, *bufs, maximize=maximize, lr=lr, **prologue
        )
        return params, ScaleByRmsState(
            count, tuple(square_avg), tuple(grad_avg[0]) if centered else (), state.paths
        )

    name = (
        f"scale_by_rms(alpha={alpha:g}, eps={parts.name_of(eps)}, centered={centered}, "
        f"maximize={maximize})"
    )
    # Per-member values (an ensemble) run on the update path only.
    fusion = (
        None if parts.any_members(eps) else Kernel(fused, decoupled_decay=False, maximize=maximize)
    )
    return from_flat(FlatTransform(init, update, name=name, fusion=fusion))


# The alias (its chain(...)) lives in alias.py, which imports this module.
__getattr__ = parts.reexport_alias(__name__, "rmsprop")
