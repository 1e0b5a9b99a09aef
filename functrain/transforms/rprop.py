"""Rprop's update rule (resilient backpropagation), as ``torch.optim.Rprop`` computes it; the
``rprop`` alias is in :mod:`functrain.transforms.alias`."""

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
from functrain.transforms.hyperparams import Schedule, value_at
from functrain.transforms.kernel_specs import Kernel
from functrain.transforms.members import PerMember, per_member
from functrain.transforms.validation import check_nonnegative, is_schedule
from functrain.tree import TreeInfo

# The alias is served by __getattr__ (end of module).
__all__ = ["ScaleByRpropState", "rprop", "scale_by_rprop"]  # noqa: F822


@state_record
class ScaleByRpropState:
    """State of :func:`scale_by_rprop`.

    Attributes:
        count: number of steps taken, a 0-d float32 tensor (torch's ``step``).
        prev: the previous (gated) gradients, one tensor per leaf (torch's ``prev``).
        step_size: the per-element step sizes in force, one per leaf (``step_size``).
        paths: dotted leaf paths the state was built for (static).
    """

    count: Tensor
    prev: tuple[Tensor, ...]
    step_size: tuple[Tensor, ...]
    paths: tuple[str, ...] = static_field()


def check_etas(etas: Any) -> tuple[float, float]:
    """``0 < etas[0] < 1 < etas[1]``, as torch.optim.Rprop checks them."""
    if not isinstance(etas, tuple | list) or len(etas) != 2:
        raise ValueError(f"etas must be a pair (etaminus, etaplus), got {etas!r}")
    minus, plus = parts.number("etas[0]", etas[0]), parts.number("etas[1]", etas[1])
    if not 0.0 < minus < 1.0 < plus:
        raise ValueError(
            f"Invalid eta values: {etas[0]}, {etas[1]}; etas must satisfy 0 < etas[0] < 1 < etas[1]"
        )
    return minus, plus


def check_step_sizes(step_sizes: Any) -> tuple[float, float]:
    """A pair ``0 <= min <= max`` (torch does not check it; a reversed pair would clamp every
    step size to ``max``)."""
    if not isinstance(step_sizes, tuple | list) or len(step_sizes) != 2:
        raise ValueError(f"step_sizes must be a pair (min, max), got {step_sizes!r}")
    low, high = (
        parts.number("step_sizes[0]", step_sizes[0]),
        parts.number("step_sizes[1]", step_sizes[1]),
    )
    if not 0.0 <= low <= high:
        raise ValueError(
            f"Invalid step_sizes: {step_sizes!r}; need 0 <= step_sizes[0] <= step_sizes[1]"
        )
    return low, high


