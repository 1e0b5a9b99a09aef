"""Averaged SGD's update rule, as ``torch.optim.ASGD`` computes it, with the averaged parameters
kept in the state; the ``asgd`` composition is in :mod:`functrain.transforms.alias`."""

from __future__ import annotations

from typing import Any

import optree
import torch
from torch import Tensor

from functrain.transforms import foreach as fe
from functrain.transforms import optim_parts as parts
from functrain.transforms.base import (
    FlatTransform,
    GradientTransformation,
    add_updates,
    from_flat,
    state_record,
    static_field,
)
from functrain.transforms.hyperparams import Schedule, value_at
from functrain.transforms.kernel_specs import Kernel
from functrain.transforms.members import per_member
from functrain.transforms.state_path import find_one
from functrain.transforms.validation import check_nonnegative
from functrain.tree import NAMESPACE, PyTree, TreeInfo, flatten, foreach_clone

# The alias is served by __getattr__ (end of module).
__all__ = ["ScaleByAsgdState", "asgd", "asgd_averaged_params", "scale_by_asgd"]  # noqa: F822


@state_record
class ScaleByAsgdState:
    """State of :func:`scale_by_asgd` (torch's per-parameter ``step``, ``eta``, ``mu``, ``ax``).

    Attributes:
        count: number of steps taken, a 0-d float32 tensor (torch's ``step``).
        eta: the step size the next update uses, a 0-d float32 tensor (torch's ``eta``).
        mu: the averaging weight the next update uses, a 0-d float32 tensor (``mu``).
        lr: the learning rate in force (the one the last update used to compute ``eta``;
            before the first update, the initial one), a 0-d float64 tensor.
        ax: the averaged parameters, one tensor per leaf (``ax``); see
            :func:`asgd_averaged_params`.
        paths: dotted leaf paths the state was built for (static).
    """

    count: Tensor
    eta: Tensor
    mu: Tensor
    lr: Tensor
    ax: tuple[Tensor, ...]
    paths: tuple[str, ...] = static_field()


def scale_by_asgd(
    lr: float | Schedule = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """The whole ASGD update (Polyak & Juditsky averaging), as ``torch.optim.ASGD`` computes it.

    With ``eta`` and ``mu`` from the state: ``p' = p * (1 - lambd * eta) - eta * g``, the
    update is ``p' - p``, and the average moves to ``ax = ax + mu * (p' - ax)`` (``ax = p'``
    while ``mu == 1``). Then, with ``t`` the step count and ``lr_t`` the learning rate in
    force, ``eta = lr_t / (1 + lambd * lr_t * t) ** alpha`` and ``mu = 1 / max(1, t - t0)``
    for the next step (float32 values, as torch stores them).

    ``lr`` enters ``eta`` non-linearly, and the average needs the new parameters, so this
    transform owns the whole update rather than giving a direction to scale by ``-lr``. It
    needs the parameters, and must be the last member of a chain (the average assumes the
    update is applied as returned).

    Args:
        lr: learning rate, >= 0, or a schedule evaluated at the number of updates applied so
            far; like torch with a scheduler, step ``t``'s ``eta`` comes from the learning
            rate in force at step ``t - 1`` (the first step uses the initial one). Per member
            under :func:`functrain.ensemble` (``eta`` is then per member).
        lambd: decay term (``lambda``).
        alpha: power for the ``eta`` update.
        t0: step at which averaging starts.
        maximize: ascend: the incoming gradients are negated first.

    Example:
        >>> tx = scale_by_asgd(lr=0.01, t0=100)
    """
    check_nonnegative("lr", lr, allow_schedule=True)
    # Per-member values (an ensemble) run as a constant schedule: eta is then per member.
    lr = per_member("lr", lr)
    lambd = parts.number("lambd", lambd)
    alpha = parts.number("alpha", alpha)
    t0 = parts.number("t0", t0)

    def init(params: list[Tensor], info: TreeInfo) -> ScaleByAsgdState:
        device = parts.device_of(params)
        count = parts.step_counter(device)
        lr0 = parts.evaluate(lr, count)
        return ScaleByAsgdState(
            count,
            eta=lr0.to(torch.float32),
            mu=torch.ones((), dtype=torch.float32, device=device),
            lr=lr0,
            ax=parts.zeros(params),
            paths=info.paths,
        )

    def next_state(state: ScaleByAsgdState, count: Tensor, ax: list[Tensor]) -> ScaleByAsgdState:
        lr_t = value_at(lr, state.count)
        step = count.to(torch.float64)
        # torch evaluates these in Python floats, in this order, and stores them as float32.
        eta = lr_t / torch.pow(1 + lambd * lr_t * step, alpha)
        mu = 1 / torch.clamp_min(step - t0, 1.0)
        lr_in_force = lr_t if isinstance(lr_t, Tensor) else state.lr
        return ScaleByAsgdState(
            count,
            eta.to(torch.float32),
            mu.to(torch.float32),
            lr_in_force,
            tuple(ax),
            state.paths,
        )

    def averaged(ax: list[Tensor], new_p: list[Tensor], mu: Tensor, inplace: bool) -> list[Tensor]:
        """The algorithm's average: ``ax + (p' - ax) * mu``, and exactly ``p'`` while
        ``mu == 1`` (torch copies then): scaling ax by 0 or 1 first makes both cases one
        formula, with no host sync."""
        keep = (mu != 1).to(mu.dtype)
        ax = fe.mul(ax, keep, inplace)
        return fe.add(ax, fe.mul(fe.sub(new_p, ax, False), mu, inplace), inplace)

    def update(
        updates: list[Tensor],
        state: ScaleByAsgdState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], ScaleByAsgdState]:
        parts.check_state_paths("scale_by_asgd", state.paths, info)
        params = parts.require_params("scale_by_asgd", params)
        donate = info.donate
        eta = state.eta.to(torch.float64)
        decay = 1 - lambd * eta

        def group(g: list[Tensor], p: list[Tensor], ax: list[Tensor]) -> tuple[list[Tensor], ...]:
            if maximize:
                g = fe.neg(g, donate)
            # p' = p * (1 - lambd * eta) - eta * g, with eta a device scalar (a list where
            # autograd watches), then the update p' - p.
            new_p = fe.addcmul_scalar(fe.mul(p, decay, False), g, -eta, donate)
            ax = averaged(ax, new_p, state.mu, donate)
            return fe.sub(new_p, p, donate), ax

        out, ax = info.foreach(group, updates, params, list(state.ax))
        count = parts.increment(state.count, donate)
        return out, next_state(state, count, ax)

    def fused(
        params: list[Tensor],
        grads: list[Tensor],
        state: ScaleByAsgdState,
        info: TreeInfo,
        *,
        lr: float | Tensor,
        **prologue: Any,
    ) -> tuple[list[Tensor], ScaleByAsgdState]:
        """The one-pass step (see :mod:`~functrain.transforms.optim_parts`)."""
        parts.check_state_paths("scale_by_asgd", state.paths, info)
        if not (isinstance(lr, float) and lr == -1.0):
            # Something scales the update after this transform: no shortcut for that.
            return _scaled_step(update, params, grads, state, info, -lr, **prologue)
        donate = info.donate
        count = parts.increment(state.count, donate)
        eta = fe.host_scalar(state.eta)
        mu = fe.host_scalar(state.mu)

        def body(p: list[Tensor], g: list[Tensor], a: list[Tensor]) -> tuple[list[Tensor], ...]:
            if eta is None or mu is None:
                # Values on an accelerator: the same formulas with device scalars.
                eta64 = state.eta.to(torch.float64)
                p = fe.mul(p, (1 - lambd * eta64).to(p[0].dtype), donate)
                p = fe.add_scaled(p, g, -eta64, donate)
                return p, averaged(a, p, state.mu, donate)
            # torch's single-tensor step: p.mul_(1 - lambd * eta); p.add_(grad, alpha=-eta)
            # (an alpha= add, not update's addcmul with a device scalar: each path keeps its
            # own rounding), then ax.add_(p.sub(ax).mul_(mu)) or ax.copy_(p) while mu == 1.
            p = fe.add(fe.mul(p, 1 - lambd * eta, donate), g, donate, alpha=-eta)
            if mu != 1:
                return p, fe.add(a, fe.mul(fe.sub(p, a, False), mu, True), donate)
            if donate:
                return p, fe.copy(a, p, True)
            return p, foreach_clone(p)

        params, ax = parts.one_pass(
            info, body, params, grads, state.ax, maximize=maximize, lr=lr, **prologue
        )
        return params, next_state(state, count, ax)

    name = (
        f"scale_by_asgd(lr={parts.name_of(lr)}, lambd={lambd:g}, alpha={alpha:g}, t0={t0:g}, "
        f"maximize={maximize})"
    )
    fusion = Kernel(fused, decoupled_decay=False, maximize=maximize)
    return from_flat(FlatTransform(init, update, name=name, fusion=fusion))


