"""Hyperparameters that are a constant or a schedule of the step.

A transform evaluates a scheduled hyperparameter at its own step count (the number of updates
applied so far, as ``scale_by_learning_rate`` does), on the device, without a host sync, and
keeps the value in force in its state for loggers. A constant stays a Python float, which
torch's fused kernels take directly; a scheduled one makes the transform use its foreach path.

Which recorded values a transform reads back from its state (and so can be set without
rebuilding it: :func:`functrain.set_hyperparam`, ``ReduceOnPlateauCallback``) is listed once,
in :data:`functrain.transforms.state_values.HYPERPARAMETERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from functrain.transforms.validation import is_schedule

__all__ = ["in_force", "initial_value", "value_at"]

Schedule = Callable[[Any], Any]


def value_at(value: float | Schedule, count: Tensor) -> float | Tensor:
    """``value`` itself, or the schedule evaluated at ``count`` as a 0-d float64 tensor."""
    if not is_schedule(value):
        return value
    step = count if count.dtype == torch.int64 else count.to(torch.int64)
    return torch.as_tensor(value(step), dtype=torch.float64, device=count.device)


def initial_value(value: float | Schedule, device: torch.device) -> Tensor:
    """The value in force before the first update, as a 0-d float64 tensor on ``device``."""
    if is_schedule(value):
        return value_at(value, torch.zeros((), dtype=torch.int64, device=device))
    return torch.tensor(float(value), dtype=torch.float64, device=device)


def in_force(value: float | Schedule, current: float | Tensor, previous: Tensor) -> Tensor:
    """What a state records as the value in force after an update used ``current``."""
    return current if isinstance(current, Tensor) else previous
