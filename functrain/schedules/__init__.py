"""Schedules: hyperparameter values as pure functions of the step, with mmengine's semantics.

A :class:`Schedule` is a base value plus a list of pieces (mmengine's parameter
schedulers). Call it with a Python int, a 0-d integer tensor (no host sync) or a 1-d
tensor of steps. Build one with the snake-case builders (``cosine_annealing_lr(0.1,
T_max=100)``), compose with :func:`schedule_list`, or translate an mmengine
``param_scheduler`` config with :func:`from_mmengine`.

Per member: for an ensemble or a sweep of N members, every numeric argument (the base
value, factors, ``gamma``, ``eta_min`` / ``eta_min_ratio``, and lengths such as ``end``,
``T_max``, ``steps``, ``warmup_steps``) may be a sequence or a 1-d tensor of length N, mixed
with plain numbers. The schedule then returns a float64 tensor of shape ``[N]`` for an int
or 0-d step and ``[T, N]`` for T steps; column ``i`` equals, bit for bit, the schedule built
with member ``i``'s values (``schedule.member(i)``). Each member is checked as the scalar
would be, the error naming the index (``Linear: `start_factor[1]` must be in (0, 1]``);
vectors of different lengths are an error naming both. :func:`members` says how many
members a schedule, piece or hyperparameter value has (``None`` when shared), so that a
transform can check it against its ensemble. Members that differ only in values are
evaluated together (one kernel per op); members that differ in a length, a period or an
exponent run in one pass per distinct setting. ``ReduceOnPlateau`` and ``plot_schedules``
take plain values only.

Example:
    >>> import torch
    >>> s = cosine_annealing_lr([0.1, 0.2], T_max=4, eta_min=[0.0, 0.01])
    >>> s(torch.tensor(4)).tolist(), s(torch.arange(3)).shape, members(s)
    ([0.0, 0.01], torch.Size([3, 2]), 2)

Modules: one per scheduler family, each holding its pieces and their builders
(``_warmup``: Constant, Linear; ``_decay``: Step, MultiStep, Exponential, Multiplicative;
``_anneal``: CosineAnnealing, Poly, CosineRestart; ``_cycle``: OneCycle, Cyclic, Lambda),
the base class in ``_piece``, argument checks in ``_args``, the builders' shared
window arguments in ``_window`` and per-member arguments in ``_members``.
"""

from functrain.schedules._anneal import (
    CosineAnnealing,
    CosineRestart,
    Poly,
    cosine_annealing_lr,
    cosine_restart_lr,
    poly_lr,
    warmup_cosine,
)
from functrain.schedules._cycle import Cyclic, Lambda, OneCycle, cyclic_lr, lambda_lr, onecycle_lr
from functrain.schedules._decay import (
    Exponential,
    Multiplicative,
    MultiStep,
    Step,
    exponential_lr,
    multiplicative_lr,
    multistep_lr,
    step_lr,
)
from functrain.schedules._mmengine import from_mmengine, mmengine_target, piece_from_mmengine
from functrain.schedules._piece import INF, Piece
from functrain.schedules._plateau import PlateauState, ReduceOnPlateau
from functrain.schedules._plot import plot_schedules
from functrain.schedules._schedule import Schedule, as_schedule, members, schedule_list
from functrain.schedules._warmup import Constant, Linear, constant_lr, linear_lr, linear_warmup
from functrain.schedules._window import Window

__all__ = [
    "INF",
    "Constant",
    "CosineAnnealing",
    "CosineRestart",
    "Cyclic",
    "Exponential",
    "Lambda",
    "Linear",
    "MultiStep",
    "Multiplicative",
    "OneCycle",
    "Piece",
    "PlateauState",
    "Poly",
    "ReduceOnPlateau",
    "Schedule",
    "Step",
    "Window",
    "as_schedule",
    "constant_lr",
    "cosine_annealing_lr",
    "cosine_restart_lr",
    "cyclic_lr",
    "exponential_lr",
    "from_mmengine",
    "lambda_lr",
    "linear_lr",
    "linear_warmup",
    "members",
    "mmengine_target",
    "multiplicative_lr",
    "multistep_lr",
    "onecycle_lr",
    "piece_from_mmengine",
    "plot_schedules",
    "poly_lr",
    "schedule_list",
    "step_lr",
    "warmup_cosine",
]
