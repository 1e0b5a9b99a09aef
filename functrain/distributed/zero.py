"""ZeRO-1: each data-parallel rank keeps the optimizer state of its own shard only.

:func:`shard_optimizer` wraps the whole optimizer (everything that should see the averaged
gradient: clip, optimizer, weight decay, schedules, multipliers) into a transform whose state
is sharded across the ranks, so optimizer memory per rank falls as ``1 / world_size``::

    tx = shard_optimizer(ft.chain(ft.clip(1.0), ft.adamw(sched), ft.mask_multipliers(mults)))
    state = ft.TrainState.create(model, tx)   # after the process group is initialized
    step = ft.make_train_step(model, loss_fn, tx)   # tx averages the gradients itself
    runner = ft.Runner(..., state_for_checkpoint=gather_optimizer_state,
                       state_from_checkpoint=shard_optimizer_state)

How one update goes (per ``(device, dtype)`` group of leaves, one collective each way):

1. Every leaf is viewed flat and split into ``world_size`` chunks with ``torch.chunk``'s rule
   (rank ``r`` owns elements ``[r*c, (r+1)*c)``, ``c = ceil(numel / world_size)``); a leaf
   too small to give every rank an element is replicated instead. The local gradients are
   averaged and scattered with one ``reduce_scatter``: the send buffer holds rank 0's chunks
   of every leaf, then rank 1's, ..., each padded to the same length and multiplied by
   ``1 / world_size`` (DDP's numerics), so rank ``r`` receives the averaged gradient of its
   chunks (half the traffic of an all-reduce). Where the backend has no reduce-scatter, an
   all-reduce and a slice do the same.
2. ``tx`` runs on the chunks as DTensors (``Shard(0)`` of each flattened leaf over a 1-d
   mesh of the group): elementwise math runs on the local chunks, and whatever needs the whole
   gradient (the clip's global norm, LAMB's per-leaf norms, ``apply_if_finite``'s check) is
   reduced across ranks by DTensor. The optimizer state therefore holds DTensors whose local
   parts are this rank's chunks.
3. The new parameter chunks are all-gathered (``all_gather`` into one buffer) and copied
   into the full parameters, identical on every rank.

Results equal the unsharded optimizer on the averaged gradient: bitwise for elementwise
optimizers without a clip (every element sees the same operations), to rounding with one
(the global norm is reduced from per-chunk norms). Per-leaf-shape transforms cannot be
sharded elementwise and are rejected with an error naming them: ``muon`` (orthogonalises
whole matrices), ``adafactor`` (factors each leaf's rows and columns), ``lbfgs``. So is a
``loss_scaling`` inside (its overflow check would be per chunk, so ranks could disagree on
skipping a step): use bfloat16 autocast with a sharded optimizer state.

Checkpoints: each rank's state holds only its chunks. :func:`gather_optimizer_state` turns a
:class:`~functrain.state.TrainState` into one whose optimizer state is the full, unsharded
state of ``tx`` (what an unsharded run of ``tx`` has: a portable checkpoint that any world
size, or a single process, can load); :func:`shard_optimizer_state` turns such a loaded state
back into this rank's shard. They have the signatures of the :class:`functrain.Runner`
arguments ``state_for_checkpoint`` and ``state_from_checkpoint``.

With a single process (no process group, or a group of one) the wrapper runs ``tx`` on the
full tensors, with no collectives: the same numbers as ``tx``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import attrs
import optree
import torch
import torch.distributed as dist
from torch import Tensor

from functrain.distributed.dtensor import enable_dtensor_kernels, is_dtensor
from functrain.state import TrainState
from functrain.transforms.base import (
    FlatTransform,
    GradientTransformation,
    from_flat,
    state_record,
    static_field,
)
from functrain.transforms.fused_step import apply_gradients
from functrain.transforms.kernel_specs import Kernel
from functrain.tree import NAMESPACE, TreeInfo, flatten_like

__all__ = [
    "UNSHARDABLE",
    "ShardedState",
    "gather_optimizer_state",
    "optimizer_state_bytes",
    "shard_optimizer",
    "shard_optimizer_state",
]

#: Building blocks that cannot be sharded elementwise: name -> (alias, why).
UNSHARDABLE: dict[str, tuple[str, str]] = {
    "scale_by_muon": ("muon", "it orthogonalises whole 2-d matrices"),
    "scale_by_factored_rms": ("adafactor", "it factors each leaf's rows and columns"),
    "lbfgs": ("lbfgs", "its line search works on one flat vector of all parameters"),
    "loss_scaling": (
        "loss_scaling",
        "its overflow check would see one chunk per rank, so ranks could disagree on skipping "
        "a step; train in bfloat16 (no loss scaling) with a sharded optimizer state",
    ),
}


@state_record
class ShardedState:
    """State of :func:`shard_optimizer`.

    Attributes:
        inner: the wrapped transform's state over this rank's chunks: its per-parameter
            tensors are DTensors (``Shard(0)`` of the flattened leaf, or ``Replicate`` for a
            leaf too small to split); scalars (step counts, learning rates) are plain tensors.
            With ``world_size == 1`` it is the wrapped transform's ordinary state.
        shapes: for each leaf of ``inner`` (optree order) that is a DTensor, the full shape
            it has in the unsharded state (``None`` for the others); used to gather.
        world_size: the number of ranks the state was sharded over.
    """

    inner: Any
    shapes: tuple[tuple[int, ...] | None, ...] = static_field()
    world_size: int = static_field()


def _dtensor_api() -> tuple[Any, Any, Any, Any]:
    try:
        from torch.distributed.tensor import DeviceMesh, DTensor, Replicate, Shard
    except ImportError:  # pragma: no cover - torch < 2.5
        from torch.distributed._tensor import DeviceMesh, DTensor, Replicate, Shard
    return DTensor, DeviceMesh, Shard, Replicate


def _world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def _bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """``torch.chunk``'s split of ``n`` elements: the ``[lo, hi)`` of ``rank``."""
    c = -(-n // world)
    lo = min(n, rank * c)
    return lo, min(n, lo + c)


def _splits(n: int, world: int) -> bool:
    """Whether every rank gets at least one element (else the leaf is replicated)."""
    return n > 0 and world > 1 and (world - 1) * (-(-n // world)) < n


@attrs.frozen
class _Layout:
    """Which chunk of which leaf each rank owns, and the collective buffers' sizes."""

    world: int
    rank: int
    numels: tuple[int, ...]
    sharded: tuple[bool, ...]
    groups: tuple[tuple[int, ...], ...]
    reduce_size: tuple[int, ...]
    gather_size: tuple[int, ...]

    def length(self, i: int, rank: int) -> int:
        if not self.sharded[i]:
            return self.numels[i]
        lo, hi = _bounds(self.numels[i], self.world, rank)
        return hi - lo


_LAYOUTS: dict[Any, _Layout] = {}


def _layout(
    tensors: list[Tensor],
    world: int,
    rank: int,
    sharded: tuple[bool, ...] | None = None,
    numels: tuple[int, ...] | None = None,
) -> _Layout:
    numels = numels if numels is not None else tuple(t.numel() for t in tensors)
    keys = tuple((t.device, t.dtype) for t in tensors)
    key = (numels, keys, world, rank, sharded)
    cached = _LAYOUTS.get(key)
    if cached is not None:
        return cached
    if sharded is None:
        sharded = tuple(_splits(n, world) for n in numels)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    lay = _Layout(world, rank, numels, sharded, tuple(tuple(g) for g in groups.values()), (), ())
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


def _piece(flat: Tensor, lay: _Layout, i: int, rank: int) -> Tensor:
    if not lay.sharded[i]:
        return flat
    lo, hi = _bounds(lay.numels[i], lay.world, rank)
    return flat[lo:hi]


_NO_REDUCE_SCATTER: list[bool] = []


def _reduce_scatter(recv: Tensor, send: Tensor, lay: _Layout, group: Any) -> None:
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


def _scatter_mean(grads: list[Tensor], lay: _Layout, group: Any) -> list[Tensor]:
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
                piece = _piece(flats[i], lay, i, r)
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


def _gather_into(locals_: list[Tensor], targets: list[Tensor], lay: _Layout, group: Any) -> None:
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
                lo, hi = _bounds(lay.numels[i], world, r)
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
        _, DeviceMesh, _, _ = _dtensor_api()
        if group is None:
            mesh = DeviceMesh(device.type, list(range(dist.get_world_size())))
        else:
            mesh = DeviceMesh.from_group(group, device.type)
        _MESHES[key] = mesh
    return mesh


def _as_dtensors(chunks: list[Tensor], lay: _Layout, group: Any) -> list[Any]:
    DTensor, _, Shard, Replicate = _dtensor_api()
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


def _local(x: Any, lay: _Layout, i: int) -> Tensor:
    """The local part of a result DTensor, in the placement the layout expects."""
    DTensor, _, Shard, Replicate = _dtensor_api()
    if not isinstance(x, DTensor):
        return _piece(x.reshape(-1), lay, i, lay.rank)
    want = Shard(0) if lay.sharded[i] else Replicate()
    if tuple(x.placements) != (want,):
        x = x.redistribute(x.device_mesh, [want])
    return x.to_local()


def _check_shardable(tx: GradientTransformation) -> None:
    flat = getattr(tx, "flat", None)
    name = flat.name if flat is not None else ""
    for block, (alias, why) in UNSHARDABLE.items():
        if re.search(rf"\b{block}\(", name):
            raise ValueError(
                f"shard_optimizer cannot shard {alias} ({block}): {why}. Shard only "
                "elementwise optimizers (sgd, adam, adamw, lion, rmsprop, ...), or use "
                "unsharded data parallelism (make_train_step(..., distributed=True))"
            )


def _meta(t: Tensor, shape: Any = None) -> Tensor:
    return torch.empty(t.shape if shape is None else shape, dtype=t.dtype, device="meta")


def _shapes_of(leaves: list[Any], template: list[Any]) -> tuple[tuple[int, ...] | None, ...]:
    if len(template) != len(leaves):
        raise ValueError(
            f"shard_optimizer: the wrapped transform's state has {len(leaves)} leaves on "
            f"shards but {len(template)} on full tensors; its state depends on the shapes"
        )
    return tuple(
        tuple(t.shape) if is_dtensor(a) and isinstance(t, Tensor) else None
        for a, t in zip(leaves, template, strict=True)
    )


def _state_shapes(
    tx: GradientTransformation, params: list[Tensor], info: TreeInfo, inner: Any
) -> tuple[tuple[int, ...] | None, ...]:
    """The full shape of each DTensor leaf of ``inner``, from ``tx.init`` on meta tensors."""
    leaves = optree.tree_leaves(inner, namespace=NAMESPACE)
    try:
        template = tx.init(info.unflatten([_meta(p) for p in params]))
    except Exception:  # an init that reads values: build the template for real, once
        template = tx.init(info.unflatten([torch.zeros_like(p) for p in params]))
    return _shapes_of(leaves, optree.tree_leaves(template, namespace=NAMESPACE))


def _shapes_after_update(
    tx: GradientTransformation,
    old: ShardedState,
    new_inner: Any,
    like: list[Tensor],
    info: TreeInfo,
    extra: dict[str, Any],
) -> tuple[tuple[int, ...] | None, ...]:
    """Shapes for a state whose leaves changed in an update (a momentum buffer created on
    the first step, say): the same update replayed on meta tensors of the full shapes."""
    old_leaves, spec = optree.tree_flatten(old.inner, namespace=NAMESPACE)
    meta_old = spec.unflatten(
        [
            _meta(x, shape) if isinstance(x, Tensor) else x
            for x, shape in zip(old_leaves, old.shapes, strict=True)
        ]
    )
    meta = info.unflatten([_meta(t) for t in like])
    new_leaves = optree.tree_leaves(new_inner, namespace=NAMESPACE)
    try:
        _, template = tx.update(meta, meta_old, meta, **extra)
    except Exception as e:
        raise ValueError(
            "shard_optimizer: the wrapped transform's state changed its leaves in an update "
            f"and replaying the update on meta tensors to learn their shapes failed ({e})"
        ) from e
    return _shapes_of(new_leaves, optree.tree_leaves(template, namespace=NAMESPACE))


def _shapes_for(
    tx: GradientTransformation,
    old: ShardedState,
    new_inner: Any,
    like: list[Tensor],
    info: TreeInfo,
    extra: dict[str, Any],
) -> tuple[tuple[int, ...] | None, ...]:
    if optree.tree_structure(new_inner, namespace=NAMESPACE).num_leaves == len(old.shapes):
        return old.shapes
    return _shapes_after_update(tx, old, new_inner, like, info, extra)


def shard_optimizer(
    tx: GradientTransformation, group: dist.ProcessGroup | None = None
) -> GradientTransformation:
    """``tx`` with its state sharded across the data-parallel ranks (ZeRO-1); see the module
    docstring for the algorithm.

    The returned transform takes each rank's *local* gradients and averages them across the
    ranks itself (a reduce-scatter), so the step must not average them first:
    :func:`functrain.make_train_step` sees it and does not. Wrap the whole optimizer in it:
    members outside it would see local gradients. Inside :func:`functrain.accumulate`
    (``accumulate(shard_optimizer(tx), N)``) the gradients are accumulated locally and
    reduced only on the micro-batch that steps (DDP's ``no_sync``). Build the state
    (``TrainState.create`` / ``init``) after the process group is initialized: the state is
    this rank's shard.

    Args:
        tx: the optimizer (an elementwise one: see :data:`UNSHARDABLE` for what is not).
        group: the data-parallel process group (default: the default group).

    Returns:
        A transform whose state is a :class:`ShardedState`. Through
        :func:`functrain.apply_gradients` it runs ``tx``'s own fused kernel on the shards
        and all-gathers the parameters; through ``update`` it all-gathers the updates.

    Raises:
        ValueError: ``tx`` contains a transform that cannot be sharded, naming it.

    Example:
        >>> import functrain as ft
        >>> tx = shard_optimizer(ft.chain(ft.clip(1.0), ft.adamw(1e-3)))
        >>> state = tx.init({"w": torch.zeros(4)})  # one process: tx's own state, wrapped
        >>> type(state).__name__
        'ShardedState'
    """
    _check_shardable(tx)

    def fused_flag() -> bool | None:
        # Without DTensor rules for SGD/Adagrad's fused kernels, step the shards unfused.
        return None if enable_dtensor_kernels() else False

    def check_state(state: Any, world: int) -> ShardedState:
        if not isinstance(state, ShardedState):
            raise ValueError(
                f"shard_optimizer got a state of type {type(state).__name__}; pass the state "
                "returned by this transform's init/update (or shard_optimizer_state(...))"
            )
        if state.world_size != world:
            raise ValueError(
                f"this sharded optimizer state was built for {state.world_size} rank(s), but "
                f"the process group has {world}; build the state after initializing the "
                "process group, or gather it (gather_optimizer_state) and re-shard it "
                "(shard_optimizer_state)"
            )
        return state

    def shards(
        params: list[Tensor] | None, grads: list[Tensor], world: int, rank: int
    ) -> tuple[_Layout, list[Any] | None, list[Any]]:
        for g in grads:
            if is_dtensor(g):
                raise ValueError(
                    "shard_optimizer got DTensor gradients; it shards plain (replicated) "
                    "parameters itself. For FSDP2 / DTensor parameters use tx directly"
                )
        lay = _layout(grads, world, rank)
        dgrads = _as_dtensors(_scatter_mean(grads, lay, group), lay, group)
        if params is None:
            return lay, None, dgrads
        chunks = [_piece(p.reshape(-1), lay, i, rank) for i, p in enumerate(params)]
        return lay, _as_dtensors(chunks, lay, group), dgrads

    def full_tensors(
        results: list[Any], lay: _Layout, shapes: list[torch.Size], into: list[Tensor] | None
    ) -> list[Tensor]:
        """Full tensors from every rank's result chunks: written into ``into`` (flat views of
        the donated parameters) or into new buffers."""
        locals_ = [_local(x, lay, i) for i, x in enumerate(results)]
        if into is None:
            targets: list[Tensor] = [torch.empty(0)] * len(locals_)
            for idx in lay.groups:
                first = locals_[idx[0]]
                buf = first.new_empty(sum(lay.numels[i] for i in idx))
                for i, view in zip(idx, buf.split([lay.numels[i] for i in idx]), strict=True):
                    targets[i] = view
        else:
            targets = into
        _gather_into(locals_, targets, lay, group)
        dsts = [
            targets[i]
            for i in range(len(locals_))
            if not lay.sharded[i] and targets[i].data_ptr() != locals_[i].data_ptr()
        ]
        srcs = [
            locals_[i]
            for i in range(len(locals_))
            if not lay.sharded[i] and targets[i].data_ptr() != locals_[i].data_ptr()
        ]
        if dsts:
            torch._foreach_copy_(dsts, srcs)
        return [t.view(shape) for t, shape in zip(targets, shapes, strict=True)]

    def init(params: list[Tensor], info: TreeInfo) -> ShardedState:
        world, rank = _world(group)
        if world == 1:
            return ShardedState(tx.init(info.unflatten(params)), (), 1)
        lay = _layout(params, world, rank)
        chunks = [_piece(p.reshape(-1), lay, i, rank) for i, p in enumerate(params)]
        inner = tx.init(info.unflatten(_as_dtensors(chunks, lay, group)))
        return ShardedState(inner, _state_shapes(tx, params, info, inner), world)

    def update(
        updates: list[Tensor],
        state: ShardedState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], ShardedState]:
        world, rank = _world(group)
        state = check_state(state, world)
        tree_params = None
        if world == 1:
            if params is not None:
                tree_params = info.unflatten(params)
            new, inner = tx.update(
                info.unflatten(updates), state.inner, tree_params, donate=info.donate, **extra
            )
            return flatten_like(new, info, "updates"), ShardedState(inner, (), 1)
        lay, dparams, dgrads = shards(params, updates, world, rank)
        if dparams is not None:
            tree_params = info.unflatten(dparams)
        new, inner = tx.update(
            info.unflatten(dgrads), state.inner, tree_params, donate=info.donate, **extra
        )
        results = flatten_like(new, info, "updates")
        full = full_tensors(results, lay, [u.shape for u in updates], None)
        shapes = _shapes_for(tx, state, inner, updates, info, extra)
        return full, ShardedState(inner, shapes, world)

    def apply(
        params: list[Tensor],
        grads: list[Tensor],
        state: ShardedState,
        info: TreeInfo,
        *,
        lr: Any,
        weight_decay: Any,
        decoupled: bool,
        grad_scale: Tensor | None,
    ) -> tuple[list[Tensor], ShardedState]:
        if isinstance(lr, list) or lr != -1.0 or weight_decay or grad_scale is not None:
            raise ValueError(
                "shard_optimizer(...) must wrap the whole optimizer: put the clip, weight "
                "decay, learning rate and mask_multipliers inside it, e.g. "
                "shard_optimizer(chain(clip(1.0), adamw(1e-3))), not chain(clip(1.0), "
                "shard_optimizer(adamw(1e-3)))"
            )
        world, rank = _world(group)
        state = check_state(state, world)
        if world == 1:
            new, inner = apply_gradients(
                tx,
                info.unflatten(params),
                info.unflatten(grads),
                state.inner,
                donate=info.donate,
            )
            return flatten_like(new, info), ShardedState(inner, (), 1)
        lay, dparams, dgrads = shards(params, grads, world, rank)
        assert dparams is not None
        new, inner = apply_gradients(
            tx,
            info.unflatten(dparams),
            info.unflatten(dgrads),
            state.inner,
            donate=info.donate,
            fused=fused_flag(),
        )
        results = flatten_like(new, info)
        into = None
        if info.donate and all(p.is_contiguous() for p in params):
            into = [p.view(-1) for p in params]
        shapes = _shapes_for(tx, state, inner, grads, info, {})
        full = full_tensors(results, lay, [p.shape for p in params], into)
        return full, ShardedState(inner, shapes, world)

    name = f"shard_optimizer({tx.flat.name if tx.flat is not None else 'user'})"
    fusion = Kernel(apply, coupled_decay=False, decoupled_decay=False)
    return from_flat(FlatTransform(init, update, name=name, fusion=fusion))


# --------------------------------------------------------------------------------------------
# Checkpoints


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
    _, _, Shard, _ = _dtensor_api()
    leaves, treespec = optree.tree_flatten(state.inner, namespace=NAMESPACE)
    if len(state.shapes) != len(leaves):
        raise ValueError(
            f"gather_optimizer_state: the sharded state has {len(leaves)} leaves but records "
            f"{len(state.shapes)} shapes"
        )
    world, rank = _world(group)
    if world != state.world_size:
        raise ValueError(
            f"gather_optimizer_state: the state was sharded over {state.world_size} ranks but "
            f"the process group has {world}"
        )
    split = [i for i, x in enumerate(leaves) if is_dtensor(x) and x.placements[0] == Shard(0)]
    out = list(leaves)
    if split:
        locals_ = [leaves[i].to_local() for i in split]
        lay = _layout(
            locals_,
            world,
            rank,
            sharded=(True,) * len(split),
            numels=tuple(leaves[i].shape[0] for i in split),
        )
        targets = [x.new_empty(n) for x, n in zip(locals_, lay.numels, strict=True)]
        _gather_into(locals_, targets, lay, group)
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
    DTensor, _, Shard, _ = _dtensor_api()
    world, rank = _world(group)
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
                lo, hi = _bounds(cur.shape[0], world, rank)
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
