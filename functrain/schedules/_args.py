"""Argument checks shared by every piece and by :class:`ReduceOnPlateau`.

Each check returns the value in its canonical type or raises ``ValueError`` naming the
owner (the class), the argument and the offending value. :class:`Arg` puts a check in a
piece's table of arguments (``Piece._args``), so that one loop validates every piece.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import attrs

__all__ = ["Arg", "float_arg", "float_tuple", "int_arg", "int_tuple"]


def int_arg(owner: str, name: str, value: Any, *, minimum: int | None = None) -> int:
    """Return ``value`` as an int, or raise ValueError naming ``name``.

    Args:
        owner: the class or function the argument belongs to (starts the message).
        name: the argument's name.
        value: the value given; a float with an integral value is accepted.
        minimum: the smallest value allowed, if any.

    Returns:
        The value as an int.

    Example:
        >>> int_arg("Step", "step_size", 3.0, minimum=1)
        3
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{owner}: `{name}` must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{owner}: `{name}` must be >= {minimum}, got {value}")
    return value


def float_arg(
    owner: str,
    name: str,
    value: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """Return ``value`` as a finite float inside the given range, or raise ValueError.

    Args:
        owner: the class or function the argument belongs to (starts the message).
        name: the argument's name.
        value: the value given (a real number, not a bool).
        lo, hi: the range's ends (``None``: unbounded on that side).
        lo_open, hi_open: exclude that end.

    Returns:
        The value as a float.

    Example:
        >>> float_arg("Step", "gamma", 1, lo=0)
        1.0
    """
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


def _sequence(owner: str, name: str, values: Any, what: str) -> Sequence[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{owner}: `{name}` must be a sequence of {what}, got {values!r}")
    return values


def float_tuple(owner: str, name: str, values: Any) -> tuple[float, ...]:
    """Return a sequence of finite reals as a tuple of floats; errors name the index.

    Example:
        >>> float_tuple("CosineRestart", "restart_weights", [1, 0.5])
        (1.0, 0.5)
    """
    values = _sequence(owner, name, values, "numbers")
    return tuple(float_arg(owner, f"{name}[{i}]", v) for i, v in enumerate(values))


def int_tuple(owner: str, name: str, values: Any, minimum: int) -> tuple[int, ...]:
    """Return a sequence of integers ``>= minimum`` as a tuple; errors name the index.

    Example:
        >>> int_tuple("MultiStep", "milestones", [3, 5.0], minimum=0)
        (3, 5)
    """
    values = _sequence(owner, name, values, "integers")
    return tuple(int_arg(owner, f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(values))


@attrs.frozen
class Arg:
    """One row of a piece's argument table: how to check and convert one field.

    Args:
        kind: ``'float'``, ``'int'``, ``'floats'`` (a sequence), ``'ints'``, ``'bool'``,
            ``'choice'`` (one of ``choices``) or ``'callable'``.
        required: ``None`` is an error ("`name` is required").
        optional: ``None`` passes unchecked (the piece picks a default later).
        lo, hi, lo_open, hi_open: the range of a float (see :func:`float_arg`).
        minimum: the smallest int (see :func:`int_arg`).
        choices: the values a ``'choice'`` allows.
        zero: a float that is exactly 0 is rejected first, with "must be > 0" and this
            explanation (where mmengine would divide by it).

    Example:
        >>> Arg("float", lo=0).check("Step", "gamma", 0.5)
        0.5
    """

    kind: str
    required: bool = False
    optional: bool = False
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    minimum: int | None = None
    choices: tuple[str, ...] = ()
    zero: str | None = None

    def check(self, owner: str, name: str, value: Any) -> Any:
        """Return ``value`` checked and converted, or raise ValueError naming ``name``."""
        if value is None and self.required:
            raise ValueError(f"{owner}: `{name}` is required")
        if value is None and self.optional:
            return None
        if self.zero is not None and _is_zero(value):
            raise ValueError(f"{owner}: `{name}` must be > 0{self.zero}")
        if self.kind == "float":
            bounds = dict(lo=self.lo, hi=self.hi, lo_open=self.lo_open, hi_open=self.hi_open)
            return float_arg(owner, name, value, **bounds)
        if self.kind == "int":
            return int_arg(owner, name, value, minimum=self.minimum)
        if self.kind == "floats":
            return float_tuple(owner, name, value)
        if self.kind == "ints":
            return int_tuple(owner, name, value, minimum=self.minimum or 0)
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{owner}: `{name}` must be a bool, got {value!r}")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                *first, last = (repr(c) for c in self.choices)
                raise ValueError(
                    f"{owner}: `{name}` must be {', '.join(first)} or {last}, got {value!r}"
                )
            return value
        if self.kind == "callable":
            if not callable(value):
                raise ValueError(f"{owner}: `{name}` must be callable, got {value!r}")
            return value
        raise AssertionError(f"Arg: unknown kind {self.kind!r}")


def _is_zero(value: Any) -> bool:
    # A bool is not a number here: False is reported as "must be a real number".
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == 0
