"""The registries a config's ``type=`` keys look up, with functrain's entries under
mmengine's names.

=============================  ==============================================================
registry                       holds (built in)
=============================  ==============================================================
``OPTIMIZERS``                 factories returning a ``GradientTransformation``: every
                               torch.optim class name (``SGD``, ``AdamW``, ...) and Lion,
                               LAMB, LARS, ScheduleFreeAdamW, ScheduleFreeSGD
``OPTIM_WRAPPERS``             ``OptimWrapper``, ``AmpOptimWrapper``
``OPTIM_WRAPPER_CONSTRUCTORS`` multiplier constructors: ``DefaultOptimWrapperConstructor``
``PARAM_SCHEDULERS``           mmengine's scheduler names (``CosineAnnealingLR``, ...); a
                               user function ``f(base, **cfg) -> schedule`` may be added
``HOOKS``                      callbacks under mmengine hook names (``CheckpointHook``, ...)
                               and their own names
``LOOPS``                      ``EpochBasedTrainLoop``, ``IterBasedTrainLoop``, ``ValLoop``,
                               ``TestLoop``
``MODELS``, ``DATASETS``       ``DigitsNet`` / ``Digits`` (:mod:`functrain.zoo`)
``DATA_SAMPLERS``              ``DefaultSampler``, ``InfiniteSampler``
``METRICS``                    ``Accuracy``, ``MeanMetrics``
``FUNCTIONS``                  collate functions: ``default_collate``, ``pseudo_collate``
``VISUALIZERS``                ``Visualizer``, ``DetLocalVisualizer`` and the other names of
                               :data:`functrain.visualization.VISUALIZER_TYPES`
``VIS_BACKENDS``               ``LocalVisBackend``, ``TensorboardVisBackend``,
                               ``WandbVisBackend``, ``MLflowVisBackend``
=============================  ==============================================================

``CALLBACKS`` is another name for ``HOOKS``.
"""

from __future__ import annotations

from typing import Any

from functrain.config.registry_class import Lazy, Registry

__all__ = [
    "CALLBACKS",
    "DATASETS",
    "DATA_SAMPLERS",
    "FUNCTIONS",
    "HOOKS",
    "LOOPS",
    "METRICS",
    "MODELS",
    "OPTIMIZERS",
    "OPTIM_WRAPPERS",
    "OPTIM_WRAPPER_CONSTRUCTORS",
    "PARAM_SCHEDULERS",
    "REGISTRIES",
    "VISUALIZERS",
    "VIS_BACKENDS",
]

#: Every registry by its name (``CALLBACKS`` is ``HOOKS`` under another name).
REGISTRIES: dict[str, Registry] = {}


def _registry(name: str, what: str) -> Registry:
    """A new registry, recorded in :data:`REGISTRIES`."""
    REGISTRIES[name] = Registry(name, what)
    return REGISTRIES[name]


OPTIMIZERS = _registry("OPTIMIZERS", "optimizer")
OPTIM_WRAPPERS = _registry("OPTIM_WRAPPERS", "optimizer wrapper")
OPTIM_WRAPPER_CONSTRUCTORS = _registry(
    "OPTIM_WRAPPER_CONSTRUCTORS", "optimizer wrapper constructor"
)
PARAM_SCHEDULERS = _registry("PARAM_SCHEDULERS", "parameter scheduler")
HOOKS = _registry("HOOKS", "hook")
CALLBACKS = HOOKS
LOOPS = _registry("LOOPS", "loop")
MODELS = _registry("MODELS", "model")
DATASETS = _registry("DATASETS", "dataset")
DATA_SAMPLERS = _registry("DATA_SAMPLERS", "data sampler")
METRICS = _registry("METRICS", "metric")
FUNCTIONS = _registry("FUNCTIONS", "function")
VISUALIZERS = _registry("VISUALIZERS", "visualizer")
VIS_BACKENDS = _registry("VIS_BACKENDS", "visualization backend")


