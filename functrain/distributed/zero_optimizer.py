"""ZeRO-1's transform: :func:`shard_optimizer` wraps an optimizer so that its state is
sharded across the data-parallel ranks. The algorithm is described in
:mod:`functrain.distributed.zero`; the chunking and the collectives are in
:mod:`functrain.distributed.zero_layout`.
"""

from __future__ import annotations

import re
from typing import Any

import optree
import torch
import torch.distributed as dist
from torch import Tensor

from functrain.distributed.dtensor import enable_dtensor_kernels, is_dtensor
from functrain.distributed.zero_layout import (
    ShardLayout,
    as_dtensors,
    chunk_of,
    gather_into,
    local_chunk,
    scatter_mean,
    shard_layout,
)
from functrain.ranks import get_rank, get_world_size
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

__all__ = ["UNSHARDABLE", "ShardedState", "shard_optimizer"]

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


def _shapes_for(
    tx: GradientTransformation,
    old: ShardedState,
    new_inner: Any,
    like: list[Tensor],
    info: TreeInfo,
    extra: dict[str, Any],
) -> tuple[tuple[int, ...] | None, ...]:
    """The full shape of each DTensor leaf of ``new_inner``: ``old``'s when the update kept the
    leaves, else (a momentum buffer created on the first step, say) learnt by replaying the
    same update on meta tensors of the full shapes."""
    new_leaves = optree.tree_leaves(new_inner, namespace=NAMESPACE)
    if len(new_leaves) == len(old.shapes):
        return old.shapes
    old_leaves, spec = optree.tree_flatten(old.inner, namespace=NAMESPACE)
    meta_old = spec.unflatten(
        [
            _meta(x, shape) if isinstance(x, Tensor) else x
            for x, shape in zip(old_leaves, old.shapes, strict=True)
        ]
    )
    meta = info.unflatten([_meta(t) for t in like])
    try:
        _, template = tx.update(meta, meta_old, meta, **extra)
    except Exception as e:
        raise ValueError(
            "shard_optimizer: the wrapped transform's state changed its leaves in an update "
            f"and replaying the update on meta tensors to learn their shapes failed ({e})"
        ) from e
    return _shapes_of(new_leaves, optree.tree_leaves(template, namespace=NAMESPACE))


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
    ) -> tuple[ShardLayout, list[Any] | None, list[Any]]:
        for g in grads:
            if is_dtensor(g):
                raise ValueError(
                    "shard_optimizer got DTensor gradients; it shards plain (replicated) "
                    "parameters itself. For FSDP2 / DTensor parameters use tx directly"
                )
        lay = shard_layout(grads, world, rank)
        dgrads = as_dtensors(scatter_mean(grads, lay, group), lay, group)
        if params is None:
            return lay, None, dgrads
        chunks = [chunk_of(p.reshape(-1), lay, i, rank) for i, p in enumerate(params)]
        return lay, as_dtensors(chunks, lay, group), dgrads

    def full_tensors(
        results: list[Any], lay: ShardLayout, shapes: list[torch.Size], into: list[Tensor] | None
    ) -> list[Tensor]:
        """Full tensors from every rank's result chunks: written into ``into`` (flat views of
        the donated parameters) or into new buffers."""
        locals_ = [local_chunk(x, lay, i) for i, x in enumerate(results)]
        if into is None:
            targets: list[Tensor] = [torch.empty(0)] * len(locals_)
            for idx in lay.groups:
                first = locals_[idx[0]]
                buf = first.new_empty(sum(lay.numels[i] for i in idx))
                for i, view in zip(idx, buf.split([lay.numels[i] for i in idx]), strict=True):
                    targets[i] = view
        else:
            targets = into
        gather_into(locals_, targets, lay, group)
        # Replicated leaves are not gathered: each rank copies its own full result, unless
        # it was computed in place in the target already.
        copies = [
            i
            for i in range(len(locals_))
            if not lay.sharded[i] and targets[i].data_ptr() != locals_[i].data_ptr()
        ]
        if copies:
            torch._foreach_copy_([targets[i] for i in copies], [locals_[i] for i in copies])
        return [t.view(shape) for t, shape in zip(targets, shapes, strict=True)]

    def init(params: list[Tensor], info: TreeInfo) -> ShardedState:
        world, rank = get_world_size(group), get_rank(group)
        if world == 1:
            return ShardedState(tx.init(info.unflatten(params)), (), 1)
        lay = shard_layout(params, world, rank)
        chunks = [chunk_of(p.reshape(-1), lay, i, rank) for i, p in enumerate(params)]
        inner = tx.init(info.unflatten(as_dtensors(chunks, lay, group)))
        return ShardedState(inner, _state_shapes(tx, params, info, inner), world)

    def update(
        updates: list[Tensor],
        state: ShardedState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], ShardedState]:
        world, rank = get_world_size(group), get_rank(group)
        state = check_state(state, world)
        if world == 1:  # one process: tx on the full tensors, no collectives
            lay, run_params, run_grads = None, params, updates
        else:
            lay, run_params, run_grads = shards(params, updates, world, rank)
        tree_params = None if run_params is None else info.unflatten(run_params)
        new, inner = tx.update(
            info.unflatten(run_grads), state.inner, tree_params, donate=info.donate, **extra
        )
        results = flatten_like(new, info, "updates")
        if lay is None:
            return results, ShardedState(inner, (), 1)
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
        world, rank = get_world_size(group), get_rank(group)
        state = check_state(state, world)
        if world == 1:  # one process: tx's own step on the full tensors, no collectives
            lay, run_params, run_grads, fused = None, params, grads, None
        else:
            lay, run_params, run_grads = shards(params, grads, world, rank)
            fused = fused_flag()
        assert run_params is not None
        new, inner = apply_gradients(
            tx,
            info.unflatten(run_params),
            info.unflatten(run_grads),
            state.inner,
            donate=info.donate,
            fused=fused,
        )
        results = flatten_like(new, info)
        if lay is None:
            return results, ShardedState(inner, (), 1)
        into = None
        if info.donate and all(p.is_contiguous() for p in params):
            into = [p.view(-1) for p in params]
        shapes = _shapes_for(tx, state, inner, grads, info, {})
        full = full_tensors(results, lay, [p.shape for p in params], into)
        return full, ShardedState(inner, shapes, world)

    name = f"shard_optimizer({tx.flat.name if tx.flat is not None else 'user'})"
    fusion = Kernel(apply, coupled_decay=False, decoupled_decay=False)
    return from_flat(FlatTransform(init, update, name=name, fusion=fusion))
