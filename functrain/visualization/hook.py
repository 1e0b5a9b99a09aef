"""``VisualizationHook`` (also registered as MMDetection's ``DetVisualizationHook``): draw
what the model predicted during validation and test, and send it to the visualizer.

What it can draw: image classification, where a batch is ``(inputs, labels, ...)`` and the
model's ``predict`` output is a ``(N, num_classes)`` tensor of logits / scores. Inputs are
``(N, H, W)``, ``(N, C, H, W)`` (C = 1 or 3) or flat ``(N, H*W)`` with a square ``H*W`` (the
Digits configs: 8x8). A grid of the first ``max_images`` samples, each titled
``pred / true``, mistakes in red with a red frame. Anything else (detection outputs, dict
batches, ...) is skipped with one log line: detection drawing needs a detection model and is
not part of functrain.

Before each run :class:`VisualizerRun` records the config, after it closes the backends;
:func:`functrain.config.build_runner` adds it when the config has a ``visualizer``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from functrain.callbacks.base import Callback
from functrain.ranks import is_main_process

__all__ = ["VisualizerRun", "VisualizationHook", "draw_classification"]


def draw_classification(
    inputs: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str] | None = None,
    max_images: int = 16,
) -> np.ndarray:
    """A grid of images titled with predicted / true labels, mistakes in red.

    Args:
        inputs: ``(N, H, W)``, ``(N, C, H, W)`` with C in (1, 3), or ``(N, H*W)`` square.
        scores: ``(N, num_classes)`` logits or scores (the prediction is the argmax).
        labels: ``(N,)`` true class indices.
        classes: class names (default: the indices).
        max_images: draw the first this many samples.

    Returns:
        An RGB ``uint8`` array ``(H, W, 3)``.

    Raises:
        ValueError: shapes that are not image classification (the message says which).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images = _as_images(inputs)
    if scores.ndim != 2 or scores.shape[0] != images.shape[0]:
        raise ValueError(f"outputs of shape {tuple(scores.shape)} are not (N, num_classes) scores")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels of shape {tuple(labels.shape)} are not (N,) class indices")
    n = min(max_images, images.shape[0])
    pred = scores[:n].argmax(dim=1).tolist()
    true = labels[:n].tolist()
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(1.6 * cols, 1.8 * rows), dpi=80)
    FigureCanvasAgg(fig)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        img = images[i]
        ax.imshow(img, cmap=None if img.ndim == 3 else "gray")
        ok = pred[i] == true[i]
        ax.set_title(
            f"{_name(pred[i], classes)} / {_name(true[i], classes)}",
            color="black" if ok else "red",
            fontsize=9,
        )
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_color("black" if ok else "red")
            side.set_linewidth(1 if ok else 3)
    fig.suptitle("pred / true (mistakes in red)", fontsize=9)
    fig.tight_layout()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _name(k: int, classes: Sequence[str] | None) -> str:
    """Class ``k``'s name (its index when there are no names for it)."""
    return str(classes[k]) if classes is not None and k < len(classes) else str(k)


def _as_images(inputs: torch.Tensor) -> np.ndarray:
    """``(N, H, W)`` gray or ``(N, H, W, 3)`` RGB floats in [0, 1]."""
    x = inputs.detach().to("cpu", torch.float32)
    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise ValueError(f"flat inputs of {x.shape[1]} features are not a square image")
        x = x.reshape(x.shape[0], side, side)
    elif x.ndim == 4 and x.shape[1] in (1, 3):
        x = x[:, 0] if x.shape[1] == 1 else x.permute(0, 2, 3, 1)
    elif x.ndim != 3:
        raise ValueError(f"inputs of shape {tuple(x.shape)} are not images")
    lo = x.flatten(1).min(dim=1).values.view(-1, *([1] * (x.ndim - 1)))
    hi = x.flatten(1).max(dim=1).values.view(-1, *([1] * (x.ndim - 1)))
    return ((x - lo) / (hi - lo).clamp_min(1e-12)).numpy()


