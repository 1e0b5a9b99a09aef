"""Data parallelism with DistributedDataParallel's semantics, inside the functional step.

Every rank runs the same :class:`~functrain.state.TrainState` on its own share of the batch;
the gradients are averaged across ranks before the optimizer sees them, so every rank takes
the same step and the parameters stay identical (the optimizer step is computed redundantly
on each rank, as with DDP). On top of ``torch.distributed`` (gloo on CPU, NCCL on GPU):

- :func:`average_gradients` is a stateless transform that averages the updates it receives
  across ranks: one flat all-reduce per ``(device, dtype)`` group, with DDP's numerics (each
  gradient multiplied by ``1 / world_size``, then summed). Its place in the chain decides
  when ranks synchronise: ``accumulate(chain(average_gradients(), clip(1.0), adamw(1e-3)), 4)``
  all-reduces only on the micro-batch that steps, the accumulated sum of the window, which is
  DDP's ``no_sync`` as mmengine's ``OptimWrapper.optim_context`` uses it.
- :func:`functrain.make_train_step` with ``distributed=None`` (auto: on when a default
  process group of more than one rank is initialized) averages the gradients itself before
  ``tx`` unless ``tx`` already contains :func:`average_gradients` or
  :func:`functrain.distributed.zero.shard_optimizer`; ``bucket_cap_mb`` overlaps the
  all-reduce with backward (:class:`GradientBuckets`, ``grad="autograd"`` only).
- :func:`broadcast_state` makes every rank start from rank 0's params, buffers and optimizer
  state; :func:`sync_buffers` / :class:`SyncBuffers` average the buffers (BatchNorm
  statistics) across ranks like mmengine's ``SyncBuffersHook``.
- :func:`average_metrics` averages logged values across ranks, for loggers that want the
  global mean rather than rank 0's (the step itself keeps each rank's own loss: no extra
  collective per iteration).

A clip in the chain after the averaging sees the averaged gradient, so its norm is the global
norm of the averaged gradient, as with DDP followed by ``clip_grad_norm_``.

Example (``torchrun --nproc_per_node=2 train.py``)::

    import torch.distributed as dist
    import functrain as ft
    from functrain.distributed.data_parallel import broadcast_state

    dist.init_process_group("gloo")                      # or init_distributed("pytorch")
    tx = ft.chain(ft.clip(1.0), ft.adamw(1e-3))
    state = broadcast_state(ft.TrainState.create(model, tx))   # identical start everywhere
    step = ft.make_train_step(model, loss_fn, tx)        # distributed=None: on (2 ranks)
    for batch in loader_with_distributed_sampler:        # each rank its own half
        state, metrics = step(state, batch)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from functrain.callbacks.base import Callback
from functrain.state import TrainState
from functrain.transforms.base import (
    EmptyState,
    FlatTransform,
    GradientTransformation,
    from_flat,
)
from functrain.tree import NAMESPACE, TreeInfo

__all__ = [
    "GradientBuckets",
    "SyncBuffers",
    "all_reduce_mean",
    "average_gradients",
    "average_metrics",
    "broadcast_state",
    "resolve_distributed",
    "sync_buffers",
    "syncs_gradients",
]

# Names of the flat transforms that average gradients across ranks themselves; the step
# does not average again when the chain holds one (see syncs_gradients).
_SYNC_RE = re.compile(r"\b(average_gradients|shard_optimizer)\b")


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _world_size(group: dist.ProcessGroup | None) -> int:
    return dist.get_world_size(group) if _initialized() else 1


def _is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor
        return False
    return isinstance(t, DTensor)


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
        return _initialized() and dist.get_world_size(group) > 1
    if distributed is not True:
        raise ValueError(f"{where}: distributed must be True, False or None, got {distributed!r}")
    if not _initialized():
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


def _device_dtype_groups(tensors: Sequence[Tensor]) -> list[list[int]]:
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return list(groups.values())


def _unflat(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    sizes = [t.numel() for t in like]
    return [p.view(t.shape) for p, t in zip(flat.split(sizes), like, strict=True)]


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
    world = _world_size(group)
    for idx in _device_dtype_groups(tensors):
        part = [tensors[i] for i in idx]
        for i in idx:
            if _is_dtensor(tensors[i]):
                raise ValueError(
                    "all_reduce_mean got a DTensor: DTensor gradients (FSDP2, tensor parallel) "
                    "are reduced by their own placements; do not average them again"
                )
        flat = torch.cat([t.reshape(-1) for t in part])
        if world > 1:
            flat.mul_(1.0 / world)
        if _initialized():  # a group of one too (DDP all-reduces there as well)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        for i, view in zip(idx, _unflat(flat, part), strict=True):
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
        if not _initialized():
            return updates, state
        for path, u in zip(info.paths, updates, strict=True):
            if _is_dtensor(u):
                raise ValueError(
                    f"average_gradients: leaf {path!r} is a DTensor; DTensor gradients (FSDP2) "
                    "are already reduced across their mesh, remove average_gradients()"
                )
        return all_reduce_mean(updates, group), state

    return from_flat(FlatTransform(init, update, name="average_gradients"))


class GradientBuckets:
    """Bucketed, asynchronous gradient all-reduce launched from autograd hooks during backward.

    DDP's overlap of communication with computation, for ``make_train_step(...,
    grad="autograd", bucket_cap_mb=...)``: the leaves are assigned to buckets in reverse
    order (the order backward usually produces their gradients, as DDP assumes) within each
    ``(device, dtype)``, each bucket at most ``bucket_cap_mb``. A tensor hook copies each
    gradient, times ``1 / world_size``, into its bucket as soon as autograd computes it; a
    full bucket is all-reduced asynchronously while backward goes on. Buckets are launched in
    bucket order on every rank (a later full bucket waits for the earlier ones), so the
    collectives match across ranks whatever the hook order. :meth:`finish` fills the leaves
    autograd never reached with zeros, launches what is left and waits.

    The values are those of :func:`all_reduce_mean` (same scaling and sum, bucketed).

    Args:
        bucket_cap_mb: largest bucket, in MiB (DDP's default is 25).
        group: the process group.

    Example:
        >>> buckets = GradientBuckets(25.0)  # doctest: +SKIP
        >>> leaves = [p.detach().requires_grad_() for p in params]  # doctest: +SKIP
        >>> buckets.attach(leaves)  # doctest: +SKIP
        >>> grads = torch.autograd.grad(loss_of(leaves), leaves, allow_unused=True)  # doctest: +SKIP
        >>> grads = buckets.finish(grads)  # averaged across ranks  # doctest: +SKIP
    """

    def __init__(self, bucket_cap_mb: float, group: dist.ProcessGroup | None = None) -> None:
        if not isinstance(bucket_cap_mb, int | float) or isinstance(bucket_cap_mb, bool):
            raise ValueError(f"bucket_cap_mb must be a number > 0, got {bucket_cap_mb!r}")
        if not bucket_cap_mb > 0 or math.isinf(bucket_cap_mb):
            raise ValueError(f"bucket_cap_mb must be a finite number > 0, got {bucket_cap_mb!r}")
        self.cap_bytes = int(bucket_cap_mb * 1024 * 1024)
        self.group = group
        self._layout_key: Any = None
        self._buckets: list[list[int]] = []
        self._where: list[tuple[int, int]] = []  # leaf -> (bucket, offset)
        self._active: _BucketRun | None = None

    def _plan(self, leaves: Sequence[Tensor]) -> None:
        key = tuple((t.shape, t.dtype, t.device) for t in leaves)
        if key == self._layout_key:
            return
        buckets: list[list[int]] = []
        open_bucket: dict[tuple[torch.device, torch.dtype], tuple[int, int]] = {}
        for i in reversed(range(len(leaves))):
            t = leaves[i]
            k = (t.device, t.dtype)
            nbytes = t.numel() * t.element_size()
            if k in open_bucket and open_bucket[k][1] + nbytes <= self.cap_bytes:
                b, used = open_bucket[k]
                buckets[b].append(i)
                open_bucket[k] = (b, used + nbytes)
            else:
                buckets.append([i])
                open_bucket[k] = (len(buckets) - 1, nbytes)
        where: list[tuple[int, int]] = [(0, 0)] * len(leaves)
        for b, idx in enumerate(buckets):
            offset = 0
            for i in idx:
                where[i] = (b, offset)
                offset += leaves[i].numel()
        self._layout_key, self._buckets, self._where = key, buckets, where

    def attach(self, leaves: Sequence[Tensor]) -> None:
        """Register the hooks on ``leaves`` (tensors that require grad) for one backward."""
        leaves = list(leaves)
        self._plan(leaves)
        run = _BucketRun(self, leaves)
        self._active = run
        for i, leaf in enumerate(leaves):
            leaf.register_hook(run.hook(i))

    def finish(self, grads: Sequence[Tensor | None]) -> list[Tensor]:
        """The averaged gradients, one per leaf (views into the reduced buckets)."""
        run = self._active
        if run is None:
            raise RuntimeError("GradientBuckets.finish called without attach")
        self._active = None
        return run.finish(grads)


class _BucketRun:
    """The buffers and progress of one backward pass."""

    def __init__(self, owner: GradientBuckets, leaves: list[Tensor]) -> None:
        self.owner = owner
        self.leaves = leaves
        self.world = _world_size(owner.group)
        self.buffers = [
            torch.empty(
                sum(leaves[i].numel() for i in idx),
                dtype=leaves[idx[0]].dtype,
                device=leaves[idx[0]].device,
            )
            for idx in owner._buckets
        ]
        self.pending = [len(idx) for idx in owner._buckets]
        self.seen = [False] * len(leaves)
        self.launched = 0
        self.works: list[Any] = []

    def _view(self, i: int) -> Tensor:
        b, offset = self.owner._where[i]
        return self.buffers[b].narrow(0, offset, self.leaves[i].numel())

    def hook(self, i: int) -> Any:
        def on_grad(grad: Tensor) -> None:
            self._store(i, grad)

        return on_grad

    def _store(self, i: int, grad: Tensor | None) -> None:
        if self.seen[i]:  # a second gradient for the same leaf: add it (torch sums them)
            view = self._view(i)
            b = self.owner._where[i][0]
            if b < self.launched:
                raise RuntimeError(
                    "GradientBuckets: a gradient arrived after its bucket was all-reduced; "
                    "use bucket_cap_mb=None for this model"
                )
            view.add_(grad.reshape(-1), alpha=1.0 / self.world)
            return
        self.seen[i] = True
        view = self._view(i)
        if grad is None:
            view.zero_()
        elif self.world > 1:
            torch.mul(grad.detach().reshape(-1), 1.0 / self.world, out=view)
        else:
            view.copy_(grad.detach().reshape(-1))
        b = self.owner._where[i][0]
        self.pending[b] -= 1
        self._launch_ready()

    def _launch_ready(self) -> None:
        while self.launched < len(self.buffers) and self.pending[self.launched] == 0:
            buf = self.buffers[self.launched]
            if _initialized():
                self.works.append(
                    dist.all_reduce(
                        buf, op=dist.ReduceOp.SUM, group=self.owner.group, async_op=True
                    )
                )
            self.launched += 1

    def finish(self, grads: Sequence[Tensor | None]) -> list[Tensor]:
        for i, seen in enumerate(self.seen):
            if not seen:
                self._store(i, grads[i])
        for work in self.works:
            work.wait()
        return [self._view(i).view(leaf.shape) for i, leaf in enumerate(self.leaves)]


# --------------------------------------------------------------------------------------------
# State synchronisation


def _tensor_leaves(tree: Any) -> tuple[list[Any], Any]:
    import optree

    return optree.tree_flatten(tree, namespace=NAMESPACE)


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
    if _world_size(group) == 1:
        return state
    parts = {"params": state.params, "buffers": state.buffers, "opt_state": state.opt_state}
    leaves, treespec = _tensor_leaves(parts)
    from functrain.tree import leaf_paths

    paths = leaf_paths(treespec)
    slots = [
        i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor) and not _is_dtensor(leaf)
    ]
    signature = [
        (paths[i], tuple(leaves[i].shape), str(leaves[i].dtype).removeprefix("torch."))
        for i in slots
    ]
    _check_same_structure(signature, src, group, "broadcast_state")
    tensors = [leaves[i] for i in slots]
    wire = [t.to(torch.uint8) if t.dtype == torch.bool else t for t in tensors]
    new = list(leaves)
    for idx in _device_dtype_groups(wire):
        part = [wire[k] for k in idx]
        flat = torch.cat([t.reshape(-1) for t in part])
        dist.broadcast(flat, src=src, group=group)
        for k, view in zip(idx, _unflat(flat, part), strict=True):
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
    if _world_size(group) == 1:
        return state
    wanted = list(state.buffers) if names is None else list(names)
    missing = [n for n in wanted if n not in state.buffers]
    if missing:
        import difflib

        close = difflib.get_close_matches(missing[0], list(state.buffers), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"sync_buffers: {missing[0]!r} is not a buffer of the state{hint}")
    chosen = [n for n in wanted if state.buffers[n].dtype != torch.bool]
    tensors = [state.buffers[n] for n in chosen]
    world = dist.get_world_size(group)
    new = dict(state.buffers)
    for idx in _device_dtype_groups(tensors):
        part = [tensors[k] for k in idx]
        flat = torch.cat([t.reshape(-1) for t in part])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        mean = torch.true_divide(flat, world).to(flat.dtype)
        for k, view in zip(idx, _unflat(mean, part), strict=True):
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
        if _world_size(self.group) == 1:
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
    if not keys or _world_size(group) == 1:
        return out
    world = dist.get_world_size(group)
    tensors = [metrics[k].detach() for k in keys]
    for idx in _device_dtype_groups(tensors):
        part = [tensors[i] for i in idx]
        flat = torch.cat([t.reshape(-1) for t in part])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        flat = flat / world
        for i, view in zip(idx, _unflat(flat, part), strict=True):
            out[keys[i]] = view
    return out
