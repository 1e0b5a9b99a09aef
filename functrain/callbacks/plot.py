"""``CurvesPlot``: training curves (loss, lr, validation metrics) to a PNG after training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from functrain.callbacks.base import Callback
from functrain.ranks import is_main_process

__all__ = ["CurvesPlot", "curve_panels", "plot_curves"]


Series = tuple[str, list[Any], list[Any]]  # (legend label, steps, values)
Panel = tuple[str, list[Series], str]  # (title, series, x label)


def curve_panels(
    records: list[dict[str, Any]],
    *,
    members: int | None = None,
    labels: list[str] | None = None,
) -> list[Panel]:
    """What :func:`plot_curves` draws: ``[(title, [(label, steps, values), ...], xlabel)]``.

    A plain run: one panel for the training losses, one for the learning rate, one per
    validation metric. An ensemble (``members`` = N; records hold ``"<name>/<i>"``): one
    panel per loss, the learning rate and each validation metric, each with one curve per
    member, labelled ``labels[i]`` (default ``"#i"``).
    """
    from functrain.callbacks.members import split_members

    train = [r for r in records if r.get("mode") == "train"]
    val = [r for r in records if r.get("mode") == "val"]
    skip = ("mode", "step", "epoch", "iter", "time", "data_time")

    def series(rows: list[dict[str, Any]], key: str, label: str) -> Series:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        return (label, [x for x, _ in pts], [y for _, y in pts])

    panels: list[Panel] = []
    if members:
        names = labels or [f"#{i}" for i in range(members)]

        def per_member(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
            shared: dict[str, None] = {}
            per: dict[str, None] = {}
            for r in rows:
                sh, pm = split_members({k: 0.0 for k in r if k not in skip}, members)
                shared.update(dict.fromkeys(sh))
                per.update(dict.fromkeys(pm))
            return sorted(shared), sorted(per)

        t_shared, t_per = per_member(train)
        for k in [k for k in t_per if "loss" in k] + (["lr"] if "lr" in t_per else []):
            title = "learning rate" if k == "lr" else f"train {k}"
            panels.append(
                (title, [series(train, f"{k}/{i}", names[i]) for i in range(members)], "iteration")
            )
        if "lr" in t_shared:
            panels.append(("learning rate", [series(train, "lr", "lr")], "iteration"))
        _, v_per = per_member(val)
        for k in v_per:
            panels.append(
                (f"val {k}", [series(val, f"{k}/{i}", names[i]) for i in range(members)], "epoch")
            )
        return panels
    loss_keys = sorted({k for r in train for k in r if "loss" in k})
    val_keys = sorted({k for r in val for k in r if k not in skip})
    if loss_keys:
        panels.append(("train loss", [series(train, k, k) for k in loss_keys], "iteration"))
    if any("lr" in r for r in train):
        panels.append(("learning rate", [series(train, "lr", "lr")], "iteration"))
    for k in val_keys:
        panels.append((f"val {k}", [series(val, k, k)], "epoch"))
    return panels


def plot_curves(
    records: list[dict[str, Any]],
    path: str | Path,
    *,
    title: str = "",
    members: int | None = None,
    labels: list[str] | None = None,
) -> Path:
    """Plot logged ``records`` (``runner.log_records``: dicts with ``mode`` and ``step``) to
    ``path``: the panels of :func:`curve_panels` (for an ensemble, one curve per member with
    a legend of ``labels``). Needs matplotlib (``pip install functrain[plot]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curve_panels(records, members=members, labels=labels)
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

    Ensembles (``runner.members`` = N): one curve per member in every panel, the legend
    naming each member by ``runner.member_labels``; ``self.panels`` keeps the data drawn.

    Args:
        filename: the PNG's name.
        title: figure title (default: the experiment name).
    """

    priority = "LOWEST"

    def __init__(self, filename: str = "curves.png", title: str | None = None) -> None:
        self.filename = filename
        self.title = title
        self.path: Path | None = None
        self.panels: list[Panel] = []  # what was drawn (see curve_panels)

    def after_train(self, runner: Any, state: Any) -> None:
        if not is_main_process():
            return
        if not runner.log_records:
            runner.logger.warning("CurvesPlot: nothing was logged; no plot written")
            return
        members = getattr(runner, "members", None)
        labels = getattr(runner, "member_labels", None)
        self.panels = curve_panels(runner.log_records, members=members, labels=labels)
        self.path = plot_curves(
            runner.log_records,
            Path(runner.work_dir) / self.filename,
            title=self.title if self.title is not None else runner.experiment_name,
            members=members,
            labels=labels,
        )
        runner.logger.info(f"curves written to {self.path}")
