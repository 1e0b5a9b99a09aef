"""The decay family: pieces that multiply the value by a factor at some steps.

:class:`Step` (mmengine StepLR), :class:`MultiStep` (MultiStepLR), :class:`Exponential`
(ExponentialLR) and :class:`Multiplicative` (torch MultiplicativeLR), with their
builders.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

import attrs
import torch

from functrain.schedules._args import Arg
from functrain.schedules._piece import (
    F64,
    INF,
    Piece,
    clamp_local,
    const,
    member_pow,
    safe_pow,
    sign,
)
from functrain.schedules._schedule import Schedule
from functrain.schedules._window import Window, bind

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from functrain.schedules._members import Floats, Ints

__all__ = [
    "Exponential",
    "MultiStep",
    "Multiplicative",
    "Step",
    "exponential_lr",
    "multiplicative_lr",
    "multistep_lr",
    "step_lr",
]

_GAMMA = Arg("float", lo=0)


@attrs.frozen(kw_only=True, repr=False)
class _GammaDecay(Piece):
    """A piece that multiplies by ``gamma`` a whole number of times.

    Step, MultiStep and Exponential. Subclasses declare ``gamma`` and say how many times by local step ``k``
    (``_decays``); the field stays in the subclasses to keep their argument order."""

    if TYPE_CHECKING:
        gamma: float

    _batched_fields: ClassVar[tuple[str, ...]] = ("gamma",)

    def _decays(self, k: int) -> int:
        """How many times the value has been multiplied by ``gamma`` at local step ``k``."""
        raise NotImplementedError

    def _multiplicative(self) -> bool:
        return True

    def _factor_range(self) -> tuple[float, float]:
        last = safe_pow(self.gamma, self._decays(self.n))
        return (min(1.0, last), max(1.0, last))

    def _direction(self, v_in: float, base: float, k_from: int) -> int:
        return sign(self.gamma - 1) * sign(v_in)


@attrs.frozen(kw_only=True, repr=False)
class Step(_GammaDecay):
    """Multiply by ``gamma`` every ``step_size`` steps of the window (mmengine StepLR).

    Args:
        step_size: period of the decay (positive int).
        gamma: multiplicative factor (>= 0).
        begin, end, by_epoch: the window, see :class:`Piece`.

    Example:
        >>> from functrain.schedules import step_lr
        >>> [step_lr(1.0, step_size=2, gamma=0.5)(t) for t in range(5)]
        [1.0, 1.0, 0.5, 0.5, 0.25]
    """

    step_size: int = attrs.field(default=None)
    gamma: float = 0.1
    _args: ClassVar[Mapping[str, Arg]] = {
        "step_size": Arg("int", required=True, minimum=1),
        "gamma": _GAMMA,
    }
    _iter_scaled: ClassVar[tuple[str, ...]] = ("step_size",)

    def _step(self, k: int, v: float, base: float) -> float:
        if k == 0 or k % self.step_size != 0:
            return v
        return v * self.gamma

    def _decays(self, k: int) -> int:
        return k // self.step_size

    def _ratio(self, k0: int, k: torch.Tensor) -> torch.Tensor:
        q0 = clamp_local(k0) // self.step_size
        q = torch.div(k.clamp(min=0), self.step_size, rounding_mode="floor")
        return member_pow(self.gamma, (q - q0).to(F64))

    def _identity_at_start(self) -> bool:
        return True


@attrs.frozen(kw_only=True, repr=False)
class MultiStep(_GammaDecay):
    """Multiply by ``gamma`` at each milestone (mmengine MultiStepLR).

    Milestones are local steps counted from ``begin``; a repeated milestone multiplies
    by ``gamma`` once per repetition, as mmengine's ``Counter`` does.

    Args:
        milestones: non-decreasing local steps (ints >= 0).
        gamma: multiplicative factor (>= 0).
        begin, end, by_epoch: the window, see :class:`Piece`.

    Example:
        >>> from functrain.schedules import multistep_lr
        >>> [multistep_lr(1.0, milestones=[1, 3, 3], gamma=0.5)(t) for t in range(4)]
        [1.0, 0.5, 0.5, 0.125]
    """

    milestones: tuple[int, ...] = attrs.field(default=None)
    gamma: float = 0.1
    _args: ClassVar[Mapping[str, Arg]] = {
        "milestones": Arg("ints", required=True, minimum=0),
        "gamma": _GAMMA,
    }
    _iter_scaled: ClassVar[tuple[str, ...]] = ("milestones",)

    def _validate(self, name: str) -> None:
        ms = self.milestones
        for i in range(1, len(ms)):
            if ms[i] < ms[i - 1]:
                raise ValueError(
                    f"{name}: `milestones` must be non-decreasing, got {list(ms)} "
                    f"({ms[i]} after {ms[i - 1]})"
                )

    @functools.cached_property
    def _counter(self) -> Counter[int]:
        return Counter(self.milestones)

    def _step(self, k: int, v: float, base: float) -> float:
        if k not in self._counter:
            return v
        return v * self.gamma ** self._counter[k]

    def _decays(self, k: int) -> int:
        return sum(1 for m in self.milestones if m <= k)

    def _ratio(self, k0: int, k: torch.Tensor) -> torch.Tensor:
        if not self.milestones:
            return torch.ones_like(k, dtype=F64)
        ms = const(self.milestones, torch.int64, k.device)
        count = torch.searchsorted(ms, k, right=True)
        return member_pow(self.gamma, (count - self._decays(k0)).to(F64))

    def _identity_at_start(self) -> bool:
        return 0 not in self.milestones


@attrs.frozen(kw_only=True, repr=False)
class Exponential(_GammaDecay):
    """Multiply by ``gamma`` every step of the window after the first (mmengine ExponentialLR).

    Args:
        gamma: multiplicative factor (>= 0).
        begin, end, by_epoch: the window, see :class:`Piece`.

    Example:
        >>> from functrain.schedules import exponential_lr
        >>> [exponential_lr(1.0, gamma=0.5)(t) for t in range(3)]
        [1.0, 0.5, 0.25]
    """

    gamma: float = attrs.field(default=None)
    _args: ClassVar[Mapping[str, Arg]] = {"gamma": Arg("float", required=True, lo=0)}

    def _step(self, k: int, v: float, base: float) -> float:
        if k == 0:
            return v
        return v * self.gamma

    def _decays(self, k: int) -> int:
        return k

    def _ratio(self, k0: int, k: torch.Tensor) -> torch.Tensor:
        return member_pow(self.gamma, (k.clamp(min=0) - clamp_local(k0)).to(F64))

    def _identity_at_start(self) -> bool:
        return True


@attrs.frozen(kw_only=True, repr=False)
class Multiplicative(Piece):
    """Multiply by ``fn(k)`` at each local step ``k >= 1`` (torch MultiplicativeLR).

    ``fn`` is an arbitrary Python function of the local step (called with Python ints),
    so there is no closed form: the schedule tabulates it, and ``end`` must be finite.

    Args:
        fn: local step -> factor.
        begin, end, by_epoch: the window, see :class:`Piece`; ``end`` must be finite.

    Example:
        >>> from functrain.schedules import multiplicative_lr
        >>> [multiplicative_lr(1.0, fn=lambda k: 0.5, end=3)(t) for t in range(4)]
        [1.0, 0.5, 0.25, 0.25]
    """

    fn: Callable[[int], float] = attrs.field(default=None)
    _args: ClassVar[Mapping[str, Arg]] = {"fn": Arg("callable")}

    def _validate(self, name: str) -> None:
        if self.end == INF:
            raise ValueError(
                f"{name}: `end` must be finite; a user function has no closed form, "
                "so the schedule tabulates it over the window"
            )

    def _step(self, k: int, v: float, base: float) -> float:
        if k == 0:
            return v
        return v * float(self.fn(k))

    def _multiplicative(self) -> bool:
        return True

    def _has_closed_form(self) -> bool:
        return False

    def _identity_at_start(self) -> bool:
        return True


def step_lr(
    base: Floats | None = None, *, step_size: Ints, gamma: Floats = 0.1, **window: Unpack[Window]
) -> Schedule:
    """mmengine's StepLR: multiply by ``gamma`` every ``step_size`` steps.

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        step_size: decay period (positive int).
        gamma: decay factor.
        **window: ``begin``, ``end``, ``by_epoch``, ``epoch_length``: see :class:`Window`.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> [step_lr(1.0, step_size=2, gamma=0.1)(t) for t in (0, 1, 2)]
        [1.0, 1.0, 0.1]
    """
    return bind("step_lr", Step, base, window, step_size=step_size, gamma=gamma)


def multistep_lr(
    base: Floats | None = None,
    *,
    milestones: Sequence[int],
    gamma: Floats = 0.1,
    **window: Unpack[Window],
) -> Schedule:
    """mmengine's MultiStepLR: multiply by ``gamma`` at each milestone (repeats compound).

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        milestones: non-decreasing steps, counted from ``begin``.
        gamma: decay factor.
        **window: ``begin``, ``end``, ``by_epoch``, ``epoch_length``: see :class:`Window`.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> s = multistep_lr(0.02, milestones=[8, 11], by_epoch=True, epoch_length=100)
        >>> s(799), round(s(800), 8), round(s(1100), 8)
        (0.02, 0.002, 0.0002)
    """
    return bind("multistep_lr", MultiStep, base, window, milestones=tuple(milestones), gamma=gamma)


def exponential_lr(
    base: Floats | None = None, *, gamma: Floats, **window: Unpack[Window]
) -> Schedule:
    """mmengine's ExponentialLR: multiply by ``gamma`` every step.

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        gamma: decay factor.
        **window: ``begin``, ``end``, ``by_epoch``, ``epoch_length``: see :class:`Window`.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> round(exponential_lr(1.0, gamma=0.9)(2), 6)
        0.81
    """
    return bind("exponential_lr", Exponential, base, window, gamma=gamma)


def multiplicative_lr(
    base: Floats | None = None,
    *,
    fn: Callable[[int], float],
    begin: Ints = 0,
    end: Ints,
    by_epoch: bool = False,
    epoch_length: int | None = None,
) -> Schedule:
    """torch's MultiplicativeLR: multiply by ``fn(k)`` at each local step ``k >= 1``.

    The schedule tabulates ``fn`` over the window, so ``end`` is required (the one
    builder whose window has no default end, hence its explicit window arguments).

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
    window = Window(begin=begin, end=end, by_epoch=by_epoch, epoch_length=epoch_length)
    return bind("multiplicative_lr", Multiplicative, base, window, fn=fn)
