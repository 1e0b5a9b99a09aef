"""Checkpoints of a ZeRO-1 state (:mod:`functrain.distributed.zero`): gather every rank's
shard into the full, portable optimizer state (:func:`gather_optimizer_state`) and cut a
loaded full state back into this rank's shard (:func:`shard_optimizer_state`), with the
signatures of :class:`functrain.Runner`'s ``state_for_checkpoint`` and
``state_from_checkpoint``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import optree
import torch.distributed as dist
from torch import Tensor

from functrain.distributed.dtensor import dtensor_types, is_dtensor
from functrain.distributed.zero_layout import chunk_bounds, gather_into, shard_layout
from functrain.distributed.zero_optimizer import ShardedState
from functrain.ranks import get_rank, get_world_size
from functrain.state import TrainState
from functrain.tree import NAMESPACE

__all__ = ["gather_optimizer_state", "optimizer_state_bytes", "shard_optimizer_state"]


def _map_records(node: Any, fn: Callable[[ShardedState], Any]) -> Any:
    if isinstance(node, ShardedState):
        return fn(node)
    if isinstance(node, Tensor) or node is None:
        return node
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return type(node)(*(_map_records(c, fn) for c in node))
    if isinstance(node, tuple | list):
        return type(node)(_map_records(c, fn) for c in node)
    if isinstance(node, dict):
        return {k: _map_records(v, fn) for k, v in node.items()}
    if attrs.has(type(node)):
        changes = {
            f.name: _map_records(getattr(node, f.name), fn) for f in attrs.fields(type(node))
        }
        return attrs.evolve(node, **changes)
    return node


def _zip_records(
    current: Any, loaded: Any, fn: Callable[[ShardedState, Any], Any], where: str
) -> Any:
    if isinstance(current, ShardedState):
        if isinstance(loaded, ShardedState):
            raise ValueError(
                f"{where}: the checkpoint holds one rank's optimizer shard, not the full "
                "state; save with state_for_checkpoint=gather_optimizer_state"
            )
        return fn(current, loaded)
    if isinstance(current, Tensor) or current is None:
        return loaded
    if isinstance(current, tuple | list | dict) or attrs.has(type(current)):
        if type(loaded) is not type(current):
            raise ValueError(
                f"{where}: the checkpoint's optimizer state has a {type(loaded).__name__} "
                f"where this optimizer has a {type(current).__name__}"
            )
    if isinstance(current, tuple | list):
        if len(loaded) != len(current):
            raise ValueError(
                f"{where}: the checkpoint's optimizer state has {len(loaded)} entries where "
                f"this optimizer has {len(current)}"
            )
        items = [_zip_records(c, x, fn, where) for c, x in zip(current, loaded, strict=True)]
        return type(loaded)(*items) if hasattr(loaded, "_fields") else type(loaded)(items)
    if isinstance(current, dict):
        return {
            k: _zip_records(current[k], v, fn, where) if k in current else v
            for k, v in loaded.items()
        }
    if attrs.has(type(current)):
        changes = {
            f.name: _zip_records(getattr(current, f.name), getattr(loaded, f.name), fn, where)
            for f in attrs.fields(type(current))
            if not f.metadata.get("static", False)
        }
        return attrs.evolve(loaded, **changes)
    return loaded


def _gather_inner(state: ShardedState, group: Any) -> Any:
    if state.world_size == 1:
        return state.inner
    _, _, Shard, _ = dtensor_types()
    leaves, treespec = optree.tree_flatten(state.inner, namespace=NAMESPACE)
    if len(state.shapes) != len(leaves):
        raise ValueError(
            f"gather_optimizer_state: the sharded state has {len(leaves)} leaves but records "
            f"{len(state.shapes)} shapes"
        )
    world, rank = get_world_size(group), get_rank(group)
    if world != state.world_size:
        raise ValueError(
            f"gather_optimizer_state: the state was sharded over {state.world_size} ranks but "
            f"the process group has {world}"
        )
    split = [i for i, x in enumerate(leaves) if is_dtensor(x) and x.placements[0] == Shard(0)]
    out = list(leaves)
    if split:
        locals_ = [leaves[i].to_local() for i in split]
        lay = shard_layout(
            locals_,
            world,
            rank,
            sharded=(True,) * len(split),
            numels=tuple(leaves[i].shape[0] for i in split),
        )
        targets = [x.new_empty(n) for x, n in zip(locals_, lay.numels, strict=True)]
        gather_into(locals_, targets, lay, group)
        for i, full in zip(split, targets, strict=True):
            shape = state.shapes[i]
            out[i] = full.view(shape) if shape is not None else full
    for i, x in enumerate(leaves):
        if is_dtensor(x) and i not in split:
            local = x.to_local()  # replicated: this rank holds all of it
            shape = state.shapes[i]
            out[i] = (local.reshape(shape) if shape is not None else local).clone()
    return treespec.unflatten(out)


def gather_optimizer_state(state: TrainState, group: dist.ProcessGroup | None = None) -> TrainState:
    """``state`` with every :class:`ShardedState` in its optimizer state replaced by the full,
    unsharded state of the wrapped transform: what a run of ``tx`` without
    :func:`shard_optimizer` would hold (plain tensors, original shapes), so the checkpoint
    loads into any world size or into a single process.

    A collective (one all-gather per ``(device, dtype)`` group): every rank must call it, and
    every rank gets the full state (a checkpoint writer keeps rank 0's). It is the
    ``state_for_checkpoint`` argument of :class:`functrain.Runner`. A state without sharded
    parts comes back unchanged.

    Example:
        >>> runner = Runner(..., state_for_checkpoint=gather_optimizer_state,
        ...                 state_from_checkpoint=shard_optimizer_state)  # doctest: +SKIP
    """
    opt_state = _map_records(state.opt_state, lambda s: _gather_inner(s, group))
    return state.replace(opt_state=opt_state)


def _shard_inner(current: ShardedState, loaded: Any, group: Any) -> ShardedState:
    if current.world_size == 1:
        return ShardedState(loaded, (), 1)
    DTensor, _, Shard, _ = dtensor_types()
    world, rank = get_world_size(group), get_rank(group)
    cur_leaves = optree.tree_leaves(current.inner, namespace=NAMESPACE)
    new_leaves, treespec = optree.tree_flatten(loaded, namespace=NAMESPACE)
    if len(new_leaves) != len(cur_leaves):
        raise ValueError(
            f"shard_optimizer_state: the checkpoint's optimizer state has {len(new_leaves)} "
            f"tensors where this optimizer has {len(cur_leaves)}"
        )
    out = []
    for k, (cur, full) in enumerate(zip(cur_leaves, new_leaves, strict=True)):
        if is_dtensor(cur):
            if not isinstance(full, Tensor):
                raise ValueError(
                    f"shard_optimizer_state: optimizer-state leaf {k} is a "
                    f"{type(full).__name__} in the checkpoint, a tensor here"
                )
            if full.numel() != cur.numel():
                raise ValueError(
                    f"shard_optimizer_state: optimizer-state leaf {k} has {full.numel()} "
                    f"elements in the checkpoint but {cur.numel()} here (another model?)"
                )
            local_cur = cur.to_local()
            if cur.placements[0] == Shard(0):
                lo, hi = chunk_bounds(cur.shape[0], world, rank)
                local = full.reshape(-1)[lo:hi]
            else:
                local = full.reshape(cur.shape)
            local = local.to(device=local_cur.device, dtype=local_cur.dtype).clone()
            out.append(
                DTensor.from_local(
                    local,
                    cur.device_mesh,
                    cur.placements,
                    run_check=False,
                    shape=cur.shape,
                    stride=cur.stride(),
                )
            )
        elif isinstance(cur, Tensor) and isinstance(full, Tensor):
            # A copy: the train step donates the state, and ``loaded`` may still be in use.
            out.append(full.to(cur.device, copy=True))
        else:
            out.append(full)
    return ShardedState(treespec.unflatten(out), current.shapes, current.world_size)


def shard_optimizer_state(
    loaded: TrainState, current: TrainState, group: dist.ProcessGroup | None = None
) -> TrainState:
    """``loaded`` (a state read from a checkpoint written through
    :func:`gather_optimizer_state`, or by an unsharded run of the same ``tx``) with its
    optimizer state cut down to this rank's shard, wherever ``current`` (this rank's state,
    for example the freshly built one) holds a :class:`ShardedState`.

    Everything else, the counters and the static fields of the optimizer state included,
    is ``loaded``'s. The ``state_from_checkpoint`` argument of :class:`functrain.Runner`; no
    collective (each rank slices its own chunks).

    Raises:
        ValueError: the checkpoint's optimizer state does not have this optimizer's
            structure, or holds a single rank's shard instead of the full state.

    Example:
        >>> state = shard_optimizer_state(torch.load(path), fresh_state)  # doctest: +SKIP
    """
    opt_state = _zip_records(
        current.opt_state,
        loaded.opt_state,
        lambda cur, full: _shard_inner(cur, full, group),
        "shard_optimizer_state",
    )
    return loaded.replace(opt_state=opt_state)


def optimizer_state_bytes(opt_state: Any) -> int:
    """Bytes of optimizer state held by this rank: the local part of every DTensor leaf plus
    every plain tensor (a 0-d step count included).

    Example:
        >>> import torch
        >>> optimizer_state_bytes((torch.zeros(4), torch.zeros((), dtype=torch.int64)))
        24
    """
    total = 0
    for leaf in optree.tree_leaves(opt_state, namespace=NAMESPACE):
        if is_dtensor(leaf):
            leaf = leaf.to_local()
        if isinstance(leaf, Tensor):
            total += leaf.numel() * leaf.element_size()
    return total
