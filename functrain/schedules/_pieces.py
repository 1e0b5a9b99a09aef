"""The building blocks of a schedule: one mmengine (or torch) parameter scheduler each.

A *piece* describes how one scheduler changes a hyperparameter inside its window
``[begin, end)``. It does not know the base value; :class:`~functrain.schedules.Schedule`
binds pieces to a base value and evaluates them.

Every piece knows two things about itself:

* ``_step(k, v, base)``: mmengine's recursive update at local step ``k`` (its
  ``last_step``), written with the same floating point expression as mmengine so that
  a replay of a list of pieces gives mmengine's numbers.
* ``_continue(k0, v0, base, k)``: a closed form for the value at local step ``k``
  (a tensor) when the piece runs alone from local step ``k0``, where the value was
  ``v0``. This is what makes a schedule a cheap function of the step.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import attrs
import torch

__all__ = [
    "INF",
    "Constant",
    "CosineAnnealing",
    "CosineRestart",
    "Cyclic",
    "Exponential",
    "Lambda",
    "Linear",
    "MultiStep",
    "Multiplicative",
    "OneCycle",
    "Piece",
    "Poly",
    "Step",
]

#: mmengine's "no end" (``int(1e9)``). A window that ends here ends after 1e9 steps.
INF: int = int(1e9)

_F64 = torch.float64


# ----------------------------------------------------------------------------- validation


def _int_arg(owner: str, name: str, value: Any, *, minimum: int | None = None) -> int:
    """Return ``value`` as an int, or raise ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{owner}: `{name}` must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{owner}: `{name}` must be >= {minimum}, got {value}")
    return value


