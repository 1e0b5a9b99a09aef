"""The cycle family: pieces that set the value from the step alone (absolute steps).

:class:`OneCycle` (mmengine OneCycleLR), :class:`Cyclic` (torch CyclicLR) and
:class:`Lambda` (torch LambdaLR), with their builders.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import torch

from functrain.schedules._args import Arg
from functrain.schedules._piece import F64, Piece, member_pow
from functrain.schedules._schedule import Schedule
from functrain.schedules._window import Window, bind

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from functrain.schedules._members import Floats, Ints

__all__ = ["Cyclic", "Lambda", "OneCycle", "cyclic_lr", "lambda_lr", "onecycle_lr"]

_POSITIVE = Arg("float", lo=0, lo_open=True)


@attrs.frozen(kw_only=True, repr=False)
class OneCycle(Piece):
    """The 1cycle policy (mmengine OneCycleLR): up to ``eta_max``, then down to a minimum.

    The start value is ``eta_max / div_factor`` and the final value is that divided by
    ``final_div_factor``; the base value is not used (as in mmengine, pieces after this
    one in a list see ``eta_max / div_factor`` as their base value). mmengine raises once
    stepped past ``total_steps``; here the value holds the cycle's last value instead.

    Args:
        eta_max: the peak value.
        total_steps: cycle length in steps; default ``end - begin``.
        pct_start: fraction of the cycle spent increasing.
        anneal_strategy: ``'cos'`` or ``'linear'``.
        div_factor: start value is ``eta_max / div_factor``.
        final_div_factor: final value is ``eta_max / div_factor / final_div_factor``.
        three_phase: use the symmetric three-phase variant.
        begin, end, by_epoch: the window, see :class:`Piece`.

    Example:
        >>> from functrain.schedules import onecycle_lr
        >>> s = onecycle_lr(eta_max=25.0, total_steps=10, final_div_factor=2,
        ...                 anneal_strategy='linear')
        >>> [s(t) for t in range(4)]
        [1.0, 13.0, 25.0, 21.5]
    """

    eta_max: float = attrs.field(default=None)
    total_steps: int | None = None
    pct_start: float = 0.3
    anneal_strategy: str = "cos"
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False
    _args: ClassVar[Mapping[str, Arg]] = {
        "eta_max": Arg("float", required=True),
        "total_steps": Arg("int", optional=True, minimum=1),
        "pct_start": Arg("float", lo=0, hi=1),
        "anneal_strategy": Arg("choice", choices=("cos", "linear")),
        "div_factor": _POSITIVE,
        "final_div_factor": _POSITIVE,
        "three_phase": Arg("bool"),
    }
    _iter_scaled: ClassVar[tuple[str, ...]] = ("total_steps",)
    _sets_base: ClassVar[bool] = True
    _batched_fields: ClassVar[tuple[str, ...]] = ("eta_max", "div_factor", "final_div_factor")

    def _validate(self, name: str) -> None:
        if float(self.pct_start * self.cycle) - 1 == 0:
            raise ValueError(
                f"{name}: `pct_start` * `total_steps` == 1 gives an empty warm-up phase "
                "(mmengine divides by zero); change `pct_start` or `total_steps`"
            )

    @property
    def cycle(self) -> int:
        """The effective ``total_steps`` (``end - begin`` when not given, as mmengine)."""
        return self.total_steps if self.total_steps is not None else self.end - self.begin

    @property
    def initial(self) -> float:
        """The start value, ``eta_max / div_factor``."""
        return self.eta_max / self.div_factor

    def _phases(self) -> list[tuple[float, float, float]]:
        initial, top = self.initial, self.eta_max
        low = initial / self.final_div_factor
        total, pct = self.cycle, self.pct_start
        if self.three_phase:
            return [
                (float(pct * total) - 1, initial, top),
                (float(2 * pct * total) - 2, top, initial),
                (total - 1, initial, low),
            ]
        return [(float(pct * total) - 1, initial, top), (total - 1, top, low)]

    def _anneal(self, start: float, end: float, pct: Any) -> Any:
        if self.anneal_strategy == "cos":
            cos = torch.cos if isinstance(pct, torch.Tensor) else math.cos
            return end + (start - end) / 2.0 * (cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _value(self, k: int) -> float:
        k = min(k, self.cycle - 1)
        start_step: float = 0
        phases = self._phases()
        for i, (end_step, lo, hi) in enumerate(phases):
            if k <= end_step or i == len(phases) - 1:
                return self._anneal(lo, hi, (k - start_step) / (end_step - start_step))
            start_step = end_step
        raise AssertionError("unreachable")

    def _step(self, k: int, v: float, base: float) -> float:
        return self._value(k)

    def _continue(self, k0: int, v0: float, base: float, k: torch.Tensor) -> torch.Tensor:
        kf = k.clamp(max=self.cycle - 1).to(F64)
        phases = self._phases()
        out = None
        # Walk the phases backwards so that the first matching phase wins, as in mmengine.
        starts = [0.0] + [p[0] for p in phases[:-1]]
        for i in reversed(range(len(phases))):
            end_step, lo, hi = phases[i]
            span = end_step - starts[i]
            pct = (kf - starts[i]) / span if span != 0 else torch.zeros_like(kf)
            val = self._anneal(lo, hi, pct)
            out = val if out is None else torch.where(kf <= end_step, val, out)
        assert out is not None
        return torch.where(k <= k0, v0, out)

    def _levels(self, base: float) -> list[float] | None:
        initial = self.initial
        return [initial, self.eta_max, initial / self.final_div_factor]

    def _base_after(self, base: float) -> float:
        return self.initial


@attrs.frozen(kw_only=True, repr=False)
class Cyclic(Piece):
    """Triangular cyclical values between the base value and ``max_value`` (torch CyclicLR).

    The cycle starts at the base value. Momentum cycling is not part of this piece;
    schedule the momentum with its own ``Cyclic`` piece if you need it.

    Args:
        max_value: the other end of the cycle.
        step_size_up: steps from the base value up to ``max_value``.
        step_size_down: steps back down; defaults to ``step_size_up``.
        mode: ``'triangular'``, ``'triangular2'`` (halve the amplitude each cycle) or
            ``'exp_range'`` (scale the amplitude by ``gamma ** step``).
        gamma: the ``exp_range`` factor.
        begin, end, by_epoch: the window, see :class:`Piece`.

    Example:
        >>> from functrain.schedules import cyclic_lr
        >>> [cyclic_lr(1.0, max_value=3.0, step_size_up=2)(t) for t in range(5)]
        [1.0, 2.0, 3.0, 2.0, 1.0]
    """

    max_value: float = attrs.field(default=None)
    step_size_up: int = 2000
    step_size_down: int | None = None
    mode: str = "triangular"
    gamma: float = 1.0
    _args: ClassVar[Mapping[str, Arg]] = {
        "max_value": Arg("float", required=True),
        "step_size_up": Arg("int", minimum=1),
        "step_size_down": Arg("int", optional=True, minimum=1),
        "mode": Arg("choice", choices=("triangular", "triangular2", "exp_range")),
        "gamma": _POSITIVE,
    }
    _iter_scaled: ClassVar[tuple[str, ...]] = ("step_size_up", "step_size_down")
    _batched_fields: ClassVar[tuple[str, ...]] = ("max_value", "gamma")

    def _sizes(self) -> tuple[float, float]:
        up = float(self.step_size_up)
        down = float(self.step_size_down) if self.step_size_down is not None else up
        total = up + down
        return total, up / total

    def _value(self, k: Any, base: float) -> Any:
        total, ratio = self._sizes()
        tensor = isinstance(k, torch.Tensor)
        kf = k.to(F64) if tensor else k
        cycle = torch.floor(1 + kf / total) if tensor else math.floor(1 + kf / total)
        x = 1.0 + kf / total - cycle
        if tensor:
            scale = torch.where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
        else:
            scale = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        height = (self.max_value - base) * scale
        if self.mode == "triangular":
            return base + height * 1.0
        if self.mode == "triangular2":
            return base + height * (1 / (2.0 ** (cycle - 1)))
        if isinstance(self.gamma, torch.Tensor):  # member values
            return base + height * member_pow(self.gamma, kf)
        return base + height * (self.gamma**kf)

    def _step(self, k: int, v: float, base: float) -> float:
        return self._value(k, base)

    def _continue(self, k0: int, v0: float, base: float, k: torch.Tensor) -> torch.Tensor:
        return torch.where(k <= k0, v0, self._value(k.clamp(min=0), base))

    def _levels(self, base: float) -> list[float] | None:
        return [base, self.max_value]


@attrs.frozen(kw_only=True, repr=False)
class Lambda(Piece):
    """Set the value to ``base * fn(k)`` at local step ``k`` (torch LambdaLR).

    ``fn`` must work on Python ints *and* elementwise on float64 tensors holding whole
    numbers (for example ``lambda k: 0.95 ** k``), because the schedule evaluates it on
    whole step tensors.

    Args:
        fn: local step -> multiplier of the base value.
        begin, end, by_epoch: the window, see :class:`Piece`.

    Example:
        >>> from functrain.schedules import lambda_lr
        >>> [lambda_lr(2.0, fn=lambda k: 0.5 ** k)(t) for t in range(3)]
        [2.0, 1.0, 0.5]
    """

    fn: Callable[[Any], Any] = attrs.field(default=None)
    _args: ClassVar[Mapping[str, Arg]] = {"fn": Arg("callable")}

    def _step(self, k: int, v: float, base: float) -> float:
        return base * float(self.fn(k))

    def _continue(self, k0: int, v0: float, base: float, k: torch.Tensor) -> torch.Tensor:
        # float64 steps, so that e.g. ``0.95 ** k`` is not computed in float32.
        out = self.fn(k.clamp(min=0).to(F64))
        if not isinstance(out, torch.Tensor):
            out = torch.full_like(k, float(out), dtype=F64)
        return torch.where(k <= k0, v0, base * out.to(F64))


def onecycle_lr(
    base: Floats | None = None,
    *,
    eta_max: Floats,
    total_steps: Ints | None = None,
    pct_start: Floats = 0.3,
    anneal_strategy: str = "cos",
    div_factor: Floats = 25.0,
    final_div_factor: Floats = 1e4,
    three_phase: bool = False,
    **window: Unpack[Window],
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
        **window: ``begin``, ``end``, ``by_epoch``, ``epoch_length``: see :class:`Window`.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> s = onecycle_lr(eta_max=25.0, total_steps=10, final_div_factor=2,
        ...                 anneal_strategy='linear')
        >>> [s(t) for t in (0, 2, 9)]
        [1.0, 25.0, 0.5]
    """
    schedule = bind(
        "onecycle_lr",
        OneCycle,
        base,
        window,
        eta_max=eta_max,
        total_steps=total_steps,
        pct_start=pct_start,
        anneal_strategy=anneal_strategy,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        three_phase=three_phase,
    )
    if base is not None:
        return schedule
    (piece,) = schedule.pieces
    n = piece.members
    if n is None:
        return attrs.evolve(schedule, base=piece.initial)
    return attrs.evolve(schedule, base=tuple(piece.member(i).initial for i in range(n)))


