"""torch.optim's two orders of weight decay, as chains around an optimizer's direction.

L2 (``weight_decay`` in Adam, Adagrad, Adadelta, Adamax, ASGD, NAdam, RAdam, RMSprop, SGD) is
added to the gradient before the direction: ``chain(add_decayed_weights(wd), direction,
...)``, with ``maximize`` negating the gradient first (:func:`l2_chain`). Decoupled decay
(AdamW, NAdamW, RAdam's ``decoupled_weight_decay``, Lion) follows the direction, inside the
learning rate: ``chain(direction, add_decayed_weights(wd), scale_by_learning_rate(lr))``,
which is torch's ``p *= 1 - lr * wd`` before the step (:func:`with_decay`).

The named optimizers (:mod:`functrain.transforms.aliases_adam`,
:mod:`functrain.transforms.aliases_torch`, :mod:`functrain.transforms.aliases_papers`)
build their chains with these.
"""

from __future__ import annotations

from collections.abc import Callable

from functrain.transforms.base import GradientTransformation, chain
from functrain.transforms.hyperparams import Schedule
from functrain.transforms.scaling import add_decayed_weights, scale, scale_by_learning_rate

__all__ = ["l2_chain", "with_decay"]


def l2_chain(
    direction: Callable[[bool], GradientTransformation],
    weight_decay: float | Schedule,
    maximize: bool,
    *after: GradientTransformation,
) -> GradientTransformation:
    """torch's L2 order: ``chain(add_decayed_weights(weight_decay), direction(maximize),
    *after)``. ``direction(ascend)`` builds the rule, negating its input when ``ascend``.

    torch negates the gradient *before* adding the decay term, so with ``maximize`` and a
    decay the negation is a ``scale(-1)`` in front and the rule itself does not negate.

    Args:
        direction: ``ascend -> transform``, the optimizer's update rule.
        weight_decay: L2 coefficient, or a schedule.
        maximize: ascend the objective.
        *after: members chained after the direction (momentum, the learning rate).
    """
    negate_first = bool(maximize and weight_decay)
    return chain(
        *([scale(-1.0)] if negate_first else []),
        add_decayed_weights(weight_decay),
        direction(maximize and not negate_first),
        *after,
    )


def with_decay(
    direction: Callable[[bool], GradientTransformation],
    lr: float | Schedule,
    weight_decay: float | Schedule,
    maximize: bool,
    *,
    decoupled: bool = False,
) -> GradientTransformation:
    """``direction`` with torch's weight decay and the learning rate: L2 (:func:`l2_chain`),
    or ``decoupled``: ``p <- p - lr * (direction + weight_decay * p)``.

    Args:
        direction: ``ascend -> transform``, the optimizer's update rule.
        lr: learning rate, or a schedule.
        weight_decay: decay coefficient, or a schedule.
        maximize: ascend the objective.
        decoupled: AdamW-style decay (after the direction) instead of L2.
    """
    if decoupled:
        return chain(
            direction(maximize), add_decayed_weights(weight_decay), scale_by_learning_rate(lr)
        )
    return l2_chain(direction, weight_decay, maximize, scale_by_learning_rate(lr))
