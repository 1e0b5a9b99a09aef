"""The warm-up family: pieces that scale the value by a factor that returns to 1.

:class:`Constant` (mmengine ConstantLR) and :class:`Linear` (LinearLR), with their
builders :func:`constant_lr`, :func:`linear_lr` and :func:`linear_warmup`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import attrs
import torch

from functrain.schedules._args import Arg
from functrain.schedules._piece import F64, Piece, fill, sign
from functrain.schedules._schedule import Schedule
from functrain.schedules._window import Window, bind

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from functrain.schedules._members import Floats, Ints

__all__ = ["Constant", "Linear", "constant_lr", "linear_lr", "linear_warmup"]

_ZERO_START = (
    " (mmengine divides by start_factor * (end - begin - 1) and fails with "
    "ZeroDivisionError); use a small positive value such as 1e-3 for a warmup from "
    "(almost) zero"
)


@attrs.frozen(kw_only=True, repr=False)
class Constant(Piece):
    """Multiply the value by ``factor`` until the last step of the window (mmengine ConstantLR).

    mmengine restores the value at local step ``end - begin - 1``, i.e. one step before
    ``end``; that is reproduced. ``factor=0`` is rejected: mmengine divides by it when
    it restores the value.

    Args:
        factor: multiplier in (0, 1].
        begin, end, by_epoch: the window, see :class:`Piece`.

    Example:
        >>> from functrain.schedules import schedule_list
        >>> [schedule_list([Constant(factor=0.5, end=3)], base=1.0)(t) for t in range(4)]
        [0.5, 0.5, 1.0, 1.0]
    """

    factor: float = 1.0 / 3
    _args: ClassVar[Mapping[str, Arg]] = {
        "factor": Arg("float", lo=0, hi=1, zero="; mmengine divides by it when the window ends"),
    }
    _batched_fields: ClassVar[tuple[str, ...]] = ("factor",)

    def _step(self, k: int, v: float, base: float) -> float:
        if k == 0:
            return v * self.factor
        if k == self.n:
            return v * (1.0 / self.factor)
        return v

    def _multiplicative(self) -> bool:
        return True

    def _cumulative(self, k: int) -> float:
        if k < 0:
            return 1.0
        if self.n == 0 or k < self.n:
            return self.factor
        return self.factor * (1.0 / self.factor)

    def _ratio(self, k0: int, k: torch.Tensor) -> torch.Tensor:
        f0 = self._cumulative(k0)
        before = torch.where(k < 0, 1.0, fill(k, self.factor))
        cum = before if self.n == 0 else torch.where(k >= self.n, self._cumulative(self.n), before)
        return cum / f0

    def _factor_range(self) -> tuple[float, float]:
        return (self.factor, 1.0)

    def _direction(self, v_in: float, base: float, k_from: int) -> int:
        return sign(v_in)


@attrs.frozen(kw_only=True, repr=False)
class Linear(Piece):
    """Multiply by a factor going linearly from ``start_factor`` to ``end_factor`` (LinearLR).

    The factor is ``start_factor`` at ``begin`` and ``end_factor`` at ``end - 1``.
    ``start_factor=0`` is rejected: mmengine divides by zero on the next step.

    Args:
        start_factor: factor at ``begin``, in (0, 1].
        end_factor: factor at ``end - 1``, in [0, 1].
        begin, end, by_epoch: the window, see :class:`Piece`.

    Example:
        >>> from functrain.schedules import linear_lr
        >>> [round(linear_lr(1.0, start_factor=0.5, end=3)(t), 6) for t in range(4)]
        [0.5, 0.75, 1.0, 1.0]
    """

    start_factor: float = 1.0 / 3
    end_factor: float = 1.0

    _args: ClassVar[Mapping[str, Arg]] = {
        "start_factor": Arg("float", lo=0, hi=1, lo_open=True, zero=_ZERO_START),
        "end_factor": Arg("float", lo=0, hi=1),
    }
    _batched_fields: ClassVar[tuple[str, ...]] = ("start_factor", "end_factor")

    def _step(self, k: int, v: float, base: float) -> float:
        sf, ef = self.start_factor, self.end_factor
        if k == 0:
            return v * sf
        return v * (1.0 + (ef - sf) / (self.n * sf + (k - 1) * (ef - sf)))

    def _multiplicative(self) -> bool:
        return True

    def _cumulative(self, k: int) -> float:
        if k < 0:
            return 1.0
        if self.n == 0:
            return self.start_factor
        return self.start_factor + (self.end_factor - self.start_factor) * k / self.n

    def _ratio(self, k0: int, k: torch.Tensor) -> torch.Tensor:
        f0 = self._cumulative(k0)
        # f0 == 0 only at the window's last step with end_factor=0: nothing moves after it.
        if not isinstance(f0, torch.Tensor) and f0 == 0:
            return torch.ones_like(k, dtype=F64)
        kf = k.to(F64)
        if self.n == 0:
            cum = torch.where(k < 0, 1.0, fill(k, self.start_factor))
        else:
            d = self.end_factor - self.start_factor
            cum = torch.where(k < 0, 1.0, self.start_factor + d * kf / self.n)
        out = torch.where(k == k0, 1.0, cum / f0)
        if isinstance(f0, torch.Tensor):  # member values: the same rule, member by member
            out = torch.where(f0 == 0, 1.0, out)
        return out

    def _factor_range(self) -> tuple[float, float]:
        vals = (1.0, self.start_factor, self.end_factor)
        return (min(vals), max(vals))

    def _direction(self, v_in: float, base: float, k_from: int) -> int:
        return sign(self.end_factor - self.start_factor) * sign(v_in)


def constant_lr(
    base: Floats | None = None, *, factor: Floats = 1.0 / 3, **window: Unpack[Window]
) -> Schedule:
    """mmengine's ConstantLR: ``base * factor`` until step ``end - 2``, then ``base``.

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        factor: multiplier in (0, 1].
        **window: ``begin``, ``end`` (exclusive; mmengine restores at ``end - 1``),
            ``by_epoch``, ``epoch_length``: see :class:`Window`.

    Returns:
        A :class:`Schedule` (any hyperparameter: lr, momentum, weight decay, ...).

    Example:
        >>> [constant_lr(0.1, factor=0.5, end=3)(t) for t in range(4)]
        [0.05, 0.05, 0.1, 0.1]
    """
    return bind("constant_lr", Constant, base, window, factor=factor)


def linear_lr(
    base: Floats | None = None,
    *,
    start_factor: Floats = 1.0 / 3,
    end_factor: Floats = 1.0,
    **window: Unpack[Window],
) -> Schedule:
    """mmengine's LinearLR: the factor goes linearly from ``start_factor`` to ``end_factor``.

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        start_factor: factor at ``begin``, in (0, 1] (0 is rejected: mmengine divides by it).
        end_factor: factor at ``end - 1``, in [0, 1].
        **window: ``begin``, ``end``, ``by_epoch``, ``epoch_length``: see :class:`Window`.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> s = linear_lr(0.01, start_factor=0.1, end=500)
        >>> round(s(0), 6), s(499), s(10_000)
        (0.001, 0.01, 0.01)
    """
    return bind("linear_lr", Linear, base, window, start_factor=start_factor, end_factor=end_factor)


def linear_warmup(
    base: Floats | None = None,
    *,
    steps: Ints,
    start_factor: Floats = 1e-3,
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
