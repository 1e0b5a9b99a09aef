"""Draw schedules to a PNG (matplotlib is an optional dependency: ``pip install functrain[plot]``)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

import torch

from functrain.schedules._schedule import Schedule

__all__ = ["plot_schedules"]


def plot_schedules(
    schedules: Schedule | Sequence[Schedule] | Mapping[str, Schedule],
    steps: int | Sequence[int] | torch.Tensor,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    xlabel: str = "step",
    ylabel: str = "value",
    log_y: bool = False,
) -> pathlib.Path:
    """Draw one or more schedules over a range of steps and save the figure as a PNG.

    Each schedule is evaluated once on the whole step tensor (its vectorised form).
    The figure is drawn with matplotlib's object API (no pyplot global state), so it is
    safe in scripts, tests and headless machines.

    Args:
        schedules: a schedule, a list of them, or a ``{label: schedule}`` mapping.
        steps: a number of steps ``n`` (plots ``0 .. n-1``), or explicit steps.
        path: output file (``.png``); parent directories are created.
        title: optional figure title.
        xlabel: x-axis label.
        ylabel: y-axis label.
        log_y: use a logarithmic y axis.

    Returns:
        The path written.

    Example:
        >>> import tempfile, os
        >>> from functrain.schedules import cosine_annealing_lr
        >>> out = plot_schedules({"lr": cosine_annealing_lr(0.1, T_max=100)}, 100,
        ...                      os.path.join(tempfile.mkdtemp(), "lr.png"))
        >>> out.suffix
        '.png'
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plot_schedules needs matplotlib: pip install 'functrain[plot]'") from err

    if isinstance(schedules, Schedule):
        named = {"schedule": schedules}
    elif isinstance(schedules, Mapping):
        named = dict(schedules)
    else:
        named = {f"schedule {i}": s for i, s in enumerate(schedules)}
    if not named:
        raise ValueError("plot_schedules: `schedules` is empty")
    if isinstance(steps, int):
        if steps < 1:
            raise ValueError(f"plot_schedules: `steps` must be >= 1, got {steps}")
        xs = torch.arange(steps)
    else:
        xs = torch.as_tensor(steps, dtype=torch.int64).reshape(-1)
        if xs.numel() == 0:
            raise ValueError("plot_schedules: `steps` is empty")
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, schedule in named.items():
        if not isinstance(schedule, Schedule):
            raise ValueError(f"plot_schedules: {label!r} is not a Schedule: {schedule!r}")
        ax.plot(xs.numpy(), schedule(xs).cpu().numpy(), label=label)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
