"""Adam's direction (``scale_by_adam``) and its decoupled-decay form (``scale_by_adamw``), as
``torch.optim.Adam`` / ``torch.optim.AdamW`` compute them (torch's fused kernels on the fast
path); the ``adam`` / ``adamw`` compositions are in :mod:`functrain.transforms.alias`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from functrain.transforms import foreach as fe
from functrain.transforms.base import (
    FlatTransform,
    GradientTransformation,
    chain,
    from_flat,
    state_record,
    static_field,
)
from functrain.transforms.hyperparams import Schedule, in_force, initial_value, value_at
from functrain.transforms.kernel_specs import Kernel, for_members, group_value
from functrain.transforms.members import PerMember, per_member
from functrain.transforms.optim_parts import check_state_paths
from functrain.transforms.scaling import add_decayed_weights
from functrain.transforms.validation import check_betas, check_nonnegative, is_schedule
from functrain.tree import TreeInfo, foreach_clone

# check_state_paths lives in optim_parts; re-exported for the modules that import it from here.
__all__ = ["ScaleByAdamState", "check_state_paths", "scale_by_adam", "scale_by_adamw"]


@state_record
class ScaleByAdamState:
    """State of :func:`scale_by_adam`.

    Attributes:
        count: number of steps taken, a 0-d float32 tensor (torch.optim's ``step``).
        b1: the first-moment decay in force (torch's ``betas[0]``), a 0-d float64 tensor.
        mu: first moments, one tensor per leaf (torch's ``exp_avg``).
        nu: second moments, one per leaf (``exp_avg_sq``).
        nu_max: running maximum of ``nu`` with ``amsgrad`` (``max_exp_avg_sq``), else empty.
        paths: dotted leaf paths the state was built for (static).
    """

    count: Tensor
    b1: Tensor
    mu: tuple[Tensor, ...]
    nu: tuple[Tensor, ...]
    nu_max: tuple[Tensor, ...]
    paths: tuple[str, ...] = static_field()


def scale_by_adam(
    b1: float | Schedule = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    amsgrad: bool = False,
    maximize: bool = False,
    mu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """Rescale updates by Adam's bias-corrected moment estimates.

    With ``t`` the step count, ``m = b1*m + (1-b1)*g``, ``v = b2*v + (1-b2)*g**2``, the update
    is ``(m / (1 - b1**t)) / (sqrt(v) / sqrt(1 - b2**t) + eps)``; with ``amsgrad`` the running
    maximum of ``v`` replaces ``v``. Follow it with ``scale_by_learning_rate(lr)`` for Adam.

    Args:
        b1, b2: decay rates of the first and second moments, each in [0, 1)
            (torch's ``betas``). ``b1`` may be a schedule of the step (mmengine's momentum
            schedulers drive it); it is then evaluated each step, and the bias correction
            uses the current value, ``1 - b1_t ** t``, as torch does when a scheduler
            changes ``betas``. A scheduled ``b1`` runs on the foreach path, not fused.
        eps: added to the denominator, >= 0.
        amsgrad: use the maximum of past second moments (torch's ``amsgrad``).
        maximize: ascend: the incoming gradients are negated first.
        mu_dtype: store the first moment in this dtype (e.g. ``torch.bfloat16``, as optax's
            ``mu_dtype``) to save memory; it is computed in the update's dtype and rounded
            for storage, and the update keeps the parameters' dtype. Foreach path only
            (torch's kernels want every buffer in the parameter's dtype).

    Example:
        >>> adam_like = chain(scale_by_adam(0.9, 0.999), scale_by_learning_rate(1e-3))
    """
    b1, b2 = check_betas((b1, b2))
    check_nonnegative("eps", eps, allow_members=True)
    eps = per_member("eps", eps)
    eps = eps if isinstance(eps, PerMember) else float(eps)
    # Per-member b2 / eps (an ensemble) are 1-d tensors in the update; torch's kernels take
    # numbers, so they have no fused form.
    vectors = isinstance(b2, PerMember) or isinstance(eps, PerMember)

    def init(params: list[Tensor], info: TreeInfo) -> ScaleByAdamState:
        device = params[0].device if params else torch.device("cpu")

        def zeros(dtype: torch.dtype | None = None) -> tuple[Tensor, ...]:
            return tuple(
                torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
                for p in params
            )

        for value in (b2, eps):
            if isinstance(value, PerMember):
                value.on(device)  # checks the member count now rather than at the first step
        return ScaleByAdamState(
            count=torch.zeros((), dtype=torch.float32, device=device),
            b1=initial_value(b1, device),
            mu=zeros(mu_dtype),
            nu=zeros(),
            nu_max=zeros() if amsgrad else (),
            paths=info.paths,
        )

    def update(
        updates: list[Tensor],
        state: ScaleByAdamState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], ScaleByAdamState]:
        check_state_paths("scale_by_adam", state.paths, info)
        donate = info.donate
        beta1 = value_at(b1, state.count)
        count = state.count.add_(1) if donate else state.count + 1
        # In float64, as torch.optim evaluates them (in Python floats) for every param dtype.
        t = count.to(torch.float64)
        beta2 = b2.on(count.device) if isinstance(b2, PerMember) else b2
        epsilon = eps.on(count.device) if isinstance(eps, PerMember) else eps
        bc1 = 1 - torch.pow(beta1, t)
        bc2_sqrt = torch.sqrt(1 - torch.pow(beta2, t))

        def group(
            g: list[Tensor], m: list[Tensor], v: list[Tensor], *vmax: list[Tensor]
        ) -> tuple[list[Tensor], ...]:
            if maximize:
                g = fe.neg(g)
            if mu_dtype is not None:
                m = fe.lerp([x.to(g[0].dtype) for x in m], g, 1 - beta1, False)
            else:
                m = fe.lerp(m, g, 1 - beta1, donate)
            v = fe.addcmul(fe.mul(v, beta2, donate), g, g, 1 - beta2, donate)
            vm = fe.maximum(vmax[0], v, donate) if amsgrad else []
            denom = fe.add(fe.div(fe.sqrt(vm if amsgrad else v), bc2_sqrt, donate), epsilon, donate)
            direction = fe.div(fe.div(m, denom, False), bc1, donate)
            if mu_dtype is not None:
                m = [x.to(mu_dtype) for x in m]
            return (direction, m, v, vm) if amsgrad else (direction, m, v)

        lists = (updates, list(state.mu), list(state.nu)) + (
            (list(state.nu_max),) if amsgrad else ()
        )
        direction, mu, nu, *nu_max = info.foreach(group, *lists)
        return direction, ScaleByAdamState(
            count,
            in_force(b1, beta1, state.b1),
            tuple(mu),
            tuple(nu),
            tuple(nu_max[0]) if amsgrad else (),
            state.paths,
        )

    def fused(
        params: list[Tensor],
        grads: list[Tensor],
        state: ScaleByAdamState,
        info: TreeInfo,
        *,
        lr: float | Tensor | list[float | Tensor],
        weight_decay: float | list[float],
        decoupled: bool,
        grad_scale: Tensor | None = None,
    ) -> tuple[list[Tensor], ScaleByAdamState]:
        check_state_paths("scale_by_adam", state.paths, info)
        donate = info.donate
        count = state.count.add_(1) if donate else state.count + 1
        mu, nu, nu_max = list(state.mu), list(state.nu), list(state.nu_max)
        if not donate:
            params, mu, nu = foreach_clone(params), foreach_clone(mu), foreach_clone(nu)
            nu_max = foreach_clone(nu_max)
        kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_

        def group(
            index: int,
            p: list[Tensor],
            g: list[Tensor],
            m: list[Tensor],
            v: list[Tensor],
            *vmax: list[Tensor],
        ) -> list[Tensor]:
            device = p[0].device
            step = count.to(device)

            def call(
                p: list[Tensor],
                g: list[Tensor],
                m: list[Tensor],
                v: list[Tensor],
                vmax: list[Tensor],
                lr: float | Tensor,
            ) -> None:
                kernel(
                    p,
                    g,
                    m,
                    v,
                    vmax,
                    [step] * len(p),
                    lr=lr,
                    beta1=b1,
                    beta2=b2,
                    weight_decay=group_value(weight_decay, index, None),
                    eps=eps,
                    amsgrad=amsgrad,
                    maximize=maximize,
                    grad_scale=None if grad_scale is None else group_value(grad_scale, 0, device),
                    found_inf=None,
                )

            lr_g = group_value(lr, index, device)
            for_members(call, lr_g, p, g, m, v, vmax[0] if amsgrad else [])
            return p

        lists = (params, grads, mu, nu) + ((nu_max,) if amsgrad else ())
        info.foreach(group, *lists, with_group=True)
        return params, ScaleByAdamState(
            count, state.b1, tuple(mu), tuple(nu), tuple(nu_max), state.paths
        )

    name = (
        f"scale_by_adam(b1={b1!r}, b2={b2!r}, eps={eps!r}, amsgrad={amsgrad}, maximize={maximize})"
    )
    # torch's kernels take beta1 as a number: a scheduled b1 has no fused form.
    fusion = (
        None
        if is_schedule(b1) or vectors or mu_dtype is not None
        else Kernel(fused, maximize=maximize, per_member_lr=True)
    )
    return from_flat(FlatTransform(init, update, name=name, fusion=fusion))


def scale_by_adamw(
    b1: float | Schedule = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float | Schedule = 1e-2,
    *,
    amsgrad: bool = False,
    maximize: bool = False,
    mu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """Adam's direction plus decoupled weight decay: ``scale_by_adam(...) + weight_decay * param``.

    Followed by ``scale_by_learning_rate(lr)`` this is AdamW (Loshchilov & Hutter):
    ``param <- param - lr * (adam_direction + weight_decay * param)``.

    It is ``chain(scale_by_adam(b1, b2, eps, amsgrad=amsgrad, maximize=maximize),
    add_decayed_weights(weight_decay))``; its state is that chain's.

    Example:
        >>> tx = chain(clip(1.0), scale_by_adamw(weight_decay=0.05), scale_by_learning_rate(1e-4))
    """
    return chain(
        scale_by_adam(b1, b2, eps, amsgrad=amsgrad, maximize=maximize, mu_dtype=mu_dtype),
        add_decayed_weights(weight_decay),
    )
