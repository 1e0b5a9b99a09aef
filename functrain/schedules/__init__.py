"""Schedules: hyperparameter values as pure functions of the step, with mmengine's semantics.

A :class:`Schedule` is a base value plus a list of pieces (mmengine's parameter
schedulers). Call it with a Python int, a 0-d integer tensor (no host sync) or a 1-d
tensor of steps. Build one with the snake-case builders (``cosine_annealing_lr(0.1,
T_max=100)``), compose with :func:`schedule_list`, or translate an mmengine
``param_scheduler`` config with :func:`from_mmengine`.

Modules: one per scheduler family, each holding its pieces and their builders
(``_warmup``: Constant, Linear; ``_decay``: Step, MultiStep, Exponential, Multiplicative;
``_anneal``: CosineAnnealing, Poly, CosineRestart; ``_cycle``: OneCycle, Cyclic, Lambda),
the base class in ``_piece``, argument checks in ``_args`` and the builders' shared
window arguments in ``_window``.
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
