"""The base class of a schedule's building blocks, and the arithmetic the families share.

A *piece* describes how one mmengine (or torch) parameter scheduler changes a
hyperparameter inside its window ``[begin, end)``. It does not know the base value;
:class:`~functrain.schedules.Schedule` binds pieces to a base value and evaluates them.

Every piece knows two things about itself:

* ``_step(k, v, base)``: mmengine's recursive update at local step ``k`` (its
  ``last_step``), written with the same floating point expression as mmengine so that
  a replay of a list of pieces gives mmengine's numbers.
* ``_continue(k0, v0, base, k)``: a closed form for the value at local step ``k``
  (a tensor) when the piece runs alone from local step ``k0``, where the value was
  ``v0``. This is what makes a schedule a cheap function of the step.

The families live in their own modules: :mod:`._warmup` (Constant, Linear),
:mod:`._decay` (Step, MultiStep, Exponential, Multiplicative), :mod:`._anneal`
(CosineAnnealing, Poly, CosineRestart) and :mod:`._cycle` (OneCycle, Cyclic, Lambda).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs
import torch

from functrain.schedules._args import Arg, int_arg
from functrain.schedules._members import count_members, is_vector, name_member, vector_values

__all__ = [
    "F64",
    "INF",
    "Piece",
    "clamp_local",
    "const",
    "cos_term",
    "fill",
    "member_pow",
    "safe_pow",
    "sign",
]

#: mmengine's "no end" (``int(1e9)``). A window that ends here ends after 1e9 steps.
INF: int = int(1e9)

#: every value is computed in float64, as mmengine's Python floats are.
F64 = torch.float64

# The window every piece has: begin and end, checked (with end > begin) before by_epoch,
# which is checked before the piece's own arguments.
_WINDOW_ARGS: dict[str, Arg] = {"begin": Arg("int", minimum=0), "end": Arg("int")}
_UNIT_ARGS: dict[str, Arg] = {"by_epoch": Arg("bool")}


@functools.lru_cache(maxsize=4096)
def const(
    values: tuple[float, ...] | tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A cached constant tensor on ``device``; uploaded once, so later calls never sync."""
    return torch.tensor(values, dtype=dtype, device=device)


def cos_term(x: torch.Tensor | float, period: float) -> torch.Tensor | float:
    """``1 + cos(pi * x / period)``, the exact expression mmengine's cosine recursion uses."""
    if isinstance(x, torch.Tensor):
        return 1 + torch.cos(math.pi * x / period)
    return 1 + math.cos(math.pi * x / period)


def fill(like: torch.Tensor, value: float | torch.Tensor) -> torch.Tensor:
    """``value`` wherever ``like`` has an element, in float64.

    A number gives ``torch.full_like(like, value, dtype=float64)``. A tensor of member
    values (shape ``[G, 1]``, see :class:`~functrain.schedules.Schedule`) is broadcast
    against ``like`` (a view, no copy).
    """
    if isinstance(value, torch.Tensor):
        return value.expand(torch.broadcast_shapes(value.shape, like.shape))
    return torch.full_like(like, value, dtype=F64)


