"""The Adam family under torch.optim's names, arguments and defaults: :func:`adam`,
:func:`adamw`, :func:`adamax`, :func:`nadam`, :func:`radam`.

Each is a ``chain(...)`` of building blocks (the update rules live in
:mod:`~functrain.transforms.adam`, :mod:`~functrain.transforms.adamax`, ...) with torch's
weight decay order from :mod:`~functrain.transforms.decay_order`. All are re-exported from
:mod:`functrain.transforms.alias` and from their rule's module.
"""

from __future__ import annotations

import torch

from functrain.transforms.adam import scale_by_adam, scale_by_adamw
from functrain.transforms.adamax import scale_by_adamax
from functrain.transforms.base import GradientTransformation, chain
from functrain.transforms.decay_order import with_decay
from functrain.transforms.hyperparams import Schedule
from functrain.transforms.nadam import scale_by_nadam
from functrain.transforms.radam import scale_by_radam
from functrain.transforms.scaling import scale_by_learning_rate
from functrain.transforms.validation import checked_betas

__all__ = ["adam", "adamax", "adamw", "nadam", "radam"]


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
    b1, b2 = checked_betas(lr, betas, weight_decay)
    if decoupled_weight_decay:
        return adamw(lr, betas, eps, weight_decay, amsgrad, maximize=maximize, mu_dtype=mu_dtype)
    return with_decay(
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
    b1, b2 = checked_betas(lr, betas, weight_decay)
    return chain(
        scale_by_adamw(
            b1, b2, eps, weight_decay, amsgrad=amsgrad, maximize=maximize, mu_dtype=mu_dtype
        ),
        scale_by_learning_rate(lr),
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
    b1, b2 = checked_betas(lr, betas, weight_decay)
    return with_decay(
        lambda ascend: scale_by_adamax(b1, b2, eps, maximize=ascend), lr, weight_decay, maximize
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
    b1, b2 = checked_betas(lr, betas, weight_decay)
    return with_decay(
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
    b1, b2 = checked_betas(lr, betas, weight_decay)
    return with_decay(
        lambda ascend: scale_by_radam(b1, b2, eps, maximize=ascend),
        lr,
        weight_decay,
        maximize,
        decoupled=decoupled_weight_decay,
    )
