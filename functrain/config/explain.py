"""What a config resolves to, in words: the transform chain, each parameter's learning rate
and weight decay (like mmengine's param-group dump), and the schedules at key iterations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from functrain.config.build import plan_training
from functrain.config.config_dict import to_plain
from functrain.config.optim import OptimizerPlan

__all__ = ["explain", "key_iterations", "schedule_table"]


def key_iterations(cfg: Mapping[str, Any], epoch_length: int, max_iters: int) -> list[int]:
    """Iteration 0, the last one, and every scheduler window's begin and end (and the
    iteration before its end), in iterations."""
    items = cfg.get("param_scheduler") or []
    items = [items] if isinstance(items, Mapping) else items
    steps = {0, max(max_iters - 1, 0)}
    for item in items:
        scale = epoch_length if item.get("by_epoch", True) else 1
        for key in ("begin", "end"):
            if isinstance(item.get(key), int):
                steps.add(item[key] * scale)
                steps.add(item[key] * scale - 1)
    return sorted(s for s in steps if 0 <= s < max(max_iters, 1))


def schedule_table(plan: OptimizerPlan, steps: list[int]) -> str:
    """The scheduled hyperparameters at ``steps`` (mmengine's per-iteration values)."""
    if not plan.schedules:
        return "  (no schedules: constant hyperparameters)"
    names = sorted(plan.schedules)
    lines = ["  " + f"{'iteration':>9}  " + "  ".join(f"{n:>14}" for n in names)]
    for step in steps:
        values = "  ".join(f"{float(plan.schedules[n](step)):>14.6g}" for n in names)
        lines.append(f"  {step:>9}  {values}")
    return "\n".join(lines)


def explain(cfg: Mapping[str, Any], model: torch.nn.Module | None = None) -> str:
    """Describe what ``cfg`` trains with: the transform chain, the per-parameter learning
    rate / weight decay table, and the schedules' values at key iterations.

    Builds the model (unless given) and the train data loader (for the epoch length) on
    the CPU; nothing is trained or written.

    Args:
        cfg: a config with ``optim_wrapper``, ``train_cfg`` and ``train_dataloader``.
        model: the model (default: built from ``cfg['model']``).

    Returns:
        The text (print it).

    Example:
        >>> print(explain(load_config("examples/configs/digits_adamw.py")))  # doctest: +SKIP
    """
    cfg = to_plain(cfg)
    model, train_loop, plan = plan_training(cfg, model)
    epoch_length = len(train_loop.dataloader)
    lines = [
        f"optimizer wrapper: {plan.wrapper}",
        f"transform: {plan.describe()}",
        f"train loop: {type(train_loop).__name__} ({train_loop.max_iters} iterations, "
        f"{epoch_length} per epoch)",
        "",
        "parameters (initial lr / weight decay, like mmengine's param groups):",
    ]
    lr = plan.optimizer.get("lr")
    wd = plan.optimizer.get("weight_decay")
    width = max((len(k) for k in plan.multipliers), default=4)
    lines.append(
        f"  {'name':<{width}}  {'shape':<16}  {'lr':>10}  {'weight_decay':>12}  "
        f"{'lr_mult':>7}  {'decay_mult':>10}"
    )
    params = dict(model.named_parameters())
    for name, mult in plan.multipliers.items():
        shape = str(tuple(params[name].shape)) if name in params else "?"
        lr_s = f"{lr * mult.lr_mult:.4g}" if isinstance(lr, int | float) else "-"
        wd_s = f"{wd * mult.decay_mult:.4g}" if isinstance(wd, int | float) else "-"
        lines.append(
            f"  {name:<{width}}  {shape:<16}  {lr_s:>10}  {wd_s:>12}  {mult.lr_mult:>7.4g}  "
            f"{mult.decay_mult:>10.4g}"
        )
    frozen = [n for n, p in params.items() if not p.requires_grad]
    if frozen:
        lines.append(f"  frozen (not optimized): {', '.join(frozen)}")
    lines += ["", "schedules (values in force at these iterations):"]
    lines.append(schedule_table(plan, key_iterations(cfg, epoch_length, train_loop.max_iters)))
    if plan.plateaus:
        lines.append(f"  + ReduceOnPlateau on {', '.join(t for _, t in plan.plateaus)}")
    return "\n".join(lines)
