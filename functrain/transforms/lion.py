"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

The paper's update (Algorithm 2), with ``g`` the gradient::

    c     = b1 * m + (1 - b1) * g
    param = param - lr * (sign(c) + weight_decay * param)       (decoupled decay)
    m     = b2 * m + (1 - b2) * g

as ``chain(scale_by_lion(b1, b2), add_decayed_weights(weight_decay),
scale_by_learning_rate(lr))``.
"""

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
from functrain.transforms.members import PerMember
from functrain.transforms.validation import check_betas
from functrain.tree import TreeInfo

# The alias is served by __getattr__ (end of module).
__all__ = ["ScaleByLionState", "lion", "scale_by_lion"]  # noqa: F822


@state_record
class ScaleByLionState:
    """State of :func:`scale_by_lion`.

    Attributes:
        count: number of steps taken (0-d int64).
        mu: the momentum ``m``, one tensor per leaf.
        paths: dotted leaf paths the state was built for (static).
    """

    count: Tensor
    mu: tuple[Tensor, ...]
    paths: tuple[str, ...] = static_field()


def scale_by_lion(
    b1: float = 0.9, b2: float = 0.99, *, maximize: bool = False
) -> GradientTransformation:
    """Lion's direction ``sign(b1 * m + (1 - b1) * g)``; then ``m <- b2 * m + (1 - b2) * g``.

    The interpolations are ``lerp(m, g, 1 - b)``. ``sign(0) = 0``.

    Args:
        b1: interpolation factor of the update, in [0, 1) (per member under
            :func:`functrain.ensemble`, as ``b2``).
        b2: decay of the momentum, in [0, 1).
        maximize: ascend: the incoming gradients are negated first.

    Example:
        >>> tx = chain(scale_by_lion(), scale_by_learning_rate(1e-4))
    """
    b1, b2 = check_betas((b1, b2))
    if callable(b1) and not isinstance(b1, PerMember):
        raise ValueError("betas[0] of Lion must be a number")

    def init(params: list[Tensor], info: TreeInfo) -> ScaleByLionState:
        parts.check_members(params, b1, b2)
        device = params[0].device if params else torch.device("cpu")
        mu = tuple(torch.zeros_like(p, memory_format=torch.preserve_format) for p in params)
        return ScaleByLionState(
            torch.zeros((), dtype=torch.int64, device=device), mu, paths=info.paths
        )

    def update(
        updates: list[Tensor],
        state: ScaleByLionState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], ScaleByLionState]:
        parts.check_state_paths("scale_by_lion", state.paths, info)
        donate = info.donate

        def group(g: list[Tensor], m: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
            if maximize:
                g = fe.neg(g)
            device = m[0].device
            c = fe.lerp(m, g, 1 - parts.on(b1, device), False)
            direction = fe.sign(c, donate)
            m = fe.lerp(m, g, 1 - parts.on(b2, device), donate)
            return direction, m

        direction, mu = info.foreach(group, updates, list(state.mu))
        return direction, ScaleByLionState(state.count + 1, tuple(mu), state.paths)

    name = f"scale_by_lion(b1={parts.name_of(b1)}, b2={parts.name_of(b2)}, maximize={maximize})"
    return from_flat(FlatTransform(init, update, name=name))


# The alias (its chain(...)) lives in alias.py, which imports this module.
__getattr__ = parts.reexport_alias(__name__, "lion")
