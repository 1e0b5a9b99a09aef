"""Optimizers under their usual names (torch.optim's, with its arguments and defaults, and
LAMB, LARS, Lion), each a composition of transforms, as optax's ``alias.py``.

Every alias is ``chain(...)`` of building blocks; the update rules live in the modules that
define them (:func:`~functrain.transforms.adam.scale_by_adam`,
:func:`~functrain.transforms.adamax.scale_by_adamax`, ...). Those modules also re-export
their alias, so ``from functrain.transforms.adamax import adamax`` keeps working.

torch.optim's weight decay comes in two orders. L2 (``weight_decay`` in Adam, Adagrad,
Adadelta, Adamax, ASGD, NAdam, RAdam, RMSprop, SGD) is added to the gradient before the
direction: ``chain(add_decayed_weights(wd), direction, ...)``, with ``maximize`` negating the
gradient first (:func:`_l2_chain`). Decoupled decay (AdamW, NAdamW, RAdam's
``decoupled_weight_decay``, Lion) follows the direction, inside the learning rate:
``chain(direction, add_decayed_weights(wd), scale_by_learning_rate(lr))``, which is torch's
``p *= 1 - lr * wd`` before the step (:func:`_with_decay`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from functrain.transforms.adadelta import check_rho, scale_by_adadelta
from functrain.transforms.adafactor import (
    add_decoupled_decay,
    scale_by_factored_rms,
    scale_by_relative_step,
)
from functrain.transforms.adagrad import AdagradLearningRate, scale_by_adagrad
from functrain.transforms.adam import scale_by_adam, scale_by_adamw
from functrain.transforms.adamax import scale_by_adamax
from functrain.transforms.asgd import scale_by_asgd
from functrain.transforms.base import GradientTransformation, chain
from functrain.transforms.combinators import partition
from functrain.transforms.lamb import scale_by_trust_ratio
from functrain.transforms.lars import scale_by_lars
from functrain.transforms.lion import scale_by_lion
from functrain.transforms.momentum import trace
from functrain.transforms.muon import (
    EPS,
    NS_COEFFICIENTS,
    NS_STEPS,
    AdjustLr,
    Mask,
    is_matrix,
    scale_by_muon,
)
from functrain.transforms.nadam import scale_by_nadam
from functrain.transforms.radam import scale_by_radam
from functrain.transforms.rmsprop import scale_by_rms
from functrain.transforms.rprop import scale_by_rprop
from functrain.transforms.scaling import add_decayed_weights, scale, scale_by_learning_rate
from functrain.transforms.validation import (
    check_betas,
    check_momentum,
    check_nonnegative,
    is_schedule,
)

__all__ = [
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "asgd",
    "lamb",
    "lars",
    "lion",
    "muon",
    "nadam",
    "radam",
    "rmsprop",
    "rprop",
    "sgd",
]

Schedule = Callable[[Any], Any]


def _checked_betas(
    lr: float | Schedule, betas: Any, weight_decay: float | Schedule
) -> tuple[Any, float]:
    """``betas`` checked (see :func:`check_betas`), after ``lr`` and before ``weight_decay``
    (both >= 0 or schedules): the order in which the first bad argument is reported."""
    check_nonnegative("lr", lr, allow_schedule=True)
    betas = check_betas(betas)
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    return betas


def _l2_chain(
    direction: Callable[[bool], GradientTransformation],
    weight_decay: float | Schedule,
    maximize: bool,
    *after: GradientTransformation,
) -> GradientTransformation:
    """torch's L2 order: ``chain(add_decayed_weights(weight_decay), direction(maximize),
    *after)``. ``direction(ascend)`` builds the rule, negating its input when ``ascend``.

    torch negates the gradient *before* adding the decay term, so with ``maximize`` and a
    decay the negation is a ``scale(-1)`` in front and the rule itself does not negate.
    """
    negate_first = bool(maximize and weight_decay)
    return chain(
        *([scale(-1.0)] if negate_first else []),
        add_decayed_weights(weight_decay),
        direction(maximize and not negate_first),
        *after,
    )


def _with_decay(
    direction: Callable[[bool], GradientTransformation],
    lr: float | Schedule,
    weight_decay: float | Schedule,
    maximize: bool,
    *,
    decoupled: bool = False,
) -> GradientTransformation:
    """``direction`` with torch's weight decay and the learning rate: L2 (:func:`_l2_chain`),
    or ``decoupled``: ``p <- p - lr * (direction + weight_decay * p)``."""
    if decoupled:
        return chain(
            direction(maximize), add_decayed_weights(weight_decay), scale_by_learning_rate(lr)
        )
    return _l2_chain(direction, weight_decay, maximize, scale_by_learning_rate(lr))


def sgd(
    lr: float | Schedule = 1e-3,
    momentum: float | Schedule = 0.0,
    dampening: float = 0.0,
    weight_decay: float | Schedule = 0.0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Stochastic gradient descent, as ``torch.optim.SGD``.

    ``chain([scale(-1) if maximize], add_decayed_weights(weight_decay), trace(momentum,
    dampening, nesterov), scale_by_learning_rate(lr))``: weight decay is L2 (added to the
    gradient before momentum), as in torch.

    Every hyperparameter but ``dampening`` and ``nesterov`` may be a schedule of the step
    (see :mod:`functrain.schedules`); ``betas[0]`` may be one in :func:`adam` / :func:`adamw`.

    Args:
        lr: learning rate or schedule (torch's default 1e-3).
        momentum, dampening, nesterov: as ``torch.optim.SGD``.
        weight_decay: L2 coefficient.
        maximize: ascend the objective.

    Example:
        >>> tx = sgd(lr=0.02, momentum=0.9, weight_decay=1e-4)
    """
    check_nonnegative("lr", lr, allow_schedule=True)
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    return chain(
        *([scale(-1.0)] if maximize else []),
        add_decayed_weights(weight_decay),
        trace(momentum, dampening, nesterov),
        scale_by_learning_rate(lr),
    )


