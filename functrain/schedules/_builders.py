"""Snake-case constructors: one per scheduler, returning a :class:`Schedule`.

Each builder takes the base value first. Without it, the result is an *unbound*
schedule meant for :func:`schedule_list`, which supplies the base value for the list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from functrain.schedules._pieces import (
    INF,
    Constant,
    CosineAnnealing,
    CosineRestart,
    Cyclic,
    Exponential,
    Lambda,
    Linear,
    Multiplicative,
    MultiStep,
    OneCycle,
    Piece,
    Poly,
    Step,
)
from functrain.schedules._schedule import Schedule

__all__ = [
    "constant_lr",
    "cosine_annealing_lr",
    "cosine_restart_lr",
    "cyclic_lr",
    "exponential_lr",
    "lambda_lr",
    "linear_lr",
    "linear_warmup",
    "multiplicative_lr",
    "multistep_lr",
    "onecycle_lr",
    "poly_lr",
    "step_lr",
    "warmup_cosine",
]


def _bind(piece: Piece, base: float | None, epoch_length: int | None) -> Schedule:
    return Schedule((piece,), base=base, epoch_length=epoch_length)


def constant_lr(
    base: float | None = None,
    *,
    factor: float = 1.0 / 3,
    begin: int = 0,
    end: int = INF,
    by_epoch: bool = False,
    epoch_length: int | None = None,
) -> Schedule:
    """mmengine's ConstantLR: ``base * factor`` until step ``end - 2``, then ``base``.

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        factor: multiplier in (0, 1].
        begin, end: the window (``end`` exclusive; mmengine restores at ``end - 1``).
        by_epoch: count ``begin``/``end`` in epochs.
        epoch_length: iterations per epoch, to call a by-epoch schedule with iterations.

    Returns:
        A :class:`Schedule` (any hyperparameter: lr, momentum, weight decay, ...).

    Example:
        >>> [constant_lr(0.1, factor=0.5, end=3)(t) for t in range(4)]
        [0.05, 0.05, 0.1, 0.1]
    """
    return _bind(
        Constant(factor=factor, begin=begin, end=end, by_epoch=by_epoch), base, epoch_length
    )


def linear_lr(
    base: float | None = None,
    *,
    start_factor: float = 1.0 / 3,
    end_factor: float = 1.0,
    begin: int = 0,
    end: int = INF,
    by_epoch: bool = False,
    epoch_length: int | None = None,
) -> Schedule:
    """mmengine's LinearLR: the factor goes linearly from ``start_factor`` to ``end_factor``.

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        start_factor: factor at ``begin``, in (0, 1] (0 is rejected: mmengine divides by it).
        end_factor: factor at ``end - 1``, in [0, 1].
        begin, end: the window.
        by_epoch: count ``begin``/``end`` in epochs.
        epoch_length: iterations per epoch, to call a by-epoch schedule with iterations.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> s = linear_lr(0.01, start_factor=0.1, end=500)
        >>> round(s(0), 6), s(499), s(10_000)
        (0.001, 0.01, 0.01)
    """
    piece = Linear(
        start_factor=start_factor, end_factor=end_factor, begin=begin, end=end, by_epoch=by_epoch
    )
    return _bind(piece, base, epoch_length)


def linear_warmup(
    base: float | None = None,
    *,
    steps: int,
    start_factor: float = 1e-3,
    by_epoch: bool = False,
    epoch_length: int | None = None,
) -> Schedule:
    """A linear warm-up from ``base * start_factor`` to ``base`` over ``steps`` steps.

    Same as ``linear_lr(base, start_factor=start_factor, end=steps)``: the value reaches
    ``base`` at step ``steps - 1``, like mmengine's usual ``LinearLR`` warm-up.

    Args:
        base: target value (omit inside :func:`schedule_list`).
        steps: length of the warm-up (>= 1).
        start_factor: the first value as a fraction of ``base``, in (0, 1].
        by_epoch: count ``steps`` in epochs.
        epoch_length: iterations per epoch, to call a by-epoch schedule with iterations.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> [linear_warmup(1.0, steps=3, start_factor=0.5)(t) for t in range(4)]
        [0.5, 0.75, 1.0, 1.0]
    """
    return linear_lr(
        base,
        start_factor=start_factor,
        end_factor=1.0,
        begin=0,
        end=steps,
        by_epoch=by_epoch,
        epoch_length=epoch_length,
    )


def step_lr(
    base: float | None = None,
    *,
    step_size: int,
    gamma: float = 0.1,
    begin: int = 0,
    end: int = INF,
    by_epoch: bool = False,
    epoch_length: int | None = None,
) -> Schedule:
    """mmengine's StepLR: multiply by ``gamma`` every ``step_size`` steps.

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        step_size: decay period (positive int).
        gamma: decay factor.
        begin, end: the window.
        by_epoch: count steps in epochs.
        epoch_length: iterations per epoch, to call a by-epoch schedule with iterations.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> [step_lr(1.0, step_size=2, gamma=0.1)(t) for t in (0, 1, 2)]
        [1.0, 1.0, 0.1]
    """
    piece = Step(step_size=step_size, gamma=gamma, begin=begin, end=end, by_epoch=by_epoch)
    return _bind(piece, base, epoch_length)


def multistep_lr(
    base: float | None = None,
    *,
    milestones: Sequence[int],
    gamma: float = 0.1,
    begin: int = 0,
    end: int = INF,
    by_epoch: bool = False,
    epoch_length: int | None = None,
) -> Schedule:
    """mmengine's MultiStepLR: multiply by ``gamma`` at each milestone (repeats compound).

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        milestones: non-decreasing steps, counted from ``begin``.
        gamma: decay factor.
        begin, end: the window.
        by_epoch: count steps in epochs.
        epoch_length: iterations per epoch, to call a by-epoch schedule with iterations.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> s = multistep_lr(0.02, milestones=[8, 11], by_epoch=True, epoch_length=100)
        >>> s(799), round(s(800), 8), round(s(1100), 8)
        (0.02, 0.002, 0.0002)
    """
    piece = MultiStep(
        milestones=tuple(milestones), gamma=gamma, begin=begin, end=end, by_epoch=by_epoch
    )
    return _bind(piece, base, epoch_length)


def exponential_lr(
    base: float | None = None,
    *,
    gamma: float,
    begin: int = 0,
    end: int = INF,
    by_epoch: bool = False,
    epoch_length: int | None = None,
) -> Schedule:
    """mmengine's ExponentialLR: multiply by ``gamma`` every step.

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        gamma: decay factor.
        begin, end: the window.
        by_epoch: count steps in epochs.
        epoch_length: iterations per epoch, to call a by-epoch schedule with iterations.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> round(exponential_lr(1.0, gamma=0.9)(2), 6)
        0.81
    """
    piece = Exponential(gamma=gamma, begin=begin, end=end, by_epoch=by_epoch)
    return _bind(piece, base, epoch_length)


def cosine_annealing_lr(
    base: float | None = None,
    *,
    T_max: int | None = None,  # noqa: N803 - mmengine's name
    eta_min: float | None = None,
    eta_min_ratio: float | None = None,
    begin: int = 0,
    end: int = INF,
    by_epoch: bool = False,
    epoch_length: int | None = None,
) -> Schedule:
    """mmengine's CosineAnnealingLR (also CosineAnnealingMomentum with a momentum base).

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        T_max: half period (default ``end - begin``).
        eta_min: absolute target; or ``eta_min_ratio``, a fraction of ``base``.
        eta_min_ratio: see ``eta_min``; not both.
        begin, end: the window.
        by_epoch: count steps in epochs.
        epoch_length: iterations per epoch, to call a by-epoch schedule with iterations.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> s = cosine_annealing_lr(0.1, T_max=100, eta_min=0.001)
        >>> s(0), round(s(100), 12)
        (0.1, 0.001)
    """
    piece = CosineAnnealing(
        T_max=T_max,
        eta_min=eta_min,
        eta_min_ratio=eta_min_ratio,
        begin=begin,
        end=end,
        by_epoch=by_epoch,
    )
    return _bind(piece, base, epoch_length)


def poly_lr(
    base: float | None = None,
    *,
    eta_min: float = 0.0,
    power: float = 1.0,
    begin: int = 0,
    end: int = INF,
    by_epoch: bool = False,
    epoch_length: int | None = None,
) -> Schedule:
    """mmengine's PolyLR: polynomial decay reaching ``eta_min`` at step ``end - 1``.

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        eta_min: final value.
        power: polynomial exponent.
        begin, end: the window.
        by_epoch: count steps in epochs.
        epoch_length: iterations per epoch, to call a by-epoch schedule with iterations.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> s = poly_lr(0.01, power=0.9, eta_min=1e-4, end=8, by_epoch=True)
        >>> s(0), s(7)
        (0.01, 0.0001)
    """
    piece = Poly(eta_min=eta_min, power=power, begin=begin, end=end, by_epoch=by_epoch)
    return _bind(piece, base, epoch_length)


def onecycle_lr(
    base: float | None = None,
    *,
    eta_max: float,
    total_steps: int | None = None,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
    begin: int = 0,
    end: int = INF,
    by_epoch: bool = False,
    epoch_length: int | None = None,
) -> Schedule:
    """mmengine's OneCycleLR. The base value is not used by the cycle itself.

    ``base`` defaults to the cycle's start value ``eta_max / div_factor`` (the value in
    force before ``begin``); :func:`schedule_list` accepts such an item whatever its
    base. Past ``total_steps`` the value holds (mmengine raises there).

    Args:
        base: value before ``begin`` (default ``eta_max / div_factor``).
        eta_max: peak value.
        total_steps: cycle length (default ``end - begin``).
        pct_start: fraction of the cycle spent going up.
        anneal_strategy: ``'cos'`` or ``'linear'``.
        div_factor: start value is ``eta_max / div_factor``.
        final_div_factor: final value is the start value / ``final_div_factor``.
        three_phase: the symmetric three-phase variant.
        begin, end: the window.
        by_epoch: count steps in epochs.
        epoch_length: iterations per epoch, to call a by-epoch schedule with iterations.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> s = onecycle_lr(eta_max=25.0, total_steps=10, final_div_factor=2,
        ...                 anneal_strategy='linear')
        >>> [s(t) for t in (0, 2, 9)]
        [1.0, 25.0, 0.5]
    """
    piece = OneCycle(
        eta_max=eta_max,
        total_steps=total_steps,
        pct_start=pct_start,
        anneal_strategy=anneal_strategy,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        three_phase=three_phase,
        begin=begin,
        end=end,
        by_epoch=by_epoch,
    )
    return _bind(piece, piece.initial if base is None else base, epoch_length)


def cosine_restart_lr(
    base: float | None = None,
    *,
    periods: Sequence[int],
    restart_weights: Sequence[float] = (1.0,),
    eta_min: float | None = None,
    eta_min_ratio: float | None = None,
    begin: int = 0,
    end: int = INF,
    by_epoch: bool = False,
    epoch_length: int | None = None,
) -> Schedule:
    """mmengine's CosineRestartLR: cosine periods restarting at ``base * weight``.

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        periods: period lengths.
        restart_weights: one weight per period.
        eta_min: absolute target; exactly one of ``eta_min`` and ``eta_min_ratio``.
        eta_min_ratio: target as a fraction of ``base``.
        begin, end: the window.
        by_epoch: count steps in epochs.
        epoch_length: iterations per epoch, to call a by-epoch schedule with iterations.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> s = cosine_restart_lr(1.0, periods=[4, 5], restart_weights=[1, 0.5], eta_min=0)
        >>> round(s(4), 6)
        0.5
    """
    piece = CosineRestart(
        periods=tuple(periods),
        restart_weights=tuple(restart_weights),
        eta_min=eta_min,
        eta_min_ratio=eta_min_ratio,
        begin=begin,
        end=end,
        by_epoch=by_epoch,
    )
    return _bind(piece, base, epoch_length)


def cyclic_lr(
    base: float | None = None,
    *,
    max_value: float,
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: str = "triangular",
    gamma: float = 1.0,
    begin: int = 0,
    end: int = INF,
    by_epoch: bool = False,
    epoch_length: int | None = None,
) -> Schedule:
    """torch's CyclicLR between ``base`` and ``max_value`` (no momentum cycling).

    Args:
        base: the low end of the cycle (omit inside :func:`schedule_list`).
        max_value: the high end of the cycle.
        step_size_up: steps going up.
        step_size_down: steps going down (default ``step_size_up``).
        mode: ``'triangular'``, ``'triangular2'`` or ``'exp_range'``.
        gamma: ``exp_range`` decay.
        begin, end: the window.
        by_epoch: count steps in epochs.
        epoch_length: iterations per epoch, to call a by-epoch schedule with iterations.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> [cyclic_lr(0.1, max_value=0.5, step_size_up=2)(t) for t in (0, 2, 4)]
        [0.1, 0.5, 0.1]
    """
    piece = Cyclic(
        max_value=max_value,
        step_size_up=step_size_up,
        step_size_down=step_size_down,
        mode=mode,
        gamma=gamma,
        begin=begin,
        end=end,
        by_epoch=by_epoch,
    )
    return _bind(piece, base, epoch_length)


def lambda_lr(
    base: float | None = None,
    *,
    fn: Callable[[Any], Any],
    begin: int = 0,
    end: int = INF,
    by_epoch: bool = False,
    epoch_length: int | None = None,
) -> Schedule:
    """torch's LambdaLR: ``base * fn(k)`` at local step ``k``.

    ``fn`` must accept Python ints and float64 tensors of whole numbers (elementwise),
    e.g. ``lambda k: 0.95 ** k``.

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        fn: local step -> multiplier of ``base``.
        begin, end: the window.
        by_epoch: count steps in epochs.
        epoch_length: iterations per epoch, to call a by-epoch schedule with iterations.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> lambda_lr(2.0, fn=lambda k: 1 / (1 + k))(3)
        0.5
    """
    return _bind(Lambda(fn=fn, begin=begin, end=end, by_epoch=by_epoch), base, epoch_length)


def multiplicative_lr(
    base: float | None = None,
    *,
    fn: Callable[[int], float],
    begin: int = 0,
    end: int,
    by_epoch: bool = False,
    epoch_length: int | None = None,
) -> Schedule:
    """torch's MultiplicativeLR: multiply by ``fn(k)`` at each local step ``k >= 1``.

    The schedule tabulates ``fn`` over the window, so ``end`` is required.

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        fn: local step (Python int) -> factor.
        begin, end: the window (``end`` finite).
        by_epoch: count steps in epochs.
        epoch_length: iterations per epoch, to call a by-epoch schedule with iterations.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> multiplicative_lr(1.0, fn=lambda k: 0.5, end=10)(2)
        0.25
    """
    piece = Multiplicative(fn=fn, begin=begin, end=end, by_epoch=by_epoch)
    return _bind(piece, base, epoch_length)


def warmup_cosine(
    base: float | None = None,
    *,
    warmup_steps: int,
    total_steps: int,
    start_factor: float = 1e-3,
    eta_min: float = 0.0,
    epoch_length: int | None = None,
) -> Schedule:
    """Linear warm-up for ``warmup_steps``, then cosine annealing to ``eta_min``.

    The mmengine list ``[LinearLR(start_factor, end=warmup_steps), CosineAnnealingLR(
    T_max=total_steps - warmup_steps, eta_min, begin=warmup_steps, end=total_steps)]``.

    Args:
        base: peak value (omit inside :func:`schedule_list`).
        warmup_steps: warm-up length (>= 1).
        total_steps: step at which the cosine reaches ``eta_min`` (> ``warmup_steps``).
        start_factor: first warm-up value as a fraction of ``base``.
        eta_min: final value.
        epoch_length: unused by the pieces (both count iterations); kept for symmetry.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> s = warmup_cosine(0.1, warmup_steps=10, total_steps=110, eta_min=0.001)
        >>> round(s(0), 8), round(s(9), 8), round(s(109), 6)
        (0.0001, 0.1, 0.001024)
    """
    if total_steps <= warmup_steps:
        raise ValueError(
            f"warmup_cosine: `total_steps` ({total_steps}) must exceed `warmup_steps` "
            f"({warmup_steps})"
        )
    pieces = (
        Linear(start_factor=start_factor, end_factor=1.0, begin=0, end=warmup_steps),
        CosineAnnealing(
            T_max=total_steps - warmup_steps, eta_min=eta_min, begin=warmup_steps, end=total_steps
        ),
    )
    return Schedule(pieces, base=base, epoch_length=epoch_length)