def _float_arg(
    owner: str,
    name: str,
    value: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """Return ``value`` as a finite float inside the given range, or raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: `{name}` must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{owner}: `{name}` must be finite, got {value}")
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else repr(lo)
        hi_s = "inf" if hi is None else repr(hi)
        raise ValueError(f"{owner}: `{name}` must be in {left}{lo_s}, {hi_s}{right}, got {value}")
    return value


@functools.lru_cache(maxsize=4096)
def _const(values: tuple[float, ...] | tuple[int, ...], dtype: torch.dtype, device: torch.device):
    """A cached constant tensor on ``device``; uploaded once, so later calls never sync."""
    return torch.tensor(values, dtype=dtype, device=device)


def _c(x: torch.Tensor | float, period: float) -> torch.Tensor | float:
    """``1 + cos(pi * x / period)``, the exact expression mmengine's cosine recursion uses."""
    if isinstance(x, torch.Tensor):
        return 1 + torch.cos(math.pi * x / period)
    return 1 + math.cos(math.pi * x / period)


def _pow(base: float, exponent: int) -> float:
    try:
        return base**exponent
    except OverflowError:
        return math.inf


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


# ----------------------------------------------------------------------------- base class


@attrs.frozen(kw_only=True, repr=False)
class Piece:
    """Base class of all pieces: a window ``[begin, end)`` and the unit it counts in.

    Args:
        begin: first step (in the piece's unit) at which the piece updates the value.
        end: the piece stops updating at this step (exclusive); ``INF`` means never.
        by_epoch: ``True`` if ``begin``/``end`` and the piece's own counters are epochs.
            Evaluated on an iteration counter, such a piece changes the value only at
            epoch boundaries; the owning :class:`Schedule` then needs ``epoch_length``.

    Example:
        >>> Linear(start_factor=0.1, end=500)
        Linear(start_factor=0.1, end=500)
    """

    begin: int = 0
    end: int = INF
    by_epoch: bool = False

    #: fields whose values are scaled by the epoch length in ``to_iter_based``.
    _iter_scaled: ClassVar[tuple[str, ...]] = ()

    def __attrs_post_init__(self) -> None:
        name = type(self).__name__
        begin = _int_arg(name, "begin", self.begin, minimum=0)
        end = _int_arg(name, "end", self.end)
        if end <= begin:
            raise ValueError(
                f"{name}: `end` must be larger than `begin`, got begin={begin}, end={end}"
            )
        if not isinstance(self.by_epoch, bool):
            raise ValueError(f"{name}: `by_epoch` must be a bool, got {self.by_epoch!r}")
        object.__setattr__(self, "begin", begin)
        object.__setattr__(self, "end", end)
        self._validate(name)

    def _validate(self, name: str) -> None:
        """Check the piece's own arguments (overridden by subclasses)."""

    def __repr__(self) -> str:
        parts = []
        fields = attrs.fields(type(self))
        window = ("begin", "end", "by_epoch")
        ordered = [f for f in fields if f.name not in window] + [
            f for f in fields if f.name in window
        ]
        for field in ordered:
            value = getattr(self, field.name)
            if field.default is not attrs.NOTHING and _same(value, field.default):
                continue
            text = "INF" if field.name == "end" and value == INF else repr(value)
            parts.append(f"{field.name}={text}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # -- window helpers -------------------------------------------------------------

    @property
    def n(self) -> int:
        """The last local step inside the window, ``end - begin - 1`` (mmengine's total_iters)."""
        return self.end - self.begin - 1

    def to_iter_based(self, epoch_length: int) -> Piece:
        """Convert an epoch-based piece to iterations, as mmengine's ``convert_to_iter_based``.

        ``begin`` and ``end`` become ``int(x * epoch_length)`` (an ``INF`` end stays
        ``INF``) and the piece's periods (``step_size``, ``milestones``, ``T_max``,
        ``total_steps``, ``periods``) are multiplied by ``epoch_length``.

        Args:
            epoch_length: iterations per epoch (positive int).

        Returns:
            The same piece counted in iterations (``by_epoch=False``).

        Example:
            >>> CosineAnnealing(T_max=8, end=8, by_epoch=True).to_iter_based(100)
            CosineAnnealing(T_max=800, end=800)
        """
        name = type(self).__name__
        length = _int_arg(name, "epoch_length", epoch_length, minimum=1)
        if not self.by_epoch:
            raise ValueError(
                f"{name}: only an epoch-based piece (by_epoch=True) can be converted to iterations"
            )
        changes: dict[str, Any] = {
            "begin": int(self.begin * length),
            "end": self.end if self.end == INF else int(self.end * length),
            "by_epoch": False,
        }
        for field in self._iter_scaled:
            value = getattr(self, field)
            if value is None:
                continue
            if isinstance(value, tuple):
                changes[field] = tuple(v * length for v in value)
            else:
                changes[field] = value * length
        return attrs.evolve(self, **changes)

    # -- semantics (overridden) -----------------------------------------------------

    def _step(self, k: int, v: float, base: float) -> float:
        """mmengine's chainable update at local step ``k`` from current value ``v``."""
        raise NotImplementedError

    def _multiplicative(self) -> bool:
        """True if every step multiplies the value by a factor that does not depend on it."""
        return False

    def _has_closed_form(self) -> bool:
        return True

    def _ratio(self, k0: int, k: torch.Tensor) -> torch.Tensor:
        """Product of the step factors for local steps ``k0+1 .. k`` (multiplicative pieces)."""
        raise NotImplementedError

    def _continue(self, k0: int, v0: float, base: float, k: torch.Tensor) -> torch.Tensor:
        """Closed-form value at local step ``k >= k0`` when this piece runs alone from ``k0``."""
        return v0 * self._ratio(k0, k)

    def _factor_range(self) -> tuple[float, float]:
        """(min, max) of the cumulative factor over the window, 1 included (multiplicative)."""
        return (-math.inf, math.inf)

    def _levels(self, base: float) -> list[float] | None:
        """Values an affine or absolute piece pulls towards or sets; None if unknown."""
        return None

    def _identity_at_start(self) -> bool:
        """True if the first step in the window (k=0) leaves the value unchanged."""
        return False

    def _direction(self, v_in: float, base: float, k_from: int) -> int:
        """Monotonicity of values at local steps ``k_from..n`` when the piece runs alone.

        ``v_in`` is the value just before step ``k_from``. Returns +1 (non-decreasing),
        -1 (non-increasing) or 0 (no claim).
        """
        return 0


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b) or (a is None and b is None)
    except Exception:  # noqa: BLE001 - exotic values are simply shown
        return False


def _as_float_tuple(owner: str, name: str, values: Any) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{owner}: `{name}` must be a sequence of numbers, got {values!r}")
    return tuple(_float_arg(owner, f"{name}[{i}]", v) for i, v in enumerate(values))


def _as_int_tuple(owner: str, name: str, values: Any, minimum: int) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{owner}: `{name}` must be a sequence of integers, got {values!r}")
    return tuple(_int_arg(owner, f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(values))


def _local_clamped(k0: int) -> int:
    return max(k0, 0)


# ----------------------------------------------------------------------------- multiplicative


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

    def _validate(self, name: str) -> None:
        if isinstance(self.factor, numbers.Real) and not isinstance(self.factor, bool):
            if self.factor == 0:
                raise ValueError(
                    f"{name}: `factor` must be > 0; mmengine divides by it when the window ends"
                )
        object.__setattr__(self, "factor", _float_arg(name, "factor", self.factor, lo=0, hi=1))

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
        before = torch.where(k < 0, 1.0, torch.full_like(k, self.factor, dtype=_F64))
        cum = before if self.n == 0 else torch.where(k >= self.n, self._cumulative(self.n), before)
        return cum / f0

    def _factor_range(self) -> tuple[float, float]:
        return (self.factor, 1.0)

    def _direction(self, v_in: float, base: float, k_from: int) -> int:
        return _sign(v_in)


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

    def _validate(self, name: str) -> None:
        if isinstance(self.start_factor, numbers.Real) and self.start_factor == 0:
            raise ValueError(
                f"{name}: `start_factor` must be > 0 (mmengine divides by start_factor * "
                "(end - begin - 1) and fails with ZeroDivisionError); use a small positive "
                "value such as 1e-3 for a warmup from (almost) zero"
            )
        sf = _float_arg(name, "start_factor", self.start_factor, lo=0, hi=1, lo_open=True)
        ef = _float_arg(name, "end_factor", self.end_factor, lo=0, hi=1)
        object.__setattr__(self, "start_factor", sf)
        object.__setattr__(self, "end_factor", ef)

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
        if f0 == 0:  # only at the window's last step with end_factor=0: nothing moves after it
            return torch.ones_like(k, dtype=_F64)
        kf = k.to(_F64)
        if self.n == 0:
            cum = torch.where(k < 0, 1.0, torch.full_like(k, self.start_factor, dtype=_F64))
        else:
            d = self.end_factor - self.start_factor
            cum = torch.where(k < 0, 1.0, self.start_factor + d * kf / self.n)
        return torch.where(k == k0, 1.0, cum / f0)

    def _factor_range(self) -> tuple[float, float]:
        vals = (1.0, self.start_factor, self.end_factor)
        return (min(vals), max(vals))

    def _direction(self, v_in: float, base: float, k_from: int) -> int:
        return _sign(self.end_factor - self.start_factor) * _sign(v_in)


@attrs.frozen(kw_only=True, repr=False)
class Step(Piece):
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
    _iter_scaled: ClassVar[tuple[str, ...]] = ("step_size",)

    def _validate(self, name: str) -> None:
        if self.step_size is None:
            raise ValueError(f"{name}: `step_size` is required")
        object.__setattr__(
            self, "step_size", _int_arg(name, "step_size", self.step_size, minimum=1)
        )
        object.__setattr__(self, "gamma", _float_arg(name, "gamma", self.gamma, lo=0))

    def _step(self, k: int, v: float, base: float) -> float:
        if k == 0 or k % self.step_size != 0:
            return v
        return v * self.gamma

    def _multiplicative(self) -> bool:
        return True

    def _ratio(self, k0: int, k: torch.Tensor) -> torch.Tensor:
        q0 = _local_clamped(k0) // self.step_size
        q = torch.div(k.clamp(min=0), self.step_size, rounding_mode="floor")
        return torch.pow(self.gamma, (q - q0).to(_F64))

    def _factor_range(self) -> tuple[float, float]:
        last = _pow(self.gamma, self.n // self.step_size)
        return (min(1.0, last), max(1.0, last))

    def _identity_at_start(self) -> bool:
        return True

    def _direction(self, v_in: float, base: float, k_from: int) -> int:
        return _sign(self.gamma - 1) * _sign(v_in)


@attrs.frozen(kw_only=True, repr=False)
class MultiStep(Piece):
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
    _iter_scaled: ClassVar[tuple[str, ...]] = ("milestones",)

    def _validate(self, name: str) -> None:
        if self.milestones is None:
            raise ValueError(f"{name}: `milestones` is required")
        ms = _as_int_tuple(name, "milestones", self.milestones, minimum=0)
        for i in range(1, len(ms)):
            if ms[i] < ms[i - 1]:
                raise ValueError(
                    f"{name}: `milestones` must be non-decreasing, got {list(ms)} "
                    f"({ms[i]} after {ms[i - 1]})"
                )
        object.__setattr__(self, "milestones", ms)
        object.__setattr__(self, "gamma", _float_arg(name, "gamma", self.gamma, lo=0))

    @functools.cached_property
    def _counter(self) -> Counter[int]:
        return Counter(self.milestones)

    def _step(self, k: int, v: float, base: float) -> float:
        if k not in self._counter:
            return v
        return v * self.gamma ** self._counter[k]

    def _multiplicative(self) -> bool:
        return True

    def _count(self, k: int) -> int:
        return sum(1 for m in self.milestones if m <= k)

    def _ratio(self, k0: int, k: torch.Tensor) -> torch.Tensor:
        if not self.milestones:
            return torch.ones_like(k, dtype=_F64)
        ms = _const(self.milestones, torch.int64, k.device)
        count = torch.searchsorted(ms, k, right=True)
        return torch.pow(self.gamma, (count - self._count(k0)).to(_F64))

    def _factor_range(self) -> tuple[float, float]:
        last = _pow(self.gamma, self._count(self.n))
        return (min(1.0, last), max(1.0, last))

    def _identity_at_start(self) -> bool:
        return 0 not in self.milestones

    def _direction(self, v_in: float, base: float, k_from: int) -> int:
        return _sign(self.gamma - 1) * _sign(v_in)


@attrs.frozen(kw_only=True, repr=False)
class Exponential(Piece):
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

    def _validate(self, name: str) -> None:
        if self.gamma is None:
            raise ValueError(f"{name}: `gamma` is required")
        object.__setattr__(self, "gamma", _float_arg(name, "gamma", self.gamma, lo=0))

    def _step(self, k: int, v: float, base: float) -> float:
        if k == 0:
            return v
        return v * self.gamma

    def _multiplicative(self) -> bool:
        return True

    def _ratio(self, k0: int, k: torch.Tensor) -> torch.Tensor:
        return torch.pow(self.gamma, (k.clamp(min=0) - _local_clamped(k0)).to(_F64))

    def _factor_range(self) -> tuple[float, float]:
        last = _pow(self.gamma, self.n)
        return (min(1.0, last), max(1.0, last))

    def _identity_at_start(self) -> bool:
        return True

    def _direction(self, v_in: float, base: float, k_from: int) -> int:
        return _sign(self.gamma - 1) * _sign(v_in)


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

    def _validate(self, name: str) -> None:
        if not callable(self.fn):
            raise ValueError(f"{name}: `fn` must be callable, got {self.fn!r}")
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


# ----------------------------------------------------------------------------- affine


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
    _iter_scaled: ClassVar[tuple[str, ...]] = ("T_max",)

    def _validate(self, name: str) -> None:
        if self.T_max is not None:
            t_max = _int_arg(name, "T_max", self.T_max)
            if t_max <= 0:
                raise ValueError(f"{name}: `T_max` must be > 0, got {t_max}")
            object.__setattr__(self, "T_max", t_max)
        if self.eta_min is not None and self.eta_min_ratio is not None:
            raise ValueError(
                f"{name}: give either `eta_min` or `eta_min_ratio`, not both "
                f"(got eta_min={self.eta_min}, eta_min_ratio={self.eta_min_ratio})"
            )
        if self.eta_min is not None:
            object.__setattr__(self, "eta_min", _float_arg(name, "eta_min", self.eta_min))
        if self.eta_min_ratio is not None:
            ratio = _float_arg(name, "eta_min_ratio", self.eta_min_ratio)
            object.__setattr__(self, "eta_min_ratio", ratio)

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
        k0c = _local_clamped(k0)
        c0 = _c(k0c, t)
        if c0 == 0:
            return torch.ones_like(k, dtype=_F64)
        return torch.where(k <= k0c, 1.0, _c(k.to(_F64), t) / c0)

    def _continue(self, k0: int, v0: float, base: float, k: torch.Tensor) -> torch.Tensor:
        t = self.period
        eta = self._eta(base)
        k0c = _local_clamped(k0)
        u0 = v0 - eta
        kf = k.to(_F64)
        ck = _c(kf, t)
        c0 = _c(k0c, t)
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
        restarted = (kept + d) * ck / _c(last.to(_F64), t)
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
        return _sign(self._eta(base) - v_in)


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

    def _validate(self, name: str) -> None:
        object.__setattr__(self, "eta_min", _float_arg(name, "eta_min", self.eta_min))
        object.__setattr__(self, "power", _float_arg(name, "power", self.power, lo=0))

    def _step(self, k: int, v: float, base: float) -> float:
        if k == 0:
            return v
        return (v - self.eta_min) * (1 - 1 / (self.n - k + 1)) ** self.power + self.eta_min

    def _multiplicative(self) -> bool:
        return self.eta_min == 0

    def _ratio(self, k0: int, k: torch.Tensor) -> torch.Tensor:
        k0c = _local_clamped(k0)
        left = self.n - k0c
        if left <= 0:
            return torch.ones_like(k, dtype=_F64)
        r = torch.pow((self.n - k.clamp(min=k0c)).to(_F64) / left, self.power)
        return torch.where(k <= k0c, 1.0, r)

    def _continue(self, k0: int, v0: float, base: float, k: torch.Tensor) -> torch.Tensor:
        # The first step is the identity in mmengine; keep v0 exact instead of
        # eta_min + (v0 - eta_min), which loses bits when v0 << eta_min.
        out = self.eta_min + (v0 - self.eta_min) * self._ratio(k0, k)
        return torch.where(k <= _local_clamped(k0), v0, out)

    def _factor_range(self) -> tuple[float, float]:
        return (0.0, 1.0)

    def _levels(self, base: float) -> list[float] | None:
        return [self.eta_min]

    def _identity_at_start(self) -> bool:
        return True

    def _direction(self, v_in: float, base: float, k_from: int) -> int:
        return _sign(self.eta_min - v_in)


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
    _iter_scaled: ClassVar[tuple[str, ...]] = ("periods",)

    def _validate(self, name: str) -> None:
        if self.periods is None:
            raise ValueError(f"{name}: `periods` is required")
        periods = _as_int_tuple(name, "periods", self.periods, minimum=1)
        if not periods:
            raise ValueError(f"{name}: `periods` must not be empty")
        weights = _as_float_tuple(name, "restart_weights", self.restart_weights)
        if len(weights) != len(periods):
            raise ValueError(
                f"{name}: `restart_weights` must have one entry per period "
                f"({len(periods)}), got {len(weights)}"
            )
        if (self.eta_min is None) == (self.eta_min_ratio is None):
            raise ValueError(
                f"{name}: give exactly one of `eta_min` and `eta_min_ratio` "
                f"(got eta_min={self.eta_min}, eta_min_ratio={self.eta_min_ratio})"
            )
        object.__setattr__(self, "periods", periods)
        object.__setattr__(self, "restart_weights", weights)
        if self.eta_min is not None:
            object.__setattr__(self, "eta_min", _float_arg(name, "eta_min", self.eta_min))
        else:
            ratio = _float_arg(name, "eta_min_ratio", self.eta_min_ratio)
            object.__setattr__(self, "eta_min_ratio", ratio)

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
            return torch.full_like(k, v0, dtype=_F64)
        eta = self._eta(base)
        dev = k.device
        kc = k.clamp(max=last)
        idx = torch.searchsorted(_const(cum, torch.int64, dev), kc, right=True)
        starts = (0, *cum[:-1])
        start = torch.take(_const(starts, torch.int64, dev), idx)
        period = torch.take(_const(tuple(float(p) for p in self.periods), _F64, dev), idx)
        weight = torch.take(_const(self.restart_weights, _F64, dev), idx)
        j = (kc - start).to(_F64)
        ck = 1 + torch.cos(math.pi * j / period)
        fresh = (base * weight - eta) * ck / 2
        same = (v0 - eta) * ck / (1 + torch.cos(math.pi * (k0c - start).to(_F64) / period))
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
        return _sign(self._eta(base) - v_start)


# ----------------------------------------------------------------------------- absolute


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
    _iter_scaled: ClassVar[tuple[str, ...]] = ("total_steps",)

    def _validate(self, name: str) -> None:
        if self.eta_max is None:
            raise ValueError(f"{name}: `eta_max` is required")
        object.__setattr__(self, "eta_max", _float_arg(name, "eta_max", self.eta_max))
        if self.total_steps is not None:
            total = _int_arg(name, "total_steps", self.total_steps, minimum=1)
            object.__setattr__(self, "total_steps", total)
        pct = _float_arg(name, "pct_start", self.pct_start, lo=0, hi=1)
        object.__setattr__(self, "pct_start", pct)
        if self.anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"{name}: `anneal_strategy` must be 'cos' or 'linear', got {self.anneal_strategy!r}"
            )
        for field in ("div_factor", "final_div_factor"):
            value = _float_arg(name, field, getattr(self, field), lo=0, lo_open=True)
            object.__setattr__(self, field, value)
        if not isinstance(self.three_phase, bool):
            raise ValueError(f"{name}: `three_phase` must be a bool, got {self.three_phase!r}")
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
        kf = k.clamp(max=self.cycle - 1).to(_F64)
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
    _iter_scaled: ClassVar[tuple[str, ...]] = ("step_size_up", "step_size_down")

    def _validate(self, name: str) -> None:
        if self.max_value is None:
            raise ValueError(f"{name}: `max_value` is required")
        object.__setattr__(self, "max_value", _float_arg(name, "max_value", self.max_value))
        up = _int_arg(name, "step_size_up", self.step_size_up, minimum=1)
        object.__setattr__(self, "step_size_up", up)
        if self.step_size_down is not None:
            down = _int_arg(name, "step_size_down", self.step_size_down, minimum=1)
            object.__setattr__(self, "step_size_down", down)
        if self.mode not in ("triangular", "triangular2", "exp_range"):
            raise ValueError(
                f"{name}: `mode` must be 'triangular', 'triangular2' or 'exp_range', "
                f"got {self.mode!r}"
            )
        object.__setattr__(self, "gamma", _float_arg(name, "gamma", self.gamma, lo=0, lo_open=True))

    def _sizes(self) -> tuple[float, float]:
        up = float(self.step_size_up)
        down = float(self.step_size_down) if self.step_size_down is not None else up
        total = up + down
        return total, up / total

    def _value(self, k: Any, base: float) -> Any:
        total, ratio = self._sizes()
        tensor = isinstance(k, torch.Tensor)
        kf = k.to(_F64) if tensor else k
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

    def _validate(self, name: str) -> None:
        if not callable(self.fn):
            raise ValueError(f"{name}: `fn` must be callable, got {self.fn!r}")

    def _step(self, k: int, v: float, base: float) -> float:
        return base * float(self.fn(k))

    def _continue(self, k0: int, v0: float, base: float, k: torch.Tensor) -> torch.Tensor:
        # float64 steps, so that e.g. ``0.95 ** k`` is not computed in float32.
        out = self.fn(k.clamp(min=0).to(_F64))
        if not isinstance(out, torch.Tensor):
            out = torch.full_like(k, float(out), dtype=_F64)
        return torch.where(k <= k0, v0, base * out.to(_F64))
