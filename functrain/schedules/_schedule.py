"""`Schedule`: pieces bound to a base value, evaluated as a pure function of the step."""

from __future__ import annotations

import functools
import math
import numbers
import operator
from collections.abc import Sequence
from typing import overload

import attrs
import torch

from functrain.schedules._piece import Piece

__all__ = ["Schedule", "as_schedule", "schedule_list"]

_F64 = torch.float64

# Above this many steps, replaying mmengine's recursion to build a lookup table is too slow
# and too large to keep per device; such lists are rejected with an explanation.
MAX_TABLE_STEPS = 1 << 23


@attrs.frozen(repr=False)
class Schedule:
    """A hyperparameter schedule: a pure function from the step to the value.

    A schedule is a base value and a list of pieces (mmengine parameter schedulers) that
    are applied in order, each recursively on the value the others left, exactly as
    mmengine's ``ParamSchedulerHook`` steps a ``param_scheduler`` list.

    Calling it:

    * ``schedule(7)`` (a Python int) returns a Python float;
    * ``schedule(t)`` with a 0-d integer tensor returns a 0-d float64 tensor on ``t``'s
      device, without a host sync (a lookup table, if any, is copied to a device once);
    * ``schedule(torch.arange(n))`` returns the whole curve as a float64 tensor.

    The step: without ``epoch_length`` the step is counted in the pieces' own unit
    (iterations, or epochs if all pieces are ``by_epoch``). With ``epoch_length`` the step
    counts iterations; ``by_epoch`` pieces then advance once per ``epoch_length``
    iterations (at iteration ``e * epoch_length``), after the iteration pieces of that
    step, as mmengine does. ``schedule(t)`` is the value in force during step ``t``
    (0-based): the value after mmengine has built the schedulers and stepped them ``t``
    times.

    Args:
        pieces: the pieces, in the order mmengine would step them.
        base: the initial value of the hyperparameter (the optimizer's ``lr``); ``None``
            gives an unbound schedule that can only be put in :func:`schedule_list`.
        epoch_length: iterations per epoch, needed when by-epoch pieces are evaluated on
            the iteration counter.

    Example:
        >>> from functrain.schedules import Linear, MultiStep
        >>> s = Schedule((Linear(start_factor=0.5, end=5), MultiStep(milestones=(3, 6, 9))),
        ...              base=0.05)
        >>> [round(s(t), 8) for t in range(5)]
        [0.025, 0.03125, 0.0375, 0.004375, 0.005]
    """

    pieces: tuple[Piece, ...] = attrs.field(converter=tuple)
    base: float | None = None
    epoch_length: int | None = None

    def __attrs_post_init__(self) -> None:
        for i, piece in enumerate(self.pieces):
            if not isinstance(piece, Piece):
                raise ValueError(f"Schedule: `pieces[{i}]` must be a Piece, got {piece!r}")
        if self.base is not None:
            if isinstance(self.base, bool) or not isinstance(self.base, numbers.Real):
                raise ValueError(f"Schedule: `base` must be a real number, got {self.base!r}")
            if not math.isfinite(self.base):
                raise ValueError(f"Schedule: `base` must be finite, got {self.base}")
            object.__setattr__(self, "base", float(self.base))
        if self.epoch_length is not None:
            length = self.epoch_length
            if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 1:
                raise ValueError(
                    f"Schedule: `epoch_length` must be a positive integer, got {length!r}"
                )
            object.__setattr__(self, "epoch_length", int(length))
        else:
            units = {p.by_epoch for p in self.pieces}
            if len(units) > 1:
                raise ValueError(
                    "Schedule: the pieces mix by_epoch=True and by_epoch=False; pass "
                    "`epoch_length` (iterations per epoch) so that both count on the "
                    "iteration counter"
                )
        if sum(p._sets_base for p in self.pieces) > 1:
            raise ValueError(
                "Schedule: at most one OneCycle piece per schedule (mmengine's OneCycleLR "
                "overwrites the optimizer's initial, max and min values for all the others)"
            )

    def __repr__(self) -> str:
        inner = ", ".join(repr(p) for p in self.pieces)
        extra = "" if self.epoch_length is None else f", epoch_length={self.epoch_length}"
        return f"Schedule(base={self.base!r}, pieces=[{inner}]{extra})"

    # -- evaluation -------------------------------------------------------------

    @overload
    def __call__(self, step: int) -> float: ...

    @overload
    def __call__(self, step: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, step: int | torch.Tensor) -> float | torch.Tensor:
        """Evaluate the schedule; see the class docstring for the accepted step forms.

        Args:
            step: a Python int, a 0-d integer tensor or a 1-d integer tensor of steps.

        Returns:
            A float for an int; a float64 tensor of the step's shape and device otherwise.

        Example:
            >>> from functrain.schedules import exponential_lr
            >>> s = exponential_lr(1.0, gamma=0.5)
            >>> s(2), s(torch.tensor(2)), s(torch.arange(3))
            (0.25, tensor(0.2500, dtype=torch.float64), tensor([1.0000, 0.5000, 0.2500], dtype=torch.float64))
        """
        program = self._program
        if isinstance(step, torch.Tensor):
            if step.dtype.is_floating_point or step.dtype.is_complex or step.dtype == torch.bool:
                raise ValueError(f"Schedule: `step` must be an integer tensor, got {step.dtype}")
            if step.dim() > 1:
                raise ValueError(
                    f"Schedule: `step` must be a 0-d or 1-d tensor, got shape {tuple(step.shape)}"
                )
            return program.evaluate(step.to(torch.int64))
        if isinstance(step, bool):
            raise TypeError("Schedule: `step` must be an int or an integer tensor, got a bool")
        try:
            t = operator.index(step)
        except TypeError:
            raise TypeError(
                f"Schedule: `step` must be an int or an integer tensor, got {type(step).__name__}"
            ) from None
        if t < 0:
            raise ValueError(f"Schedule: `step` must be >= 0, got {t}")
        return program.evaluate_int(t)

    def with_base(self, base: float) -> Schedule:
        """Return the same schedule with another base value.

        Args:
            base: the new initial value.

        Example:
            >>> from functrain.schedules import linear_lr
            >>> linear_lr(start_factor=0.5, end=3).with_base(2.0)(0)
            1.0
        """
        return attrs.evolve(self, base=base)

    @functools.cached_property
    def _program(self) -> _Program:
        if self.base is None:
            raise ValueError(
                "Schedule: `base` is not set; pass base=... (the initial value of the "
                "hyperparameter) or put this schedule in schedule_list([...], base=...)"
            )
        return _Program(self)

    # -- introspection (used by functrain.testing and plots) ---------------------

    def piece_bases(self) -> tuple[float, ...]:
        """The base value each piece sees (mmengine's ``initial_lr`` when it was built).

        Equal to ``base`` except after a :class:`OneCycle` piece, which sets it to
        ``eta_max / div_factor`` for the pieces that follow, as mmengine does.

        Example:
            >>> from functrain.schedules import Exponential, OneCycle
            >>> Schedule((OneCycle(eta_max=1.0, end=10), Exponential(gamma=0.9, begin=10)),
            ...          base=0.1).piece_bases()
            (0.1, 0.04)
        """
        if self.base is None:
            raise ValueError("Schedule: `base` is not set")
        out, base = [], self.base
        for piece in self.pieces:
            out.append(base)
            base = piece._base_after(base)
        return tuple(out)

    def windows(self) -> list[tuple[int, int]]:
        """Each piece's window as ``(first, stop)`` steps on this schedule's counter.

        ``first`` is the first step at which the piece updates the value and ``stop - 1``
        the last; by-epoch pieces evaluated on iterations update only at multiples of
        ``epoch_length`` in between.

        Example:
            >>> from functrain.schedules import Linear
            >>> Schedule((Linear(end=3, by_epoch=True),), base=1.0, epoch_length=10).windows()
            [(0, 21)]
        """
        return [(first, last + 1) for first, last, _ in self._events()]

    def event_pieces(self, step: int) -> list[int]:
        """Indices of the pieces that update the value at ``step`` (in stepping order).

        Example:
            >>> from functrain.schedules import Linear, MultiStep
            >>> Schedule((Linear(end=3), MultiStep(milestones=(1,))), base=1.0).event_pieces(2)
            [0, 1]
        """
        out = []
        for i, (first, last, scale) in enumerate(self._events()):
            if first <= step <= last and step % scale == 0:
                out.append(i)
        return out

    def _events(self) -> list[tuple[int, int, int]]:
        out = []
        for piece in self.pieces:
            scale = self.epoch_length if (piece.by_epoch and self.epoch_length) else 1
            out.append((piece.begin * scale, (piece.end - 1) * scale, scale))
        return out

    def bounds(self) -> tuple[float, float]:
        """Conservative bounds ``(lo, hi)`` on every value the schedule can take.

        Exact for products of multiplicative pieces; for lists with affine pieces
        (cosine, poly, restarts, 1cycle) the bound multiplies the hull of the base value
        and the pieces' targets by the range of the multiplicative factors. Returns
        infinite bounds where nothing useful can be said (user functions, negative
        targets, cosine restarts overlapping other pieces).

        Example:
            >>> from functrain.schedules import Linear
            >>> Schedule((Linear(start_factor=0.25, end=4),), base=2.0).bounds()
            (0.5, 2.0)
        """
        if self.base is None:
            raise ValueError("Schedule: `base` is not set")
        lo_f, hi_f = 1.0, 1.0
        levels = [self.base]
        for piece, base in zip(self.pieces, self.piece_bases(), strict=True):
            if piece._multiplicative():
                f_lo, f_hi = piece._factor_range()
                lo_f, hi_f = lo_f * f_lo, hi_f * f_hi
                continue
            more = piece._levels(base)
            restart = getattr(piece, "_reaches_restart", lambda: False)()
            if more is None or (restart and len(self.pieces) > 1):
                return (-math.inf, math.inf)
            levels.extend(more)
        s_lo, s_hi = min(levels), max(levels)
        if not (math.isfinite(lo_f) and math.isfinite(hi_f)) or s_lo < 0:
            return (-math.inf, math.inf)
        if len(levels) == 1:
            return (self.base * lo_f, self.base * hi_f)
        lo = 0.0 if hi_f == 0 else s_lo * lo_f / hi_f
        hi = math.inf if lo_f == 0 else s_hi * hi_f / lo_f
        return (lo, hi)


