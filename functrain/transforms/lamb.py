"""LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning: Training BERT in 76
minutes") and its per-leaf trust ratio.

The paper's update (Algorithm 2, ``phi`` the identity), per leaf::

    m = b1 * m + (1 - b1) * g,   v = b2 * v + (1 - b2) * g**2
    r = (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)
    u = r + weight_decay * param
    param = param - lr * (||param|| / ||u||) * u

as ``chain(scale_by_adam(b1, b2, eps), add_decayed_weights(weight_decay),
scale_by_trust_ratio(), scale_by_learning_rate(lr))``, the optax decomposition. Where
``||param||`` or ``||u||`` is 0 the ratio is 1 (optax's convention).
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
from functrain.transforms.validation import check_nonnegative
from functrain.tree import TreeInfo

# The alias is served by __getattr__ (end of module).
__all__ = ["lamb", "safe_ratio", "scale_by_trust_ratio"]  # noqa: F822


def safe_ratio(numerator: Tensor, denominator: Tensor, zero: Tensor) -> Tensor:
    """``numerator / denominator`` where ``zero`` is false, else 1, with a gradient free of
    the ``0 / 0`` the discarded branch would hold."""
    ones = torch.ones_like(numerator)
    return torch.where(zero, ones, numerator / torch.where(zero, ones, denominator))


def scale_by_trust_ratio(
    min_norm: float = 0.0, trust_coefficient: float = 1.0, eps: float = 0.0
) -> GradientTransformation:
    """Scale each leaf's update by ``trust_coefficient * ||param|| / (||update|| + eps)``.

    As optax's ``scale_by_trust_ratio``: the norms are floored at ``min_norm``, and the
    ratio is 1 where either norm is 0 (a zero-initialised leaf, or a zero update). The
    per-leaf norms come from ``torch._foreach_norm``, once per (device, dtype) group; the
    ratio is computed on the device (no host sync). Needs the parameters. Under
    :func:`functrain.ensemble` the norms and the ratio are per member (each member's slice
    of a leaf is a leaf of its own).

    Args:
        min_norm: lower bound of both norms, >= 0.
        trust_coefficient: multiplier of the ratio, >= 0.
        eps: added to the update norm, >= 0.

    Example:
        >>> tx = chain(scale_by_adam(), scale_by_trust_ratio(), scale_by_learning_rate(1e-3))
    """
    check_nonnegative("min_norm", min_norm)
    check_nonnegative("trust_coefficient", trust_coefficient)
    check_nonnegative("eps", eps)
    min_norm, trust_coefficient, eps = float(min_norm), float(trust_coefficient), float(eps)

    def init(params: list[Tensor], info: TreeInfo) -> EmptyState:
        return EmptyState()

    def update(
        updates: list[Tensor],
        state: EmptyState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], EmptyState]:
        params = parts.require_params("scale_by_trust_ratio", params)

        def group(u: list[Tensor], p: list[Tensor]) -> list[Tensor]:
            # Stacked ensemble members: [leaves, members] norms, one ratio per member slice.
            param_norm = torch.clamp_min(fe.leaf_norms(p, info.members), min_norm)
            update_norm = torch.clamp_min(fe.leaf_norms(u, info.members), min_norm)
            zero = (param_norm == 0) | (update_norm == 0)
            ratio = safe_ratio(trust_coefficient * param_norm, update_norm + eps, zero)
            return fe.mul(u, fe.per_leaf(ratio, u), info.donate)

        return info.foreach(group, updates, params), state

    name = (
        f"scale_by_trust_ratio(min_norm={min_norm:g}, trust_coefficient={trust_coefficient:g}, "
        f"eps={eps:g})"
    )
    return from_flat(FlatTransform(init, update, name=name))


# The alias (its chain(...)) lives in alias.py, which imports this module.
__getattr__ = parts.reexport_alias(__name__, "lamb")
