"""How ZeRO-1 (:mod:`functrain.distributed.zero`) cuts every flat leaf into per-rank chunks,
and the collectives that move the chunks: one reduce-scatter of the averaged gradients and
one all-gather of the results per ``(device, dtype)`` group, plus the DTensor views of the
chunks that the wrapped optimizer runs on.

Rank ``r`` owns elements ``[r*c, (r+1)*c)`` of a leaf of ``n`` elements, ``c = ceil(n /
world)`` (``torch.chunk``'s rule); a leaf too small to give every rank an element is
replicated instead.

Example:
    >>> chunk_bounds(5, 2, 0), chunk_bounds(5, 2, 1)
    ((0, 3), (3, 5))
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.distributed as dist
from torch import Tensor

from functrain.distributed.dtensor import dtensor_types
from functrain.distributed.flat import device_dtype_groups

__all__ = [
    "ShardLayout",
    "as_dtensors",
    "chunk_bounds",
    "chunk_of",
    "gather_into",
    "local_chunk",
    "scatter_mean",
    "shard_layout",
]


def chunk_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """``torch.chunk``'s split of ``n`` elements over ``world`` ranks: the ``[lo, hi)`` of
    ``rank`` (empty, ``lo == hi``, for the ranks past the last chunk).

    Example:
        >>> chunk_bounds(3, 2, 1)
        (2, 3)
    """
    c = -(-n // world)
    lo = min(n, rank * c)
    return lo, min(n, lo + c)


def _splits(n: int, world: int) -> bool:
    """Whether every rank gets at least one element (else the leaf is replicated)."""
    return n > 0 and world > 1 and (world - 1) * (-(-n // world)) < n


@attrs.frozen
class ShardLayout:
    """Which chunk of which leaf each rank owns, and the collective buffers' sizes.

    Attributes:
        world, rank: the group's size and this rank.
        numels: each leaf's number of elements.
        sharded: whether each leaf is split across the ranks (else replicated).
        groups: the leaf indices of each ``(device, dtype)`` group.
        reduce_size, gather_size: per group, the longest rank's share of the
            reduce-scatter and all-gather buffers (every rank pads to it).
    """

    world: int
    rank: int
    numels: tuple[int, ...]
    sharded: tuple[bool, ...]
    groups: tuple[tuple[int, ...], ...]
    reduce_size: tuple[int, ...]
    gather_size: tuple[int, ...]

    def length(self, i: int, rank: int) -> int:
        """The number of elements of leaf ``i`` that ``rank`` holds."""
        if not self.sharded[i]:
            return self.numels[i]
        lo, hi = chunk_bounds(self.numels[i], self.world, rank)
        return hi - lo


_LAYOUTS: dict[Any, ShardLayout] = {}


def shard_layout(
    tensors: list[Tensor],
    world: int,
    rank: int,
    sharded: tuple[bool, ...] | None = None,
    numels: tuple[int, ...] | None = None,
) -> ShardLayout:
    """The layout of ``tensors`` over ``world`` ranks, seen from ``rank`` (cached by shape).

    Args:
        tensors: the leaves (their devices and dtypes group them; their sizes count unless
            ``numels`` is given).
        world, rank: the group's size and this rank.
        sharded: which leaves are split (default: every leaf that gives each rank at least
            one element).
        numels: the full number of elements of each leaf, when ``tensors`` are local chunks.

    Example:
        >>> lay = shard_layout([torch.zeros(5), torch.zeros(1)], world=2, rank=0)
        >>> lay.sharded, lay.length(0, 1)
        ((True, False), 2)
    """
    numels = numels if numels is not None else tuple(t.numel() for t in tensors)
    keys = tuple((t.device, t.dtype) for t in tensors)
    key = (numels, keys, world, rank, sharded)
    cached = _LAYOUTS.get(key)
    if cached is not None:
        return cached
    if sharded is None:
        sharded = tuple(_splits(n, world) for n in numels)
    groups = tuple(tuple(g) for g in device_dtype_groups(tensors))
    lay = ShardLayout(world, rank, numels, sharded, groups, (), ())
    reduce_size = tuple(
        max(sum(lay.length(i, r) for i in idx) for r in range(world)) for idx in lay.groups
    )
    gather_size = tuple(
        max(sum(lay.length(i, r) for i in idx if sharded[i]) for r in range(world))
        for idx in lay.groups
    )
    lay = attrs.evolve(lay, reduce_size=reduce_size, gather_size=gather_size)
    if len(_LAYOUTS) > 64:
        _LAYOUTS.clear()
    _LAYOUTS[key] = lay
    return lay


def chunk_of(flat: Tensor, lay: ShardLayout, i: int, rank: int) -> Tensor:
    """``rank``'s chunk of leaf ``i`` given flat (a view), or all of it when replicated."""
    if not lay.sharded[i]:
        return flat
    lo, hi = chunk_bounds(lay.numels[i], lay.world, rank)
    return flat[lo:hi]


