"""torch.optim class names -> functrain optimizers, for configs (``dict(type='AdamW', ...)``)."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from functrain.transforms.adadelta import adadelta
from functrain.transforms.adafactor import adafactor
from functrain.transforms.adagrad import adagrad
from functrain.transforms.adamax import adamax
from functrain.transforms.alias import adam, adamw, sgd
from functrain.transforms.asgd import asgd
from functrain.transforms.base import GradientTransformation
from functrain.transforms.lamb import lamb
from functrain.transforms.lars import lars
from functrain.transforms.lbfgs import lbfgs
from functrain.transforms.lion import lion
from functrain.transforms.muon import muon
from functrain.transforms.nadam import nadam
from functrain.transforms.radam import radam
from functrain.transforms.rmsprop import rmsprop
from functrain.transforms.rprop import rprop
from functrain.transforms.schedule_free import schedule_free_adamw, schedule_free_sgd
from functrain.transforms.sparse_adam import sparse_adam

__all__ = ["EXTRA_OPTIMIZERS", "TORCH_OPTIMIZERS", "optimizer_from_config"]

TORCH_OPTIMIZERS: dict[str, Callable[..., GradientTransformation]] = {
    "SGD": sgd,
    "Adam": adam,
    "AdamW": adamw,
    "Adamax": adamax,
    "Adagrad": adagrad,
    "Adadelta": adadelta,
    "RMSprop": rmsprop,
    "Rprop": rprop,
    "ASGD": asgd,
    "NAdam": nadam,
    "RAdam": radam,
    "Adafactor": adafactor,
    "Muon": muon,
    "LBFGS": lbfgs,  # needs value_fn= in update (a closure), see functrain.lbfgs
    "SparseAdam": sparse_adam,  # rejects: functrain has no sparse-gradient path
}
"""Every torch.optim optimizer class name functrain implements, mapped to its alias."""

EXTRA_OPTIMIZERS: dict[str, Callable[..., GradientTransformation]] = {
    "Lion": lion,
    "LAMB": lamb,
    "LARS": lars,
    "ScheduleFreeAdamW": schedule_free_adamw,
    "ScheduleFreeSGD": schedule_free_sgd,
}
"""Optimizers beyond torch.optim, under the names a config uses."""

# torch.optim arguments that choose an implementation rather than the maths; functrain picks
# its own (fused when it can), so a config may carry them and they are ignored.
_IMPLEMENTATION_ARGS = ("foreach", "fused", "capturable", "differentiable")


def optimizer_from_config(
    cfg: Mapping[str, Any],
    registry: Mapping[str, Callable[..., GradientTransformation]] | None = None,
) -> GradientTransformation:
    """Build an optimizer from an mmengine-style ``dict(type='AdamW', lr=..., ...)``.

    Args:
        cfg: ``type`` (a torch.optim class name or a registered name) and the optimizer's
            keyword arguments, with torch's names. ``foreach`` / ``fused`` / ``capturable`` /
            ``differentiable`` are accepted and ignored.
        registry: names to look ``type`` up in (default: :data:`TORCH_OPTIMIZERS` and
            :data:`EXTRA_OPTIMIZERS`).

    Raises:
        ValueError: an unknown ``type`` (naming the closest known names) or an unknown
            argument (naming it and the accepted ones).

    Example:
        >>> tx = optimizer_from_config(dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=1e-4))
    """
    registry = {**TORCH_OPTIMIZERS, **EXTRA_OPTIMIZERS} if registry is None else registry
    cfg = dict(cfg)
    if "type" not in cfg:
        raise ValueError(f"optimizer config needs a 'type' (one of {', '.join(sorted(registry))})")
    name = cfg.pop("type")
    if name not in registry:
        same_letters = [k for k in registry if k.lower() == str(name).lower()]
        close = same_letters or difflib.get_close_matches(
            str(name), list(registry), n=3, cutoff=0.5
        )
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown optimizer type {name!r}{hint} (known: {', '.join(sorted(registry))})"
        )
    factory = registry[name]
    if isinstance(factory, type) and issubclass(factory, torch.optim.Optimizer):
        from functrain.transforms.torch_optimizer import torch_optimizer_factory

        factory = torch_optimizer_factory(factory)
    for key in _IMPLEMENTATION_ARGS:
        cfg.pop(key, None)
    accepted = [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    for key in cfg:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"optimizer {name}: unknown argument {key!r}{hint} (accepted: {', '.join(accepted)})"
            )
    if "betas" in cfg and isinstance(cfg["betas"], list):
        cfg["betas"] = tuple(cfg["betas"])
    return factory(**cfg)
