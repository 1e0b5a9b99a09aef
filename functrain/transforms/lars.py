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
from functrain.transforms.validation import check_nonnegative
from functrain.tree import TreeInfo

# The alias is served by __getattr__ (end of module).
__all__ = ["lars", "scale_by_lars"]  # noqa: F822


def scale_by_lars(
    trust_coefficient: float = 1e-3, weight_decay: float = 0.0, eps: float = 0.0
) -> GradientTransformation:
    """LARS's layer-wise scaled update ``local_lr * (g + weight_decay * param)``.

    ``local_lr = trust_coefficient * ||param|| / (||g|| + weight_decay * ||param|| + eps)``
    per leaf (the paper's ``eta``), or 1 where ``||param||`` or ``||g||`` is 0. Norms by
    ``torch._foreach_norm``; no host sync. Needs the parameters.

    Args:
        trust_coefficient: the paper's ``eta``, >= 0.
        weight_decay: the paper's ``beta``, >= 0 (L2, inside the ratio and the update).
        eps: added to the denominator, >= 0.

    Example:
        >>> tx = chain(scale_by_lars(1e-3, 1e-4), scale_by_learning_rate(1.0), trace(0.9))
    """
    check_nonnegative("trust_coefficient", trust_coefficient)
    check_nonnegative("weight_decay", weight_decay)
    check_nonnegative("eps", eps)
    eta, base_wd, eps = float(trust_coefficient), float(weight_decay), float(eps)

    def init(params: list[Tensor], info: TreeInfo) -> EmptyState:
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
            wd = base_wd * info.group_multipliers(index)[1]
            param_norm = fe.leaf_norms(p)
            grad_norm = fe.leaf_norms(g)
            zero = (param_norm == 0) | (grad_norm == 0)
            ratio = safe_ratio(eta * param_norm, grad_norm + wd * param_norm + eps, zero)
            u = fe.add(g, p, False, alpha=wd) if wd else g
            return fe.mul(u, fe.per_leaf(ratio, u), info.donate)

        return info.foreach(group, updates, params, with_group=True), state

    name = f"scale_by_lars(trust_coefficient={eta:g}, weight_decay={base_wd:g}, eps={eps:g})"
    return from_flat(FlatTransform(init, update, name=name))


# The alias (its chain(...)) lives in alias.py, which imports this module.
__getattr__ = parts.reexport_alias(__name__, "lars")
