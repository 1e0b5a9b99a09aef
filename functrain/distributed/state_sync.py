"""Keeping the ranks' states in step: rank 0's start everywhere (:func:`broadcast_state`),
averaged buffers (:func:`sync_buffers`, :class:`SyncBuffers`, mmengine's ``SyncBuffersHook``)
and averaged metrics for logging (:func:`average_metrics`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import optree
import torch
import torch.distributed as dist
from torch import Tensor

from functrain.callbacks.base import Callback
from functrain.distributed.dtensor import is_dtensor
from functrain.distributed.flat import concat_flat, device_dtype_groups, split_flat
from functrain.ranks import get_world_size
from functrain.state import TrainState
from functrain.tree import NAMESPACE, leaf_paths

__all__ = ["SyncBuffers", "average_metrics", "broadcast_state", "sync_buffers"]


def _check_same_structure(
    signature: list[tuple[str, tuple[int, ...], str]],
    src: int,
    group: dist.ProcessGroup | None,
    where: str,
) -> None:
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, signature, group=group)
    ref = gathered[dist.get_group_rank(group, src) if group is not None else src]
    for rank, other in enumerate(gathered):
        if other == ref:
            continue
        if len(other) != len(ref):
            raise ValueError(
                f"{where}: rank {rank} has {len(other)} tensors and rank {src} has {len(ref)}; "
                "every rank must build the same model and optimizer"
            )
        for mine, theirs in zip(other, ref, strict=True):
            if mine != theirs:
                there = "" if mine[0] == theirs[0] else f"{theirs[0]!r} is "
                raise ValueError(
                    f"{where}: tensor {mine[0]!r} is {mine[2]} of shape {list(mine[1])} on rank "
                    f"{rank} but {there}{theirs[2]} of shape {list(theirs[1])} on rank {src}; "
                    "every rank must build the same model and optimizer"
                )


def broadcast_state(
    state: TrainState, src: int = 0, group: dist.ProcessGroup | None = None
) -> TrainState:
    """A copy of ``state`` whose params, buffers and optimizer-state tensors are rank ``src``'s.

    Call it once after building the state on every rank (what DDP's constructor does for
    the module), so that every rank starts identical whatever its random seed. One broadcast
    per ``(device, dtype)`` group of tensors (bool tensors travel as uint8). Before
    broadcasting, the ranks compare the names, shapes and dtypes of their tensors; a
    difference raises ``ValueError`` on every rank naming the first differing tensor
    (instead of a hang or garbage). A collective: every rank of ``group`` must call it.
    Without a process group (or with one rank) it returns ``state``.

    DTensor leaves (a sharded optimizer state, FSDP2 params) are each rank's own and are left
    as they are; ``state.callbacks`` is left as it is (callbacks that copy the params, like
    EMA, build their state from the broadcast params when the run starts).

    Args:
        state: this rank's state.
        src: the rank whose values everyone gets.
        group: the process group.

    Example:
        >>> state = broadcast_state(TrainState.create(model, tx))  # doctest: +SKIP
    """
    if get_world_size(group) == 1:
        return state
    parts = {"params": state.params, "buffers": state.buffers, "opt_state": state.opt_state}
    leaves, treespec = optree.tree_flatten(parts, namespace=NAMESPACE)
    paths = leaf_paths(treespec)
    slots = [
        i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor) and not is_dtensor(leaf)
    ]
    signature = [
        (paths[i], tuple(leaves[i].shape), str(leaves[i].dtype).removeprefix("torch."))
        for i in slots
    ]
    _check_same_structure(signature, src, group, "broadcast_state")
    tensors = [leaves[i] for i in slots]
    wire = [t.to(torch.uint8) if t.dtype == torch.bool else t for t in tensors]
    new = list(leaves)
    for idx in device_dtype_groups(wire):
        part = [wire[k] for k in idx]
        flat = concat_flat(part)
        dist.broadcast(flat, src=src, group=group)
        for k, view in zip(idx, split_flat(flat, part), strict=True):
            original = tensors[k]
            new[slots[k]] = view.to(torch.bool) if original.dtype == torch.bool else view
    out = treespec.unflatten(new)
    return state.replace(params=out["params"], buffers=out["buffers"], opt_state=out["opt_state"])


def sync_buffers(
    state: TrainState,
    names: Sequence[str] | None = None,
    group: dist.ProcessGroup | None = None,
) -> TrainState:
    """A copy of ``state`` whose buffers are averaged across ranks, as mmengine's
    ``all_reduce_params(model.buffers(), op='mean')`` (what ``SyncBuffersHook`` calls).

    mmengine's numerics: one flat buffer per tensor type (``torch.cat``), all-reduced with
    ``SUM`` and divided by the world size with ``torch.true_divide``; integer buffers
    (BatchNorm's ``num_batches_tracked``) are divided the same way and cast back to their
    dtype (truncation, as mmengine's copy back does). Bool buffers are left alone.
    Without a process group (or with one rank) it returns ``state``.

    Args:
        state: this rank's state.
        names: which entries of ``state.buffers`` to average (default: all of them). mmengine
            averages ``model.buffers()``, which excludes frozen parameters; ``state.buffers``
            also holds those, so pass ``[n for n, _ in model.named_buffers()]`` to match it
            exactly (averaging identical frozen values is exact for 2 or 4 ranks, but may
            round by an ulp for other world sizes).
        group: the process group.

    Example:
        >>> state = sync_buffers(state, [n for n, _ in model.named_buffers()])  # doctest: +SKIP
    """
    if get_world_size(group) == 1:
        return state
    wanted = list(state.buffers) if names is None else list(names)
    missing = [n for n in wanted if n not in state.buffers]
    if missing:
        close = difflib.get_close_matches(missing[0], list(state.buffers), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"sync_buffers: {missing[0]!r} is not a buffer of the state{hint}")
    chosen = [n for n in wanted if state.buffers[n].dtype != torch.bool]
    tensors = [state.buffers[n] for n in chosen]
    world = dist.get_world_size(group)
    new = dict(state.buffers)
    for idx in device_dtype_groups(tensors):
        part = [tensors[k] for k in idx]
        flat = concat_flat(part)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        mean = torch.true_divide(flat, world).to(flat.dtype)
        for k, view in zip(idx, split_flat(mean, part), strict=True):
            new[chosen[k]] = view
    return state.replace(buffers=new)


class SyncBuffers(Callback):
    """Average the buffers across ranks at the end of each training epoch (mmengine's
    ``SyncBuffersHook``), and before a validation epoch that no training epoch synced first
    (iteration-based loops).

    Args:
        model: when given, only ``model``'s buffers are averaged (mmengine's
            ``model.buffers()``); otherwise every entry of ``state.buffers`` (see
            :func:`sync_buffers`).
        group: the process group.

    Example:
        >>> runner = Runner(..., callbacks=[SyncBuffers(model)])  # doctest: +SKIP
    """

    priority = "NORMAL"

    def __init__(
        self, model: torch.nn.Module | None = None, group: dist.ProcessGroup | None = None
    ) -> None:
        self.names = None if model is None else [n for n, _ in model.named_buffers()]
        self.group = group
        self.called_in_train = False

    def _sync(self, state: TrainState) -> TrainState | None:
        if get_world_size(self.group) == 1:
            return None
        names = None if self.names is None else [n for n in self.names if n in state.buffers]
        return sync_buffers(state, names, self.group)

    def before_val_epoch(self, runner: Any, state: TrainState, **kwargs: Any) -> Any:
        out = None if self.called_in_train else self._sync(state)
        self.called_in_train = False
        return out

    def after_train_epoch(self, runner: Any, state: TrainState, **kwargs: Any) -> Any:
        out = self._sync(state)
        self.called_in_train = True
        return out


def average_metrics(
    metrics: Mapping[str, Any], group: dist.ProcessGroup | None = None
) -> dict[str, Any]:
    """``metrics`` with every floating tensor averaged across ranks (one all-reduce per
    ``(device, dtype)``); other values unchanged. A collective, for logging time only: the
    train step keeps each rank's own loss and issues no collective for it.

    Example:
        >>> average_metrics({"loss": torch.tensor(2.0)})  # single process: unchanged
        {'loss': tensor(2.)}
    """
    keys = [k for k, v in metrics.items() if isinstance(v, Tensor) and torch.is_floating_point(v)]
    out = dict(metrics)
    if not keys or get_world_size(group) == 1:
        return out
    world = dist.get_world_size(group)
    tensors = [metrics[k].detach() for k in keys]
    for idx in device_dtype_groups(tensors):
        part = [tensors[i] for i in idx]
        flat = concat_flat(part)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        flat = flat / world
        for i, view in zip(idx, split_flat(flat, part), strict=True):
            out[keys[i]] = view
    return out