def adam(
    lr: float | Schedule = 1e-3,
    betas: tuple[float | Schedule, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float | Schedule = 0.0,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
    mu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """Adam, as ``torch.optim.Adam``: ``weight_decay`` is L2 (added to the gradient).

    ``chain(add_decayed_weights(weight_decay), scale_by_adam(*betas, eps, amsgrad=amsgrad),
    scale_by_learning_rate(lr))``; with ``maximize`` the gradient is negated first. With
    ``decoupled_weight_decay=True`` it is :func:`adamw`.

    ``mu_dtype`` (a functrain extension, as optax's) stores the first moment in a lower
    precision, e.g. ``torch.bfloat16``; see :func:`scale_by_adam`.

    Example:
        >>> tx = adam(lr=3e-4, weight_decay=1e-4)
    """
    b1, b2 = _checked_betas(lr, betas, weight_decay)
    if decoupled_weight_decay:
        return adamw(lr, betas, eps, weight_decay, amsgrad, maximize=maximize, mu_dtype=mu_dtype)
    return _with_decay(
        lambda ascend: scale_by_adam(
            b1, b2, eps, amsgrad=amsgrad, maximize=ascend, mu_dtype=mu_dtype
        ),
        lr,
        weight_decay,
        maximize,
    )


def adamw(
    lr: float | Schedule = 1e-3,
    betas: tuple[float | Schedule, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float | Schedule = 1e-2,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    mu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """AdamW, as ``torch.optim.AdamW``: decoupled weight decay, default 1e-2.

    ``chain(scale_by_adamw(*betas, eps, weight_decay, amsgrad=amsgrad),
    scale_by_learning_rate(lr))``, i.e. ``param <- param - lr * (adam_direction +
    weight_decay * param)``.

    Example:
        >>> tx = chain(clip(0.01), adamw(lr=1e-4, weight_decay=0.05))
    """
    b1, b2 = _checked_betas(lr, betas, weight_decay)
    return chain(
        scale_by_adamw(
            b1, b2, eps, weight_decay, amsgrad=amsgrad, maximize=maximize, mu_dtype=mu_dtype
        ),
        scale_by_learning_rate(lr),
    )


def adagrad(
    lr: float | Schedule = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float | Schedule = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Adagrad, as ``torch.optim.Adagrad``: ``weight_decay`` is L2 (added to the gradient).

    ``chain(add_decayed_weights(weight_decay), scale_by_adagrad(eps, initial_accumulator_value),
    scale_by_learning_rate(AdagradLearningRate(lr, lr_decay)))``: torch's step size
    ``lr / (1 + (step - 1) * lr_decay)`` is linear in ``lr``, so ``lr_decay`` is a schedule
    of the learning rate (a plain ``lr`` when ``lr_decay == 0``), and the learning rate in force
    in the state is the decayed one. With ``maximize`` and a weight decay the gradient is
    negated first (``scale(-1)``), as torch does.

    :func:`functrain.apply_gradients` runs it as torch's fused Adagrad kernel
    (``torch._fused_adagrad_``, CPU and CUDA), what ``torch.optim.Adagrad(fused=True)`` runs.

    Args:
        lr: learning rate or schedule (torch's default 1e-2).
        lr_decay: ``>= 0``; the step size is divided by ``1 + (step - 1) * lr_decay``.
        weight_decay: L2 coefficient, or a schedule.
        initial_accumulator_value: initial sum of squares, >= 0.
        eps: added to the denominator.
        maximize: ascend the objective.

    Example:
        >>> tx = adagrad(lr=0.01, lr_decay=1e-4)
    """
    check_nonnegative("lr", lr, allow_schedule=True)
    check_nonnegative("lr_decay", lr_decay)
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    check_nonnegative("initial_accumulator_value", initial_accumulator_value)
    check_nonnegative("eps", eps)
    learning_rate = lr if lr_decay == 0 else AdagradLearningRate(lr, lr_decay)
    return _with_decay(
        lambda ascend: scale_by_adagrad(eps, initial_accumulator_value, maximize=ascend),
        learning_rate,
        weight_decay,
        maximize,
    )


def adadelta(
    lr: float | Schedule = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float | Schedule = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Adadelta, as ``torch.optim.Adadelta``: ``weight_decay`` is L2 (added to the gradient).

    ``chain(add_decayed_weights(weight_decay), scale_by_adadelta(rho, eps, maximize=maximize),
    scale_by_learning_rate(lr))``; with ``maximize`` and a weight decay the gradient is negated
    first (``scale(-1)``), as torch does. :func:`functrain.apply_gradients` runs the whole
    chain as one in-place foreach step.

    Args:
        lr: coefficient that scales delta before it is applied (torch's default 1.0), or a
            schedule.
        rho: decay rate of the running averages, in [0, 1].
        eps: added inside the square roots.
        weight_decay: L2 coefficient, or a schedule.
        maximize: ascend the objective.

    Example:
        >>> tx = adadelta(lr=1.0, rho=0.95)
    """
    check_nonnegative("lr", lr, allow_schedule=True)
    rho = check_rho(rho)
    check_nonnegative("eps", eps)
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    return _with_decay(
        lambda ascend: scale_by_adadelta(rho, eps, maximize=ascend), lr, weight_decay, maximize
    )


def adamax(
    lr: float | Schedule = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float | Schedule = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Adamax, as ``torch.optim.Adamax``: ``weight_decay`` is L2 (added to the gradient).

    ``chain(add_decayed_weights(weight_decay), scale_by_adamax(*betas, eps, maximize=maximize),
    scale_by_learning_rate(lr))``; with ``maximize`` and a weight decay the gradient is negated
    first (``scale(-1)``), as torch does. :func:`functrain.apply_gradients` runs the whole chain
    as one in-place foreach step.

    Args:
        lr: learning rate or schedule (torch's default 2e-3).
        betas: ``(beta1, beta2)``, each in [0, 1).
        eps: added to ``|g|`` before the infinity-norm maximum.
        weight_decay: L2 coefficient, or a schedule.
        maximize: ascend the objective.

    Example:
        >>> tx = adamax(lr=2e-3, weight_decay=1e-4)
    """
    b1, b2 = _checked_betas(lr, betas, weight_decay)
    return _with_decay(
        lambda ascend: scale_by_adamax(b1, b2, eps, maximize=ascend), lr, weight_decay, maximize
    )


def asgd(
    lr: float | Schedule = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
    weight_decay: float | Schedule = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """ASGD, as ``torch.optim.ASGD``: ``weight_decay`` is L2 (added to the gradient).

    ``chain(add_decayed_weights(weight_decay), scale_by_asgd(lr, lambd, alpha, t0,
    maximize=maximize))``; with ``maximize`` and a weight decay the gradient is negated first
    (``scale(-1)``), as torch does. ASGD's step size ``eta`` depends non-linearly on ``lr``,
    so :func:`scale_by_asgd` owns the update (no ``scale_by_learning_rate``). The averaged
    parameters are in the state: :func:`asgd_averaged_params` returns them as a tree.

    Args:
        lr: learning rate (torch's default 1e-2), or a schedule.
        lambd: decay term.
        alpha: power for the ``eta`` update.
        t0: point at which to start averaging.
        weight_decay: L2 coefficient, or a schedule.
        maximize: ascend the objective.

    Example:
        >>> tx = asgd(lr=0.01, t0=1000)
        >>> state = tx.init(params)  # doctest: +SKIP
        >>> averaged = asgd_averaged_params(state, params)  # doctest: +SKIP
    """
    check_nonnegative("lr", lr, allow_schedule=True)
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    return _l2_chain(
        lambda ascend: scale_by_asgd(lr, lambd, alpha, t0, maximize=ascend),
        weight_decay,
        maximize,
    )


def nadam(
    lr: float | Schedule = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float | Schedule = 0.0,
    momentum_decay: float = 4e-3,
    decoupled_weight_decay: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """NAdam, as ``torch.optim.NAdam``.

    ``chain(add_decayed_weights(weight_decay), scale_by_nadam(*betas, eps, momentum_decay),
    scale_by_learning_rate(lr))`` (L2 decay added to the gradient; with ``maximize`` the
    gradient is negated first, by ``scale(-1)`` when there is a decay). With
    ``decoupled_weight_decay`` (NAdamW) the decay follows the direction instead:
    ``chain(scale_by_nadam(...), add_decayed_weights(weight_decay),
    scale_by_learning_rate(lr))``, i.e. ``p <- p - lr * (direction + weight_decay * p)``,
    which is torch's ``p *= 1 - lr * weight_decay`` before the step.

    :func:`functrain.apply_gradients` runs the whole chain as one in-place foreach step in
    torch's order of operations.

    Args:
        lr: learning rate or schedule (torch's default 2e-3).
        betas: ``(beta1, beta2)``, each in [0, 1).
        eps: added to the denominator.
        weight_decay: decay coefficient, or a schedule.
        momentum_decay: momentum decay ``psi``.
        decoupled_weight_decay: AdamW-style decay instead of L2.
        maximize: ascend the objective.

    Example:
        >>> tx = nadam(lr=2e-3, weight_decay=1e-2, decoupled_weight_decay=True)
    """
    b1, b2 = _checked_betas(lr, betas, weight_decay)
    return _with_decay(
        lambda ascend: scale_by_nadam(b1, b2, eps, momentum_decay, maximize=ascend),
        lr,
        weight_decay,
        maximize,
        decoupled=decoupled_weight_decay,
    )


def radam(
    lr: float | Schedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float | Schedule = 0.0,
    decoupled_weight_decay: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """RAdam, as ``torch.optim.RAdam``.

    ``chain(add_decayed_weights(weight_decay), scale_by_radam(*betas, eps),
    scale_by_learning_rate(lr))`` (L2 decay added to the gradient; with ``maximize`` the
    gradient is negated first, by ``scale(-1)`` when there is a decay). With
    ``decoupled_weight_decay`` the decay follows the direction instead:
    ``chain(scale_by_radam(...), add_decayed_weights(weight_decay),
    scale_by_learning_rate(lr))``, which is torch's ``p *= 1 - lr * weight_decay``.

    :func:`functrain.apply_gradients` runs the whole chain as one in-place foreach step.

    Args:
        lr: learning rate or schedule (torch's default 1e-3).
        betas: ``(beta1, beta2)``, each in [0, 1).
        eps: added to the denominator.
        weight_decay: decay coefficient, or a schedule.
        decoupled_weight_decay: AdamW-style decay instead of L2.
        maximize: ascend the objective.

    Example:
        >>> tx = radam(lr=1e-3, weight_decay=1e-2, decoupled_weight_decay=True)
    """
    b1, b2 = _checked_betas(lr, betas, weight_decay)
    return _with_decay(
        lambda ascend: scale_by_radam(b1, b2, eps, maximize=ascend),
        lr,
        weight_decay,
        maximize,
        decoupled=decoupled_weight_decay,
    )


def rmsprop(
    lr: float | Schedule = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float | Schedule = 0.0,
    momentum: float | Schedule = 0.0,
    centered: bool = False,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """RMSprop, as ``torch.optim.RMSprop``: ``weight_decay`` is L2 (added to the gradient).

    ``chain(add_decayed_weights(weight_decay), scale_by_rms(alpha, eps, centered=centered,
    maximize=maximize), [trace(momentum)], scale_by_learning_rate(lr))``. torch's momentum
    buffer ``buf = momentum * buf + g / avg`` (from zeros) is exactly ``trace``'s (which starts
    from the first update), so the momentum is a separate member; it is present when
    ``momentum > 0`` or scheduled. With ``maximize`` and a weight decay the gradient is negated
    first (``scale(-1)``), as torch does.

    :func:`functrain.apply_gradients` runs it as one in-place foreach step without momentum,
    and with momentum as ``scale_by_rms`` followed by torch's fused SGD-momentum kernel.

    Args:
        lr: learning rate or schedule (torch's default 1e-2).
        alpha: smoothing constant, >= 0.
        eps: added to the denominator.
        weight_decay: L2 coefficient, or a schedule.
        momentum: momentum factor >= 0, or a schedule.
        centered: normalise by the estimated variance of the gradient.
        maximize: ascend the objective.

    Example:
        >>> tx = rmsprop(lr=1e-3, momentum=0.9, centered=True)
    """
    check_nonnegative("lr", lr, allow_schedule=True)
    check_nonnegative("alpha", alpha)
    check_nonnegative("eps", eps)
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    check_momentum("momentum", momentum, allow_schedule=True)
    with_momentum = is_schedule(momentum) or momentum > 0
    return _l2_chain(
        lambda ascend: scale_by_rms(alpha, eps, centered=centered, maximize=ascend),
        weight_decay,
        maximize,
        *([trace(momentum)] if with_momentum else []),
        scale_by_learning_rate(lr),
    )


def rprop(
    lr: float | Schedule = 1e-2,
    etas: tuple[float, float] = (0.5, 1.2),
    step_sizes: tuple[float, float] = (1e-6, 50.0),
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Rprop, as ``torch.optim.Rprop``: :func:`scale_by_rprop`, which owns the whole update.

    Rprop's step is ``-sign(g) * step_size`` with per-element step sizes adapted from the signs
    of successive gradients; ``lr`` is only the initial step size, so there is no
    ``scale_by_learning_rate`` to factor out. :func:`functrain.apply_gradients` writes the
    step straight into the parameters.

    Args:
        lr: initial step size (torch's default 1e-2); a schedule is read at step 0 only.
        etas: ``(etaminus, etaplus)``, multiplicative decrease and increase factors,
            ``0 < etaminus < 1 < etaplus``.
        step_sizes: ``(min, max)`` allowed step sizes.
        maximize: ascend the objective.

    Example:
        >>> tx = rprop(lr=0.01, etas=(0.5, 1.2), step_sizes=(1e-6, 50))
    """
    return scale_by_rprop(lr, etas, step_sizes, maximize=maximize)


def adafactor(
    lr: float | Schedule = 1e-2,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    weight_decay: float | Schedule = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Adafactor, as ``torch.optim.Adafactor`` (torch's variant of Shazeer & Stern 2018).

    ``chain(scale_by_factored_rms(beta2_decay, eps[0], d, maximize=maximize),
    scale_by_relative_step(lr, eps[1]), add_decoupled_decay(lr, weight_decay))``: ``param <- param * (1 - lr*wd) -
    max(eps2, RMS(param)) * min(lr, 1/sqrt(t)) * U / max(1, RMS(U)/d)`` with ``U`` the
    gradient over the root of the (factored, for >= 2-d leaves) second-moment estimate. See
    :mod:`functrain.transforms.adafactor` for the full update.

    ``lr`` and ``weight_decay`` may be schedules of the step. torch's ``foreach`` is not an
    argument (every path here is foreach).

    Args:
        lr: cap of the relative step size and multiplier of the decay (default 1e-2).
        beta2_decay: ``<= 0`` (default -0.8).
        eps: ``(epsilon1, epsilon2)``; ``epsilon1=None`` is the dtype's machine epsilon.
        d: update clipping threshold ``>= 1``.
        weight_decay: decoupled decay coefficient (multiplied by ``lr``).
        maximize: ascend the objective.

    Example:
        >>> tx = adafactor(lr=1e-2, weight_decay=1e-2)
    """
    check_nonnegative("lr", lr, allow_schedule=True)
    if not isinstance(eps, tuple | list) or len(eps) != 2:
        raise ValueError(f"eps must be a pair (epsilon1, epsilon2), got {eps!r}")
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    return chain(
        scale_by_factored_rms(beta2_decay, eps[0], d, maximize=maximize),
        scale_by_relative_step(lr, eps[1]),
        add_decoupled_decay(lr, weight_decay),
    )


def lamb(
    lr: float | Schedule = 1e-3,
    betas: tuple[float | Schedule, float] = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float | Schedule = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """LAMB (You et al. 2019): Adam's direction plus decoupled decay, scaled per leaf by the
    trust ratio ``||param|| / ||direction + weight_decay * param||``.

    ``chain(scale_by_adam(*betas, eps, maximize=maximize), add_decayed_weights(weight_decay),
    scale_by_trust_ratio(), scale_by_learning_rate(lr))``; see :mod:`functrain.transforms.lamb`
    for the update. Defaults follow optax's ``lamb`` (``eps=1e-6``).

    Args:
        lr: learning rate or schedule.
        betas: Adam's ``(b1, b2)``; ``b1`` may be a schedule.
        eps: added to Adam's denominator.
        weight_decay: decoupled decay coefficient, inside the trust ratio.
        maximize: ascend the objective.

    Example:
        >>> tx = lamb(lr=1e-3, weight_decay=0.01)
    """
    check_nonnegative("lr", lr, allow_schedule=True)
    b1, b2 = check_betas(betas)
    check_nonnegative("eps", eps)
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    return chain(
        scale_by_adam(b1, b2, eps, maximize=maximize),
        add_decayed_weights(weight_decay),
        scale_by_trust_ratio(),
        scale_by_learning_rate(lr),
    )


def lars(
    lr: float | Schedule = 1.0,
    momentum: float | Schedule = 0.9,
    weight_decay: float = 0.0,
    trust_coefficient: float = 1e-3,
    eps: float = 0.0,
    nesterov: bool = False,
) -> GradientTransformation:
    """LARS (You et al. 2017), the paper's variant: the trust ratio uses the gradient norm
    and the decay term, ``eta * ||w|| / (||g|| + wd * ||w||)``, and scales ``g + wd * w``
    before the momentum, with the learning rate inside the momentum.

    ``chain(scale_by_lars(trust_coefficient, weight_decay, eps), scale_by_learning_rate(lr),
    trace(momentum, nesterov=nesterov))``. (optax's ``lars`` differs: its ratio is
    ``||w|| / ||g + wd * w||`` and its learning rate is applied after the momentum.)
    ``nesterov`` is an addition to the paper (torch SGD's Nesterov form).

    Args:
        lr: global learning rate ``gamma`` or a schedule (default 1.0; the trust
            coefficient, 1e-3, sets the step's scale).
        momentum: momentum ``m``, >= 0, or a schedule.
        weight_decay: the paper's ``beta``.
        trust_coefficient: the paper's ``eta``.
        eps: added to the ratio's denominator.
        nesterov: Nesterov momentum.

    Example:
        >>> tx = lars(lr=2.0, momentum=0.9, weight_decay=5e-4)
    """
    check_nonnegative("lr", lr, allow_schedule=True)
    return chain(
        scale_by_lars(trust_coefficient, weight_decay, eps),
        scale_by_learning_rate(lr),
        trace(momentum, nesterov=nesterov),
    )


def lion(
    lr: float | Schedule = 1e-4,
    betas: tuple[float, float] = (0.9, 0.99),
    weight_decay: float | Schedule = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Lion (Chen et al. 2023) with the paper's decoupled weight decay.

    ``chain(scale_by_lion(*betas, maximize=maximize), add_decayed_weights(weight_decay),
    scale_by_learning_rate(lr))``: ``param <- param - lr * (sign(b1*m + (1-b1)*g) +
    weight_decay * param)``, ``m <- b2*m + (1-b2)*g``. The paper suggests a learning rate
    3-10x smaller and a weight decay 3-10x larger than AdamW's.

    Args:
        lr: learning rate or schedule (default 1e-4).
        betas: ``(b1, b2)`` (default ``(0.9, 0.99)``).
        weight_decay: decoupled decay coefficient (multiplied by ``lr``), or a schedule.
        maximize: ascend the objective.

    Example:
        >>> tx = lion(lr=3e-5, weight_decay=0.1)
    """
    b1, b2 = _checked_betas(lr, betas, weight_decay)
    return _with_decay(
        lambda ascend: scale_by_lion(b1, b2, maximize=ascend),
        lr,
        weight_decay,
        maximize,
        decoupled=True,
    )


def muon(
    lr: float | Schedule = 1e-3,
    weight_decay: float | Schedule = 0.1,
    momentum: float | Schedule = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = EPS,
    ns_steps: int = NS_STEPS,
    adjust_lr_fn: AdjustLr = None,
    *,
    fallback: GradientTransformation | None = None,
    mask: Mask | None = None,
    ns_dtype: torch.dtype = torch.bfloat16,
) -> GradientTransformation:
    """Muon, as ``torch.optim.Muon``, with an optional fallback for the other leaves.

    ``chain(scale_by_muon(momentum, nesterov, ns_coefficients, eps, ns_steps,
    adjust_lr_fn), scale_by_learning_rate(lr), add_decoupled_decay(lr, weight_decay))``:
    ``param <- param * (1 - lr*wd) - lr * ratio(shape) * NS(momentum(G))``.

    Without ``fallback`` every leaf must be 2-d, as in torch. With ``fallback`` it is
    ``partition({"muon": <the chain above>, "fallback": fallback}, labels)``, the leaves
    ``mask(path, param)`` selects (default: the 2-d ones) labelled ``"muon"``: those get
    Muon, all others ``fallback`` (torch's docs recommend AdamW for biases, norms,
    embeddings and the like). The state is then a
    :class:`~functrain.transforms.combinators.PartitionState`; its ``inner_states["muon"]``
    is the chain's state.

    Args:
        lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps,
        adjust_lr_fn: as ``torch.optim.Muon`` (``lr``, ``weight_decay`` and ``momentum``
            may be schedules of the step).
        fallback: the transform for the leaves Muon does not take.
        mask: ``(path, param) -> bool`` choosing Muon's leaves (each must be 2-d).
        ns_dtype: dtype of the Newton-Schulz iteration (torch's bfloat16 by default).

    Example:
        >>> tx = muon(lr=0.02, fallback=adamw(lr=3e-4, weight_decay=0.01))
    """
    check_nonnegative("lr", lr, allow_schedule=True)
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    core = chain(
        scale_by_muon(
            momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn, ns_dtype=ns_dtype
        ),
        scale_by_learning_rate(lr),
        add_decoupled_decay(lr, weight_decay),
    )
    if fallback is None:
        if mask is not None:
            raise ValueError("mask selects Muon's leaves among others: it needs a fallback=")
        return core
    select = mask or is_matrix
    return partition(
        {"muon": core, "fallback": fallback},
        lambda path, leaf: "muon" if select(path, leaf) else "fallback",
    )
