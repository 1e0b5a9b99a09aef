"""`Schedule`: pieces bound to a base value, evaluated as a pure function of the step."""

from __future__ import annotations

import copy
import functools
import math
import numbers
import operator
from collections.abc import Sequence
from typing import Any, TypeVar, overload

import attrs
import torch

from functrain.schedules._members import is_vector, vector_values
from functrain.schedules._piece import Piece, const, fill

__all__ = ["Schedule", "as_schedule", "members", "schedule_list"]

_T = TypeVar("_T")

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

    Per-member values: ``base`` and the pieces' numeric arguments may be a sequence or a
    1-d tensor of length N (an ensemble of N members, or N settings of a sweep). Such a
    schedule returns a float64 tensor of shape ``[N]`` for an int or a 0-d step and
    ``[T, N]`` for T steps; column ``i`` is the schedule built with member ``i``'s values
    (:meth:`member`), bit for bit. :attr:`members` is N (``None`` for a plain schedule).

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
        if self.base is not None and is_vector(self.base):
            values = vector_values("Schedule", "base", self.base)
            checked = tuple(_check_base(v, f"base[{i}]") for i, v in enumerate(values))
            object.__setattr__(self, "base", checked)
        elif self.base is not None:
            object.__setattr__(self, "base", _check_base(self.base, "base"))
        sizes = [("`base`", len(self.base))] if isinstance(self.base, tuple) else []
        for i, piece in enumerate(self.pieces):
            if piece.members is not None:
                sizes.append((f"`pieces[{i}]` ({type(piece).__name__})", piece.members))
        for what, size in sizes[1:]:
            if size != sizes[0][1]:
                raise ValueError(
                    f"Schedule: {sizes[0][0]} has {sizes[0][1]} members but {what} has {size}; "
                    "per-member values must all have the same length"
                )
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

    @property
    def members(self) -> int | None:
        """How many members the schedule has (N); ``None`` when no value is per member.

        Example:
            >>> from functrain.schedules import cosine_annealing_lr
            >>> cosine_annealing_lr([0.1, 0.2], T_max=10).members
            2
        """
        if isinstance(self.base, tuple):
            return len(self.base)
        return next((p.members for p in self.pieces if p.members is not None), None)

    def member(self, i: int) -> Schedule:
        """Member ``i``: the plain schedule built with member ``i``'s values.

        The schedule itself when it has no members.

        Args:
            i: the member's index, ``0 <= i < members``.

        Example:
            >>> from functrain.schedules import step_lr
            >>> step_lr([1.0, 2.0], step_size=2, gamma=[0.5, 0.2]).member(1)
            Schedule(base=2.0, pieces=[Step(step_size=2, gamma=0.2)])
        """
        n = self.members
        if n is None:
            return self
        if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < n:
            raise ValueError(f"Schedule: member index must be an int in [0, {n}), got {i!r}")
        base = self.base[i] if isinstance(self.base, tuple) else self.base
        pieces = tuple(p.member(i) for p in self.pieces)
        return Schedule(pieces, base=base, epoch_length=self.epoch_length)

    def with_base(self, base: float | Sequence[float] | torch.Tensor) -> Schedule:
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
    def _program(self) -> _Program | _MemberProgram:
        if self.base is None:
            raise ValueError(
                "Schedule: `base` is not set; pass base=... (the initial value of the "
                "hyperparameter) or put this schedule in schedule_list([...], base=...)"
            )
        if self.members is not None:
            return _MemberProgram(self)
        return _Program(self)

    def _scalar_only(self, what: str) -> None:
        if self.members is not None:
            raise ValueError(
                f"Schedule: `{what}` describes one member; this schedule has {self.members} "
                f"(call it on schedule.member(i))"
            )

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
        self._scalar_only("piece_bases")
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
        self._scalar_only("windows")
        return [(first, last + 1) for first, last, _ in self._events()]

    def event_pieces(self, step: int) -> list[int]:
        """Indices of the pieces that update the value at ``step`` (in stepping order).

        Example:
            >>> from functrain.schedules import Linear, MultiStep
            >>> Schedule((Linear(end=3), MultiStep(milestones=(1,))), base=1.0).event_pieces(2)
            [0, 1]
        """
        self._scalar_only("event_pieces")
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
        targets, cosine restarts overlapping other pieces). With per-member values, the
        hull of the members' bounds.

        Example:
            >>> from functrain.schedules import Linear
            >>> Schedule((Linear(start_factor=0.25, end=4),), base=2.0).bounds()
            (0.5, 2.0)
        """
        if self.base is None:
            raise ValueError("Schedule: `base` is not set")
        if self.members is not None:
            each = [self.member(i).bounds() for i in range(self.members)]
            return (min(lo for lo, _ in each), max(hi for _, hi in each))
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
    if is_vector(base):
        base = vector_values("schedule_list", "base", base)
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


def as_schedule(value: float | Sequence[float] | torch.Tensor | Schedule) -> Schedule:
    """Return ``value`` if it is a schedule, else the constant schedule of that value.

    Args:
        value: a float, per-member values (a sequence or 1-d tensor) or a
            :class:`Schedule`.

    Example:
        >>> as_schedule(0.1)(123)
        0.1
    """
    if isinstance(value, Schedule):
        if value.base is None:
            raise ValueError("as_schedule: the schedule has no `base`")
        return value
    return Schedule((), base=value)


def members(value: Any) -> int | None:
    """How many members a hyperparameter value has: N for per-member values, else None.

    For a :class:`Schedule` or a :class:`Piece`, their ``members``; for a sequence or a
    1-d tensor, its length (read from the shape: no host sync); for a number or any other
    callable, ``None``. Transforms use it to check a hyperparameter against the
    ensemble's member count.

    Args:
        value: a number, a sequence, a tensor, a schedule or a piece.

    Returns:
        N, or ``None`` when the value is shared by all members.

    Example:
        >>> from functrain.schedules import cosine_annealing_lr
        >>> members(cosine_annealing_lr(0.1, T_max=10, eta_min=[0.0, 1e-3, 1e-2]))
        3
        >>> members(0.1), members([0.1, 0.2]), members(torch.ones(4))
        (None, 2, 4)
    """
    if isinstance(value, (Schedule, Piece)):
        return value.members
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return None
        if value.dim() != 1:
            raise ValueError(
                f"members: per-member values must be a 1-d tensor, got shape {tuple(value.shape)}"
            )
        return value.shape[0]
    if is_vector(value):
        return len(value)
    return None


def _check_base(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Schedule: `{name}` must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"Schedule: `{name}` must be finite, got {value}")
    return float(value)


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

    def _fill(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full(t.shape, self.v0, dtype=_F64, device=t.device)

    def _lookup(self, t: torch.Tensor) -> torch.Tensor:
        return torch.take(self._table_on(t.device), t)

    def _tail(self, t: torch.Tensor) -> torch.Tensor:
        if not self.tail:
            return self._fill(t)
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
        looked_up = self._lookup(t.clamp(0, h - 1))
        if not self.tail:
            return looked_up
        return torch.where(t < h, looked_up, self._tail(t.clamp(min=h)))

    def evaluate_int(self, t: int) -> float:
        if t < self.horizon:
            return self.table[t]
        if t >= 1 << 62:
            raise ValueError(f"Schedule: `step` {t} is too large")
        return float(self._tail(torch.tensor(t, dtype=torch.int64)))


# ----------------------------------------------------------------------------- members


def _shared_or_rows(values: Sequence[_T], device: torch.device) -> _T | torch.Tensor:
    """One number if all members agree (the scalar code path), else a ``[G, 1]`` tensor."""
    first = values[0]
    if first is None or all(v == first for v in values):
        return first
    return const(tuple(float(v) for v in values), _F64, device).view(-1, 1)  # type: ignore[arg-type]


def _skeleton(program: _Program) -> tuple[Any, ...]:
    """What decides a program's control flow: members with equal skeletons run together.

    The table's horizon, the tail pieces and their local start steps, and each tail
    piece's fields except the batched float fields (of which only ``None`` or not
    matters). Lengths, periods, exponents, choices and functions are all in it.
    """
    parts: list[Any] = [program.horizon, tuple(program.tail), program.tail_multiplicative]
    parts.append(tuple(sorted(program.k0.items())))
    for i in program.tail:
        piece = program.pieces[i]
        fields = tuple(
            getattr(piece, f.name) is None
            if f.name in piece._batched_fields
            else getattr(piece, f.name)
            for f in attrs.fields(type(piece))
        )
        parts.append((type(piece), fields))
    return tuple(parts)


class _Batch(_Program):
    """The programs of G members with one skeleton, evaluated together on one device.

    Values that differ between members become ``[G, 1]`` float64 tensors (the pieces'
    batched fields, the bases, the value at the horizon) and the tables a ``[G, horizon]``
    tensor; the same closed forms then broadcast them against the steps, so member ``g``'s
    row holds, element for element, what its own program computes: the same IEEE
    operations on the same numbers (see ``member_pow`` for the one position-dependent CPU
    kernel).
    """

    def __init__(self, programs: Sequence[_Program], device: torch.device) -> None:  # noqa: D107
        first = programs[0]
        self.size = len(programs)
        self.epoch_length = first.epoch_length
        self.events = first.events
        self.horizon = first.horizon
        self.tail = first.tail
        self.k0 = first.k0
        self.tail_multiplicative = first.tail_multiplicative
        self.v0 = _shared_or_rows([p.v0 for p in programs], device)
        self.bases = tuple(
            _shared_or_rows([p.bases[i] for p in programs], device)
            for i in range(len(first.pieces))
        )
        pieces = list(first.pieces)
        for i in self.tail:
            piece = copy.copy(first.pieces[i])
            columns = {
                f: [getattr(p.pieces[i], f) for p in programs] for f in piece._batched_fields
            }
            values = {f: _shared_or_rows(v, device) for f, v in columns.items()}
            if any(isinstance(v, torch.Tensor) for v in values.values()):
                # All of the piece's numbers as tensors then: torch computes `number /
                # tensor` as `tensor.reciprocal() * number`, which is not the division
                # the plain piece does (OneCycle's eta_max / div_factor).
                for f, v in columns.items():
                    if v[0] is not None:
                        values[f] = const(tuple(float(x) for x in v), _F64, device).view(-1, 1)
            for field, value in values.items():
                # A private copy: the frozen record takes the member values as a tensor.
                object.__setattr__(piece, field, value)
            pieces[i] = piece
        self.pieces = tuple(pieces)
        h = self.horizon
        if h:
            rows = torch.tensor([p.table for p in programs], dtype=_F64, device=device)
            self._rows = rows.reshape(-1)
            self._offsets = torch.arange(self.size, device=device).mul_(h).view(-1, 1)

    def _fill(self, t: torch.Tensor) -> torch.Tensor:
        return fill(t, self.v0)

    def _lookup(self, t: torch.Tensor) -> torch.Tensor:
        return torch.take(self._rows, t + self._offsets)


class _MemberProgram:
    """A schedule with per-member values: one :class:`_Program` per member, run in groups.

    Members whose programs share a skeleton (:func:`_skeleton`: same lengths, periods and
    branches) are one :class:`_Batch`, evaluated with one kernel per operation for the
    whole group. Members that differ in a length (a warm-up, ``T_max``) fall into
    different groups: one pass per distinct setting.
    """

    def __init__(self, schedule: Schedule) -> None:  # noqa: D107
        n = schedule.members
        assert n is not None
        self.size = n
        self.programs = [_Program(schedule.member(i)) for i in range(n)]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, program in enumerate(self.programs):
            groups.setdefault(_skeleton(program), []).append(i)
        self.groups = list(groups.values())
        order = [i for group in self.groups for i in group]
        self.inverse = None if order == list(range(n)) else tuple(order.index(i) for i in range(n))
        self._batches: dict[torch.device, list[_Batch]] = {}

    def _batches_on(self, device: torch.device) -> list[_Batch]:
        batches = self._batches.get(device)
        if batches is None:
            batches = [_Batch([self.programs[i] for i in g], device) for g in self.groups]
            self._batches[device] = batches
        return batches

    def evaluate(self, t: torch.Tensor) -> torch.Tensor:
        # Member-major inside: a group's values are [G, 1] (0-d step) or [G, T] rows.
        outs = []
        for batch in self._batches_on(t.device):
            shape = (batch.size, *t.shape) if t.dim() else (batch.size, 1)
            outs.append(batch.evaluate(t).expand(shape))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        if self.inverse is not None:
            out = out.index_select(0, const(self.inverse, torch.int64, t.device))
        if t.dim() == 0:
            return out.reshape(self.size).clone()
        # [T, N], a fresh tensor (never a view of a cached constant).
        return out.T.clone(memory_format=torch.contiguous_format)

    def evaluate_int(self, t: int) -> torch.Tensor:
        return torch.tensor([p.evaluate_int(t) for p in self.programs], dtype=_F64)
