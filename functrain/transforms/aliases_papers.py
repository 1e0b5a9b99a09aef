"""Optimizers from papers that torch.optim lacks: :func:`lamb`, :func:`lars`, :func:`lion`.

Each is a ``chain(...)`` of building blocks (the update rules live in
:mod:`~functrain.transforms.lamb`, :mod:`~functrain.transforms.lars`,
:mod:`~functrain.transforms.lion`); Lion's decoupled decay comes from
:mod:`~functrain.transforms.decay_order`. All are re-exported from
:mod:`functrain.transforms.alias` and from their rule's module.
"""

from __future__ import annotations

from functrain.transforms.adam import scale_by_adam
from functrain.transforms.base import GradientTransformation, chain
from functrain.transforms.decay_order import with_decay
from functrain.transforms.hyperparams import Schedule
from functrain.transforms.lamb import scale_by_trust_ratio
from functrain.transforms.lars import scale_by_lars
from functrain.transforms.lion import scale_by_lion
from functrain.transforms.momentum import trace
from functrain.transforms.scaling import add_decayed_weights, scale_by_learning_rate
from functrain.transforms.validation import check_betas, check_nonnegative, checked_betas

__all__ = ["lamb", "lars", "lion"]


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
    check_nonnegative("eps", eps, allow_members=True)
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
    b1, b2 = checked_betas(lr, betas, weight_decay)
    return with_decay(
        lambda ascend: scale_by_lion(b1, b2, maximize=ascend),
        lr,
        weight_decay,
        maximize,
        decoupled=True,
    )
