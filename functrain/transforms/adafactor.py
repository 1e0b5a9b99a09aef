"""Adafactor as ``torch.optim.Adafactor`` computes it, from four building blocks.

torch's variant (Shazeer & Stern 2018, with torch's use of ``lr`` and ``eps1``)::

    beta2_t  = 1 - t ** beta2_decay
    rho_t    = min(lr, 1 / sqrt(t))
    alpha_t  = max(eps2, RMS(param)) * rho_t                 (RMS of the parameter before decay)
    param    = param * (1 - lr * weight_decay)               (decoupled decay)
    >= 2-d:  R = beta2_t R + (1 - beta2_t) mean_{last}(G*G),  C = beta2_t C + (1 - beta2_t) mean_{-2}(G*G)
             V = (R @ C) / max(mean_{-2}(R), eps1)
    <  2-d:  V = beta2_t V + (1 - beta2_t) G*G
    U        = G / sqrt(max(V, eps1**2))
    param    = param - alpha_t * U / max(1, RMS(U) / d)

as ``chain(scale_by_factored_rms(beta2_decay, eps1, d), scale_by_relative_step(lr, eps2),
add_decoupled_decay(lr, weight_decay))``: the direction ``U / max(1, RMS(U) / d)``, the
step size ``alpha_t`` and the decay. Arithmetic follows torch's single-tensor code except
that the row and column means are ``mean(G*G)`` where torch writes ``norm(G)**2 / n`` (equal
up to rounding, and 3-4x faster on CPU), and that the step is one additive update.

``add_decoupled_decay`` is also the decay step of :func:`functrain.transforms.muon.muon`.
"""

from __future__ import annotations

import functools
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
from functrain.transforms.hyperparams import Schedule, initial_value, value_at
from functrain.transforms.members import PerMember, per_member
from functrain.transforms.scaling import LearningRateState
from functrain.transforms.validation import check_nonnegative, is_schedule
from functrain.tree import TreeInfo

# The alias is served by __getattr__ (end of module).
__all__ = [
    "DecoupledDecayState",
    "FactoredRmsState",
    "adafactor",  # noqa: F822
    "add_decoupled_decay",
    "scale_by_factored_rms",
    "scale_by_relative_step",
]


# --- helpers ------------------------------------------------------------------------------


def sqrt_numels(xs: list[Tensor]) -> Tensor:
    """``numel ** 0.5`` per leaf in float64, as torch's Adafactor computes it (in Python
    floats). Cached per (numels, device): building it each step would be a host-to-device
    copy, which synchronises with the stream."""
    device = xs[0].device if xs else torch.device("cpu")
    return _sqrt_numels(tuple(x.numel() for x in xs), device)


def rms(xs: list[Tensor], members: int | None, d: float = 1.0) -> Tensor:
    """``||x|| / (sqrt(numel) * d)`` per leaf in float64 (torch's order of operations); per
    member slice (``[leaves, members]``) for stacked ensemble members (``info.members``, see
    :func:`functrain.ensemble`)."""
    if members is None:
        return fe.leaf_norms(xs) / (sqrt_numels(xs) * d)
    return fe.leaf_norms(xs, members) / (sqrt_numels([x[0] for x in xs]) * d).unsqueeze(1)


def _on(value: Any, device: torch.device) -> Any:
    """A per-member value as its 1-d float64 tensor on ``device``; a number as it is."""
    return value.on(device) if isinstance(value, PerMember) else value


