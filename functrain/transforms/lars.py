"""LARS (You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional Networks").

The paper's update (Algorithm 1), per leaf, with ``gamma_t`` the global learning rate::

    local_lr = eta * ||param|| / (||g|| + weight_decay * ||param||)
    v        = momentum * v + gamma_t * local_lr * (g + weight_decay * param)
    param    = param - v

as ``chain(scale_by_lars(eta, weight_decay), scale_by_learning_rate(lr),
trace(momentum, nesterov=nesterov))``: the learning rate is applied *inside* the momentum,
as in the paper (it matters when ``lr`` is a schedule). ``v`` starts at 0 (torch's SGD
buffer starts at the first update, the same thing). Where ``||param||`` or ``||g||`` is 0
the local learning rate is 1, the common convention (optax; reference implementations skip
the adaptation for such leaves); ``eps`` is added to the denominator.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from functrain.transforms import foreach as fe
from functrain.transforms import optim_parts as parts
from functrain.transforms.base import (
    EmptyState,
    FlatTransform,
    GradientTransformation,
    from_flat,
)
from functrain.transforms.lamb import safe_ratio
from functrain.transforms.members import PerMember, per_member
from functrain.transforms.validation import check_nonnegative
from functrain.tree import TreeInfo

# The alias is served by __getattr__ (end of module).
__all__ = ["lars", "scale_by_lars"]  # noqa: F822


def _on(value: float | PerMember, device: torch.device) -> float | Tensor:
    """A per-member value as its 1-d float64 tensor on ``device``; a number as it is."""
    return value.on(device) if isinstance(value, PerMember) else value


def scale_by_lars(
    trust_coefficient: float = 1e-3, weight_decay: float = 0.0, eps: float = 0.0
) -> GradientTransformation:
    """LARS's layer-wise scaled update ``local_lr * (g + weight_decay * param)``.

    ``local_lr = trust_coefficient * ||param|| / (||g|| + weight_decay * ||param|| + eps)``
    per leaf (the paper's ``eta``), or 1 where ``||param||`` or ``||g||`` is 0. Norms by
    ``torch._foreach_norm``; no host sync. Needs the parameters. Under
    :func:`functrain.ensemble` the norms and the ratio are per member, and ``weight_decay``
    and ``eps`` may be given per member.

    Args:
        trust_coefficient: the paper's ``eta``, >= 0.
        weight_decay: the paper's ``beta``, >= 0 (L2, inside the ratio and the update).
        eps: added to the denominator, >= 0.

    Example:
        >>> tx = chain(scale_by_lars(1e-3, 1e-4), scale_by_learning_rate(1.0), trace(0.9))
    """
    check_nonnegative("trust_coefficient", trust_coefficient)
    check_nonnegative("weight_decay", weight_decay, allow_members=True)
    check_nonnegative("eps", eps, allow_members=True)
    eta = float(trust_coefficient)
    base_wd, eps = per_member("weight_decay", weight_decay), per_member("eps", eps)
    # Per-member values (an ensemble) are 1-d tensors; the rest stay Python numbers.
    per_member_values = isinstance(base_wd, PerMember) or isinstance(eps, PerMember)
    if not isinstance(base_wd, PerMember):
        base_wd = float(base_wd)
    if not isinstance(eps, PerMember):
        eps = float(eps)

    def init(params: list[Tensor], info: TreeInfo) -> EmptyState:
        for value in (base_wd, eps):
            if isinstance(value, PerMember):
                value.on(parts.device_of(params))  # checks the member count
        return EmptyState()

    def update(
        updates: list[Tensor],
        state: EmptyState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], EmptyState]:
        params = parts.require_params("scale_by_lars", params)

        def group(index: int, g: list[Tensor], p: list[Tensor]) -> list[Tensor]:
            # mask_multipliers' decay_mult scales this group's weight decay.
            decay_mult = info.group_multipliers(index)[1]
            # Stacked ensemble members: [leaves, members] norms, one ratio per member slice;
            # a per-member decay / eps ([members]) broadcasts over the last axis.
            param_norm = fe.leaf_norms(p, info.members)
            grad_norm = fe.leaf_norms(g, info.members)
            zero = (param_norm == 0) | (grad_norm == 0)
            if per_member_values:
                wd = _on(base_wd, param_norm.device) * decay_mult
                epsilon = _on(eps, param_norm.device)
                ratio = safe_ratio(eta * param_norm, grad_norm + wd * param_norm + epsilon, zero)
                return fe.mul(fe.add(g, fe.mul(p, wd, False), False), fe.per_leaf(ratio, g), False)
            wd = base_wd * decay_mult
            ratio = safe_ratio(eta * param_norm, grad_norm + wd * param_norm + eps, zero)
            u = fe.add(g, p, False, alpha=wd) if wd else g
            return fe.mul(u, fe.per_leaf(ratio, u), info.donate)

        return info.foreach(group, updates, params, with_group=True), state

    name = (
        f"scale_by_lars(trust_coefficient={eta:g}, weight_decay={parts.name_of(base_wd)}, "
        f"eps={parts.name_of(eps)})"
    )
    return from_flat(FlatTransform(init, update, name=name))


# The alias (its chain(...)) lives in alias.py, which imports this module.
__getattr__ = parts.reexport_alias(__name__, "lars")