def cyclic_lr(
    base: Floats | None = None,
    *,
    max_value: Floats,
    step_size_up: Ints = 2000,
    step_size_down: Ints | None = None,
    mode: str = "triangular",
    gamma: Floats = 1.0,
    **window: Unpack[Window],
) -> Schedule:
    """torch's CyclicLR between ``base`` and ``max_value`` (no momentum cycling).

    Args:
        base: the low end of the cycle (omit inside :func:`schedule_list`).
        max_value: the high end of the cycle.
        step_size_up: steps going up.
        step_size_down: steps going down (default ``step_size_up``).
        mode: ``'triangular'``, ``'triangular2'`` or ``'exp_range'``.
        gamma: ``exp_range`` decay.
        **window: ``begin``, ``end``, ``by_epoch``, ``epoch_length``: see :class:`Window`.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> [cyclic_lr(0.1, max_value=0.5, step_size_up=2)(t) for t in (0, 2, 4)]
        [0.1, 0.5, 0.1]
    """
    steps = dict(step_size_up=step_size_up, step_size_down=step_size_down)
    shape = dict(max_value=max_value, mode=mode, gamma=gamma)
    return bind("cyclic_lr", Cyclic, base, window, **steps, **shape)


def lambda_lr(
    base: Floats | None = None, *, fn: Callable[[Any], Any], **window: Unpack[Window]
) -> Schedule:
    """torch's LambdaLR: ``base * fn(k)`` at local step ``k``.

    ``fn`` must accept Python ints and float64 tensors of whole numbers (elementwise),
    e.g. ``lambda k: 0.95 ** k``.

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        fn: local step -> multiplier of ``base``.
        **window: ``begin``, ``end``, ``by_epoch``, ``epoch_length``: see :class:`Window`.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> lambda_lr(2.0, fn=lambda k: 1 / (1 + k))(3)
        0.5
    """
    return bind("lambda_lr", Lambda, base, window, fn=fn)
