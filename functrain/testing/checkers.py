"""Checkers: the properties every schedule must have, as functions that assert them.

Each ``check_*`` takes the schedule and ``steps``, how many steps to look at (default:
past the last finite window end, see :func:`check_schedule`), and raises
``AssertionError`` naming the schedule, the step and the values when the property fails.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from functrain.schedules import INF, Schedule

# The checkers in the order check_schedule runs them, then the helpers for your own.
__all__ = [
    "check_finite",
    "check_forms_agree",
    "check_bounds",
    "check_constant_outside_windows",
    "check_continuity",
    "check_monotone",
    "check_matches_recursion",
    "check_schedule",
    "magnitude",
    "assert_matches",
]

_REL = 1e-12  # int, 0-d and 1-d forms may round differently (vectorised vs scalar kernels)


def _steps(schedule: Schedule, steps: int | None) -> int:
    if steps is not None:
        return steps
    ends = [stop if stop < INF // 2 else first + 60 for first, stop in schedule.windows()]
    return min(max(ends, default=0) + 8, 4000)


def _curve(schedule: Schedule, steps: int | None) -> torch.Tensor:
    """The schedule's values at steps ``0 .. n-1`` as one float64 vector."""
    return schedule(torch.arange(_steps(schedule, steps)))


def _close(a: float, b: float, rel: float) -> bool:
    return a == b or abs(a - b) <= rel * max(abs(a), abs(b))


def check_finite(schedule: Schedule, steps: int | None = None) -> None:
    """Assert all values over ``0 .. steps-1`` are finite.

    Args:
        schedule, steps: see :func:`check_schedule`.

    Example:
        >>> from functrain.schedules import poly_lr
        >>> check_finite(poly_lr(0.1, end=10))
    """
    bad = (~torch.isfinite(_curve(schedule, steps))).nonzero()
    assert bad.numel() == 0, f"{schedule!r}: non-finite value at step {int(bad[0])}"


