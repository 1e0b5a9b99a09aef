"""RAdam's update rule (rectified Adam), as ``torch.optim.RAdam`` computes it; the ``radam``
composition is in :mod:`functrain.transforms.alias`."""

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
from functrain.transforms.kernel_specs import Kernel
from functrain.transforms.members import PerMember
from functrain.transforms.validation import check_betas, check_nonnegative
from functrain.tree import TreeInfo

# The alias is served by __getattr__ (end of module).
__all__ = ["ScaleByRadamState", "radam", "scale_by_radam"]  # noqa: F822


@state_record
class ScaleByRadamState:
    """State of :func:`scale_by_radam`.

    Attributes:
        count: number of steps taken, a 0-d float32 tensor (torch's ``step``).
        mu: first moments, one tensor per leaf (``exp_avg``).
        nu: second moments, one per leaf (``exp_avg_sq``).
        paths: dotted leaf paths the state was built for (static).
    """

    count: Tensor
    mu: tuple[Tensor, ...]
    nu: tuple[Tensor, ...]
    paths: tuple[str, ...] = static_field()


def scale_by_radam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *, maximize: bool = False
) -> GradientTransformation:
    """Rescale updates as RAdam (Liu et al., 2019), as torch computes it.

    With ``t`` the step count, ``m`` and ``v`` Adam's moments, ``rho_inf = 2/(1-b2) - 1`` and
    ``rho_t = rho_inf - 2 t b2**t / (1 - b2**t)``: the update is ``m / (1 - b1**t)`` while
    ``rho_t <= 5``, and afterwards
    ``m / (1 - b1**t) * r_t * sqrt(1 - b2**t) / (sqrt(v) + eps)`` with the rectification
    ``r_t = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))``. Follow it with
    ``scale_by_learning_rate(lr)``.

    The branch depends on the step count only: it is taken on the device, as a blend of the
    two forms with a 0/1 weight (no host sync).

    Args:
        b1, b2: decay rates of the moments, each in [0, 1) (torch's ``betas``); per member
            under :func:`functrain.ensemble` (the rectification is then per member), as
            ``eps``.
        eps: added to the denominator, >= 0.
        maximize: ascend: the incoming gradients are negated first.

    Example:
        >>> tx = chain(scale_by_radam(), scale_by_learning_rate(1e-3))
    """
    b1, b2 = check_betas((b1, b2))
    if not isinstance(b1, float | PerMember):
        raise ValueError("scale_by_radam: betas[0] must be a number, not a schedule")
    check_nonnegative("eps", eps, allow_members=True)
    eps = parts.constant("eps", eps)
    # Per-member values (an ensemble) are 1-d tensors in the update: no one-pass form.
    vectors = parts.any_members(b1, b2, eps)
    # float64 elementwise ops round as Python's floats: one rho_inf per member is the same
    # number a member's own run computes.
    rho_inf = 2 / (1 - (b2.values if isinstance(b2, PerMember) else b2)) - 1

    def init(params: list[Tensor], info: TreeInfo) -> ScaleByRadamState:
        parts.check_members(params, b1, b2, eps)
        device = parts.device_of(params)
        return ScaleByRadamState(
            parts.step_counter(device), parts.zeros(params), parts.zeros(params), info.paths
        )

    def scalars(count: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``1 - b1**t``, the 0/1 rectification flag, and ``sqrt(1 - b2**t) * r_t`` (1 when not
        rectified), in float64 and in torch's order of operations."""
        t = count.to(torch.float64)
        beta1, beta2 = parts.on(b1, count.device), parts.on(b2, count.device)
        inf = rho_inf.to(count.device) if isinstance(rho_inf, Tensor) else rho_inf
        bc1 = 1 - torch.pow(beta1, t)
        bc2 = 1 - torch.pow(beta2, t)
        rho_t = inf - 2 * t * torch.pow(beta2, t) / bc2
        rectified = rho_t > 5.0
        rect = torch.pow((rho_t - 4) * (rho_t - 2) * inf / ((inf - 4) * (inf - 2) * rho_t), 0.5)
        # where, not a product: rect is NaN or inf before rectification starts (or never does).
        scale_num = torch.where(rectified, torch.pow(bc2, 0.5) * rect, 1.0)
        return bc1, rectified.to(torch.float64), scale_num

    def moments(
        g: list[Tensor], m: list[Tensor], v: list[Tensor], inplace: bool
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The algorithm's moments: the new ``(exp_avg, exp_avg_sq)``."""
        beta1, beta2 = parts.on(b1, m[0].device), parts.on(b2, m[0].device)
        m = fe.lerp(m, g, 1 - beta1, inplace)
        return m, fe.addcmul(fe.mul(v, beta2, inplace), g, g, 1 - beta2, inplace)

    def denominator(v: list[Tensor], on: Tensor, inplace: bool) -> list[Tensor]:
        """``sqrt(v) + eps`` when rectified, else 1: ``sqrt(v) * on + (eps * on + 1 - on)``."""
        denom = fe.mul(fe.sqrt(v, False), on, inplace)
        return fe.add_scalar(denom, parts.on(eps, on.device) * on + (1 - on), inplace)

    def update(
        updates: list[Tensor],
        state: ScaleByRadamState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], ScaleByRadamState]:
        parts.check_state_paths("scale_by_radam", state.paths, info)
        donate = info.donate
        count = parts.increment(state.count, donate)
        bc1, on, scale_num = scalars(count)

        def group(g: list[Tensor], m: list[Tensor], v: list[Tensor]) -> tuple[list[Tensor], ...]:
            if maximize:
                g = fe.neg(g, donate)
            m, v = moments(g, m, v, donate)
            denom = denominator(v, on, donate)
            direction = fe.mul(fe.div(m, bc1, False), scale_num, donate)
            return fe.div(direction, denom, donate), m, v

        direction, mu, nu = info.foreach(group, updates, list(state.mu), list(state.nu))
        return direction, ScaleByRadamState(count, tuple(mu), tuple(nu), state.paths)

    def fused(
        params: list[Tensor],
        grads: list[Tensor],
        state: ScaleByRadamState,
        info: TreeInfo,
        *,
        lr: float | Tensor,
        **prologue: Any,
    ) -> tuple[list[Tensor], ScaleByRadamState]:
        """The one-pass step (see :mod:`~functrain.transforms.optim_parts`)."""
        parts.check_state_paths("scale_by_radam", state.paths, info)
        donate = info.donate
        count = parts.increment(state.count, donate)
        bc1, on, scale_num = scalars(count)
        step_size = -lr * scale_num / bc1
        # On the CPU the flag is a host value already: skip the unused branch's passes.
        flag = fe.host_scalar(on)

        def body(
            p: list[Tensor], g: list[Tensor], m: list[Tensor], v: list[Tensor]
        ) -> tuple[list[Tensor], ...]:
            m, v = moments(g, m, v, donate)
            if flag == 0.0:
                # Unrectified, the step is SGD-sized (not normalised), so it follows torch's
                # roundings: p - (m / bc1) * lr (a new buffer, written in place).
                step = fe.mul(fe.div(m, fe.host_scalar(bc1), False), fe.host_scalar(lr), True)
                return fe.sub(p, step, donate), m, v
            if flag is None:
                denom = denominator(v, on, True)  # a new buffer: in place is safe
            else:
                denom = fe.add(fe.sqrt(v, False), eps, True)
            return fe.addcdiv_scaled(p, m, denom, step_size, donate), m, v

        params, m_all, v_all = parts.one_pass(
            info, body, params, grads, state.mu, state.nu, maximize=maximize, lr=lr, **prologue
        )
        return params, ScaleByRadamState(count, tuple(m_all), tuple(v_all), state.paths)

    name = (
        f"scale_by_radam(b1={parts.name_of(b1)}, b2={parts.name_of(b2)}, "
        f"eps={parts.name_of(eps)}, maximize={maximize})"
    )
    fusion = None if vectors else Kernel(fused)
    return from_flat(FlatTransform(init, update, name=name, fusion=fusion))


# The alias (its chain(...)) lives in alias.py, which imports this module.
__getattr__ = parts.reexport_alias(__name__, "radam")