class VisualizationHook(Callback):
    """Draw validation / test predictions (mmdet's ``DetVisualizationHook`` options).

    Args:
        draw: draw at all (mmdet's default ``False``: the hook is then a no-op).
        interval: draw the batches whose index is a multiple of ``interval`` (batch 0
            always).
        score_thr: accepted (a detection option; classification draws the argmax).
        show: show the drawing in a window; without a display it logs once and only saves.
        wait_time: seconds a shown window stays (``plt.pause``).
        test_out_dir: during test, also save each drawing as
            ``<log_dir>/<test_out_dir>/test_batch<i>.png``.
        backend_args: accepted (mmdet's file-backend option).
        max_images: samples drawn per batch.

    The images go to every backend of ``runner.visualizer`` as ``val/predictions_batch<i>``
    (step: the training iteration) and ``test/predictions_batch<i>``.
    """

    priority = "NORMAL"

    def __init__(
        self,
        draw: bool = False,
        interval: int = 50,
        score_thr: float = 0.3,
        show: bool = False,
        wait_time: float = 0.0,
        test_out_dir: str | None = None,
        backend_args: dict[str, Any] | None = None,
        max_images: int = 16,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval <= 0:
            raise ValueError(
                f"VisualizationHook: interval must be an integer > 0, got {interval!r}"
            )
        if max_images <= 0:
            raise ValueError(f"VisualizationHook: max_images must be > 0, got {max_images!r}")
        self.draw = bool(draw)
        self.interval = interval
        self.score_thr = score_thr
        self.show = bool(show)
        self.wait_time = float(wait_time)
        self.test_out_dir = test_out_dir
        self.backend_args = backend_args
        self.max_images = max_images
        self._skipped = False
        self._said_no_display = False
        self.drawn: list[str] = []  # names drawn, for tests and logs

    def after_val_iter(
        self, runner: Any, state: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        self._maybe_draw(runner, "val", batch_idx, data_batch, outputs)

    def after_test_iter(
        self, runner: Any, state: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        self._maybe_draw(runner, "test", batch_idx, data_batch, outputs)

    def _maybe_draw(
        self, runner: Any, mode: str, batch_idx: int, data_batch: Any, outputs: Any
    ) -> None:
        if not self.draw or self._skipped or batch_idx % self.interval or not is_main_process():
            return
        vis = getattr(runner, "visualizer", None)
        loader = runner.val_dataloader if mode == "val" else runner.test_dataloader
        dataset = getattr(loader, "dataset", None)
        classes = (getattr(dataset, "metainfo", None) or {}).get("classes")
        try:
            if not isinstance(data_batch, list | tuple) or len(data_batch) < 2:
                raise ValueError(
                    f"a batch of type {type(data_batch).__name__}, not (inputs, labels)"
                )
            inputs, labels = data_batch[0], data_batch[1]
            if not all(isinstance(t, torch.Tensor) for t in (inputs, labels, outputs)):
                raise ValueError("inputs, labels and outputs are not all tensors")
            image = draw_classification(inputs, outputs, labels, classes, self.max_images)
        except ValueError as err:
            self._skipped = True
            runner.logger.info(
                f"VisualizationHook: cannot draw {type(getattr(runner, 'model', None)).__name__}"
                f" on {type(dataset).__name__} ({err}); skipped (it draws image "
                "classification; detection drawing is not in functrain)"
            )
            return
        name = f"{mode}/predictions_batch{batch_idx}"
        if vis is not None:
            vis.add_image(name, image, step=runner.iter)
        if mode == "test" and self.test_out_dir is not None:
            out = Path(runner.log_dir) / self.test_out_dir
            out.mkdir(parents=True, exist_ok=True)
            from PIL import Image

            Image.fromarray(image).save(out / f"test_batch{batch_idx}.png")
        if self.show:
            self._show(runner, image, name)
        self.drawn.append(name)

    def _show(self, runner: Any, image: np.ndarray, name: str) -> None:
        import matplotlib

        interactive = matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo")
        if not (interactive and (os.environ.get("DISPLAY") or os.name == "nt")):
            if not self._said_no_display:
                self._said_no_display = True
                runner.logger.info(
                    "VisualizationHook(show=True): no display here; drawings are saved "
                    "through the visualizer's backends instead"
                )
            return
        import matplotlib.pyplot as plt

        plt.figure(name)
        plt.imshow(image)
        plt.axis("off")
        plt.show(block=False)
        plt.pause(self.wait_time if self.wait_time > 0 else 0.001)
        plt.close(name)


class VisualizerRun(Callback):
    """A run of ``runner.visualizer``: record the config in every backend before the run
    (once per run), flush and close the backends after it (event files flushed, the W&B run
    finished, the MLflow run ended); a later run (``runner.test()`` after training) opens
    them again.

    Args:
        config: the config to record (the plain dict the runner was built from).
    """

    priority = "LOWEST"
    name = "visualizer_run"

    def __init__(self, config: Any = None) -> None:
        self.config = config

    def before_run(self, runner: Any, state: Any) -> None:
        vis = getattr(runner, "visualizer", None)
        if vis is not None and self.config is not None:
            vis.add_config(self.config)

    def after_run(self, runner: Any, state: Any) -> None:
        vis = getattr(runner, "visualizer", None)
        if vis is not None:
            vis.close()
