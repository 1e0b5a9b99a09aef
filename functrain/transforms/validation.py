"""Hyperparameter checks shared by the transform factories and the config builder.

Each raises ``ValueError`` naming the argument and the value, in torch.optim's wording where
torch has a message for the same mistake.

Schedules: a hyperparameter given as a schedule is checked over the steps where its value
is known, once, when the transform is built (never per step):

- a :class:`functrain.schedules.Schedule` whose pieces all end (finite ``end``) is constant
  after its last piece, so its whole range is known: it is evaluated once over
  ``[0, horizon]`` as a 1-d tensor of steps and every value must satisfy the same rule as a
  plain number;
- an open-ended schedule (a piece with ``end=INF``) or an arbitrary callable has no horizon
  here and is accepted as is; the config builder (:func:`functrain.config.build_optimizer`)
  knows the training length and checks every schedule over it with :func:`check_schedule`.

Momentum: ``0 <= momentum <= 1``. torch.optim (and mmengine) accept ``momentum=1.5``, but
heavy-ball momentum above 1 multiplies the buffer by more than one each step, so the update
grows geometrically whatever the gradient: it is always a mistake (a scheduler's ``eta_min``
or a typo), so functrain rejects it instead of training to ``inf``. ``momentum=1`` (a plain
running sum) stays allowed, as it is well defined.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import Tensor

__all__ = [
    "MOMENTUM",
    "NONNEGATIVE",
    "UNIT_INTERVAL",
    "Range",
    "check_betas",
    "check_callable",
    "check_momentum",
    "check_nonnegative",
    "check_positive",
    "check_schedule",
    "check_unit_interval",
    "checked_betas",
    "first_out_of_range",
    "is_schedule",
    "number",
    "schedule_horizon",
]

#: Longest horizon evaluated in one go (a float64 curve of this many steps is 64 MiB).
MAX_CHECKED_STEPS = 1 << 23
#: Steps checked of a callable that only takes one step at a time.
MAX_STEPWISE = 100_000


@attrs.frozen
class Range:
    """The values a hyperparameter may take: ``low <= v`` (``<`` when ``high_open``) ``high``.

    Attributes:
        low: smallest valid value.
        high: largest valid value (``inf``: no upper bound).
        high_open: ``high`` itself is invalid (``[0, 1)`` for Adam's betas).
    """

    low: float = 0.0
    high: float = math.inf
    high_open: bool = False

    def holds(self, value: float) -> bool:
        """Whether ``value`` is in the range (NaN never is)."""
        above = value < self.high if self.high_open else value <= self.high
        return self.low <= value and above

    def describe(self, name: str) -> str:
        """``"lr must be >= 0"`` / ``"betas[0] must be in [0, 1)"``."""
        if math.isinf(self.high):
            return f"{name} must be >= {self.low:g}"
        return f"{name} must be in [{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


NONNEGATIVE = Range()
UNIT_INTERVAL = Range(0.0, 1.0, high_open=True)
MOMENTUM = Range(0.0, 1.0)


def is_schedule(value: Any) -> bool:
    """Whether ``value`` is a schedule (a callable ``step -> value``) rather than a number."""
    return callable(value) and not isinstance(value, Tensor)


def number(name: str, value: Any) -> float:
    """``value`` as a float, or a ``ValueError`` naming ``name`` and ``value`` when it is not a
    number: a bool (``True`` is an int to Python, never a hyperparameter), a string or any
    other non-number, or NaN (which every range check would let through, NaN comparing False).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if math.isnan(value):
        raise ValueError(f"Invalid {name}: {value!r} (NaN)")
    return float(value)


def schedule_horizon(schedule: Any) -> int | None:
    """The last step at which ``schedule`` can still change, when that is known: a
    :class:`~functrain.schedules.Schedule` whose pieces all have a finite ``end`` (by-epoch
    ends counted in iterations when it has an ``epoch_length``). ``None`` otherwise."""
    pieces = getattr(schedule, "pieces", None)
    if not pieces or not hasattr(schedule, "epoch_length"):
        return None
    length = schedule.epoch_length or 1
    ends = []
    for piece in pieces:
        end = getattr(piece, "end", None)
        if not isinstance(end, int) or end >= MAX_CHECKED_STEPS:  # INF is a large int
            return None
        ends.append(end * (length if getattr(piece, "by_epoch", False) else 1))
    return max(ends)


def first_out_of_range(
    schedule: Callable[[Any], Any], steps: int, valid: Range
) -> tuple[int, float] | None:
    """The first step in ``range(steps)`` where ``schedule`` leaves ``valid`` and its value,
    or ``None``. The schedule is evaluated once on a 1-d tensor of steps (a build-time check:
    it reads the values back to the host); a callable that does not take a tensor is
    evaluated step by step."""
    steps = min(int(steps), MAX_CHECKED_STEPS)
    if steps <= 0:
        return None
    at = torch.arange(steps)
    try:
        values = schedule(at)
        ok = isinstance(values, Tensor) and values.shape == at.shape
    except Exception:  # a user callable written for one step at a time
        ok = False
    if not ok:  # step by step (slow in Python, so over a bounded prefix)
        n = min(steps, MAX_STEPWISE)
        try:
            values = torch.tensor([float(schedule(i)) for i in range(n)], dtype=torch.float64)
        except Exception:  # neither form evaluates here: the transform reports it when called
            return None
    values = values.detach().to("cpu", torch.float64)
    inside = values >= valid.low
    inside &= values < valid.high if valid.high_open else values <= valid.high
    bad = torch.nonzero(~inside)  # NaN compares False, so it is caught too
    if bad.numel() == 0:
        return None
    step = int(bad[0, 0])
    return step, float(values[step])


def check_schedule(name: str, schedule: Any, valid: Range, steps: int | None = None) -> None:
    """``ValueError`` when ``schedule`` leaves ``valid`` at some step in ``range(steps)``
    (default: ``[0, schedule_horizon(schedule)]``; nothing is checked when neither is known).
    """
    if steps is None:
        horizon = schedule_horizon(schedule)
        if horizon is None:
            return
        steps = horizon + 1
    found = first_out_of_range(schedule, steps, valid)
    if found is not None:
        step, value = found
        raise ValueError(
            f"Invalid {name}: the schedule gives {value!r} at step {step}; "
            f"{valid.describe(name)} at every step"
        )


def _check_members(name: str, value: Any, valid: Range) -> bool:
    """Check every value of a per-member hyperparameter (a sequence or 1-d tensor, see
    :func:`functrain.ensemble`); ``False`` when ``value`` is not one."""
    from functrain.transforms.members import PerMember, per_member

    vector = per_member(name, value)
    if not isinstance(vector, PerMember):
        return False
    for i, v in enumerate(vector.values.tolist()):
        if not valid.holds(v):
            raise ValueError(f"Invalid {name}[{i}]: {v!r}; {valid.describe(name)}")
    return True


def _check(
    name: str, value: Any, valid: Range, allow_schedule: bool, allow_members: bool = False
) -> None:
    # Per-member values are accepted wherever a schedule is (a PerMember is one).
    if (allow_schedule or allow_members) and _check_members(name, value, valid):
        return
    if allow_schedule and is_schedule(value):
        check_schedule(name, value, valid)
        return
    if not valid.holds(number(name, value)):
        raise ValueError(f"Invalid {name}: {value!r}; {valid.describe(name)}")


def check_nonnegative(
    name: str, value: Any, *, allow_schedule: bool = False, allow_members: bool = False
) -> None:
    """``value >= 0``; a schedule (when ``allow_schedule``) at every step of its horizon; a
    sequence or 1-d tensor of per-member values (where a schedule or ``allow_members`` is
    allowed: see :func:`functrain.ensemble`) value by value."""
    _check(name, value, NONNEGATIVE, allow_schedule, allow_members)


def check_positive(name: str, value: Any, *, allow_members: bool = False) -> None:
    """``value > 0``; with ``allow_members``, each value of a per-member sequence."""
    if allow_members and _check_members(name, value, Range(math.ulp(0.0))):
        return
    if number(name, value) <= 0:
        raise ValueError(f"Invalid {name}: {value!r}; {name} must be > 0")


def check_unit_interval(
    name: str, value: Any, *, allow_schedule: bool = False, allow_members: bool = False
) -> None:
    """``0 <= value < 1`` (a beta); a schedule at every step of its horizon; each value of a
    per-member sequence with ``allow_members``."""
    _check(name, value, UNIT_INTERVAL, allow_schedule, allow_members)


def check_momentum(name: str, value: Any, *, allow_schedule: bool = False) -> None:
    """``0 <= value <= 1`` (heavy-ball momentum; see the module docstring for why above 1 is
    rejected although torch accepts it); a schedule at every step of its horizon."""
    _check(name, value, MOMENTUM, allow_schedule)


def check_betas(betas: Any) -> tuple[Any, float]:
    """A pair ``(beta1, beta2)`` with each in ``[0, 1)``, as torch.optim.Adam checks them.

    ``beta1`` may be a schedule (mmengine's momentum schedulers drive it).
    """
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    from functrain.transforms.members import PerMember, per_member

    check_unit_interval("betas[0]", betas[0], allow_schedule=True)
    check_unit_interval("betas[1]", betas[1], allow_members=True)
    b1, b2 = per_member("betas[0]", betas[0]), per_member("betas[1]", betas[1])
    b1 = b1 if is_schedule(b1) else float(b1)
    return b1, b2 if isinstance(b2, PerMember) else float(b2)


def check_callable(name: str, value: Any) -> Callable[..., Any]:
    """``value`` itself when it is callable, else ``ValueError`` naming ``name``."""
    if not callable(value):
        raise ValueError(f"{name} must be callable, got {value!r}")
    return value


def checked_betas(lr: Any, betas: Any, weight_decay: Any) -> tuple[Any, float]:
    """``betas`` checked (see :func:`check_betas`), after ``lr`` and before ``weight_decay``
    (both >= 0 or schedules): the Adam-like optimizers' arguments in the order in which torch
    reports the first bad one."""
    check_nonnegative("lr", lr, allow_schedule=True)
    betas = check_betas(betas)
    check_nonnegative("weight_decay", weight_decay, allow_schedule=True)
    return betas
