"""Evaluators for configs (``val_evaluator=dict(type='Accuracy')``) and collate functions.

An evaluator has mmengine's metric life cycle in functrain's loop: ``reset()``, then
``process(outputs, data_batch)`` per batch (``outputs`` is what the eval step returned),
then ``evaluate() -> {name: float}``. Values are accumulated on the device; ``evaluate``
reads them once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["Accuracy", "pseudo_collate"]


def _labels(data_batch: Any) -> Tensor:
    if isinstance(data_batch, Mapping):
        for key in ("labels", "label", "targets", "target", "gt_label"):
            if key in data_batch:
                return data_batch[key]
        raise KeyError(
            f"Accuracy: the batch has no labels; keys {sorted(data_batch)} (expected 'labels')"
        )
    if isinstance(data_batch, Sequence) and not isinstance(data_batch, str):
        return data_batch[-1]
    raise TypeError(f"Accuracy: cannot find labels in a batch of type {type(data_batch).__name__}")


class Accuracy:
    """Top-k classification accuracy from logits (mmpretrain's ``Accuracy``, as a fraction).

    Args:
        topk: an int or a tuple of ints. One k gives the key ``"accuracy"``; several give
            ``"accuracy_top{k}"`` each.

    Example:
        >>> acc = Accuracy()
        >>> acc.process(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), (None, torch.tensor([1, 1])))
        >>> acc.evaluate()
        {'accuracy': 0.5}
    """

    def __init__(self, topk: int | Sequence[int] = 1) -> None:
        ks = (topk,) if isinstance(topk, int) else tuple(topk)
        if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
            raise ValueError(f"Accuracy: topk must be positive ints, got {topk!r}")
        self.topk = ks
        self.reset()

    def reset(self) -> None:
        self._correct: Tensor | None = None
        self._count = 0

    def process(self, outputs: Any, data_batch: Any = None) -> None:
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs
        labels = _labels(data_batch).to(logits.device)
        top = logits.topk(max(self.topk), dim=-1).indices
        hits = top == labels.reshape(-1, 1)
        correct = torch.stack([hits[:, :k].any(-1).sum() for k in self.topk])
        self._correct = correct if self._correct is None else self._correct + correct
        self._count += len(labels)

    def evaluate(self) -> dict[str, float]:
        """The accuracy over every sample processed, on all ranks under torch.distributed."""
        from functrain.ranks import get_world_size

        if self._correct is None or self._count == 0:
            raise ValueError("Accuracy.evaluate: no batch was processed")
        correct = self._correct.double()
        count = torch.tensor(float(self._count), dtype=torch.float64, device=correct.device)
        if get_world_size() > 1:
            import torch.distributed as dist

            dist.all_reduce(correct)
            dist.all_reduce(count)
        values = (correct / count).tolist()
        if len(self.topk) == 1:
            return {"accuracy": values[0]}
        return {f"accuracy_top{k}": v for k, v in zip(self.topk, values, strict=True)}


def pseudo_collate(samples: Sequence[Any]) -> Any:
    """mmengine's ``pseudo_collate``: transpose a list of samples without stacking
    (tuples become a tuple of lists, dicts a dict of lists)."""
    first = samples[0]
    if isinstance(first, Mapping):
        return {key: pseudo_collate([s[key] for s in samples]) for key in first}
    if isinstance(first, tuple | list):
        return type(first)(pseudo_collate(list(group)) for group in zip(*samples, strict=True))
    return list(samples)
