"""``Visualizer``: the run's one place for scalars, the config and images, sent to every
backend (mmengine's ``Visualizer``; ``DetLocalVisualizer`` and the other task visualizers'
names are accepted with their drawing options).

:func:`functrain.config.build_runner` builds it from the config's ``visualizer=dict(...)``
(``save_dir`` defaults to ``<log_dir>/vis_data``, mmengine's place), records the config once
per run and sets ``runner.visualizer``; the :class:`~functrain.callbacks.Logger` sends it every
record it writes to ``scalars.json``; the :class:`~functrain.visualization.VisualizationHook`
sends it images. Only the main rank writes (as the logger): on other ranks every method does
nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from functrain.ranks import is_main_process
from functrain.visualization.backends import BACKENDS, BaseVisBackend, check_installed

__all__ = ["VISUALIZER_TYPES", "Visualizer", "build_visualizer"]

#: mmengine / OpenMMLab visualizer names accepted (they differ in what they draw, which
#: functrain's hook does itself; their drawing options are kept as attributes).
VISUALIZER_TYPES = (
    "Visualizer",
    "LocalVisualizer",
    "DetLocalVisualizer",
    "UniversalVisualizer",
    "ClsVisualizer",
)

_DRAWING_OPTIONS = (
    "image",
    "fig_save_cfg",
    "fig_show_cfg",
    "bbox_color",
    "text_color",
    "mask_color",
    "line_width",
    "alpha",
)


class Visualizer:
    """Send scalars, the config and images to every backend.

    Args:
        name: the instance's name (mmengine's ``name='visualizer'``).
        vis_backends: backend objects or ``dict(type='LocalVisBackend', ...)`` configs
            (mmengine's backend names and options, see :mod:`functrain.visualization.backends`).
        save_dir: where backends write (each backend's ``save_dir`` unless it names one).
        **drawing: mmengine's drawing options (``image``, ``fig_save_cfg``, ``bbox_color``,
            ``line_width``, ``alpha``, ...): kept as attributes, not used.

    Raises:
        ValueError: an unknown backend type or option, naming it.
    """

    def __init__(
        self,
        name: str = "visualizer",
        vis_backends: Sequence[BaseVisBackend | Mapping[str, Any]] | None = None,
        save_dir: str | os.PathLike[str] | None = None,
        **drawing: Any,
    ) -> None:
        unknown = sorted(set(drawing) - set(_DRAWING_OPTIONS))
        if unknown:
            raise ValueError(
                f"visualizer: unknown option(s) {unknown}; known: name, vis_backends, save_dir, "
                f"{', '.join(_DRAWING_OPTIONS)}"
            )
        self.name = name
        self.drawing = drawing
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.backends: dict[str, BaseVisBackend] = {}
        for i, item in enumerate(vis_backends or ()):
            backend = _make_backend(item, i)
            if backend.save_dir is None:
                backend.save_dir = self.save_dir
            key = type(backend).__name__
            while key in self.backends:  # two of a kind: the second is Name_1 (as mmengine)
                key = f"{type(backend).__name__}_{len(self.backends)}"
            self.backends[key] = backend
        self._config_done = False

    def check_installed(self) -> None:
        """Raise ``MissingBackendPackage`` (one line: what to install) if a backend's
        package is missing."""
        check_installed(list(self.backends.values()))

    def set_save_dir(self, save_dir: str | os.PathLike[str]) -> None:
        """The directory of backends that were not given one (set before first use)."""
        self.save_dir = Path(save_dir)
        for backend in self.backends.values():
            if backend.save_dir is None:
                backend.save_dir = self.save_dir

    def get_backend(self, name: str) -> BaseVisBackend | None:
        """The backend registered as ``name`` (its type name), as mmengine."""
        return self.backends.get(name)

    def add_config(self, config: Mapping[str, Any], **kwargs: Any) -> None:
        """Record the config (its hyperparameters) in every backend, once per run."""
        if not is_main_process() or self._config_done:
            return
        self._config_done = True
        for backend in self.backends.values():
            backend.add_config(config, **kwargs)

    def add_scalars(
        self,
        scalar_dict: Mapping[str, Any],
        step: int = 0,
        file_path: str | None = None,
        prefix: str = "",
        **kwargs: Any,
    ) -> None:
        """Send a record of Python numbers (no ``step`` key) at ``step`` to every backend;
        trackers name them ``prefix + key`` (``file_path`` is mmengine's, unused)."""
        if not is_main_process():
            return
        if "step" in scalar_dict:
            raise ValueError("add_scalars: pass the step as step=..., not as a key")
        for backend in self.backends.values():
            backend.add_scalars(scalar_dict, step, prefix=prefix)

    def add_scalar(self, name: str, value: Any, step: int = 0, **kwargs: Any) -> None:
        """One scalar to every backend."""
        self.add_scalars({name: value}, step)

    def add_image(self, name: str, image: np.ndarray, step: int = 0) -> None:
        """An RGB ``uint8`` ``(H, W, 3)`` image to every backend."""
        if not is_main_process():
            return
        image = np.ascontiguousarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"add_image({name!r}): expected an RGB uint8 array (H, W, 3), got "
                f"{image.dtype} {image.shape}"
            )
        for backend in self.backends.values():
            backend.add_image(name, image, step)

    def close(self) -> None:
        """Flush and close every backend (a later call opens them again)."""
        for backend in self.backends.values():
            backend.close()
        self._config_done = False  # the next run records it again (a new W&B run, ...)

    def __repr__(self) -> str:
        return f"Visualizer(name={self.name!r}, backends={list(self.backends)})"


def _make_backend(item: BaseVisBackend | Mapping[str, Any], index: int) -> BaseVisBackend:
    where = f"visualizer.vis_backends[{index}]"
    if isinstance(item, BaseVisBackend):
        return item
    if not isinstance(item, Mapping) or "type" not in item:
        raise ValueError(f"{where}: expected dict(type='LocalVisBackend', ...), got {item!r}")
    kind = item["type"]
    cls = BACKENDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"{where}: unknown backend type {kind!r}; known: {', '.join(BACKENDS)}")
    options = {k: v for k, v in item.items() if k != "type"}
    try:
        return cls(**options)
    except TypeError as err:
        raise ValueError(f"{where} ({kind}): {err}") from err


def build_visualizer(
    cfg: Mapping[str, Any] | Visualizer, save_dir: str | os.PathLike[str]
) -> Visualizer:
    """A config's ``visualizer=dict(type=..., vis_backends=[...], name=..., save_dir=...)``
    (or a :class:`Visualizer`) with ``save_dir`` defaulting to ``save_dir``; every backend's
    package checked (``MissingBackendPackage`` names the extra to install).

    Raises:
        ValueError: an unknown visualizer type, backend type or option (naming it).
    """
    if isinstance(cfg, Visualizer):
        vis = cfg
        if vis.save_dir is None:
            vis.set_save_dir(save_dir)
    else:
        if not isinstance(cfg, Mapping):
            raise ValueError(f"visualizer: expected dict(type='Visualizer', ...), got {cfg!r}")
        kind = cfg.get("type", "Visualizer")
        if kind not in VISUALIZER_TYPES:
            raise ValueError(
                f"visualizer.type: unknown visualizer {kind!r}; known: {', '.join(VISUALIZER_TYPES)}"
            )
        options = {k: v for k, v in cfg.items() if k != "type"}
        options.setdefault("save_dir", save_dir)
        vis = Visualizer(**options)
    vis.check_installed()
    return vis
