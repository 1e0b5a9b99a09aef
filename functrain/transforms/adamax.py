"""Adamax's update rule (Adam with an infinity-norm second moment), as ``torch.optim.Adamax``
computes it; the ``adamax`` composition is in :mod:`functrain.transforms.alias`."""

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
__all__ = ["ScaleByAdamaxState", "adamax", "scale_by_adamax"]  # noqa: F822


@state_record
class ScaleByAdamaxState:
    """State of :func:`scale_by_adamax`.

    Attributes:
        count: number of steps taken, a 0-d float32 tensor (torch's ``step``).
        mu: first moments, one tensor per leaf (torch's ``exp_avg``).
        nu: exponentially weighted infinity norms, one per leaf (``exp_inf``).
        paths: dotted leaf paths the state was built for (static).
    """

    count: Tensor
    mu: tuple[Tensor, ...]
    nu: tuple[Tensor, ...]
    paths: tuple[str, ...] = static_field()


def scale_by_adamax(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *, maximize: bool = False
) -> GradientTransformation:
    """Rescale updates by Adamax's first moment over the infinity norm.

    With ``t`` the step count: ``m = b1*m + (1-b1)*g``, ``u = max(b2*u, |g| + eps)``, and the
    update is ``m / u / (1 - b1**t)``. Follow it with ``scale_by_learning_rate(lr)``.

    Args:
        b1, b2: decay rates of the first moment and of the infinity norm, each in [0, 1)
            (torch's ``betas``); per member under :func:`functrain.ensemble`, as ``eps``.
        eps: added to ``|g|`` before the maximum, >= 0.
        maximize: ascend: the incoming gradients are negated first.

    Example:
        >>> tx = chain(scale_by_adamax(0.9, 0.999), scale_by_learning_rate(2e-3))
    """
    b1, b2 = check_betas((b1, b2))
    if not isinstance(b1, float | PerMember):
        raise ValueError("scale_by_adamax: betas[0] must be a number, not a schedule")
    check_nonnegative("eps", eps, allow_members=True)
    eps = parts.constant("eps", eps)
    # Per-member values (an ensemble) are 1-d tensors in the update: no one-pass form.
    vectors = parts.any_members(b1, b2, eps)

    def init(params: list[Tensor], info: TreeInfo) -> ScaleByAdamaxState:
        parts.check_members(params, b1, b2, eps)
        device = parts.device_of(params)
        return ScaleByAdamaxState(
            parts.step_counter(device), parts.zeros(params), parts.zeros(params), info.paths
        )

    def bias_correction(count: Tensor) -> Tensor:
        # In float64, as torch.optim evaluates it (in Python floats) for every param dtype.
        return 1 - torch.pow(parts.on(b1, count.device), count.to(torch.float64))

    def moments(
        g: list[Tensor], m: list[Tensor], u: list[Tensor], inplace: bool
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The algorithm: the new ``(exp_avg, exp_inf)``; ``g`` is overwritten when in place."""
        device = m[0].device
        m = fe.lerp(m, g, 1 - parts.on(b1, device), inplace)
        # g is not needed after the lerp: |g| + eps may overwrite it.
        norm = fe.add(fe.abs(g, inplace), parts.on(eps, device), inplace)
        return m, fe.maximum(fe.mul(u, parts.on(b2, device), inplace), norm, inplace)

    def update(
        updates: list[Tensor],
        state: ScaleByAdamaxState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], ScaleByAdamaxState]:
        parts.check_state_paths("scale_by_adamax", state.paths, info)
        donate = info.donate
        count = parts.increment(state.count, donate)
        bc1 = bias_correction(count)

        def group(g: list[Tensor], m: list[Tensor], u: list[Tensor]) -> tuple[list[Tensor], ...]:
            if maximize:
                g = fe.neg(g, donate)
            m, u = moments(g, m, u, donate)
            return fe.div(fe.div(m, u, False), bc1, donate), m, u

        direction, mu, nu = info.foreach(group, updates, list(state.mu), list(state.nu))
        return direction, ScaleByAdamaxState(count, tuple(mu), tuple(nu), state.paths)

    def fused(
        params: list[Tensor],
        grads: list[Tensor],
        state: ScaleByAdamaxState,
        info: TreeInfo,
        *,
        lr: float | Tensor,
        **prologue: Any,
    ) -> tuple[list[Tensor], ScaleByAdamaxState]:
        """The one-pass step (see :mod:`~functrain.transforms.optim_parts`)."""
        parts.check_state_paths("scale_by_adamax", state.paths, info)
        donate = info.donate
        count = parts.increment(state.count, donate)
        step_size = -lr / bias_correction(count)

        def body(
            p: list[Tensor], g: list[Tensor], m: list[Tensor], u: list[Tensor]
        ) -> tuple[list[Tensor], ...]:
            m, u = moments(g, m, u, donate)
            # torch's single-tensor step: p.addcdiv_(exp_avg, exp_inf, value=-clr).
            return fe.addcdiv_scaled(p, m, u, step_size, donate), m, u

        params, mu, nu = parts.one_pass(
            info, body, params, grads, state.mu, state.nu, maximize=maximize, lr=lr, **prologue
        )
        return params, ScaleByAdamaxState(count, tuple(mu), tuple(nu), state.paths)

    name = (
        f"scale_by_adamax(b1={parts.name_of(b1)}, b2={parts.name_of(b2)}, "
        f"eps={parts.name_of(eps)}, maximize={maximize})"
    )
    fusion = None if vectors else Kernel(fused, decoupled_decay=False, maximize=maximize)
    return from_flat(FlatTransform(init, update, name=name, fusion=fusion))


# The alias (its chain(...)) lives in alias.py, which imports this module.
__getattr__ = parts.reexport_alias(__name__, "adamax")
