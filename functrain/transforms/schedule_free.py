"""Schedule-free SGD and AdamW (Defazio et al. 2024, "The Road Less Scheduled").

Three sequences: ``z`` (the base optimizer's iterate), ``x`` (a weighted average of the
``z``, the parameters to *evaluate*) and ``y`` (where gradients are taken, the parameters
to *train*)::

    y_t     = (1 - b1) * z_t + b1 * x_t
    z_{t+1} = z_t - gamma_t * u_t                  (u_t: the base direction at y_t)
    x_{t+1} = (1 - c_{t+1}) * x_t + c_{t+1} * z_{t+1}
    c_{t+1} = w_t / sum_{i<=t} w_i,   w_t = (t+1)**r * max_{i<=t}(gamma_i) ** weight_lr_power

with ``gamma_t`` the learning rate after warmup (``lr * min(1, (t+1)/warmup_steps)``; for
AdamW also times ``sqrt(1 - b2**(t+1))``). The parameters a caller holds are ``y``; as in
the authors' implementation, ``x`` is not stored: the update moves ``y`` directly,
``y <- lerp(y, z, c) + gamma * (b1 * (1 - c) - 1) * u``, and
``x = lerp(y, z, 1 - 1/b1)`` is recovered on demand by :func:`schedule_free_eval_params`.

SGD: ``u = g + weight_decay * y``. AdamW: ``v = b2 * v + (1 - b2) * g**2``,
``u = g / (sqrt(v) + eps) + weight_decay * y`` (decay at ``y``, not normalised).
As ``chain(add_decayed_weights(wd), scale_by_schedule_free(...))`` and
``chain(scale_by_rms_ema(b2, eps), add_decayed_weights(wd), scale_by_schedule_free(...))``.
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
    chain,
    from_flat,
    state_record,
    static_field,
)
from functrain.transforms.hyperparams import Schedule, value_at
from functrain.transforms.members import PerMember, per_member
from functrain.transforms.optim_parts import check_state_paths
from functrain.transforms.scaling import add_decayed_weights
from functrain.transforms.state_path import find_one
from functrain.transforms.validation import (
    check_betas,
    check_nonnegative,
    check_unit_interval,
    is_schedule,
)
from functrain.tree import PyTree, TreeInfo, flatten

__all__ = [
    "ScaleByRmsEmaState",
    "ScheduleFreeState",
    "scale_by_rms_ema",
    "scale_by_schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
]


@state_record
class ScheduleFreeState:
    """State of :func:`scale_by_schedule_free`.

    Attributes:
        count: number of steps taken, ``t`` (0-d int64).
        lr: the learning rate ``gamma_t`` of the last step (0-d float64; before the first
            step, the one it will use).
        lr_max: the largest learning rate so far (0-d float64; -1 before the first step).
        weight_sum: the sum of the averaging weights ``w_i`` (0-d float64).
        b1: the interpolation factor, for :func:`schedule_free_eval_params` (0-d float64).
        z: the ``z`` sequence, one tensor per leaf.
        paths: dotted leaf paths the state was built for (static).
    """

    count: Tensor
    lr: Tensor
    lr_max: Tensor
    weight_sum: Tensor
    b1: Tensor
    z: tuple[Tensor, ...]
    paths: tuple[str, ...] = static_field()


def scale_by_schedule_free(
    learning_rate: float | Schedule,
    b1: float = 0.9,
    *,
    r: float = 0.0,
    weight_lr_power: float = 2.0,
) -> GradientTransformation:
    """The schedule-free wrapper of a base direction ``u``: returns ``y_{t+1} - y_t``.

    With ``gamma = learning_rate(t)``, ``lr_max = max(lr_max, gamma)``,
    ``w = (t+1)**r * lr_max**weight_lr_power``, ``c = w / sum(w)`` (0 while the sum is 0):
    ``z <- z - gamma * u`` and the update is ``c * (z_old - y) + gamma * (b1*(1-c) - 1) * u``
    (the authors' in-place ``y.lerp_(z, c); y.add_(u, alpha=...)``). Must be last in a
    chain (it owns the step: no ``scale_by_learning_rate`` after it). ``z`` starts at the
    parameters given to ``init``. All scalars are 0-d float64 tensors on the device.

    Args:
        learning_rate: ``gamma_t``, a float >= 0 or a schedule of the step (the aliases
            fold warmup, and AdamW's ``sqrt(1 - b2**(t+1))``, into it).
        b1: interpolation between ``z`` and ``x``, in [0, 1) (SGD's ``momentum``). Under
            :func:`functrain.ensemble` it and ``learning_rate`` may be per member (the
            averaging weights are then per member).
        r: power of ``t+1`` in the averaging weights.
        weight_lr_power: power of ``lr_max`` in the averaging weights.

    Example:
        >>> tx = chain(scale_by_rms_ema(0.999), scale_by_schedule_free(0.0025, 0.9))
    """
    check_nonnegative("lr", learning_rate, allow_schedule=True)
    check_unit_interval("b1", b1, allow_members=True)
    for name, value in (("r", r), ("weight_lr_power", weight_lr_power)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number, got {value!r}")
    learning_rate = per_member("lr", learning_rate)
    b1, r, weight_lr_power = parts.constant("b1", b1), float(r), float(weight_lr_power)

    def lr_at(count: Tensor) -> Tensor:
        value = value_at(learning_rate, count)
        return torch.as_tensor(value, dtype=torch.float64, device=count.device)

    def init(params: list[Tensor], info: TreeInfo) -> ScheduleFreeState:
        device = params[0].device if params else torch.device("cpu")

        def scalar(v: float) -> Tensor:
            return torch.tensor(v, dtype=torch.float64, device=device)

        count = torch.zeros((), dtype=torch.int64, device=device)
        lr = lr_at(count)
        # Stacked ensemble members with a per-member lr or b1: every scalar is per member
        # from the start (so a step never changes the state's shapes).
        b1_value = parts.on(b1, device) if isinstance(b1, PerMember) else scalar(b1)
        shape = torch.broadcast_shapes(lr.shape, b1_value.shape)
        return ScheduleFreeState(
            count=count,
            lr=lr.expand(shape).clone(),
            lr_max=scalar(-1.0).expand(shape).clone(),
            weight_sum=scalar(0.0).expand(shape).clone(),
            b1=b1_value.expand(shape).clone(),
            # A copy that keeps the parameters' autograd history (meta-gradients reach z_0).
            z=tuple(p * 1 for p in params),
            paths=info.paths,
        )

    def update(
        updates: list[Tensor],
        state: ScheduleFreeState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], ScheduleFreeState]:
        check_state_paths("scale_by_schedule_free", state.paths, info)
        if params is None:
            raise ValueError(
                "scale_by_schedule_free needs the parameters (y): call update(updates, state, "
                "params)"
            )
        if info.multipliers is not None and any(lm != 1.0 for lm, _ in info.multipliers):
            # Each torch param group would keep its own lr_max and weight sum.
            raise ValueError(
                "scale_by_schedule_free does not support per-group learning-rate multipliers "
                "(mask_multipliers lr_mult); decay_mult is fine"
            )
        donate = info.donate
        k = state.count
        lr = lr_at(k)
        lr_max = torch.maximum(lr, state.lr_max)
        weight = torch.pow((k + 1).to(torch.float64), r) * torch.pow(lr_max, weight_lr_power)
        weight_sum = state.weight_sum + weight
        zero = weight_sum == 0
        ckp1 = torch.where(zero, 0.0, weight / torch.where(zero, 1.0, weight_sum))
        y_lr = lr * (parts.on(b1, k.device) * (1 - ckp1) - 1)

        def group(
            u: list[Tensor], y: list[Tensor], z: list[Tensor]
        ) -> tuple[list[Tensor], list[Tensor]]:
            delta = fe.mul(fe.sub(z, y), ckp1, donate)
            delta = fe.add(delta, fe.mul(u, y_lr, False), donate)
            z = fe.add(z, fe.mul(u, -lr, donate), donate)
            return delta, z

        delta, z = info.foreach(group, updates, params, list(state.z))
        return delta, ScheduleFreeState(
            k + 1, lr, lr_max, weight_sum, state.b1, tuple(z), state.paths
        )

    name = f"scale_by_schedule_free({learning_rate!r}, b1={parts.name_of(b1)}, r={r:g})"
    return from_flat(FlatTransform(init, update, name=name))


@state_record
class ScaleByRmsEmaState:
    """State of :func:`scale_by_rms_ema`.

    Attributes:
        nu: the EMA of squared gradients, one tensor per leaf (``exp_avg_sq``).
        paths: dotted leaf paths the state was built for (static).
    """

    nu: tuple[Tensor, ...]
    paths: tuple[str, ...] = static_field()


def scale_by_rms_ema(b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    """``g / (sqrt(v) + eps)`` with ``v <- b2 * v + (1 - b2) * g**2`` (no bias correction).

    The direction of schedule-free AdamW (and of RMSprop with ``alpha=b2``); the bias
    correction of ``v`` lives in schedule-free AdamW's learning rate instead.

    Example:
        >>> tx = chain(scale_by_rms_ema(0.999), scale_by_schedule_free(0.0025))
    """
    check_unit_interval("betas[1]", b2, allow_members=True)
    check_nonnegative("eps", eps, allow_members=True)
    b2, eps = parts.constant("betas[1]", b2), parts.constant("eps", eps)

    def init(params: list[Tensor], info: TreeInfo) -> ScaleByRmsEmaState:
        parts.check_members(params, b2, eps)
        nu = tuple(torch.zeros_like(p, memory_format=torch.preserve_format) for p in params)
        return ScaleByRmsEmaState(nu, paths=info.paths)

    def update(
        updates: list[Tensor],
        state: ScaleByRmsEmaState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], ScaleByRmsEmaState]:
        check_state_paths("scale_by_rms_ema", state.paths, info)
        donate = info.donate

        def group(g: list[Tensor], v: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
            beta2 = parts.on(b2, v[0].device)
            v = fe.addcmul(fe.mul(v, beta2, donate), g, g, 1 - beta2, donate)
            denom = fe.add(fe.sqrt(v), parts.on(eps, v[0].device), donate)
            return fe.div(g, denom, donate), v

        out, nu = info.foreach(group, updates, list(state.nu))
        return out, ScaleByRmsEmaState(tuple(nu), state.paths)

    name = f"scale_by_rms_ema({parts.name_of(b2)}, eps={parts.name_of(eps)})"
    return from_flat(FlatTransform(init, update, name=name))


def _warmup_lr(
    lr: float | Schedule, warmup_steps: int, b2: float | None = None
) -> float | Schedule:
    """``lr(t) * min(1, (t+1)/warmup_steps) [* sqrt(1 - b2**(t+1))]`` as a schedule of ``t``."""
    if not warmup_steps and b2 is None:
        return lr

    def schedule(step: Tensor) -> Tensor:
        t = step.to(torch.float64)
        value = value_at(lr, step)
        value = torch.as_tensor(value, dtype=torch.float64, device=step.device)
        if warmup_steps:
            value = value * torch.where(step < warmup_steps, (t + 1) / warmup_steps, 1.0)
        if b2 is not None:
            value = value * torch.sqrt(1 - torch.pow(parts.on(b2, step.device), t + 1))
        return value

    return schedule


def _check_schedule_free_common(lr: Any, weight_decay: Any, warmup_steps: Any) -> None:
    check_nonnegative("lr", lr, allow_schedule=True)
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(
            f"Invalid warmup_steps: {warmup_steps!r}; warmup_steps must be an integer >= 0"
        )


def schedule_free_sgd(
    lr: float | Schedule = 1.0,
    momentum: float = 0.9,
    weight_decay: float | Schedule = 0.0,
    warmup_steps: int = 0,
    r: float = 0.0,
    weight_lr_power: float = 2.0,
) -> GradientTransformation:
    """Schedule-free SGD (Defazio et al. 2024), the authors' ``SGDScheduleFree``.

    ``chain(add_decayed_weights(weight_decay), scale_by_schedule_free(lr_t, momentum, r=r,
    weight_lr_power=weight_lr_power))`` with ``lr_t = lr * min(1, (t+1)/warmup_steps)``;
    ``z <- z - lr_t * (g + wd * y)``, ``x`` the ``lr_max**2``-weighted average of ``z``,
    ``y = (1 - momentum) * z + momentum * x``. The caller's parameters are ``y``; evaluate
    with :func:`schedule_free_eval_params`. Use no learning-rate schedule besides warmup
    (the averaging replaces it).

    Args:
        lr: learning rate (default 1.0), float or schedule.
        momentum: ``b1``, in (0, 1) (the authors' check).
        weight_decay: L2 coefficient, gradient taken at ``y``.
        warmup_steps: linear warmup length.
        r, weight_lr_power: the averaging weights ``(t+1)**r * lr_max**weight_lr_power``.

    Example:
        >>> tx = schedule_free_sgd(lr=1.0, warmup_steps=100)
    """
    _check_schedule_free_common(lr, weight_decay, warmup_steps)
    check_unit_interval("momentum", momentum, allow_members=True)
    momentum = parts.constant("momentum", momentum)
    for i, value in enumerate(
        momentum.values.tolist() if isinstance(momentum, PerMember) else [momentum]
    ):
        if value <= 0:
            shown = f"momentum[{i}]" if isinstance(momentum, PerMember) else "momentum"
            raise ValueError(f"Invalid {shown}: {value!r}; momentum must be in (0, 1)")
    lr = per_member("lr", lr)
    return chain(
        add_decayed_weights(weight_decay),
        scale_by_schedule_free(
            _warmup_lr(lr, warmup_steps), momentum, r=r, weight_lr_power=weight_lr_power
        ),
    )


def schedule_free_adamw(
    lr: float | Schedule = 0.0025,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float | Schedule = 0.0,
    warmup_steps: int = 0,
    r: float = 0.0,
    weight_lr_power: float = 2.0,
) -> GradientTransformation:
    """Schedule-free AdamW (Defazio et al. 2024), the authors' ``AdamWScheduleFree``.

    ``chain(scale_by_rms_ema(b2, eps), add_decayed_weights(weight_decay),
    scale_by_schedule_free(lr_t, b1, r=r, weight_lr_power=weight_lr_power))`` with
    ``lr_t = lr * min(1, (t+1)/warmup_steps) * sqrt(1 - b2**(t+1))``:
    ``z <- z - lr_t * (g / (sqrt(v) + eps) + wd * y)``; ``x`` and ``y`` as in
    :func:`schedule_free_sgd`. Evaluate with :func:`schedule_free_eval_params`.

    Args:
        lr: learning rate (default 0.0025), float or schedule.
        betas: ``(b1, b2)``: interpolation factor and second-moment decay, in [0, 1).
        eps: added to ``sqrt(v)``.
        weight_decay: decoupled decay at ``y`` (multiplied by ``lr_t``, not normalised).
        warmup_steps: linear warmup length.
        r, weight_lr_power: the averaging weights.

    Example:
        >>> tx = schedule_free_adamw(lr=1e-3, weight_decay=0.05, warmup_steps=1000)
    """
    _check_schedule_free_common(lr, weight_decay, warmup_steps)
    b1, b2 = check_betas(betas)
    if is_schedule(b1) and not isinstance(b1, PerMember):
        raise ValueError("betas[0] of schedule-free AdamW must be a number")
    check_nonnegative("eps", eps, allow_members=True)
    lr = per_member("lr", lr)
    return chain(
        scale_by_rms_ema(b2, eps),
        add_decayed_weights(weight_decay),
        scale_by_schedule_free(
            _warmup_lr(lr, warmup_steps, b2), b1, r=r, weight_lr_power=weight_lr_power
        ),
    )


def schedule_free_eval_params(params: PyTree, opt_state: Any) -> PyTree:
    """The evaluation parameters ``x = lerp(y, z, 1 - 1/b1)`` of a schedule-free optimizer.

    ``params`` are the training parameters ``y`` (what the loop holds) and ``opt_state``
    the optimizer state (a chain's tuple, any nesting); returns a new tree, ``params``
    untouched. This is the authors' ``optimizer.eval()``, without the in-place swap:
    evaluate or checkpoint ``x``, keep training from ``y``. Differentiable.

    Raises:
        ValueError: the state holds no (or several) schedule-free states, or ``b1`` is 0
            (then ``y = z`` and ``x`` cannot be recovered).

    Example:
        >>> eval_params = schedule_free_eval_params(params, opt_state)  # doctest: +SKIP
    """
    state = find_one(opt_state, ScheduleFreeState, "schedule_free_eval_params")
    leaves, info = flatten(params)
    check_state_paths("schedule_free_eval_params", state.paths, info)
    b1 = state.b1
    # Under vmap b1 may differ per member and has no host value; stacked ensemble members
    # may have one b1 each (a 1-d tensor: the lerp weight broadcasts per member).
    if not fe.vmapping() and b1.ndim == 1 and bool((b1 == 0).any()):
        raise ValueError(
            "schedule_free_eval_params: b1 is 0 for member "
            f"{int(torch.nonzero(b1 == 0)[0, 0])}, so y == z and x is not recoverable"
        )
    if not fe.vmapping() and b1.ndim == 0:
        b1 = float(b1)
        if b1 == 0.0:
            raise ValueError(
                "schedule_free_eval_params: b1 is 0, so y == z and x is not recoverable"
            )
    weight = 1 - 1 / b1
    x = info.foreach(lambda ys, zs: fe.lerp(ys, zs, weight, False), leaves, list(state.z))
    return info.unflatten(x)
