"""Schedules: hyperparameter values as pure functions of the step, with mmengine's semantics.

A :class:`Schedule` is a base value plus a list of pieces (mmengine's parameter
schedulers). Call it with a Python int, a 0-d integer tensor (no host sync) or a 1-d
tensor of steps. Build one with the snake-case builders (``cosine_annealing_lr(0.1,
T_max=100)``), compose with :func:`schedule_list`, or translate an mmengine
``param_scheduler`` config with :func:`from_mmengine`.
"""

from functrain.schedules._builders import (
    constant_lr,
    cosine_annealing_lr,
    cosine_restart_lr,
    cyclic_lr,
    exponential_lr,
    lambda_lr,
    linear_lr,
    linear_warmup,
    multiplicative_lr,
    multistep_lr,
    onecycle_lr,
    poly_lr,
    step_lr,
    warmup_cosine,
)
from functrain.schedules._mmengine import from_mmengine, mmengine_target, piece_from_mmengine
from functrain.schedules._pieces import (
    INF,
    Constant,
    CosineAnnealing,
    CosineRestart,
    Cyclic,
    Exponential,
    Lambda,
    Linear,
    Multiplicative,
    MultiStep,
    OneCycle,
    Piece,
    Poly,
    Step,
)
from functrain.schedules._plateau import PlateauState, ReduceOnPlateau
from functrain.schedules._plot import plot_schedules
from functrain.schedules._schedule import Schedule, as_schedule, schedule_list

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
