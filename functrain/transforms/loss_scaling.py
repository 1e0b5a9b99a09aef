"""Mixed-precision loss scaling (mmengine's ``AmpOptimWrapper``, torch's ``GradScaler``).

With float16 autocast, small gradients underflow; the loss is multiplied by a large *scale*
before the backward pass and the gradients divided by it before the optimizer step.
:func:`loss_scaling` wraps an optimizer to do the second half, skip steps whose gradients
overflowed and adapt the scale, exactly as ``torch.amp.GradScaler`` does::

    tx = loss_scaling(chain(clip(35.0), sgd(lr=0.02, momentum=0.9)))
    state = tx.init(params)
    for batch in data:
        grads = torch.func.grad(lambda p: scale_loss(loss_fn(p, batch), state))(params)
        updates, state = tx.update(grads, state, params)   # unscale, clip, step or skip
        params = apply_updates(params, updates)

bfloat16 has float32's exponent range: bf16 autocast needs no loss scaling and no wrapper;
use the optimizer as is. With gradient accumulation, accumulate the scaled gradients and
unscale once per optimizer step, as mmengine does: ``accumulate(loss_scaling(opt), N)``.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor

from functrain.transforms import foreach as fe
from functrain.transforms.base import (
    FlatTransform,
    GradientTransformation,
    as_flat,
    from_flat,
    state_record,
)
from functrain.transforms.combinators import all_finite, select_state, zero_where_not
from functrain.transforms.state_path import find_one
from functrain.tree import TreeInfo, foreach_clone

__all__ = ["LossScaleState", "find_loss_scale_state", "loss_scaling", "scale_loss"]


@state_record
class LossScaleState:
    """State of :func:`loss_scaling` (``GradScaler``'s ``_scale`` and ``_growth_tracker``).

    Attributes:
        scale: the scale to multiply the next loss by, a 0-d float32 tensor.
        growth_tracker: consecutive steps without inf/nan since the last change of the scale
            (0-d int32).
        found_inf: 1.0 if the last step's gradients held an inf or nan (the step was
            skipped), else 0.0 (0-d float32).
        inner_state: the wrapped optimizer's state (unchanged by a skipped step).
    """

    scale: Tensor
    growth_tracker: Tensor
    found_inf: Tensor
    inner_state: Any


def loss_scaling(
    inner: GradientTransformation,
    init_scale: float = 2.0**16,
    growth_factor: float = 2.0,
    backoff_factor: float = 0.5,
    growth_interval: int = 2000,
    dynamic: bool = True,
) -> GradientTransformation:
    """Unscale the incoming (scaled) gradients, skip the step on inf/nan, adapt the scale.

    ``update`` receives the gradients of ``loss * state.scale`` (see :func:`scale_loss`) and:

    1. divides them by the scale and checks them for inf/nan in one pass
       (``torch._amp_foreach_non_finite_check_and_unscale_``, GradScaler's kernel, with the
       reciprocal taken in float64 as GradScaler does);
    2. runs ``inner`` on the unscaled gradients (so a clip inside ``inner`` sees them
       unscaled, as mmengine unscales before clipping);
    3. if any gradient was non-finite, returns zero updates and ``inner``'s old state (the
       parameters and optimizer state stay as they were), selected with ``torch.where``:
       no host sync;
    4. updates the scale with ``torch._amp_update_scale_``: times ``backoff_factor`` after
       a skipped step, times ``growth_factor`` after ``growth_interval`` consecutive good
       ones. With ``dynamic=False`` the scale stays ``init_scale`` (mmengine's
       ``loss_scale=<float>``) and overflowing steps are still skipped.

    ``inner`` runs on its pure path (the old state must survive a skipped step); donating
    lets the unscaling write into the incoming gradient buffers. The step is not
    differentiable through the unscale kernel; under ``torch.func`` transforms (or with
    gradients that require grad) the same computation runs with differentiable foreach ops.

    Under :func:`functrain.ensemble` the scale, the growth tracker and ``found_inf`` are per
    member (``[members]``): each member's gradients are unscaled by its own scale, and one
    member's overflow skips that member's step and backs off its scale alone. Scale each
    member's loss by its own scale (``scale_loss(losses, state)`` on the ``[members]``
    losses, then sum).

    Args:
        inner: the optimizer, clipping included.
        init_scale: initial scale (> 0).
        growth_factor: factor applied after ``growth_interval`` good steps (> 1).
        backoff_factor: factor applied after a skipped step (in (0, 1)).
        growth_interval: consecutive good steps before the scale grows (int >= 1).
        dynamic: adapt the scale (``True``) or keep it at ``init_scale``.

    Example:
        >>> tx = loss_scaling(chain(clip(35.0), sgd(lr=0.02, momentum=0.9)), growth_interval=2000)
    """
    if isinstance(init_scale, bool) or not isinstance(init_scale, int | float) or init_scale <= 0:
        raise ValueError(f"Invalid init_scale: {init_scale!r}; init_scale must be > 0")
    if dynamic:
        if not isinstance(growth_factor, int | float) or not growth_factor > 1.0:
            raise ValueError(f"Invalid growth_factor: {growth_factor!r}; must be > 1.0")
        if not isinstance(backoff_factor, int | float) or not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"Invalid backoff_factor: {backoff_factor!r}; must be in (0, 1)")
        if (
            isinstance(growth_interval, bool)
            or not isinstance(growth_interval, int)
            or growth_interval < 1
        ):
            raise ValueError(f"Invalid growth_interval: {growth_interval!r}; must be an int >= 1")
    init_scale, growth_factor, backoff_factor = (
        float(init_scale),
        float(growth_factor),
        float(backoff_factor),
    )
    flat = as_flat(inner)

    def init(params: list[Tensor], info: TreeInfo) -> LossScaleState:
        device = params[0].device if params else torch.device("cpu")
        shape = () if info.members is None else (info.members,)  # one scale per member
        return LossScaleState(
            torch.full(shape, init_scale, dtype=torch.float32, device=device),
            torch.zeros(shape, dtype=torch.int32, device=device),
            torch.zeros(shape, dtype=torch.float32, device=device),
            flat.init(params, info),
        )

    def unscale(
        grads: list[Tensor], inv_scale: Tensor, info: TreeInfo
    ) -> tuple[list[Tensor], Tensor]:
        """Unscale ``grads`` in place; ``found_inf`` on ``inv_scale``'s device."""
        home = inv_scale.device
        found = {home: torch.zeros((), dtype=torch.float32, device=home)}
        inv = {home: inv_scale}
        for part in info.split(grads):
            device = part[0].device
            if device not in found:
                found[device] = torch.zeros((), dtype=torch.float32, device=device)
                inv[device] = inv_scale.to(device, non_blocking=True)
            torch._amp_foreach_non_finite_check_and_unscale_(part, found[device], inv[device])
        combined = found.pop(home)
        for f in found.values():
            combined = combined + f.to(home, non_blocking=True)
        return grads, combined

    def differentiable_unscale(
        grads: list[Tensor], inv_scale: Tensor, info: TreeInfo
    ) -> tuple[list[Tensor], Tensor]:
        found = (~all_finite(grads, info)).to(inv_scale.device, torch.float32)
        return info.foreach(lambda g: fe.mul(g, inv_scale, False), grads), found

    def update(
        updates: list[Tensor],
        state: LossScaleState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], LossScaleState]:
        if not isinstance(state, LossScaleState):
            raise ValueError(
                f"loss_scaling got a state of type {type(state).__name__}; pass the state "
                "returned by this transform's init/update"
            )
        donate = info.donate
        # GradScaler: "FP32 division can be imprecise for certain compile options".
        inv_scale = state.scale.double().reciprocal().float()
        if not updates:
            grads, found_inf = updates, torch.zeros_like(state.found_inf)
        elif (
            info.members is not None  # one scale per member: no single kernel scalar
            or fe.tracing_grad()
            or (torch.is_grad_enabled() and any(u.requires_grad for u in updates))
        ):
            grads, found_inf = differentiable_unscale(updates, inv_scale, info)
        else:
            grads, found_inf = unscale(
                updates if donate else foreach_clone(updates), inv_scale, info
            )
        ok = found_inf == 0
        pure = attrs.evolve(info, donate=False) if donate else info
        new_updates, new_inner = flat.update(grads, state.inner_state, params, pure, **extra)
        scale, tracker = state.scale, state.growth_tracker
        if dynamic:
            if fe.vmapping() or info.members is not None:
                # torch.func.vmap has no batching rule for the kernel, and stacked members
                # have one scale each: the same rule in ordinary ops, one scale per member.
                scale, tracker = update_scale(
                    scale, tracker, found_inf, growth_factor, backoff_factor, growth_interval
                )
            else:
                if not donate:
                    scale, tracker = scale.clone(), tracker.clone()
                torch._amp_update_scale_(
                    scale, tracker, found_inf, growth_factor, backoff_factor, growth_interval
                )
        return zero_where_not(ok, new_updates), LossScaleState(
            scale,
            tracker,
            found_inf,
            select_state(ok, new_inner, state.inner_state, "loss_scaling"),
        )

    name = (
        f"loss_scaling({flat.name}, init_scale={init_scale:g}, growth_factor={growth_factor:g}, "
        f"backoff_factor={backoff_factor:g}, growth_interval={growth_interval}, "
        f"dynamic={dynamic})"
    )
    return from_flat(FlatTransform(init, update, name=name))