def schedule_list(
    items: Sequence[Schedule | Piece],
    base: float,
    *,
    epoch_length: int | None = None,
) -> Schedule:
    """Compose schedules the way mmengine steps a ``param_scheduler`` list.

    Items are applied in order, each on the value the previous ones left: disjoint
    windows run one after another (a later window starts from the value the earlier one
    wrote last), overlapping windows compose (multiplicative ones multiply).

    Args:
        items: unbound schedules from the builders (``linear_lr(start_factor=...)``) or
            :class:`Piece` objects, in stepping order.
        base: the initial value of the hyperparameter.
        epoch_length: iterations per epoch; needed when by-epoch items are mixed with
            iteration items (then the schedule is called with the iteration counter).

    Returns:
        The composed :class:`Schedule`.

    Example:
        >>> from functrain.schedules import linear_lr, multistep_lr
        >>> s = schedule_list([linear_lr(start_factor=0.001, end=500),
        ...                    multistep_lr(milestones=[8, 11], by_epoch=True, end=12)],
        ...                   base=0.02, epoch_length=1000)
        >>> round(s(0), 8), s(500), round(s(8000), 8)
        (2e-05, 0.02, 0.002)
    """
    if isinstance(items, (Schedule, Piece)):
        items = [items]
    pieces: list[Piece] = []
    lengths = set() if epoch_length is None else {epoch_length}
    for i, item in enumerate(items):
        if isinstance(item, Piece):
            pieces.append(item)
        elif isinstance(item, Schedule):
            # A one-cycle item ignores its base value, so any base it was built with is fine.
            bound = item.base is not None and item.base != base
            if bound and not all(p._sets_base for p in item.pieces):
                raise ValueError(
                    f"schedule_list: `items[{i}]` has base={item.base} but the list has "
                    f"base={base}; build the items without a base"
                )
            if item.epoch_length is not None:
                lengths.add(item.epoch_length)
            pieces.extend(item.pieces)
        else:
            raise ValueError(
                f"schedule_list: `items[{i}]` must be a Schedule or a Piece, got {item!r}"
            )
    if len(lengths) > 1:
        raise ValueError(f"schedule_list: the items disagree on `epoch_length` ({sorted(lengths)})")
    return Schedule(tuple(pieces), base=base, epoch_length=next(iter(lengths), None))


