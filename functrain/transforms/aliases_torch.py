"""torch.optim's other optimizers under its names, arguments and defaults: :func:`sgd`,
:func:`adagrad`, :func:`adadelta`, :func:`asgd`, :func:`rmsprop`, :func:`rprop`,
:func:`adafactor`, :func:`muon` (the Adam family is in
:mod:`~functrain.transforms.aliases_adam`).

Each is a ``chain(...)`` of building blocks (the update rules live in
:mod:`~functrain.transforms.momentum`, :mod:`~functrain.transforms.adagrad`, ...) with torch's
weight decay order from :mod:`~functrain.transforms.decay_order`. All are re-exported from
:mod:`functrain.transforms.alias` and from their rule's module.
"""

from __future__ import annotations

import torch

from functrain.transforms.adadelta import check_rho, scale_by_adadelta
from functrain.transforms.adafactor import (
    add_decoupled_decay,
    scale_by_factored_rms,
    scale_by_relative_step,
)
from functrain.transforms.adagrad import AdagradLearningRate, scale_by_adagrad
from functrain.transforms.asgd import scale_by_asgd
from functrain.transforms.base import GradientTransformation, chain
from functrain.transforms.combinators import partition
from functrain.transforms.decay_order import l2_chain, with_decay
from functrain.transforms.hyperparams import Schedule
from functrain.transforms.members import per_member
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
from functrain.transforms.rmsprop import scale_by_rms
from functrain.transforms.rprop import scale_by_rprop
from functrain.transforms.scaling import add_decayed_weights, scale, scale_by_learning_rate
from functrain.transforms.validation import check_momentum, check_nonnegative, is_schedule

__all__ = ["adadelta", "adafactor", "adagrad", "asgd", "muon", "rmsprop", "rprop", "sgd"]


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
    check_nonnegative("eps", eps, allow_members=True)
    learning_rate = lr if lr_decay == 0 else AdagradLearningRate(lr, lr_decay)
    return with_decay(
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
    check_nonnegative("eps", eps, allow_members=True)
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    return with_decay(
        lambda ascend: scale_by_adadelta(rho, eps, maximize=ascend), lr, weight_decay, maximize
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
    return l2_chain(
        lambda ascend: scale_by_asgd(lr, lambd, alpha, t0, maximize=ascend),
        weight_decay,
        maximize,
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
    check_nonnegative("eps", eps, allow_members=True)
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    check_momentum("momentum", momentum, allow_schedule=True)
    momentum = per_member("momentum", momentum)  # per-member values run as a schedule
    with_momentum = is_schedule(momentum) or momentum > 0
    return l2_chain(
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
        lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn:
            as ``torch.optim.Muon`` (``lr``, ``weight_decay`` and ``momentum`` may be
            schedules of the step).
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
