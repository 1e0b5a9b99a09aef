"""Callbacks: mmengine's hook points as methods of objects run in priority order.

See :mod:`functrain.callbacks.base` for the protocol, :class:`functrain.runner.Runner` for
how they are registered (default callbacks first, replaceable by name).
"""

from functrain.callbacks.base import (
    EVENTS,
    Callback,
    CallbackList,
    Priority,
    ScalarHistory,
    get_priority,
)
from functrain.callbacks.checkpoint import CheckpointCallback, infer_rule
from functrain.callbacks.early_stopping import EarlyStopping
from functrain.callbacks.ema import EMA
from functrain.callbacks.logger import Logger
from functrain.callbacks.plateau import ReduceOnPlateauCallback
from functrain.callbacks.plot import CurvesPlot, curve_panels, plot_curves
from functrain.callbacks.progress import ProgressBar
from functrain.callbacks.sampler import SamplerSeed
from functrain.callbacks.terminate_on_nan import NonFiniteLossError, TerminateOnNaN
from functrain.callbacks.timer import IterTimer

__all__ = [
    "EMA",
    "EVENTS",
    "Callback",
    "CallbackList",
    "CheckpointCallback",
    "CurvesPlot",
    "EarlyStopping",
    "IterTimer",
    "Logger",
    "NonFiniteLossError",
    "Priority",
    "ProgressBar",
    "ReduceOnPlateauCallback",
    "SamplerSeed",
    "ScalarHistory",
    "TerminateOnNaN",
    "curve_panels",
    "get_priority",
    "infer_rule",
    "plot_curves",
]
