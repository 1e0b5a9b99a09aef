"""mmengine's ``BaseModel`` calling convention: a batch that is a tuple/list is passed as
``model(*batch, mode=...)``, a dict as ``model(**batch, mode=...)``; ``mode='loss'`` returns a
loss or a dict of them (summed by :func:`parse_losses`), ``mode='predict'`` the outputs an
evaluator reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import optree
import torch
from torch import Tensor

__all__ = ["loss_fn", "parse_losses", "predict_fn"]


def parse_losses(losses: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """mmengine's ``BaseModel.parse_losses``: a loss tensor as is; a dict of tensors (or
    lists of tensors) -> the sum of every value whose key contains ``'loss'``, each mean-
    reduced (a list: the sum of the means); the other keys are returned for logging."""
    if isinstance(losses, Tensor):
        return losses, {}
    if not isinstance(losses, Mapping):
        raise TypeError(
            f"the model's mode='loss' output must be a tensor or a dict of them, got "
            f"{type(losses).__name__}"
        )
    log_vars = {}
    for name, value in losses.items():
        if isinstance(value, Tensor):
            log_vars[name] = value.mean()
        elif isinstance(value, Sequence) and all(isinstance(v, Tensor) for v in value):
            log_vars[name] = sum(v.mean() for v in value)
        else:
            raise TypeError(f"loss {name!r} must be a tensor or a list of tensors, got {value!r}")
    terms = [v for k, v in log_vars.items() if "loss" in k]
    if not terms:
        raise ValueError(f"the model's losses {sorted(log_vars)} have no key containing 'loss'")
    loss = sum(terms[1:], terms[0])
    return loss, {k: v.detach() for k, v in log_vars.items() if k != "loss"}


def _to_device(batch: Any, device: torch.device) -> Any:
    def move(x: Any) -> Any:
        return x.to(device, non_blocking=True) if isinstance(x, Tensor) else x

    return optree.tree_map(move, batch, none_is_leaf=True)


def _call_model(forward: Any, batch: Any, mode: str) -> Any:
    if isinstance(batch, Mapping):
        return forward(**batch, mode=mode)
    if isinstance(batch, tuple | list):
        return forward(*batch, mode=mode)
    return forward(batch, mode=mode)


def loss_fn(device: torch.device) -> Any:
    """``loss(forward, batch) -> (loss, logged)``: the batch moved to ``device``, the model
    called in ``mode='loss'``, its losses summed by :func:`parse_losses`."""

    def loss_fn(forward: Any, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        return parse_losses(_call_model(forward, _to_device(batch, device), "loss"))

    return loss_fn


def predict_fn(device: torch.device) -> Any:
    """``predict(forward, batch) -> outputs``: the batch moved to ``device``, the model
    called in ``mode='predict'``."""

    def predict(forward: Any, batch: Any) -> Any:
        return _call_model(forward, _to_device(batch, device), "predict")

    return predict
