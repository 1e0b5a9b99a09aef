"""Hyperparameter checks shared by the transform factories.

Each raises ``ValueError`` naming the argument and the value, in torch.optim's wording where
torch has a message for the same mistake.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor

__all__ = [
    "check_betas",
    "check_nonnegative",
    "check_positive",
    "check_unit_interval",
    "is_schedule",
]


def is_schedule(value: Any) -> bool:
    """Whether ``value`` is a schedule (a callable ``step -> value``) rather than a number."""
    return callable(value) and not isinstance(value, Tensor)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if math.isnan(value):
        raise ValueError(f"Invalid {name}: {value!r} (NaN)")
    return float(value)


def check_nonnegative(name: str, value: Any, *, allow_schedule: bool = False) -> None:
    """``value >= 0`` (a schedule is accepted as is when ``allow_schedule``)."""
    if allow_schedule and is_schedule(value):
        return
    if _number(name, value) < 0:
        raise ValueError(f"Invalid {name}: {value!r}; {name} must be >= 0")


def check_positive(name: str, value: Any) -> None:
    """``value > 0``."""
    if _number(name, value) <= 0:
        raise ValueError(f"Invalid {name}: {value!r}; {name} must be > 0")


def check_unit_interval(name: str, value: Any, *, allow_schedule: bool = False) -> None:
    """``0 <= value < 1`` (a momentum or beta)."""
    if allow_schedule and is_schedule(value):
        return
    v = _number(name, value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"Invalid {name}: {value!r}; {name} must be in [0, 1)")


def check_betas(betas: Any) -> tuple[Any, float]:
    """A pair ``(beta1, beta2)`` with each in ``[0, 1)``, as torch.optim.Adam checks them.

    ``beta1`` may be a schedule (mmengine's momentum schedulers drive it).
    """
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    check_unit_interval("betas[0]", betas[0], allow_schedule=True)
    check_unit_interval("betas[1]", betas[1])
    b1 = betas[0] if is_schedule(betas[0]) else float(betas[0])
    return b1, float(betas[1])


def check_callable(name: str, value: Any) -> Callable[..., Any]:
    if not callable(value):
        raise ValueError(f"{name} must be callable, got {value!r}")
    return value
