"""The annealing family: pieces that pull the value towards a target (affine steps).

:class:`CosineAnnealing` (mmengine CosineAnnealingLR), :class:`Poly` (PolyLR) and
:class:`CosineRestart` (CosineRestartLR), with their builders and :func:`warmup_cosine`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import torch

from functrain.schedules._args import Arg
from functrain.schedules._members import count_members, is_vector, name_member, vector_values
from functrain.schedules._piece import F64, Piece, clamp_local, const, cos_term, fill, sign
from functrain.schedules._schedule import Schedule
from functrain.schedules._warmup import Linear
from functrain.schedules._window import Window, bind

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from functrain.schedules._members import Floats, Ints

__all__ = [
    "CosineAnnealing",
    "CosineRestart",
    "Poly",
    "cosine_annealing_lr",
    "cosine_restart_lr",
    "poly_lr",
    "warmup_cosine",
]

# Checked after the test that not both (or exactly one) are given, which shows them as given.
_ETA_ARGS = {"eta_min": Arg("float", optional=True), "eta_min_ratio": Arg("float", optional=True)}


@attrs.frozen(kw_only=True, repr=False)
class CosineAnnealing(Piece):
    """Cosine annealing towards ``eta_min`` over ``T_max`` steps (mmengine CosineAnnealingLR).

    The piece follows mmengine's recursion, so it starts from whatever value is in force
    at ``begin`` (set by earlier pieces) and, past ``T_max``, climbs back towards the
    base value. ``eta_min`` is absolute; ``eta_min_ratio`` is relative to the base value.
    ``eta_min`` may exceed the start value (the curve then goes up, as in the seed's
    momentum and warm-up configs).

    Args:
        T_max: half period in steps (positive int); default ``end - begin``.
        eta_min: absolute target value (default 0 when ``eta_min_ratio`` is not given).
        eta_min_ratio: target as a fraction of the base value.
        begin, end, by_epoch: the window, see :class:`Piece`.

    Example:
        >>> from functrain.schedules import cosine_annealing_lr
        >>> [round(cosine_annealing_lr(1.0, T_max=2)(t), 6) for t in range(3)]
        [1.0, 0.5, 0.0]
    """

    T_max: int | None = None
    eta_min: float | None = None
    eta_min_ratio: float | None = None
    _args: ClassVar[Mapping[str, Arg]] = {"T_max": Arg("int", optional=True)}
    _iter_scaled: ClassVar[tuple[str, ...]] = ("T_max",)
    _extra_member_args: ClassVar[Mapping[str, Arg]] = _ETA_ARGS
    _batched_fields: ClassVar[tuple[str, ...]] = ("eta_min", "eta_min_ratio")

    def _validate(self, name: str) -> None:
        if self.T_max is not None and self.T_max <= 0:
            raise ValueError(f"{name}: `T_max` must be > 0, got {self.T_max}")
        if self.eta_min is not None and self.eta_min_ratio is not None:
            raise ValueError(
                f"{name}: give either `eta_min` or `eta_min_ratio`, not both "
                f"(got eta_min={self.eta_min}, eta_min_ratio={self.eta_min_ratio})"
            )
        self._check(name, _ETA_ARGS)

    @property
    def period(self) -> int:
        """The effective ``T_max`` (``end - begin`` when not given, as mmengine)."""
        return self.T_max if self.T_max is not None else self.end - self.begin

    def _eta(self, base: float) -> float:
        if self.eta_min_ratio is not None:
            return base * self.eta_min_ratio
        return 0.0 if self.eta_min is None else self.eta_min

    def _step(self, k: int, v: float, base: float) -> float:
        t = self.period
        eta = self._eta(base)
        if k == 0:
            return v
        if (k - 1 - t) % (2 * t) == 0:
            return v + (base - eta) * (1 - math.cos(math.pi / t)) / 2
        return (1 + math.cos(math.pi * k / t)) / (1 + math.cos(math.pi * (k - 1) / t)) * (
            v - eta
        ) + eta

    def _reaches_restart(self) -> bool:
        # mmengine's additive branch fires at local steps T+1, 3T+1, ...
        return self.n >= self.period + 1

    def _multiplicative(self) -> bool:
        zero = self.eta_min_ratio == 0 if self.eta_min_ratio is not None else not self.eta_min
        return zero and not self._reaches_restart()

    def _ratio(self, k0: int, k: torch.Tensor) -> torch.Tensor:
        t = self.period
        k0c = clamp_local(k0)
        c0 = cos_term(k0c, t)
        if c0 == 0:
            return torch.ones_like(k, dtype=F64)
        return torch.where(k <= k0c, 1.0, cos_term(k.to(F64), t) / c0)

    def _continue(self, k0: int, v0: float, base: float, k: torch.Tensor) -> torch.Tensor:
        t = self.period
        eta = self._eta(base)
        k0c = clamp_local(k0)
        u0 = v0 - eta
        kf = k.to(F64)
        ck = cos_term(kf, t)
        c0 = cos_term(k0c, t)
        # No restart between k0 and k: the ratios telescope.
        plain = u0 * ck / c0 if c0 != 0 else torch.zeros_like(kf)
        # First restart (additive step) after k0, and the last one at or before k.
        first = t + 1 if k0c < t + 1 else t + 1 + 2 * t * ((k0c - t - 1) // (2 * t) + 1)
        if first > self.n:  # the usual case: the window ends before the curve turns back up
            return torch.where(k <= k0c, v0, plain + eta)
        last = t + 1 + 2 * t * torch.div(k - t - 1, 2 * t, rounding_mode="floor")
        d = (base - eta) * (1 - math.cos(math.pi / t)) / 2
        # The value just before a restart is eta exactly (1 + cos(pi) == 0), unless the
        # restart comes right after k0; a second restart forgets u0 for the same reason.
        keep = (last == first) & (first == k0c + 1)
        kept = torch.where(keep, u0, torch.zeros_like(kf))
        restarted = (kept + d) * ck / cos_term(last.to(F64), t)
        u = torch.where(k >= first, restarted, plain)
        return torch.where(k <= k0c, v0, u + eta)

    def _factor_range(self) -> tuple[float, float]:
        return (0.0, 1.0)

    def _levels(self, base: float) -> list[float] | None:
        return [self._eta(base), base]

    def _identity_at_start(self) -> bool:
        return True

    def _direction(self, v_in: float, base: float, k_from: int) -> int:
        t = self.period
        if self.n >= t + 1 or k_from > t:
            return 0
        return sign(self._eta(base) - v_in)


@attrs.frozen(kw_only=True, repr=False)
class Poly(Piece):
    """Polynomial decay towards ``eta_min`` at the window's last step (mmengine PolyLR).

    Args:
        eta_min: value reached at ``end - 1``.
        power: exponent of the polynomial (>= 0).
        begin, end, by_epoch: the window, see :class:`Piece`.

    Example:
        >>> from functrain.schedules import poly_lr
        >>> [poly_lr(1.0, power=1.0, end=3)(t) for t in range(4)]
        [1.0, 0.5, 0.0, 0.0]
    """

    eta_min: float = 0.0
    power: float = 1.0
    _args: ClassVar[Mapping[str, Arg]] = {"eta_min": Arg("float"), "power": Arg("float", lo=0)}
    _batched_fields: ClassVar[tuple[str, ...]] = ("eta_min",)

    def _step(self, k: int, v: float, base: float) -> float:
        if k == 0:
            return v
        return (v - self.eta_min) * (1 - 1 / (self.n - k + 1)) ** self.power + self.eta_min

    def _multiplicative(self) -> bool:
        return self.eta_min == 0

    def _ratio(self, k0: int, k: torch.Tensor) -> torch.Tensor:
        k0c = clamp_local(k0)
        left = self.n - k0c
        if left <= 0:
            return torch.ones_like(k, dtype=F64)
        r = torch.pow((self.n - k.clamp(min=k0c)).to(F64) / left, self.power)
        return torch.where(k <= k0c, 1.0, r)

    def _continue(self, k0: int, v0: float, base: float, k: torch.Tensor) -> torch.Tensor:
        # The first step is the identity in mmengine; keep v0 exact instead of
        # eta_min + (v0 - eta_min), which loses bits when v0 << eta_min.
        out = self.eta_min + (v0 - self.eta_min) * self._ratio(k0, k)
        return torch.where(k <= clamp_local(k0), v0, out)

    def _factor_range(self) -> tuple[float, float]:
        return (0.0, 1.0)

    def _levels(self, base: float) -> list[float] | None:
        return [self.eta_min]

    def _identity_at_start(self) -> bool:
        return True

    def _direction(self, v_in: float, base: float, k_from: int) -> int:
        return sign(self.eta_min - v_in)


@attrs.frozen(kw_only=True, repr=False)
class CosineRestart(Piece):
    """Cosine annealing with restarts (mmengine CosineRestartLR).

    Period ``i`` starts at ``base * restart_weights[i]`` and anneals towards ``eta_min``
    (or ``base * eta_min_ratio``); after the last period the value stays put.

    Args:
        periods: length of each period (positive ints).
        restart_weights: the start value of each period, as a fraction of the base value.
        eta_min: absolute target value. Exactly one of ``eta_min``/``eta_min_ratio``.
        eta_min_ratio: target as a fraction of the base value.
        begin, end, by_epoch: the window, see :class:`Piece`.

    Example:
        >>> from functrain.schedules import cosine_restart_lr
        >>> s = cosine_restart_lr(1.0, periods=[2, 2], restart_weights=[1, 0.5], eta_min=0)
        >>> [round(s(t), 6) for t in range(5)]
        [1.0, 0.5, 0.5, 0.25, 0.25]
    """

    periods: tuple[int, ...] = attrs.field(default=None)
    restart_weights: tuple[float, ...] = (1.0,)
    eta_min: float | None = None
    eta_min_ratio: float | None = None
    _args: ClassVar[Mapping[str, Arg]] = {
        "periods": Arg("ints", required=True, minimum=1),
        "restart_weights": Arg("floats"),
    }
    _iter_scaled: ClassVar[tuple[str, ...]] = ("periods",)
    _extra_member_args: ClassVar[Mapping[str, Arg]] = _ETA_ARGS
    _batched_fields: ClassVar[tuple[str, ...]] = ("eta_min", "eta_min_ratio")

    def _validate(self, name: str) -> None:
        if not self.periods:
            raise ValueError(f"{name}: `periods` must not be empty")
        if len(self.restart_weights) != len(self.periods):
            raise ValueError(
                f"{name}: `restart_weights` must have one entry per period "
                f"({len(self.periods)}), got {len(self.restart_weights)}"
            )
        if (self.eta_min is None) == (self.eta_min_ratio is None):
            raise ValueError(
                f"{name}: give exactly one of `eta_min` and `eta_min_ratio` "
                f"(got eta_min={self.eta_min}, eta_min_ratio={self.eta_min_ratio})"
            )
        self._check(name, _ETA_ARGS)

    @functools.cached_property
    def _cumulative(self) -> tuple[int, ...]:
        out, total = [], 0
        for p in self.periods:
            total += p
            out.append(total)
        return tuple(out)

    def _eta(self, base: float) -> float:
        return base * self.eta_min_ratio if self.eta_min_ratio is not None else self.eta_min

    def _step(self, k: int, v: float, base: float) -> float:
        idx = next((i for i, c in enumerate(self._cumulative) if k < c), None)
        if idx is None:
            return v
        start = 0 if idx == 0 else self._cumulative[idx - 1]
        period = self.periods[idx]
        j = k - start
        eta = self._eta(base)
        if j == 0:
            return base * self.restart_weights[idx]
        return (1 + math.cos(math.pi * j / period)) / (1 + math.cos(math.pi * (j - 1) / period)) * (
            v - eta
        ) + eta

    def _continue(self, k0: int, v0: float, base: float, k: torch.Tensor) -> torch.Tensor:
        cum = self._cumulative
        last = cum[-1] - 1
        k0c = min(k0, last)
        if k0c >= last:
            return fill(k, v0)
        eta = self._eta(base)
        dev = k.device
        kc = k.clamp(max=last)
        idx = torch.searchsorted(const(cum, torch.int64, dev), kc, right=True)
        starts = (0, *cum[:-1])
        start = torch.take(const(starts, torch.int64, dev), idx)
        period = torch.take(const(tuple(float(p) for p in self.periods), F64, dev), idx)
        weight = torch.take(const(self.restart_weights, F64, dev), idx)
        j = (kc - start).to(F64)
        ck = 1 + torch.cos(math.pi * j / period)
        fresh = (base * weight - eta) * ck / 2
        same = (v0 - eta) * ck / (1 + torch.cos(math.pi * (k0c - start).to(F64) / period))
        u = torch.where(start > k0c, fresh, same)
        return torch.where(kc <= k0c, v0, u + eta)

    def _levels(self, base: float) -> list[float] | None:
        return [self._eta(base), *(base * w for w in self.restart_weights)]

    def _direction(self, v_in: float, base: float, k_from: int) -> int:
        cum = self._cumulative
        end_local = min(self.n, cum[-1] - 1)
        idx = next((i for i, c in enumerate(cum) if k_from < c), None)
        if idx is None:
            return 1  # constant after the last period
        if end_local >= cum[idx]:
            return 0  # crosses a restart
        start = 0 if idx == 0 else cum[idx - 1]
        v_start = base * self.restart_weights[idx] if k_from == start else v_in
        return sign(self._eta(base) - v_start)


def cosine_annealing_lr(
    base: Floats | None = None,
    *,
    T_max: Ints | None = None,  # noqa: N803 - mmengine's name
    eta_min: Floats | None = None,
    eta_min_ratio: Floats | None = None,
    **window: Unpack[Window],
) -> Schedule:
    """mmengine's CosineAnnealingLR (also CosineAnnealingMomentum with a momentum base).

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        T_max: half period (default ``end - begin``).
        eta_min: absolute target; or ``eta_min_ratio``, a fraction of ``base``.
        eta_min_ratio: see ``eta_min``; not both.
        **window: ``begin``, ``end``, ``by_epoch``, ``epoch_length``: see :class:`Window`.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> s = cosine_annealing_lr(0.1, T_max=100, eta_min=0.001)
        >>> s(0), round(s(100), 12)
        (0.1, 0.001)
    """
    eta = dict(eta_min=eta_min, eta_min_ratio=eta_min_ratio)
    return bind("cosine_annealing_lr", CosineAnnealing, base, window, T_max=T_max, **eta)


def poly_lr(
    base: Floats | None = None,
    *,
    eta_min: Floats = 0.0,
    power: Floats = 1.0,
    **window: Unpack[Window],
) -> Schedule:
    """mmengine's PolyLR: polynomial decay reaching ``eta_min`` at step ``end - 1``.

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        eta_min: final value.
        power: polynomial exponent.
        **window: ``begin``, ``end``, ``by_epoch``, ``epoch_length``: see :class:`Window`.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> s = poly_lr(0.01, power=0.9, eta_min=1e-4, end=8, by_epoch=True)
        >>> s(0), s(7)
        (0.01, 0.0001)
    """
    return bind("poly_lr", Poly, base, window, eta_min=eta_min, power=power)


def cosine_restart_lr(
    base: Floats | None = None,
    *,
    periods: Sequence[int],
    restart_weights: Sequence[float] = (1.0,),
    eta_min: Floats | None = None,
    eta_min_ratio: Floats | None = None,
    **window: Unpack[Window],
) -> Schedule:
    """mmengine's CosineRestartLR: cosine periods restarting at ``base * weight``.

    Args:
        base: initial value (omit inside :func:`schedule_list`).
        periods: period lengths.
        restart_weights: one weight per period.
        eta_min: absolute target; exactly one of ``eta_min`` and ``eta_min_ratio``.
        eta_min_ratio: target as a fraction of ``base``.
        **window: ``begin``, ``end``, ``by_epoch``, ``epoch_length``: see :class:`Window`.

    Returns:
        A :class:`Schedule`.

    Example:
        >>> s = cosine_restart_lr(1.0, periods=[4, 5], restart_weights=[1, 0.5], eta_min=0)
        >>> round(s(4), 6)
        0.5
    """
    cycle = dict(periods=tuple(periods), restart_weights=tuple(restart_weights))
    eta = dict(eta_min=eta_min, eta_min_ratio=eta_min_ratio)
    return bind("cosine_restart_lr", CosineRestart, base, window, **cycle, **eta)


def warmup_cosine(
    base: Floats | None = None,
    *,
    warmup_steps: Ints,
    total_steps: Ints,
    start_factor: Floats = 1e-3,
    eta_min: Floats = 0.0,
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
    given = dict(
        base=base,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        start_factor=start_factor,
        eta_min=eta_min,
    )
    vectors = {k: vector_values("warmup_cosine", k, v) for k, v in given.items() if is_vector(v)}
    n = count_members("warmup_cosine", vectors)
    lengths = [k for k in ("warmup_steps", "total_steps") if k in vectors]
    if n is None or not lengths:
        if total_steps <= warmup_steps:
            raise ValueError(
                f"warmup_cosine: `total_steps` ({total_steps}) must exceed `warmup_steps` "
                f"({warmup_steps})"
            )
        t_max: Any = total_steps - warmup_steps
    else:
        warm = vectors.get("warmup_steps", (warmup_steps,) * n)
        total = vectors.get("total_steps", (total_steps,) * n)
        for i, (w, t) in enumerate(zip(warm, total, strict=True)):
            if t <= w:
                msg = f"`total_steps` ({t}) must exceed `warmup_steps` ({w})"
                raise ValueError(f"warmup_cosine: {name_member(msg, lengths, i)}")
        t_max = tuple(t - w for w, t in zip(warm, total, strict=True))
    pieces = (
        Linear(start_factor=start_factor, end_factor=1.0, begin=0, end=warmup_steps),
        CosineAnnealing(T_max=t_max, eta_min=eta_min, begin=warmup_steps, end=total_steps),
    )
    return Schedule(pieces, base=base, epoch_length=epoch_length)