def member_pow(base: float | torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """``torch.pow(base, exponent)``, with the scalar schedule's bits in every member's row.

    ``base`` is a number (the scalar schedule: plain ``torch.pow``) or member values of
    shape ``[G, 1]`` with ``exponent`` a 0-d or 1-d tensor of steps.
    """
    if not isinstance(base, torch.Tensor):
        return torch.pow(base, exponent)
    shape = torch.broadcast_shapes(base.shape, exponent.shape)
    # On CPU, pow's vector lanes (SLEEF) and its scalar loop tail (libm) may differ in the
    # last bit, so an element's bits depend on its position in the loop. Writing into a
    # padded buffer keeps TensorIterator from merging the members' rows into one loop:
    # each row then runs the same vector-then-tail loop as the scalar schedule's
    # evaluation over the same steps (a 0-d step: the scalar loop, as for a 0-d tensor).
    buffer = torch.empty((*shape[:-1], shape[-1] + 1), dtype=F64, device=base.device)
    return torch.pow(base, exponent, out=buffer[..., : shape[-1]])


def safe_pow(base: float, exponent: int) -> float:
    """``base ** exponent``, ``inf`` where Python's float power overflows."""
    try:
        return base**exponent
    except OverflowError:
        return math.inf


def sign(x: float) -> int:
    """-1, 0 or +1."""
    return (x > 0) - (x < 0)


def clamp_local(k0: int) -> int:
    """A local step clamped at 0 (before its window a piece is at its first step)."""
    return max(k0, 0)


@attrs.frozen(kw_only=True, repr=False)
class Piece:
    """Base class of all pieces: a window ``[begin, end)`` and the unit it counts in.

    A subclass lists its own arguments in ``_args`` (field name -> :class:`Arg`): the
    base class checks and converts them in that order, then calls ``_validate`` for
    the checks that involve several arguments.

    Args:
        begin: first step (in the piece's unit) at which the piece updates the value.
        end: the piece stops updating at this step (exclusive); ``INF`` means never.
        by_epoch: ``True`` if ``begin``/``end`` and the piece's own counters are epochs.
            Evaluated on an iteration counter, such a piece changes the value only at
            epoch boundaries; the owning :class:`Schedule` then needs ``epoch_length``.

    Example:
        >>> from functrain.schedules import Linear
        >>> Linear(start_factor=0.1, end=500)
        Linear(start_factor=0.1, end=500)
    """

    begin: int = 0
    end: int = INF
    by_epoch: bool = False

    #: the piece's own arguments, checked and converted in this order.
    _args: ClassVar[Mapping[str, Arg]] = {}
    #: fields whose values are scaled by the epoch length in ``to_iter_based``.
    _iter_scaled: ClassVar[tuple[str, ...]] = ()
    #: True for a piece that ignores the base value and sets its own (OneCycle): at most
    #: one per schedule, and it may be bound to any base inside a list.
    _sets_base: ClassVar[bool] = False
    #: checks of per-member-capable fields that are not in ``_args`` (eta_min, ...).
    _extra_member_args: ClassVar[Mapping[str, Arg]] = {}
    #: float fields the closed forms use only arithmetically (no Python branch on them,
    #: no kernel choice): members that differ only in these are evaluated together, the
    #: field becoming a ``[G, 1]`` float64 tensor of member values.
    _batched_fields: ClassVar[tuple[str, ...]] = ()

    def __attrs_post_init__(self) -> None:
        name = type(self).__name__
        vectors = {f: getattr(self, f) for f in self.member_fields() if is_vector(getattr(self, f))}
        if vectors:
            self._init_members(name, vectors)
            return
        self._check(name, _WINDOW_ARGS)
        if self.end <= self.begin:
            raise ValueError(
                f"{name}: `end` must be larger than `begin`, got begin={self.begin}, end={self.end}"
            )
        self._check(name, _UNIT_ARGS)
        self._check(name, self._args)
        self._validate(name)

    @classmethod
    def member_fields(cls) -> tuple[str, ...]:
        """The fields that take one value per member (a sequence or a 1-d tensor).

        The window (``begin``, ``end``) and every number or integer argument of the piece
        (factors, ``gamma``, ``eta_min``, ``T_max``, ...). Sequence arguments
        (``milestones``, ``periods``, ``restart_weights``), choices and functions do not.

        Example:
            >>> from functrain.schedules import CosineAnnealing
            >>> CosineAnnealing.member_fields()
            ('begin', 'end', 'T_max', 'eta_min', 'eta_min_ratio')
        """
        own = [f for f, arg in cls._args.items() if arg.kind in ("float", "int")]
        return ("begin", "end", *own, *cls._extra_member_args)

    def _init_members(self, name: str, vectors: Mapping[str, Any]) -> None:
        """Check a piece with per-member fields: each element as the scalar, then each member."""
        values = {f: vector_values(name, f, v) for f, v in vectors.items()}
        count_members(name, values)
        table = {**_WINDOW_ARGS, **self._args, **self._extra_member_args}
        for field, vals in values.items():
            arg = table[field]
            checked = tuple(arg.check(name, f"{field}[{i}]", v) for i, v in enumerate(vals))
            object.__setattr__(self, field, checked)
        _ = self._members  # builds (and so checks) every member

    @functools.cached_property
    def _members(self) -> tuple[Piece, ...] | None:
        vector = self.vector_fields()
        if not vector:
            return None
        n = len(getattr(self, vector[0]))
        out = []
        for i in range(n):
            try:
                out.append(attrs.evolve(self, **{f: getattr(self, f)[i] for f in vector}))
            except ValueError as err:
                raise ValueError(name_member(str(err), vector, i)) from None
        return tuple(out)

    def vector_fields(self) -> tuple[str, ...]:
        """The fields of this piece that hold one value per member (as tuples).

        Example:
            >>> from functrain.schedules import Step
            >>> Step(step_size=2, gamma=[0.5, 0.1]).vector_fields()
            ('gamma',)
        """
        return tuple(f for f in self.member_fields() if isinstance(getattr(self, f), tuple))

    @property
    def members(self) -> int | None:
        """The number of members (per-member fields' length); ``None`` for a plain piece.

        Example:
            >>> from functrain.schedules import Linear
            >>> Linear(start_factor=[0.1, 0.2, 0.5], end=5).members
            3
        """
        pieces = self._members
        return None if pieces is None else len(pieces)

    def member(self, i: int) -> Piece:
        """Member ``i`` as a plain piece (the piece itself when it has no members).

        Example:
            >>> from functrain.schedules import Linear
            >>> Linear(start_factor=[0.1, 0.2], end=5).member(1)
            Linear(start_factor=0.2, end=5)
        """
        pieces = self._members
        return self if pieces is None else pieces[i]

    @classmethod
    def join(cls, pieces: Sequence[Piece], vector: Sequence[str]) -> Piece:
        """The per-member piece whose members are ``pieces`` (the inverse of :meth:`member`).

        Args:
            pieces: plain pieces of one class, member by member.
            vector: the fields that hold per-member values; the others are taken from the
                first piece (they must be the same in all).

        Example:
            >>> from functrain.schedules import Step
            >>> Piece.join([Step(step_size=2, gamma=0.5), Step(step_size=2, gamma=0.1)],
            ...            ["gamma"])
            Step(step_size=2, gamma=(0.5, 0.1))
        """
        first = pieces[0]
        kwargs = {f.name: getattr(first, f.name) for f in attrs.fields(type(first))}
        kwargs.update({f: tuple(getattr(p, f) for p in pieces) for f in vector})
        return type(first)(**kwargs)

    def _check(self, name: str, table: Mapping[str, Arg]) -> None:
        for field, arg in table.items():
            object.__setattr__(self, field, arg.check(name, field, getattr(self, field)))

    def _validate(self, name: str) -> None:
        """Check what involves several arguments (overridden by subclasses)."""

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
            >>> from functrain.schedules import CosineAnnealing
            >>> CosineAnnealing(T_max=8, end=8, by_epoch=True).to_iter_based(100)
            CosineAnnealing(T_max=800, end=800)
        """
        name = type(self).__name__
        length = int_arg(name, "epoch_length", epoch_length, minimum=1)
        members = self._members
        if members is not None:
            converted = [m.to_iter_based(length) for m in members]
            return self.join(converted, self.vector_fields())
        if not self.by_epoch:
            raise ValueError(
                f"{name}: only an epoch-based piece (by_epoch=True) can be converted to iterations"
            )
        changes: dict[str, Any] = {
            "begin": int(self.begin * length),
            "end": self.end if self.end == INF else int(self.end * length),
            "by_epoch": False,
        }
        changes.update(self.scale_periods({f: getattr(self, f) for f in self._iter_scaled}, length))
        return attrs.evolve(self, **changes)

    @classmethod
    def scale_periods(cls, kwargs: Mapping[str, Any], length: int) -> dict[str, Any]:
        """The piece's period arguments in ``kwargs`` multiplied by ``length``.

        mmengine's ``build_iter_from_epoch`` scales these (``step_size``, ``milestones``,
        ``T_max``, ...); other keys and ``None`` values are left out.

        Args:
            kwargs: keyword arguments of the piece (any subset).
            length: iterations per epoch.

        Returns:
            The scaled periods, by name.

        Example:
            >>> from functrain.schedules import MultiStep
            >>> MultiStep.scale_periods({"milestones": (1, 3), "gamma": 0.5}, 10)
            {'milestones': (10, 30)}
        """
        out: dict[str, Any] = {}
        for field in cls._iter_scaled:
            value = kwargs.get(field)
            if isinstance(value, tuple):
                out[field] = tuple(v * length for v in value)
            elif value is not None:
                out[field] = value * length
        return out

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

    def _base_after(self, base: float) -> float:
        """The base value the pieces after this one see (mmengine's ``initial_lr``)."""
        return base

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