@functools.lru_cache(maxsize=64)
def _sqrt_numels(numels: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.tensor([n**0.5 for n in numels], dtype=torch.float64, device=device)


# --- scale_by_factored_rms -----------------------------------------------------------------


@state_record
class FactoredRmsState:
    """State of :func:`scale_by_factored_rms`.

    Attributes:
        count: number of steps taken, a 0-d float32 tensor (torch's ``step``).
        row_var: per leaf, the row factor (shape with the last dim 1) of a >= 2-d leaf, else
            ``None`` (torch's ``row_var``).
        col_var: per leaf, the column factor (shape with dim -2 set to 1), else ``None``.
        variance: per leaf, the full second moment of a < 2-d leaf, else ``None``.
        paths: dotted leaf paths the state was built for (static).
    """

    count: Tensor
    row_var: tuple[Tensor | None, ...]
    col_var: tuple[Tensor | None, ...]
    variance: tuple[Tensor | None, ...]
    paths: tuple[str, ...] = static_field()


def scale_by_factored_rms(
    beta2_decay: float = -0.8,
    eps: float | None = None,
    d: float = 1.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Adafactor's direction with factored second moments, as ``torch.optim.Adafactor``.

    With ``t`` the step and ``beta2_t = 1 - t ** beta2_decay``: a leaf with 2 or more dims
    keeps row and column means of ``G*G`` (over its last two dims, batched over the leading
    ones), ``R <- lerp(R, mean_{-1}(G*G), 1 - beta2_t)``, ``C <- lerp(C, mean_{-2}(G*G),
    1 - beta2_t)``, and estimates ``V = (R @ C) / max(mean_{-2}(R), eps)``; a 0-d or 1-d
    leaf keeps ``V <- lerp(V, G*G, 1 - beta2_t)``. The update is ``U / max(1, RMS(U) / d)``
    with ``U = G / sqrt(max(V, eps**2))`` (torch's update clipping by ``d``). Under
    :func:`functrain.ensemble` each member's slice is a leaf of its own (a stacked ``[N, d]``
    bias is a vector, ``RMS(U)`` is per member).

    Args:
        beta2_decay: ``<= 0``; the decay rate of ``beta2``.
        eps: torch's ``eps[0]`` (``epsilon1``); ``None`` means the machine epsilon of each
            leaf's dtype (torch takes the first parameter's dtype for every parameter).
        d: clipping threshold, ``>= 1``.
        maximize: ascend: the incoming gradients are negated first.

    Example:
        >>> tx = chain(scale_by_factored_rms(), scale_by_learning_rate(1e-2))
    """
    parts.refuse_members(
        "adafactor",
        "eps[0], d and beta2_decay enter its update as Python numbers (clamp bounds and the "
        "decay's power); only lr, eps[1] and weight_decay may be per member",
        **{"eps[0]": eps, "d": d, "beta2_decay": beta2_decay},
    )
    beta2_decay = parts.number("beta2_decay", beta2_decay)
    if not beta2_decay <= 0.0:
        raise ValueError(f"Invalid beta2_decay: {beta2_decay}; beta2_decay should be <= 0")
    if eps is not None and parts.number("eps[0]", eps) < 0:
        raise ValueError(f"Invalid eps[0] (epsilon1): {eps}; epsilon1 should be >= 0")
    d = parts.number("d", d)
    if not d >= 1.0:
        raise ValueError(f"Invalid d: {d}; clipping threshold d should be >= 1")

    def init(params: list[Tensor], info: TreeInfo) -> FactoredRmsState:
        device = params[0].device if params else torch.device("cpu")
        # Stacked ensemble members: a leaf is a matrix when each member's slice is one.
        stacked = 0 if info.members is None else 1
        rows, cols, variances = [], [], []
        for p in params:
            if p.dim() - stacked > 1:
                rows.append(p.new_zeros((*p.shape[:-1], 1)))
                cols.append(p.new_zeros((*p.shape[:-2], 1, p.shape[-1])))
                variances.append(None)
            else:
                rows.append(None)
                cols.append(None)
                variances.append(torch.zeros_like(p, memory_format=torch.preserve_format))
        return FactoredRmsState(
            torch.zeros((), dtype=torch.float32, device=device),
            tuple(rows),
            tuple(cols),
            tuple(variances),
            paths=info.paths,
        )

    def update(
        updates: list[Tensor],
        state: FactoredRmsState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], FactoredRmsState]:
        parts.check_state_paths("scale_by_factored_rms", state.paths, info)
        donate = info.donate
        count = state.count.add_(1) if donate else state.count + 1
        # torch: one_minus_beta2_t = step ** beta2_decay, in double.
        weight64 = torch.pow(count.to(torch.float64), beta2_decay)

        def group(
            g: list[Tensor],
            rows: list[Tensor | None],
            cols: list[Tensor | None],
            variances: list[Tensor | None],
        ) -> tuple[list[Any], ...]:
            if maximize:
                g = fe.neg(g)
            dtype = g[0].dtype
            eps1 = torch.finfo(dtype).eps if eps is None else eps
            w = weight64.to(dtype)
            stacked = 0 if info.members is None else 1  # the member axis is not a dim
            fac = [i for i, x in enumerate(g) if x.dim() - stacked > 1]
            vec = [i for i, x in enumerate(g) if x.dim() - stacked <= 1]
            new_rows: list[Tensor | None] = [None] * len(g)
            new_cols: list[Tensor | None] = [None] * len(g)
            new_vars: list[Tensor | None] = [None] * len(g)
            estimates: list[Tensor] = [None] * len(g)  # type: ignore[list-item]
            if fac:
                gf = [g[i] for i in fac]
                row_means, col_means = [], []
                for x in gf:
                    # torch takes norm(g, dim)**2 / n to avoid a leaf-sized temporary; the
                    # mean of g*g is the same up to rounding and 3-4x faster on CPU (a norm
                    # over a dim of size 1 or 3, as in conv kernels, is a slow reduction).
                    # One leaf's temporary at a time.
                    sq = x * x
                    row_means.append(sq.mean(dim=-1, keepdim=True))
                    col_means.append(sq.mean(dim=-2, keepdim=True))
                    del sq
                r = fe.lerp([rows[i] for i in fac], row_means, w, donate)
                c = fe.lerp([cols[i] for i in fac], col_means, w, donate)
                # torch's row_var @ col_var has an inner dim of 1: each entry is one product,
                # so broadcasting gives the same bits without a batched matmul.
                est = [ri * ci for ri, ci in zip(r, c, strict=True)]
                row_var_means = fe.clamp_min([ri.mean(dim=-2, keepdim=True) for ri in r], eps1)
                est = fe.div(est, row_var_means, donate)
                for j, i in enumerate(fac):
                    new_rows[i], new_cols[i], estimates[i] = r[j], c[j], est[j]
            if vec:
                gv = [g[i] for i in vec]
                v = fe.lerp([variances[i] for i in vec], fe.mul(gv, gv, False), w, donate)
                for j, i in enumerate(vec):
                    new_vars[i], estimates[i] = v[j], v[j]
            # eps1 is squared because the root is taken next (torch's comment).
            u = estimates
            if fac:
                est = fe.clamp_min([u[i] for i in fac], eps1 * eps1, donate)
                for j, i in enumerate(fac):
                    u[i] = est[j]
            if vec:
                # Never in place: these estimates are the state's variances.
                est = fe.clamp_min([u[i] for i in vec], eps1 * eps1, False)
                for j, i in enumerate(vec):
                    u[i] = est[j]
            u = fe.rsqrt(u, donate)
            u = fe.mul(u, g, donate)
            denom = torch.clamp_min(rms(u, info.members, d), 1.0)
            u = fe.div(u, fe.per_leaf(denom, u), donate)
            return u, new_rows, new_cols, new_vars

        u, rows, cols, variances = info.foreach(
            group, updates, list(state.row_var), list(state.col_var), list(state.variance)
        )
        return u, FactoredRmsState(count, tuple(rows), tuple(cols), tuple(variances), state.paths)

    name = f"scale_by_factored_rms(beta2_decay={beta2_decay:g}, eps={eps!r}, d={d:g})"
    return from_flat(FlatTransform(init, update, name=name))


# --- scale_by_relative_step --------------------------------------------------------------


def _lr_state(learning_rate: float | Schedule, params: list[Tensor]) -> LearningRateState:
    device = params[0].device if params else torch.device("cpu")
    count = torch.zeros((), dtype=torch.int64, device=device)
    return LearningRateState(count, initial_value(learning_rate, device))


def _lr_at(learning_rate: float | Schedule, state: LearningRateState) -> Tensor:
    return state.lr if not is_schedule(learning_rate) else value_at(learning_rate, state.count)


def scale_by_relative_step(
    learning_rate: float | Schedule = 1e-2, eps: float = 1e-3
) -> GradientTransformation:
    """Multiply each leaf's update by ``-alpha_t``, Adafactor's parameter-relative step size.

    ``alpha_t = max(eps, RMS(param)) * min(lr, 1 / sqrt(t))`` at step ``t``, with
    ``RMS(p) = ||p|| / sqrt(numel)`` of the parameter before this step (torch's
    ``alpha``; ``eps`` is torch's ``eps[1]``, ``epsilon2``). Computed per leaf in float64
    on the device, as torch computes it in Python floats; needs the parameters.

    Args:
        learning_rate: torch Adafactor's ``lr``, the cap of the relative step size; a float
            >= 0 or a schedule of the step. The value in force is the state's ``lr``
            (a :class:`~functrain.transforms.scaling.LearningRateState`); with a constant,
            setting it changes the cap without rebuilding.
        eps: lower bound of the parameter scale, >= 0.

    In a chain with :func:`~functrain.mask_multipliers` a group's cap is ``lr * lr_mult``.
    Under :func:`functrain.ensemble` ``RMS(param)`` is per member, and ``learning_rate`` and
    ``eps`` may be given per member.

    Example:
        >>> tx = chain(scale_by_factored_rms(), scale_by_relative_step(1e-2))
    """
    check_nonnegative("lr", learning_rate, allow_schedule=True)
    learning_rate = per_member("lr", learning_rate)
    eps = per_member("eps[1]", eps)
    if isinstance(eps, PerMember):
        check_nonnegative("eps[1]", eps.values, allow_members=True)
    else:
        if parts.number("eps[1]", eps) < 0:
            raise ValueError(f"Invalid eps[1] (epsilon2): {eps}; epsilon2 should be >= 0")
        eps = float(eps)

    def init(params: list[Tensor], info: TreeInfo) -> LearningRateState:
        _on(eps, parts.device_of(params))  # a per-member eps checks the member count
        return _lr_state(learning_rate, params)

    def update(
        updates: list[Tensor],
        state: LearningRateState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], LearningRateState]:
        parts.require_params("scale_by_relative_step", params)
        lr = _lr_at(learning_rate, state)
        t = (state.count + 1).to(torch.float64)
        # torch: rho_t = min(lr, 1 / (step ** 0.5)), in double.
        inv_sqrt_t = 1 / torch.pow(t, 0.5)

        def group(g: int, u: list[Tensor], p: list[Tensor]) -> list[Tensor]:
            # A torch param group's lr is lr * lr_mult (mask_multipliers).
            lr_mult = info.group_multipliers(g)[0]
            rho = torch.minimum(lr * lr_mult if lr_mult != 1.0 else lr, inv_sqrt_t)
            # Per member ([leaves, members]) under an ensemble; a per-member rho / eps
            # ([members]) broadcasts over the last axis.
            alpha = torch.clamp_min(rms(p, info.members), _on(eps, t.device)) * rho
            return fe.mul(u, fe.per_leaf(-alpha, u), info.donate)

        out = info.foreach(group, updates, params, with_group=True)
        return out, LearningRateState(state.count + 1, lr)

    name = f"scale_by_relative_step({learning_rate!r}, eps={parts.name_of(eps)})"
    return from_flat(FlatTransform(init, update, name=name))


# --- add_decoupled_decay -------------------------------------------------------------------


@state_record
class DecoupledDecayState:
    """State of :func:`add_decoupled_decay`.

    Attributes:
        count: number of updates applied (0-d int64); schedules are evaluated here.
        lr: the learning rate in force (0-d float64).
        weight_decay: the weight decay in force (0-d float64).
    """

    count: Tensor
    lr: Tensor
    weight_decay: Tensor


def add_decoupled_decay(
    learning_rate: float | Schedule, weight_decay: float | Schedule = 0.0
) -> GradientTransformation:
    """Add ``-lr * weight_decay * param`` to the (already lr-scaled) updates.

    This is torch's ``param.mul_(1 - lr * weight_decay)`` step of Adafactor and Muon written
    as an additive update, placed after the learning-rate scaling: the coefficient is
    ``round(1 - lr * weight_decay) - 1`` with the rounding to the parameter's dtype that
    torch's in-place multiply applies (in float32 that factor is off from ``1 - lr*wd`` by
    up to 6e-8, a bias that would otherwise accumulate over the steps).

    Args:
        learning_rate: the optimizer's learning rate (float or schedule of the step).
        weight_decay: decoupled decay coefficient >= 0 (float or schedule).

    The values in force are the state's ``lr`` and ``weight_decay``
    (:class:`DecoupledDecayState`); with constants, setting them changes the decay without
    rebuilding (a constant 0 weight decay is skipped outright).

    In a chain with :func:`~functrain.mask_multipliers` a group's coefficient is
    ``(lr * lr_mult) * (weight_decay * decay_mult)``, as for a torch param group.

    Example:
        >>> tx = chain(scale_by_adam(), scale_by_learning_rate(1e-3), add_decoupled_decay(1e-3, 0.1))
    """
    check_nonnegative("lr", learning_rate, allow_schedule=True)
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    # Per-member values (an ensemble) run as constant schedules of one value per member.
    learning_rate = per_member("lr", learning_rate)
    weight_decay = per_member("weight_decay", weight_decay)

    def init(params: list[Tensor], info: TreeInfo) -> DecoupledDecayState:
        lr_state = _lr_state(learning_rate, params)
        wd = initial_value(weight_decay, lr_state.count.device)
        return DecoupledDecayState(lr_state.count, lr_state.lr, wd)

    def update(
        updates: list[Tensor],
        state: DecoupledDecayState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], DecoupledDecayState]:
        lr = state.lr if not is_schedule(learning_rate) else value_at(learning_rate, state.count)
        wd = (
            state.weight_decay
            if not is_schedule(weight_decay)
            else value_at(weight_decay, state.count)
        )
        new_state = DecoupledDecayState(state.count + 1, lr, wd)
        if not is_schedule(weight_decay) and weight_decay == 0.0:
            return updates, new_state
        parts.require_params("add_decoupled_decay", params)

        def group(g: int, u: list[Tensor], p: list[Tensor]) -> list[Tensor]:
            # torch multiplies by (1 - lr * wd) rounded to the parameter's dtype; the exact
            # difference of that factor and 1 is the decay coefficient. A torch param
            # group's lr and weight decay are times lr_mult and decay_mult.
            lr_mult, decay_mult = info.group_multipliers(g)
            factor64 = 1 - (lr * lr_mult) * (wd * decay_mult)
            factor = factor64.to(p[0].dtype).to(torch.float64) - 1
            return fe.addcmul_scalar(u, p, factor, info.donate)

        return info.foreach(group, updates, params, with_group=True), new_state

    name = f"add_decoupled_decay(lr={learning_rate!r}, weight_decay={weight_decay!r})"
    return from_flat(FlatTransform(init, update, name=name))


# The alias (its chain(...)) lives in alias.py, which imports this module.
__getattr__ = parts.reexport_alias(__name__, "adafactor")
