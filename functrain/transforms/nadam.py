"""NAdam's update rule (Adam with Nesterov momentum and momentum decay), as
``torch.optim.NAdam`` computes it; the ``nadam`` composition is in
:mod:`functrain.transforms.alias`."""

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
__all__ = ["ScaleByNadamState", "nadam", "scale_by_nadam"]  # noqa: F822


@state_record
class ScaleByNadamState:
    """State of :func:`scale_by_nadam`.

    Attributes:
        count: number of steps taken, a 0-d float32 tensor (torch's ``step``).
        mu_product: product of the momentum coefficients so far, a 0-d float32 tensor
            (torch's ``mu_product``, rounded to float32 at every step as torch does).
        mu: first moments, one tensor per leaf (``exp_avg``).
        nu: second moments, one per leaf (``exp_avg_sq``).
        paths: dotted leaf paths the state was built for (static).
    """

    count: Tensor
    mu_product: Tensor
    mu: tuple[Tensor, ...]
    nu: tuple[Tensor, ...]
    paths: tuple[str, ...] = static_field()


def scale_by_nadam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum_decay: float = 4e-3,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Rescale updates as NAdam (Dozat, 2016) with torch's momentum-decay schedule.

    With ``t`` the step count: ``mu_t = b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))``,
    ``P_t = P_{t-1} * mu_t`` (``P_0 = 1``), ``m = b1*m + (1-b1)*g``,
    ``v = b2*v + (1-b2)*g**2``, ``d = sqrt(v / (1 - b2**t)) + eps``, and the update is
    ``(1 - mu_t) / (1 - P_t) * g / d + mu_{t+1} / (1 - P_t * mu_{t+1}) * m / d``. Follow it
    with ``scale_by_learning_rate(lr)``.

    Args:
        b1, b2: decay rates of the moments, each in [0, 1) (torch's ``betas``); per member
            under :func:`functrain.ensemble` (``mu_product`` is then per member), as ``eps``.
        eps: added to the denominator, >= 0.
        momentum_decay: ``psi``, >= 0.
        maximize: ascend: the incoming gradients are negated first.

    Example:
        >>> tx = chain(scale_by_nadam(), scale_by_learning_rate(2e-3))
    """
    b1, b2 = check_betas((b1, b2))
    if not isinstance(b1, float | PerMember):
        raise ValueError("scale_by_nadam: betas[0] must be a number, not a schedule")
    check_nonnegative("eps", eps, allow_members=True)
    check_nonnegative("momentum_decay", momentum_decay)
    eps, momentum_decay = parts.constant("eps", eps), float(momentum_decay)
    # Per-member values (an ensemble) are 1-d tensors in the update: no one-pass form.
    vectors = parts.any_members(b1, b2, eps)

    def init(params: list[Tensor], info: TreeInfo) -> ScaleByNadamState:
        parts.check_members(params, b1, b2, eps)
        device = parts.device_of(params)
        # A per-member b1 gives each member its own running product of mu_t.
        shape = (len(b1),) if isinstance(b1, PerMember) else ()
        return ScaleByNadamState(
            parts.step_counter(device),
            torch.ones(shape, dtype=torch.float32, device=device),
            parts.zeros(params),
            parts.zeros(params),
            paths=info.paths,
        )

    def scalars(state: ScaleByNadamState, donate: bool) -> tuple[Tensor, ...]:
        """count, mu_product, 1 - b2**t, mu_t, mu_{t+1} and P_t (float64)."""
        count = parts.increment(state.count, donate)
        t = count.to(torch.float64)
        beta1, beta2 = parts.on(b1, count.device), parts.on(b2, count.device)
        bc2 = 1 - torch.pow(beta2, t)
        mu = beta1 * (1.0 - 0.5 * torch.pow(0.96, t * momentum_decay))
        mu_next = beta1 * (1.0 - 0.5 * torch.pow(0.96, (t + 1) * momentum_decay))
        # torch multiplies its float32 mu_product in place by the (float32-rounded) mu.
        mu32 = mu.to(torch.float32)
        mu_product = state.mu_product.mul_(mu32) if donate else state.mu_product * mu32
        return count, mu_product, bc2, mu, mu_next, mu_product.to(torch.float64)

    def moments(
        g: list[Tensor], m: list[Tensor], v: list[Tensor], bc2: Tensor | float, inplace: bool
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """The algorithm: the new ``(exp_avg, exp_avg_sq)`` and ``sqrt(v / bc2) + eps``."""
        device = m[0].device
        beta1, beta2 = parts.on(b1, device), parts.on(b2, device)
        m = fe.lerp(m, g, 1 - beta1, inplace)
        v = fe.addcmul(fe.mul(v, beta2, inplace), g, g, 1 - beta2, inplace)
        denom = fe.add(fe.sqrt(fe.div(v, bc2, False), inplace), parts.on(eps, device), inplace)
        return m, v, denom

    def update(
        updates: list[Tensor],
        state: ScaleByNadamState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], ScaleByNadamState]:
        parts.check_state_paths("scale_by_nadam", state.paths, info)
        donate = info.donate
        count, mu_product, bc2, mu, mu_next, product = scalars(state, donate)
        coef_grad = (1.0 - mu) / (1.0 - product)
        coef_avg = mu_next / (1.0 - product * mu_next)

        def group(g: list[Tensor], m: list[Tensor], v: list[Tensor]) -> tuple[list[Tensor], ...]:
            if maximize:
                g = fe.neg(g, donate)
            m, v, denom = moments(g, m, v, bc2, donate)
            direction = fe.addcmul_scalar(fe.mul(g, coef_grad, donate), m, coef_avg, donate)
            return fe.div(direction, denom, donate), m, v

        direction, mu, nu = info.foreach(group, updates, list(state.mu), list(state.nu))
        return direction, ScaleByNadamState(count, mu_product, tuple(mu), tuple(nu), state.paths)

    def fused(
        params: list[Tensor],
        grads: list[Tensor],
        state: ScaleByNadamState,
        info: TreeInfo,
        *,
        lr: float | Tensor,
        **prologue: Any,
    ) -> tuple[list[Tensor], ScaleByNadamState]:
        """The one-pass step (see :mod:`~functrain.transforms.optim_parts`)."""
        parts.check_state_paths("scale_by_nadam", state.paths, info)
        donate = info.donate
        count, mu_product, bc2, mu, mu_next, product = scalars(state, donate)
        # torch's step sizes, in its order of operations.
        step_grad = -lr * (1.0 - mu) / (1.0 - product)
        step_avg = (-lr * mu_next) / (1.0 - product * mu_next)
        # torch divides by bias_correction2 as a Python float.
        bc2_host = fe.host_scalar(bc2)
        bc2 = bc2 if bc2_host is None else bc2_host

        def body(
            p: list[Tensor], g: list[Tensor], m: list[Tensor], v: list[Tensor]
        ) -> tuple[list[Tensor], ...]:
            m, v, denom = moments(g, m, v, bc2, donate)
            p = fe.addcdiv_scaled(p, g, denom, step_grad, donate)
            return fe.addcdiv_scaled(p, m, denom, step_avg, donate), m, v

        params, m_all, v_all = parts.one_pass(
            info, body, params, grads, state.mu, state.nu, maximize=maximize, lr=lr, **prologue
        )
        return params, ScaleByNadamState(count, mu_product, tuple(m_all), tuple(v_all), state.paths)

    name = (
        f"scale_by_nadam(b1={parts.name_of(b1)}, b2={parts.name_of(b2)}, "
        f"eps={parts.name_of(eps)}, momentum_decay={momentum_decay:g}, maximize={maximize})"
    )
    fusion = None if vectors else Kernel(fused)
    return from_flat(FlatTransform(init, update, name=name, fusion=fusion))


# The alias (its chain(...)) lives in alias.py, which imports this module.
__getattr__ = parts.reexport_alias(__name__, "nadam")
