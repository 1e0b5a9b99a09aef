"""``CurvesPlot``: training curves (loss, lr, validation metrics) to a PNG after training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from functrain.callbacks.base import Callback
from functrain.ranks import is_main_process

__all__ = ["CurvesPlot", "plot_curves"]


def plot_curves(records: list[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Plot logged ``records`` (``runner.log_records``: dicts with ``mode`` and ``step``) to
    ``path``: one panel for the training losses, one for the learning rate, one per
    validation metric. Needs matplotlib (``pip install functrain[plot]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("mode") == "train"]
    val = [r for r in records if r.get("mode") == "val"]
    loss_keys = sorted({k for r in train for k in r if "loss" in k})
    val_keys = sorted({k for r in val for k in r if k not in ("mode", "step", "time", "data_time")})
    panels: list[tuple[str, list[tuple[str, list[Any], list[Any]]], str]] = []
    if loss_keys:
        panels.append(
            (
                "train loss",
                [
                    (k, [r["step"] for r in train if k in r], [r[k] for r in train if k in r])
                    for k in loss_keys
                ],
                "iteration",
            )
        )
    if any("lr" in r for r in train):
        lr = [(r["step"], r["lr"]) for r in train if "lr" in r]
        panels.append(
            ("learning rate", [("lr", [s for s, _ in lr], [v for _, v in lr])], "iteration")
        )
    for k in val_keys:
        pts = [(r["step"], r[k]) for r in val if k in r]
        panels.append((f"val {k}", [(k, [s for s, _ in pts], [v for _, v in pts])], "epoch"))
    if not panels:
        raise ValueError("plot_curves: no logged records to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, series, xlabel) in zip(axes[0], panels, strict=True):
        for label, xs, ys in series:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class CurvesPlot(Callback):
    """After training, plot what the :class:`~functrain.callbacks.Logger` logged (training
    losses, learning rate, validation metrics) to ``runner.work_dir / filename`` (on rank 0
    only under ``torch.distributed``).

    Args:
        filename: the PNG's name.
        title: figure title (default: the experiment name).
    """

    priority = "LOWEST"

    def __init__(self, filename: str = "curves.png", title: str | None = None) -> None:
        self.filename = filename
        self.title = title
        self.path: Path | None = None

    def after_train(self, runner: Any, state: Any) -> None:
        if not is_main_process():
            return
        if not runner.log_records:
            runner.logger.warning("CurvesPlot: nothing was logged; no plot written")
            return
        self.path = plot_curves(
            runner.log_records,
            Path(runner.work_dir) / self.filename,
            title=self.title if self.title is not None else runner.experiment_name,
        )
        runner.logger.info(f"curves written to {self.path}")
