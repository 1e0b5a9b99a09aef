"""Visualizer, visualization backends and the visualization hook (mmengine's
``visualizer=dict(...)``, ``vis_backends=[...]`` and MMDetection's ``DetVisualizationHook``).

See :mod:`functrain.visualization.visualizer`, :mod:`functrain.visualization.backends` and
:mod:`functrain.visualization.hook`.
"""

from functrain.visualization.backends import (
    BACKENDS,
    BaseVisBackend,
    LocalVisBackend,
    MissingBackendPackage,
    MLflowVisBackend,
    TensorboardVisBackend,
    WandbVisBackend,
)
from functrain.visualization.hook import VisualizationHook, VisualizerRun, draw_classification
from functrain.visualization.visualizer import VISUALIZER_TYPES, Visualizer, build_visualizer

__all__ = [
    "BACKENDS",
    "VISUALIZER_TYPES",
    "BaseVisBackend",
    "LocalVisBackend",
    "MLflowVisBackend",
    "MissingBackendPackage",
    "TensorboardVisBackend",
    "VisualizationHook",
    "Visualizer",
    "VisualizerRun",
    "WandbVisBackend",
    "build_visualizer",
    "draw_classification",
]
