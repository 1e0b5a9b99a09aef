"""Evaluators: what the validation and test loops feed each eval step's outputs to.

An evaluator has mmengine's ``Evaluator`` protocol: ``reset()`` before a run,
``process(outputs, data_batch)`` for each batch and ``evaluate() -> {name: float}``.
:class:`MeanMetrics` is the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from functrain import ranks as comm  # rank queries and object collectives
from functrain.callbacks.history import ScalarHistory
from functrain.callbacks.members import expand_members

__all__ = ["Evaluator", "MeanMetrics"]


class Evaluator:
    """What a validation / test loop needs from an evaluator (a protocol; subclassing is
    optional): ``reset()`` before a run, ``process(outputs, data_batch)`` for each batch
    (``outputs`` is the eval step's return value) and ``evaluate() -> {name: float}``."""

    def reset(self) -> None:  # pragma: no cover - protocol
        pass

    def process(self, outputs: Any, data_batch: Any) -> None:  # pragma: no cover - protocol
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:  # pragma: no cover - protocol
        raise NotImplementedError


class MeanMetrics(Evaluator):
    """Averages the eval step's ``{name: tensor}`` outputs over the whole run.

    A 1-d (or larger) tensor holds per-sample values, averaged over all samples (exact
    dataset accuracy with ``{"acc": (pred == y).float()}``); a 0-d tensor is a per-batch value,
    averaged over batches. The sums stay on the device; ``evaluate`` reads them with one host
    transfer.

    Ensembles: with ``members=N`` (set by the validation / test loop from
    ``runner.members`` when left ``None``) every output has a leading member axis: ``[N]``
    is one per-batch value per member, ``[N, B, ...]`` per-sample values per member; the
    means are per member and come back as ``"<name>/<i>"`` (``acc/0``, ``acc/1``, ...), each
    averaged exactly as a plain run averages that member's values.

    Args:
        members: the ensemble size, or ``None`` for a plain run.

    Example:
        >>> m = MeanMetrics(members=2)
        >>> m.process({"acc": torch.tensor([[1.0, 0.0], [1.0, 1.0]])})
        >>> m.evaluate()
        {'acc/0': 0.5, 'acc/1': 1.0}
    """

    def __init__(self, members: int | None = None) -> None:
        if members is not None and (
            isinstance(members, bool) or not isinstance(members, int) or members < 1
        ):
            raise ValueError(
                f"MeanMetrics: members must be a positive int or None, got {members!r}"
            )
        self.members = members
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}

    def process(self, outputs: Mapping[str, Any], data_batch: Any = None) -> None:
        if not isinstance(outputs, Mapping):
            raise TypeError(
                "MeanMetrics expects the eval step to return a {name: tensor} dict, got "
                f"{type(outputs).__name__}"
            )
        n = self.members
        for key, value in outputs.items():
            value = torch.as_tensor(value).detach()
            if n is not None:
                if value.dim() == 0 or value.shape[0] != n:
                    raise ValueError(
                        f"MeanMetrics(members={n}): output {key!r} has shape "
                        f"{tuple(value.shape)}; an ensemble's eval step returns a leading "
                        f"member axis of {n} (make_ensemble_eval_step)"
                    )
                # Per member: [N] is one value per batch, [N, ...] per-sample values.
                total = value.double().reshape(n, -1).sum(1)
                count = value[0].numel() if value.dim() > 1 else 1
            else:
                total = value.double().sum() if value.dim() else value.double()
                count = value.numel() if value.dim() else 1
            self._sums[key] = total if key not in self._sums else self._sums[key] + total
            self._counts[key] = self._counts.get(key, 0) + count

    def evaluate(self) -> dict[str, float]:
        """The means; under a process group of several ranks, over every rank's samples
        (sums and counts are gathered, so a rank may have seen no batch at all). Samples a
        padding sampler (``DefaultSampler(round_up=True)``) repeats count twice; validate
        with ``round_up=False`` for exact dataset means."""
        totals: dict[str, Any] = self._sums
        numbers = self._counts
        if self.members is not None:
            # "acc/i" with the count of "acc" (every member saw the same batches).
            totals = expand_members(totals, self.members)
            numbers = {k: self._counts[k.rpartition("/")[0]] for k in totals}
        values = ScalarHistory.read(totals)
        parts = {k: (v, numbers[k]) for k, v in values.items()}
        if comm.get_world_size() > 1:
            sums: dict[str, float] = {}
            counts: dict[str, int] = {}
            for rank_parts in comm.all_gather_object(parts):
                for k, (total, count) in rank_parts.items():
                    sums[k] = sums.get(k, 0.0) + total
                    counts[k] = counts.get(k, 0) + count
            parts = {k: (sums[k], counts[k]) for k in sums}
        return {k: total / count for k, (total, count) in parts.items()}