def check_forms_agree(schedule: Schedule, steps: int | None = None, samples: int = 64) -> None:
    """Assert the int, 0-d tensor and 1-d tensor forms give the same values.

    Checks types too: a Python float for an int, a 0-d float64 tensor on the step's
    device for a 0-d tensor, and a float64 vector for a vector. Values may differ by
    rounding only (relative 1e-12): vectorised and scalar kernels round differently.

    Args:
        schedule, steps: see :func:`check_schedule`.
        samples: how many steps to check one by one (window edges are always included).

    Example:
        >>> from functrain.schedules import cosine_annealing_lr
        >>> check_forms_agree(cosine_annealing_lr(0.1, T_max=10))
    """
    curve = _curve(schedule, steps)
    n = len(curve)
    assert curve.dtype == torch.float64 and curve.shape == (n,), f"{schedule!r}: bad curve"
    picks = {0, n - 1}
    for first, stop in schedule.windows():
        picks.update(t for t in (first - 1, first, first + 1, stop - 1, stop) if 0 <= t < n)
    stride = max(n // max(samples, 1), 1)
    picks.update(range(0, n, stride))
    for t in sorted(picks):
        as_int = schedule(t)
        assert type(as_int) is float, f"{schedule!r}: schedule({t}) is {type(as_int)}, not float"
        scalar = schedule(torch.tensor(t))
        assert scalar.dim() == 0 and scalar.dtype == torch.float64, f"{schedule!r}: bad 0-d result"
        want = float(curve[t])
        for got, form in ((as_int, "int"), (float(scalar), "0-d tensor")):
            assert _close(got, want, _REL), (
                f"{schedule!r}: step {t}: {form} form gives {got}, vector form gives {want}"
            )


def check_bounds(schedule: Schedule, steps: int | None = None) -> None:
    """Assert every value lies within :meth:`Schedule.bounds` (up to 1e-9 relative).

    Args:
        schedule, steps: see :func:`check_schedule`.

    Example:
        >>> from functrain.schedules import linear_lr
        >>> check_bounds(linear_lr(1.0, start_factor=0.1, end=10))
    """
    lo, hi = schedule.bounds()
    values = _curve(schedule, steps)
    # Round-off of the recursion (e.g. a linear factor ending at 0 gives -5e-17).
    slack = 1e-9 * magnitude(schedule) + 1e-9 * max(
        abs(lo) if math.isfinite(lo) else 0, abs(hi) if math.isfinite(hi) else 0
    )
    for outside, side, limit in (
        (values < lo - slack, "below", lo),
        (values > hi + slack, "above", hi),
    ):
        where = outside.nonzero()
        assert where.numel() == 0, (
            f"{schedule!r}: value {float(values[where[0]])} at step {int(where[0])} is "
            f"{side} {limit}"
        )


def check_constant_outside_windows(schedule: Schedule, steps: int | None = None) -> None:
    """Assert the value changes only at steps where some piece updates it.

    Before the first update the value is the base value; between updates (gaps between
    windows, after the last window, and between the epoch boundaries of by-epoch
    pieces) it stays put.

    Args:
        schedule, steps: see :func:`check_schedule`.

    Example:
        >>> from functrain.schedules import linear_lr
        >>> check_constant_outside_windows(linear_lr(1.0, begin=3, end=6))
    """
    previous = schedule.base
    for t, value in enumerate(_curve(schedule, steps).tolist()):
        if not schedule.event_pieces(t):
            assert previous is not None and _close(value, previous, _REL), (
                f"{schedule!r}: value changes at step {t} ({previous} -> {value}) "
                "although no piece updates it there"
            )
        previous = value


def check_continuity(schedule: Schedule, steps: int | None = None) -> None:
    """Assert continuity where a piece starts with an identity step.

    Cosine, poly, exponential, step, multistep (no milestone at 0) and multiplicative
    pieces leave the value unchanged at their first step, so a window that starts
    alone continues from the last value before it: the seed's second cosine segment
    starts from the last value the first one wrote, not from its ``eta_min``.

    Args:
        schedule, steps: see :func:`check_schedule`.

    Example:
        >>> from functrain.schedules import schedule_list, linear_lr, cosine_annealing_lr
        >>> check_continuity(schedule_list([linear_lr(end=5),
        ...                                 cosine_annealing_lr(begin=5, end=20)], base=1.0))
    """
    values = _curve(schedule, steps).tolist()
    n = len(values)
    for i, (piece, (first, _)) in enumerate(zip(schedule.pieces, schedule.windows(), strict=True)):
        if not (0 < first < n) or not piece._identity_at_start():
            continue
        if schedule.event_pieces(first) != [i]:
            continue
        assert _close(values[first], values[first - 1], _REL), (
            f"{schedule!r}: piece {i} ({piece!r}) starts at step {first} with "
            f"{values[first]} but the value before was {values[first - 1]}"
        )


def check_monotone(schedule: Schedule, steps: int | None = None) -> None:
    """Assert monotonicity where a piece's definition implies it.

    For every stretch of steps where a single piece updates the value, the values must
    follow the piece's direction (e.g. a cosine towards its ``eta_min`` before
    ``T_max``, a poly towards ``eta_min``, a linear factor from ``start_factor`` to
    ``end_factor``, a decay with ``gamma < 1`` downwards).

    Args:
        schedule, steps: see :func:`check_schedule`.

    Example:
        >>> from functrain.schedules import poly_lr
        >>> check_monotone(poly_lr(1.0, eta_min=0.1, end=20))
    """
    values = _curve(schedule, steps).tolist()
    n = len(values)
    bases_ = schedule.piece_bases()
    owners = [schedule.event_pieces(t) for t in range(n)]
    t = 0
    while t < n:
        if len(owners[t]) != 1:
            t += 1
            continue
        (i,) = owners[t]
        stop = t
        while stop + 1 < n and owners[stop + 1] in ([], [i]):
            stop += 1
        piece = schedule.pieces[i]
        scale = schedule._events()[i][2]
        k_from = t // scale - piece.begin
        v_in = values[t - 1] if t > 0 else schedule.base
        assert v_in is not None
        direction = piece._direction(v_in, bases_[i], k_from)
        for a in range(t, stop):
            step = values[a + 1] - values[a]
            tol = _REL * max(abs(values[a]), abs(values[a + 1]))
            assert direction * step >= -tol or direction == 0, (
                f"{schedule!r}: piece {i} ({piece!r}) should be "
                f"{'non-decreasing' if direction > 0 else 'non-increasing'} from step {t}, "
                f"but goes {values[a]} -> {values[a + 1]} at step {a + 1}"
            )
        t = stop + 1


def magnitude(schedule: Schedule, values: Sequence[float] = ()) -> float:
    """The size of the quantities a schedule computes with: base, targets and values.

    Used to scale the absolute part of :func:`assert_matches`.

    Args:
        schedule: the schedule.
        values: values it produced (their largest magnitude counts too).

    Example:
        >>> from functrain.schedules import poly_lr
        >>> magnitude(poly_lr(0.1, eta_min=2.0))
        2.0
    """
    sizes = [abs(schedule.base or 0.0), *(abs(v) for v in values)]
    for piece, base in zip(schedule.pieces, schedule.piece_bases(), strict=True):
        sizes.extend(abs(level) for level in piece._levels(base) or ())
    return max(sizes)


def assert_matches(
    got: Sequence[float], want: Sequence[float], *, scale: float, rel: float = 1e-9, what: str = ""
) -> None:
    """Assert ``got[t]`` equals ``want[t]`` to ``rel`` relative, up to recursion round-off.

    mmengine computes ``eta_min + (v - eta_min) * r`` once per step, so a value far below
    ``eta_min`` carries an absolute round-off of about one ulp of ``scale`` per step; the
    tolerance is ``rel * |want| + 4 * eps * (t + 1) * scale``.

    Args:
        got: values to check.
        want: reference values.
        scale: magnitude of the quantities involved (see :func:`magnitude`).
        rel: relative tolerance.
        what: a label for the error message.

    Example:
        >>> assert_matches([1.0, 0.5], [1.0, 0.5 + 1e-12], scale=1.0)
    """
    assert len(got) == len(want), f"{what}: {len(got)} values, expected {len(want)}"
    eps = 2.220446049250313e-16
    for t, (a, b) in enumerate(zip(got, want, strict=True)):
        assert abs(a - b) <= rel * abs(b) + 4 * eps * (t + 1) * scale, (
            f"{what}: step {t}: got {a!r}, expected {b!r} (rel. error "
            f"{abs(a - b) / abs(b) if b else math.inf:.3g})"
        )


def check_matches_recursion(schedule: Schedule, steps: int | None = None) -> None:
    """Assert the closed forms agree with a step-by-step replay of mmengine's recursion.

    The replay applies each piece's mmengine update in mmengine's stepping order, in
    Python floats; the evaluated schedule must match it within 1e-9 relative (see
    :func:`assert_matches` for the round-off allowance).

    Args:
        schedule, steps: see :func:`check_schedule`.

    Example:
        >>> from functrain.schedules import cosine_annealing_lr
        >>> check_matches_recursion(cosine_annealing_lr(1.0, T_max=5, eta_min=0.1))
    """
    replay = schedule._program._replay(_steps(schedule, steps))
    values = schedule(torch.arange(len(replay))).tolist()
    scale = magnitude(schedule, replay)
    assert_matches(values, replay, scale=scale, what=f"{schedule!r} vs. mmengine's recursion")


#: every checker, in the order :func:`check_schedule` runs them.
_CHECKERS = (
    check_finite,
    check_forms_agree,
    check_bounds,
    check_constant_outside_windows,
    check_continuity,
    check_monotone,
    check_matches_recursion,
)


def check_schedule(schedule: Schedule, steps: int | None = None) -> None:
    """Run every checker of this module on ``schedule``.

    Args:
        schedule: the schedule.
        steps: how many steps to check, ``0 .. steps - 1`` (default: 8 past the last
            finite window end, an open window counting as 60 steps; at most 4000).
            Every ``check_*`` takes these two arguments with this meaning.

    Example:
        >>> from functrain.schedules import warmup_cosine
        >>> check_schedule(warmup_cosine(0.1, warmup_steps=5, total_steps=50))
    """
    for check in _CHECKERS:
        check(schedule, steps)
