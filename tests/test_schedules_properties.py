"""Property tests: every schedule drawn by functrain.testing satisfies the checkers.

The second half checks that the checkers themselves fail on schedules that break the
property they test, so a passing property test means something.
"""

from __future__ import annotations

import doctest
import importlib
import math

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from functrain import testing
from functrain.schedules import (
    Constant,
    CosineAnnealing,
    Linear,
    Schedule,
    cosine_annealing_lr,
    exponential_lr,
    linear_lr,
    multistep_lr,
    poly_lr,
    schedule_list,
)

# The doctests of functrain.testing import mmengine, which warns about torch.jit.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize("kind", testing.KINDS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_kind_alone_has_the_properties(kind, data):
    testing.check_schedule(data.draw(testing.schedules([kind])))


@settings(max_examples=100, deadline=None)
@given(testing.schedule_lists())
def test_schedule_lists_have_the_properties(schedule):
    testing.check_schedule(schedule)


@settings(max_examples=30, deadline=None)
@given(testing.schedule_lists(max_len=3), st.lists(st.integers(0, 400), min_size=1, max_size=20))
def test_any_order_of_steps_gives_the_same_values(schedule, steps):
    """A schedule is a pure function: no hidden state depends on call order."""
    once = schedule(torch.tensor(steps)).tolist()
    for t, value in zip(reversed(steps), reversed(once), strict=True):
        # The int and vector forms may round differently (scalar vs vectorised kernels).
        assert math.isclose(schedule(t), value, rel_tol=1e-12)


@settings(max_examples=30, deadline=None)
@given(testing.schedules(), testing.bases())
def test_a_single_multiplicative_piece_scales_with_its_base(schedule, base):
    piece = schedule.pieces[0]
    if not piece._multiplicative():
        return
    steps = torch.arange(60)
    ratio = base / schedule.base
    got = schedule.with_base(base)(steps)
    torch.testing.assert_close(got, schedule(steps) * ratio, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------- checkers fail


@attrs.frozen(repr=False)
class _Shifted(Schedule):
    """A schedule whose int form is off by a relative 1e-9."""

    def __call__(self, step):
        out = super().__call__(step)
        return out * (1 + 1e-9) if isinstance(step, int) else out


@attrs.frozen(repr=False)
class _Drifting(Schedule):
    """A schedule that keeps moving after its windows end."""

    def __call__(self, step):
        out = super().__call__(step)
        return out * (1 + 1e-6 * step)


def test_checkers_catch_broken_schedules():
    base = linear_lr(start_factor=0.5, end=5).pieces
    with pytest.raises(AssertionError, match="int form"):
        testing.check_forms_agree(_Shifted(base, base=1.0))
    with pytest.raises(AssertionError, match="no piece updates it"):
        testing.check_constant_outside_windows(_Drifting(base, base=1.0))
    with pytest.raises(AssertionError, match="mmengine's recursion"):
        testing.check_matches_recursion(_Drifting(base, base=1.0))


def test_check_bounds_fails_outside_declared_bounds(monkeypatch):
    s = poly_lr(1.0, eta_min=0.5, end=10)
    assert s.bounds() == (0.5, 1.0)
    monkeypatch.setattr(Schedule, "bounds", lambda self: (0.6, 1.0))
    with pytest.raises(AssertionError, match="below 0.6"):
        testing.check_bounds(s)


def test_check_monotone_and_continuity_fail_on_wrong_curves(monkeypatch):
    s = cosine_annealing_lr(1.0, T_max=10, eta_min=0.0, begin=3, end=13)
    monkeypatch.setattr(CosineAnnealing, "_direction", lambda self, v, b, k: 1)
    with pytest.raises(AssertionError, match="non-decreasing"):
        testing.check_monotone(s)
    monkeypatch.undo()
    # A linear piece does not start with an identity step; claiming it does must fail.
    lin = schedule_list([linear_lr(start_factor=0.5, begin=3, end=8)], base=1.0)
    monkeypatch.setattr(Linear, "_identity_at_start", lambda self: True)
    with pytest.raises(AssertionError, match="starts at step 3"):
        testing.check_continuity(lin)


def test_bounds_are_tight_for_products_and_hull_for_affine_lists():
    s = schedule_list(
        [linear_lr(start_factor=0.1, end=5), multistep_lr(milestones=[10], gamma=0.5)], 2.0
    )
    assert s.bounds() == pytest.approx((2.0 * 0.1 * 0.5, 2.0))
    s = schedule_list([Constant(factor=0.5, end=4), CosineAnnealing(T_max=8, eta_min=0.1)], 1.0)
    lo, hi = s.bounds()
    assert lo <= 0.05 and hi >= 1.0
    assert exponential_lr(1.0, gamma=1.5).bounds()[1] == float("inf")


def test_strategies_draw_what_they_promise():
    @settings(max_examples=40, deadline=None)
    @given(testing.schedule_lists(["OneCycle", "Linear"], max_len=4))
    def at_most_one_onecycle(schedule):
        assert sum(p.__class__.__name__ == "OneCycle" for p in schedule.pieces) <= 1
        schedule(0)  # valid lists compile

    at_most_one_onecycle()
    with pytest.raises(ValueError, match="unknown kind"):
        testing.pieces(["Cosine"])


@pytest.mark.parametrize(
    "module",
    [
        "functrain.schedules._args",
        "functrain.schedules._piece",
        "functrain.schedules._warmup",
        "functrain.schedules._decay",
        "functrain.schedules._anneal",
        "functrain.schedules._cycle",
        "functrain.schedules._window",
        "functrain.schedules._schedule",
        "functrain.schedules._mmengine",
        "functrain.schedules._plateau",
        "functrain.schedules._plot",
        "functrain.testing.strategies",
        "functrain.testing.checkers",
        "functrain.testing.reference",
    ],
)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
