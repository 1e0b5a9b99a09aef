"""Property-based testing helpers for schedules (needs ``hypothesis``).

Strategies draw valid schedules, schedule lists and mmengine ``param_scheduler``
configs; checkers assert the properties every schedule must have and can be called on
your own schedules::

    from hypothesis import given
    from functrain import testing

    @given(testing.schedule_lists())
    def test_my_lists(schedule):
        testing.check_schedule(schedule)

:func:`mmengine_values` replays a config with mmengine's real schedulers (imported
lazily; ``pip install mmengine``) to compare numbers.

Modules: :mod:`.strategies` (what hypothesis draws), :mod:`.checkers` (the properties)
and :mod:`.reference` (mmengine's own numbers).
"""

from __future__ import annotations

try:
    import hypothesis  # noqa: F401 - checked here so that the message names the extra
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("functrain.testing needs hypothesis: pip install hypothesis") from err

from functrain.testing.checkers import (
    assert_matches,
    check_bounds,
    check_constant_outside_windows,
    check_continuity,
    check_finite,
    check_forms_agree,
    check_matches_recursion,
    check_monotone,
    check_schedule,
    magnitude,
)
from functrain.testing.reference import mmengine_values
from functrain.testing.strategies import (
    KINDS,
    MMENGINE_KINDS,
    ArgumentSpace,
    MMEngineCase,
    PowerFn,
    bases,
    family_arguments,
    mmengine_cases,
    pieces,
    schedule_lists,
    schedules,
)

__all__ = [
    "ArgumentSpace",
    "KINDS",
    "MMENGINE_KINDS",
    "MMEngineCase",
    "PowerFn",
    "assert_matches",
    "bases",
    "check_bounds",
    "check_constant_outside_windows",
    "check_continuity",
    "check_finite",
    "check_forms_agree",
    "check_matches_recursion",
    "check_monotone",
    "check_schedule",
    "family_arguments",
    "magnitude",
    "mmengine_cases",
    "mmengine_values",
    "pieces",
    "schedule_lists",
    "schedules",
]