def as_schedule(value: float | Schedule) -> Schedule:
    """Return ``value`` if it is a schedule, else the constant schedule of that value.

    Args:
        value: a float or a :class:`Schedule`.

    Example:
        >>> as_schedule(0.1)(123)
        0.1
    """
    if isinstance(value, Schedule):
        if value.base is None:
            raise ValueError("as_schedule: the schedule has no `base`")
        return value
    return Schedule((), base=value)


# ----------------------------------------------------------------------------- evaluation


class _Program:
    """A compiled schedule: a table up to step ``horizon``, closed forms afterwards.

    mmengine's recursion interleaves pieces in ways no closed form covers in general
    (a warm-up that multiplies while a cosine pulls towards eta_min). So the steps before
    ``horizon`` are replayed once, in Python floats with mmengine's own expressions, into
    a table. ``horizon`` is the earliest window end after which the remaining pieces have
    a closed form together: all multiplicative (they commute), or a single piece. For a
    single piece or a product of multiplicative pieces, the horizon is 0 and no table
    is built.
    """

    def __init__(self, schedule: Schedule) -> None:
        assert schedule.base is not None
        self.base = schedule.base
        self.pieces = schedule.pieces
        self.bases = schedule.piece_bases()
        self.epoch_length = schedule.epoch_length
        self.events = schedule._events()
        self.horizon = self._choose_horizon()
        self.table = self._replay(self.horizon)
        h = self.horizon
        self.tail = [i for i, (_, last, _) in enumerate(self.events) if last >= h]
        self.v0 = self.table[h - 1] if h > 0 else self.base
        self.k0 = {i: self._local_int(i, h - 1) for i in self.tail}
        self.tail_multiplicative = all(self.pieces[i]._multiplicative() for i in self.tail)
        self._table_cpu = torch.tensor(self.table, dtype=_F64)
        self._tables: dict[torch.device, torch.Tensor] = {}

    def _choose_horizon(self) -> int:
        candidates = sorted({0} | {last + 1 for _, last, _ in self.events})
        for h in candidates:
            tail = [
                p for p, (_, last, _) in zip(self.pieces, self.events, strict=True) if last >= h
            ]
            if not all(p._has_closed_form() for p in tail):
                continue
            if len(tail) <= 1 or all(p._multiplicative() for p in tail):
                if h > MAX_TABLE_STEPS:
                    break
                return h
        raise ValueError(
            "Schedule: these pieces overlap until step "
            f"{max(last for _, last, _ in self.events) + 1}, and overlapping affine pieces "
            "(cosine, poly, restarts, 1cycle, lambda) have no closed form together, so the "
            f"schedule would tabulate more than {MAX_TABLE_STEPS} steps; give the "
            "overlapping pieces a finite `end`"
        )

    def _replay(self, horizon: int) -> list[float]:
        """mmengine's stepping order, replayed in Python floats for steps < horizon."""
        if horizon == 0:
            return []
        pieces, bases, events = self.pieces, self.bases, self.events
        length = self.epoch_length
        iter_pieces = [i for i, p in enumerate(pieces) if not (p.by_epoch and length)]
        epoch_pieces = [i for i, p in enumerate(pieces) if p.by_epoch and length]
        v = self.base
        out = []
        for t in range(horizon):
            if t == 0:
                # Construction: every scheduler takes its first step, in list order.
                order = range(len(pieces))
            elif length and t % length == 0:
                # After the last iteration of an epoch: iteration schedulers step in
                # after_train_iter, then epoch schedulers in after_train_epoch.
                order = iter_pieces + epoch_pieces
            else:
                order = iter_pieces
            for i in order:
                first, last, scale = events[i]
                if first <= t <= last:
                    piece = pieces[i]
                    g = t // scale
                    v = piece._step(g - piece.begin, v, bases[i])
            out.append(v)
        return out

    def _local_int(self, i: int, t: int) -> int:
        piece = self.pieces[i]
        scale = self.events[i][2]
        g = t // scale
        return max(min(g, piece.end - 1) - piece.begin, -1)

    def _local(self, i: int, t: torch.Tensor) -> torch.Tensor:
        piece = self.pieces[i]
        scale = self.events[i][2]
        g = t if scale == 1 else torch.div(t, scale, rounding_mode="floor")
        if piece.begin:
            g = g - piece.begin
        return g.clamp(-1, piece.end - 1 - piece.begin)

    def _table_on(self, device: torch.device) -> torch.Tensor:
        table = self._tables.get(device)
        if table is None:
            table = self._table_cpu.to(device)
            self._tables[device] = table
        return table

    def _tail(self, t: torch.Tensor) -> torch.Tensor:
        if not self.tail:
            return torch.full(t.shape, self.v0, dtype=_F64, device=t.device)
        if self.tail_multiplicative:
            out = None
            for i in self.tail:
                r = self.pieces[i]._ratio(self.k0[i], self._local(i, t))
                out = r if out is None else out * r
            assert out is not None
            return self.v0 * out
        (i,) = self.tail
        return self.pieces[i]._continue(self.k0[i], self.v0, self.bases[i], self._local(i, t))

    def evaluate(self, t: torch.Tensor) -> torch.Tensor:
        h = self.horizon
        if h == 0:
            # Negative steps need no clamp here: local steps below a window read as "not
            # started", which is the value before any update.
            return self._tail(t)
        looked_up = torch.take(self._table_on(t.device), t.clamp(0, h - 1))
        if not self.tail:
            return looked_up
        return torch.where(t < h, looked_up, self._tail(t.clamp(min=h)))

    def evaluate_int(self, t: int) -> float:
        if t < self.horizon:
            return self.table[t]
        if t >= 1 << 62:
            raise ValueError(f"Schedule: `step` {t} is too large")
        return float(self._tail(torch.tensor(t, dtype=torch.int64)))
