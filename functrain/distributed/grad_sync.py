"""Averaging gradients across data-parallel ranks, with DDP's numerics.

:func:`average_gradients` is a stateless transform (its place in the chain decides when ranks
synchronise); :func:`all_reduce_mean` is the collective under it; :func:`resolve_distributed`
and :func:`syncs_gradients` are how :func:`functrain.make_train_step` decides whether to
average the gradients itself. See :mod:`functrain.distributed.data_parallel` for the whole
picture.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from functrain.distributed.dtensor import is_dtensor
from functrain.distributed.flat import concat_flat, device_dtype_groups, split_flat
from functrain.ranks import get_world_size, is_active, is_distributed
from functrain.transforms.base import (
    EmptyState,
    FlatTransform,
    GradientTransformation,
    from_flat,
)
from functrain.tree import TreeInfo

__all__ = ["all_reduce_mean", "average_gradients", "resolve_distributed", "syncs_gradients"]

# Names of the flat transforms that average gradients across ranks themselves; the step
# does not average again when the chain holds one (see syncs_gradients).
_SYNC_RE = re.compile(r"\b(average_gradients|shard_optimizer)\b")


def resolve_distributed(
    distributed: bool | None, group: dist.ProcessGroup | None = None, *, where: str = "step"
) -> bool:
    """Decide whether data parallelism is on.

    Args:
        distributed: ``None``: on when ``torch.distributed`` has an initialized default
            process group of more than one rank; ``False``: off; ``True``: on, and an
            initialized process group is required (a world of one rank is allowed: the
            collectives then run on one rank, which is how the GPU test exercises NCCL).
        group: the process group (default: the default group).
        where: named in the error message.

    Raises:
        RuntimeError: ``distributed=True`` without an initialized process group.

    Example:
        >>> resolve_distributed(None)  # a plain python process
        False
    """
    if distributed is False:
        return False
    if distributed is None:
        return is_active(group)
    if distributed is not True:
        raise ValueError(f"{where}: distributed must be True, False or None, got {distributed!r}")
    if not is_distributed():
        raise RuntimeError(
            f"{where}(distributed=True) needs an initialized torch.distributed process group: "
            "call functrain.distributed.comm.init_distributed('pytorch') (under torchrun) or "
            "torch.distributed.init_process_group(...) first, or pass distributed=None to "
            "decide from the environment"
        )
    return True


def syncs_gradients(tx: GradientTransformation) -> bool:
    """Whether ``tx`` averages gradients across ranks itself (it contains
    :func:`average_gradients` or :func:`functrain.distributed.zero.shard_optimizer`).

    Example:
        >>> import functrain as ft
        >>> syncs_gradients(ft.chain(average_gradients(), ft.sgd(0.1)))
        True
    """
    flat = getattr(tx, "flat", None)
    return flat is not None and _SYNC_RE.search(flat.name) is not None


def all_reduce_mean(
    tensors: Sequence[Tensor], group: dist.ProcessGroup | None = None
) -> list[Tensor]:
    """The mean over ranks of each tensor, with DDP's numerics; the inputs are left as they are.

    One flat buffer per ``(device, dtype)`` (``torch.cat``), multiplied by ``1 / world_size``
    (DDP's reducer multiplies each gradient by ``1 / world_size`` while copying it into its
    bucket), all-reduced with ``SUM`` and split back: the results are views of that buffer.
    Without a process group the values are returned unchanged (copies).

    Args:
        tensors: same-shaped tensors on every rank, in the same order.
        group: the process group (default: the default group).

    Example:
        >>> all_reduce_mean([torch.ones(2)])  # single process: unchanged
        [tensor([1., 1.])]
    """
    tensors = list(tensors)
    out: list[Tensor] = [torch.empty(0)] * len(tensors)
    world = get_world_size(group)
    for idx in device_dtype_groups(tensors):
        part = [tensors[i] for i in idx]
        for i in idx:
            if is_dtensor(tensors[i]):
                raise ValueError(
                    "all_reduce_mean got a DTensor: DTensor gradients (FSDP2, tensor parallel) "
                    "are reduced by their own placements; do not average them again"
                )
        flat = concat_flat(part)
        if world > 1:
            flat.mul_(1.0 / world)
        if is_distributed():  # a group of one too (DDP all-reduces there as well)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        for i, view in zip(idx, split_flat(flat, part), strict=True):
            out[i] = view
    return out


def average_gradients(group: dist.ProcessGroup | None = None) -> GradientTransformation:
    """A stateless transform that averages its updates across the ranks of ``group``.

    Put it first in the chain (the members after it see the averaged gradient). Inside
    :func:`functrain.accumulate` it runs only on the micro-batch that steps, on the
    accumulated gradient of the window: DDP's ``no_sync`` for the other micro-batches.
    ``make_train_step`` does not average again when the chain contains it. Without a process
    group it is the identity.

    One all-reduce per ``(device, dtype)`` group of leaves; numerics as
    :func:`all_reduce_mean` (DDP's). The results are views into the reduced buffers.

    Args:
        group: the process group (default: the default group, looked up at each update).

    Example:
        >>> import functrain as ft
        >>> tx = ft.accumulate(ft.chain(average_gradients(), ft.clip(1.0), ft.adamw(1e-3)), 4)
    """

    def init(params: list[Tensor], info: TreeInfo) -> EmptyState:
        return EmptyState()

    def update(
        updates: list[Tensor],
        state: EmptyState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], EmptyState]:
        if not is_distributed():
            return updates, state
        for path, u in zip(info.paths, updates, strict=True):
            if is_dtensor(u):
                raise ValueError(
                    f"average_gradients: leaf {path!r} is a DTensor; DTensor gradients (FSDP2) "
                    "are already reduced across their mesh, remove average_gradients()"
                )
        return all_reduce_mean(updates, group), state

    return from_flat(FlatTransform(init, update, name="average_gradients"))