def _register_builtins() -> None:
    from functrain import callbacks as cb
    from functrain import loops
    from functrain.schedules._mmengine import PLATEAU_TYPES, SCHEDULER_TYPES
    from functrain.transforms.torch_names import EXTRA_OPTIMIZERS, TORCH_OPTIMIZERS

    for name, factory in {**TORCH_OPTIMIZERS, **EXTRA_OPTIMIZERS}.items():
        OPTIMIZERS.register_module(name, module=factory)
    for name in ("OptimWrapper", "AmpOptimWrapper"):
        OPTIM_WRAPPERS.register_module(name, module=name)
    OPTIM_WRAPPER_CONSTRUCTORS.register_module(
        "DefaultOptimWrapperConstructor",
        module=Lazy("functrain.config.paramwise:DefaultOptimWrapperConstructor"),
    )
    for name in (*SCHEDULER_TYPES, *PLATEAU_TYPES):
        PARAM_SCHEDULERS.register_module(name, module=name)  # built by from_mmengine
    hooks = {
        ("IterTimerHook", "IterTimer"): cb.IterTimer,
        ("LoggerHook", "Logger"): cb.Logger,
        ("CheckpointHook", "CheckpointCallback"): cb.CheckpointCallback,
        ("DistSamplerSeedHook", "SamplerSeed"): cb.SamplerSeed,
        ("TerminateOnNaNHook", "TerminateOnNaN"): cb.TerminateOnNaN,
        ("EMAHook",): Lazy("functrain.config.hooks:ema_hook"),
        ("EMA",): cb.EMA,
        ("EarlyStoppingHook", "EarlyStopping"): cb.EarlyStopping,
        ("ProgressBar",): cb.ProgressBar,
        ("CurvesPlot",): cb.CurvesPlot,
        ("NumClassCheckHook", "NumClassCheck"): Lazy("functrain.config.hooks:NumClassCheck"),
        ("SyncBuffersHook", "SyncBuffers"): Lazy("functrain.distributed.data_parallel:SyncBuffers"),
        ("VisualizationHook", "DetVisualizationHook"): Lazy(
            "functrain.visualization.hook:VisualizationHook"
        ),
    }
    for names, factory in hooks.items():
        HOOKS.register_module(list(names), module=factory)
    # Schedules live in the optimizer state and the runner keeps its own runtime info, so
    # these two default hooks of mmengine have nothing to do: building one gives nothing.
    for name in ("ParamSchedulerHook", "RuntimeInfoHook"):
        HOOKS.register_module(name, module=_nothing)
    for loop in (
        loops.EpochBasedTrainLoop,
        loops.IterBasedTrainLoop,
        loops.ValLoop,
        loops.TestLoop,
    ):
        LOOPS.register_module(module=loop)
    MODELS.register_module("DigitsNet", module=Lazy("functrain.zoo:DigitsNet"))
    DATASETS.register_module("Digits", module=Lazy("functrain.zoo:Digits"))
    for name in ("DefaultSampler", "InfiniteSampler"):
        DATA_SAMPLERS.register_module(name, module=Lazy(f"functrain.distributed.sampler:{name}"))
    METRICS.register_module("Accuracy", module=Lazy("functrain.metrics:Accuracy"))
    METRICS.register_module("MeanMetrics", module=loops.MeanMetrics)
    FUNCTIONS.register_module("default_collate", module=Lazy("torch.utils.data:default_collate"))
    FUNCTIONS.register_module("pseudo_collate", module=Lazy("functrain.metrics:pseudo_collate"))
    from functrain.visualization.backends import BACKENDS
    from functrain.visualization.visualizer import VISUALIZER_TYPES

    for name in VISUALIZER_TYPES:
        VISUALIZERS.register_module(name, module=Lazy("functrain.visualization:Visualizer"))
    for name in BACKENDS:
        VIS_BACKENDS.register_module(name, module=Lazy(f"functrain.visualization:{name}"))


def _nothing(**_: Any) -> None:
    return None


_register_builtins()
