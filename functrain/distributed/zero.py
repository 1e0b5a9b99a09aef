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

The code lives in :mod:`~functrain.distributed.zero_optimizer` (the transform),
:mod:`~functrain.distributed.zero_layout` (chunks and collectives) and
:mod:`~functrain.distributed.zero_checkpoint` (gathering and re-sharding for checkpoints);
this module gathers their names.
"""

from functrain.distributed.zero_checkpoint import (
    gather_optimizer_state,
    optimizer_state_bytes,
    shard_optimizer_state,
)
from functrain.distributed.zero_optimizer import UNSHARDABLE, ShardedState, shard_optimizer

__all__ = [
    "UNSHARDABLE",
    "ShardedState",
    "gather_optimizer_state",
    "optimizer_state_bytes",
    "shard_optimizer",
    "shard_optimizer_state",
]
