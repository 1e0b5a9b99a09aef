"""Optimizers under torch.optim's names, arguments and defaults, as compositions of transforms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from functrain.transforms.adam import scale_by_adam, scale_by_adamw
from functrain.transforms.base import GradientTransformation, chain
from functrain.transforms.momentum import trace
from functrain.transforms.scaling import add_decayed_weights, scale, scale_by_learning_rate
from functrain.transforms.validation import check_betas, check_nonnegative

__all__ = ["adam", "adamw", "sgd"]

Schedule = Callable[[Any], Any]


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
    check_nonnegative("lr", lr, allow_schedule=True)
    b1, b2 = check_betas(betas)
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    if decoupled_weight_decay:
        return adamw(lr, betas, eps, weight_decay, amsgrad, maximize=maximize, mu_dtype=mu_dtype)
    if maximize and weight_decay:
        # torch negates the gradient before adding the decay term.
        return chain(
            scale(-1.0),
            add_decayed_weights(weight_decay),
            scale_by_adam(b1, b2, eps, amsgrad=amsgrad, mu_dtype=mu_dtype),
            scale_by_learning_rate(lr),
        )
    return chain(
        add_decayed_weights(weight_decay),
        scale_by_adam(b1, b2, eps, amsgrad=amsgrad, maximize=maximize, mu_dtype=mu_dtype),
        scale_by_learning_rate(lr),
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
    check_nonnegative("lr", lr, allow_schedule=True)
    b1, b2 = check_betas(betas)
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    return chain(
        scale_by_adamw(
            b1, b2, eps, weight_decay, amsgrad=amsgrad, maximize=maximize, mu_dtype=mu_dtype
        ),
        scale_by_learning_rate(lr),
    )