def update_scale(
    scale: Tensor,
    growth_tracker: Tensor,
    found_inf: Tensor,
    growth_factor: float,
    backoff_factor: float,
    growth_interval: int,
) -> tuple[Tensor, Tensor]:
    """``torch._amp_update_scale_``'s rule out of place, with ordinary (vmappable) ops.

    After an overflow the scale is multiplied by ``backoff_factor`` and the tracker reset;
    otherwise the tracker counts up, and on reaching ``growth_interval`` the scale is
    multiplied by ``growth_factor`` (kept only if finite) and the tracker reset. The float32
    scale times the float64 factor is rounded to float32 once, as the kernel computes it, so
    the values are bitwise the kernel's.
    """
    found = found_inf != 0
    counted = growth_tracker + 1
    grow = ~found & (counted == growth_interval)
    backed_off = (scale.double() * backoff_factor).to(scale.dtype)
    grown = (scale.double() * growth_factor).to(scale.dtype)
    grown = torch.where(torch.isfinite(grown), grown, scale)
    new_scale = torch.where(found, backed_off, torch.where(grow, grown, scale))
    new_tracker = torch.where(found | grow, torch.zeros_like(growth_tracker), counted)
    return new_scale, new_tracker


def find_loss_scale_state(state: Any) -> LossScaleState:
    """The :class:`LossScaleState` inside ``state`` (a chain, named_chain, accumulate, ...)."""
    return find_one(state, LossScaleState, "find_loss_scale_state")


def scale_loss(loss: Tensor, state: Any) -> Tensor:
    """``loss * scale`` with the scale in force in ``state`` (GradScaler's ``scale(outputs)``).

    ``state`` is the optimizer state holding a :class:`LossScaleState` anywhere inside.
    The product follows torch's type promotion with the float32 scale, as GradScaler's
    ``loss * scale`` does (a 0-d float16 loss becomes float32). No host sync.

    Example:
        >>> grads = torch.func.grad(lambda p: scale_loss(loss_fn(p), state))(params)  # doctest: +SKIP
    """
    scale = find_loss_scale_state(state).scale
    return loss * scale.to(loss.device, non_blocking=True)