def scale_by_rprop(
    lr: float | Schedule = 1e-2,
    etas: tuple[float, float] = (0.5, 1.2),
    step_sizes: tuple[float, float] = (1e-6, 50.0),
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """The whole Rprop update: a per-element step size driven by gradient signs.

    With ``s = sign(g * prev)``: the step size is multiplied by ``etas[1]`` where ``s > 0``,
    by ``etas[0]`` where ``s < 0`` and kept where ``s == 0``, then clamped to
    ``step_sizes``; the gradient is zeroed where ``s < 0``; the update is
    ``-sign(g) * step_size`` and ``prev`` becomes the (zeroed) gradient.

    The update already carries its sign and size (the learning rate is only the initial step
    size), so this transform is the whole optimizer, not a direction to scale by ``-lr``;
    chain gradient transforms before it, not after.

    Args:
        lr: initial step size, >= 0. A schedule is evaluated once, at step 0, as torch reads
            ``lr`` only when it creates the state. Per member under :func:`functrain.ensemble`.
        etas: ``(etaminus, etaplus)`` with ``0 < etaminus < 1 < etaplus``.
        step_sizes: ``(min, max)`` bounds of the step size.
        maximize: ascend: the incoming gradients are negated first.

    Example:
        >>> tx = scale_by_rprop(lr=0.01, etas=(0.5, 1.2))
    """
    check_nonnegative("lr", lr, allow_schedule=True)
    lr = per_member("lr", lr)
    etaminus, etaplus = check_etas(etas)
    low, high = check_step_sizes(step_sizes)

    def init(params: list[Tensor], info: TreeInfo) -> ScaleByRpropState:
        device = parts.device_of(params)
        count = parts.step_counter(device)
        if isinstance(lr, PerMember) and params:
            # Each member's slice starts at its own step size (its value in the leaf's dtype,
            # as full_like rounds a Python float).
            sizes = tuple(
                torch.zeros_like(p, memory_format=torch.preserve_format).add_(v)
                for p, v in zip(params, fe.member_views(lr.on(device), params), strict=True)
            )
            return ScaleByRpropState(count, parts.zeros(params), sizes, info.paths)
        initial = lr
        if is_schedule(lr):
            # torch sizes the first steps with the lr in force when the state is created.
            initial = float(value_at(lr, torch.zeros((), dtype=torch.int64)))
        return ScaleByRpropState(
            count, parts.zeros(params), parts.full(params, initial), info.paths
        )

    def factors(prod: Tensor) -> tuple[Tensor, Tensor]:
        # torch's sign -> {etaplus, etaminus, 1} map, exact values in the leaf's dtype; no
        # foreach op selects, so this is per leaf.
        shrink = prod < 0
        one = torch.ones((), dtype=prod.dtype, device=prod.device)
        factor = torch.where(prod > 0, etaplus, torch.where(shrink, etaminus, one))
        return factor, shrink

    def rule(
        g: list[Tensor], prev: list[Tensor], size: list[Tensor], inplace: bool
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """The algorithm: ``sign(g)`` of the gated gradient, the new ``prev`` (the gradient,
        zeroed where the sign flipped) and the new step sizes."""
        prods = fe.mul(g, prev, False)
        new_size, new_g = [], []
        for prod, grad, s in zip(prods, g, size, strict=True):
            factor, shrink = factors(prod)
            s = s.mul_(factor) if inplace else s * factor
            new_size.append(s.clamp_(low, high) if inplace else s.clamp(low, high))
            new_g.append(grad.masked_fill_(shrink, 0) if inplace else grad.masked_fill(shrink, 0))
        if inplace:
            # The old prev buffer is free once the products are taken: it holds the signs.
            prev = fe.copy(prev, new_g, True)
            return fe.sign(prev, True), new_g, new_size
        return fe.sign(new_g), new_g, new_size

    def update(
        updates: list[Tensor],
        state: ScaleByRpropState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], ScaleByRpropState]:
        parts.check_state_paths("scale_by_rprop", state.paths, info)
        donate = info.donate

        def group(
            g: list[Tensor], prev: list[Tensor], size: list[Tensor]
        ) -> tuple[list[Tensor], ...]:
            if maximize:
                g = fe.neg(g, donate)
            signs, g, size = rule(g, prev, size, donate)
            return fe.neg(fe.mul(signs, size, donate), donate), g, size

        lists = (updates, list(state.prev), list(state.step_size))
        out, prev, size = info.foreach(group, *lists)
        count = parts.increment(state.count, donate)
        return out, ScaleByRpropState(count, tuple(prev), tuple(size), state.paths)

    def fused(
        params: list[Tensor],
        grads: list[Tensor],
        state: ScaleByRpropState,
        info: TreeInfo,
        *,
        lr: float | Tensor,
        **prologue: Any,
    ) -> tuple[list[Tensor], ScaleByRpropState]:
        """The one-pass step (see :mod:`~functrain.transforms.optim_parts`)."""
        parts.check_state_paths("scale_by_rprop", state.paths, info)
        donate = info.donate
        count = parts.increment(state.count, donate)

        def body(
            p: list[Tensor], g: list[Tensor], prev: list[Tensor], s: list[Tensor]
        ) -> tuple[list[Tensor], ...]:
            signs, g, s = rule(g, prev, s, donate)
            # params + product * (-sign * size), where lr = -product.
            return fe.addcmul_scaled(p, signs, s, lr, donate), g, s

        bufs = (state.prev, state.step_size)
        params, prev, size = parts.one_pass(
            info, body, params, grads, *bufs, maximize=maximize, lr=lr, **prologue
        )
        return params, ScaleByRpropState(count, tuple(prev), tuple(size), state.paths)

    name = (
        f"scale_by_rprop(lr={parts.name_of(lr)}, etas=({etaminus:g}, {etaplus:g}), "
        f"step_sizes=({low:g}, {high:g}), maximize={maximize})"
    )
    # No weight decay to fold: torch's Rprop has none.
    fusion = Kernel(fused, coupled_decay=False, decoupled_decay=False, maximize=maximize)
    return from_flat(FlatTransform(init, update, name=name, fusion=fusion))


# The alias (its chain(...)) lives in alias.py, which imports this module.
__getattr__ = parts.reexport_alias(__name__, "rprop")