def _scaled_step(
    update: Any,
    params: list[Tensor],
    grads: list[Tensor],
    state: ScaleByAsgdState,
    info: TreeInfo,
    product: float | Tensor,
    *,
    weight_decay: float,
    grad_scale: Tensor | None = None,
    decoupled: bool = False,
) -> tuple[list[Tensor], ScaleByAsgdState]:
    """``params + product * update(...)`` through the ``update`` path (a fused-path fallback)."""
    if grad_scale is not None:
        grads = info.foreach(lambda g: fe.div(g, grad_scale.to(g[0].device), info.donate), grads)
    if weight_decay:
        grads = info.foreach(
            lambda g, p: fe.add(g, p, info.donate, alpha=weight_decay), grads, params
        )
    updates, state = update(grads, state, params, info)
    updates = info.foreach(lambda u: fe.mul(u, product, info.donate), updates)
    return add_updates(params, updates, info), state


def asgd_averaged_params(state: Any, params: PyTree) -> PyTree:
    """The averaged parameters (torch's ``ax``) of an ASGD state, as a tree shaped like ``params``.

    Args:
        state: the state of :func:`asgd` or :func:`scale_by_asgd`, or of a chain holding one
            (searched through chains, named chains, ``masked``, ``partition``...).
        params: any tree with the parameters' structure (the current parameters).

    Returns:
        A tree of the averaged tensors (the state's own tensors, not copies). Before averaging
        starts (step ``<= t0``) they equal the latest parameters.

    Raises:
        ValueError: ``state`` holds no ASGD state, or more than one, or was built for other
            leaves.

    Example:
        >>> tx = asgd(lr=0.01, t0=0)
        >>> state = tx.init(params)  # doctest: +SKIP
        >>> params, state = apply_gradients(tx, params, grads, state)  # doctest: +SKIP
        >>> averaged = asgd_averaged_params(state, params)  # doctest: +SKIP
    """
    # Searched through chains, named chains, masked, partition, accumulate... (state_path).
    found = find_one(state, ScaleByAsgdState, "asgd_averaged_params")
    _, info = flatten(params)
    parts.check_state_paths("asgd_averaged_params", found.paths, info)
    return optree.tree_unflatten(optree.tree_structure(params, namespace=NAMESPACE), list(found.ax))


# The alias (its chain(...)) lives in alias.py, which imports this module.
__getattr__ = parts.reexport_alias(__name__, "asgd")