_NO_REDUCE_SCATTER: list[bool] = []


def _reduce_scatter(recv: Tensor, send: Tensor, lay: ShardLayout, group: Any) -> None:
    if not _NO_REDUCE_SCATTER:
        fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        try:
            fn(recv, send, op=dist.ReduceOp.SUM, group=group)
            return
        except (RuntimeError, NotImplementedError) as e:  # a backend without reduce-scatter
            if "reduce_scatter" not in str(e).lower() and "not supported" not in str(e).lower():
                raise
            _NO_REDUCE_SCATTER.append(True)
    dist.all_reduce(send, op=dist.ReduceOp.SUM, group=group)
    size = recv.numel()
    recv.copy_(send[lay.rank * size : (lay.rank + 1) * size])


def _all_gather(recv: Tensor, send: Tensor, group: Any) -> None:
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(recv, send, group=group)


def scatter_mean(grads: list[Tensor], lay: ShardLayout, group: Any) -> list[Tensor]:
    """This rank's chunk of the rank-averaged gradient of every leaf (1-d)."""
    out: list[Tensor] = [torch.empty(0)] * len(grads)
    world = lay.world
    for g, idx in enumerate(lay.groups):
        size = lay.reduce_size[g]
        flats = {i: grads[i].reshape(-1) for i in idx}
        pieces: list[Tensor] = []
        first = grads[idx[0]]
        for r in range(world):
            used = 0
            for i in idx:
                piece = chunk_of(flats[i], lay, i, r)
                pieces.append(piece)
                used += piece.numel()
            if used < size:
                pieces.append(first.new_zeros(size - used))
        send = torch.cat(pieces)
        send.mul_(1.0 / world)  # DDP multiplies each gradient by 1 / world_size, then sums
        recv = first.new_empty(size)
        _reduce_scatter(recv, send, lay, group)
        offset = 0
        for i in idx:
            length = lay.length(i, lay.rank)
            out[i] = recv[offset : offset + length]
            offset += length
    return out


def gather_into(locals_: list[Tensor], targets: list[Tensor], lay: ShardLayout, group: Any) -> None:
    """Write every rank's chunk of each sharded leaf into ``targets`` (flat, full length)."""
    world = lay.world
    dsts: list[Tensor] = []
    srcs: list[Tensor] = []
    for g, idx in enumerate(lay.groups):
        sharded = [i for i in idx if lay.sharded[i]]
        if not sharded:
            continue
        size = lay.gather_size[g]
        send_parts = [locals_[i].reshape(-1) for i in sharded]
        used = sum(p.numel() for p in send_parts)
        if used < size:
            send_parts.append(send_parts[0].new_zeros(size - used))
        send = torch.cat(send_parts)
        recv = send.new_empty(world * size)
        _all_gather(recv, send, group)
        for r in range(world):
            offset = r * size
            for i in sharded:
                lo, hi = chunk_bounds(lay.numels[i], world, r)
                dsts.append(targets[i][lo:hi])
                srcs.append(recv[offset : offset + hi - lo])
                offset += hi - lo
    if dsts:
        torch._foreach_copy_(dsts, srcs)


_MESHES: dict[tuple[str, int], Any] = {}


def _mesh(device: torch.device, group: Any) -> Any:
    key = (device.type, id(group))
    mesh = _MESHES.get(key)
    if mesh is None:
        _, DeviceMesh, _, _ = dtensor_types()
        if group is None:
            mesh = DeviceMesh(device.type, list(range(dist.get_world_size())))
        else:
            mesh = DeviceMesh.from_group(group, device.type)
        _MESHES[key] = mesh
    return mesh


def as_dtensors(chunks: list[Tensor], lay: ShardLayout, group: Any) -> list[Any]:
    """Each local chunk as a 1-d DTensor of its leaf's full length over a mesh of ``group``:
    ``Shard(0)`` for a split leaf, ``Replicate()`` for a replicated one (no communication)."""
    DTensor, _, Shard, Replicate = dtensor_types()
    out = []
    for i, chunk in enumerate(chunks):
        placement = Shard(0) if lay.sharded[i] else Replicate()
        out.append(
            DTensor.from_local(
                chunk,
                _mesh(chunk.device, group),
                [placement],
                run_check=False,
                shape=torch.Size([lay.numels[i]]),
                stride=(1,),
            )
        )
    return out


def local_chunk(x: Any, lay: ShardLayout, i: int) -> Tensor:
    """The local part of a result DTensor, in the placement the layout expects."""
    DTensor, _, Shard, Replicate = dtensor_types()
    if not isinstance(x, DTensor):
        return chunk_of(x.reshape(-1), lay, i, lay.rank)
    want = Shard(0) if lay.sharded[i] else Replicate()
    if tuple(x.placements) != (want,):
        x = x.redistribute(x.device_mesh, [want])
    return x.to_local()
