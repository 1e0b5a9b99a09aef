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

The code lives in :mod:`~functrain.distributed.grad_sync` (averaging the gradients),
:mod:`~functrain.distributed.grad_buckets` (overlapping it with backward) and
:mod:`~functrain.distributed.state_sync` (params, buffers and metrics); this module gathers
their names.

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

from functrain.distributed.grad_buckets import GradientBuckets
from functrain.distributed.grad_sync import (
    all_reduce_mean,
    average_gradients,
    resolve_distributed,
    syncs_gradients,
)
from functrain.distributed.state_sync import (
    SyncBuffers,
    average_metrics,
    broadcast_state,
    sync_buffers,
)

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
