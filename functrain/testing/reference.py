"""mmengine's own numbers: replay a ``param_scheduler`` list with its real schedulers."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["mmengine_values"]


def mmengine_values(
    configs: Sequence[dict[str, Any]],
    *,
    base: float,
    epoch_length: int,
    epochs: int,
    param: str = "lr",
    optimizer: str = "sgd",
) -> list[float]:
    """Run mmengine's real schedulers and record the value in force at every iteration.

    Builds the schedulers as mmengine's runner does (``PARAM_SCHEDULERS.build`` with the
    optimizer and ``epoch_length``), then steps them like ``ParamSchedulerHook``:
    iteration schedulers after every iteration, epoch schedulers after every epoch.

    Args:
        configs: the ``param_scheduler`` list.
        base: the optimizer's initial ``lr`` (or momentum / ``betas[0]``).
        epoch_length: iterations per epoch.
        epochs: epochs to run.
        param: ``'lr'`` or ``'momentum'``.
        optimizer: ``'sgd'`` or ``'adam'`` (momentum is then Adam's ``betas[0]``).

    Returns:
        ``epochs * epoch_length`` values, one per iteration.

    Example:
        >>> mmengine_values([dict(type='ExponentialLR', gamma=0.5, by_epoch=False)],
        ...                 base=1.0, epoch_length=3, epochs=1)
        [1.0, 0.5, 0.25]
    """
    import mmengine.optim  # noqa: F401 - registers the schedulers
    from mmengine.registry import PARAM_SCHEDULERS

    weight = torch.nn.Parameter(torch.zeros(1))
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            [weight],
            lr=base if param == "lr" else 0.1,
            betas=(base if param == "momentum" else 0.9, 0.999),
        )
    else:
        opt = torch.optim.SGD(
            [weight],
            lr=base if param == "lr" else 0.1,
            momentum=base if param == "momentum" else 0.9,
        )

    def current() -> float:
        group = opt.param_groups[0]
        if param == "momentum" and optimizer == "adam":
            return float(group["betas"][0])
        return float(group[param])

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = [
            PARAM_SCHEDULERS.build(
                dict(c), default_args=dict(optimizer=opt, epoch_length=epoch_length)
            )
            for c in configs
        ]
        for _ in range(epochs):
            for _ in range(epoch_length):
                out.append(current())
                opt.step()
                for sched in built:
                    if not sched.by_epoch:
                        sched.step()
            for sched in built:
                if sched.by_epoch:
                    sched.step()
    return out
