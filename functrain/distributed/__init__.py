"""Data-parallel training on torch.distributed: process groups and launch
(:mod:`~functrain.distributed.comm`: rank queries from :mod:`functrain.ranks`, setup in
:mod:`~functrain.distributed.launch`), mmengine's samplers (:mod:`~functrain.distributed.sampler`),
gradient averaging and buffer syncing (:mod:`~functrain.distributed.data_parallel`), sharded
optimizer state (:mod:`~functrain.distributed.zero`) and DTensor parameters
(:mod:`~functrain.distributed.dtensor`).

The loops and callbacks use :mod:`functrain.ranks`, below this package; this package imports
:mod:`functrain.callbacks.base` and :mod:`functrain.state` but must not import
:mod:`functrain.loops` at import time (:func:`functrain.make_train_step` imports
:mod:`~functrain.distributed.data_parallel` lazily).
"""

from functrain.distributed.comm import (
    barrier,
    broadcast_object,
    get_device,
    get_local_rank,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
    setup_env,
)
from functrain.distributed.data_parallel import (
    SyncBuffers,
    all_reduce_mean,
    average_gradients,
    average_metrics,
    broadcast_state,
    sync_buffers,
)
from functrain.distributed.dtensor import check_dtensor_support, enable_dtensor_kernels
from functrain.distributed.sampler import DefaultSampler, InfiniteSampler
from functrain.distributed.zero import (
    ShardedState,
    gather_optimizer_state,
    optimizer_state_bytes,
    shard_optimizer,
    shard_optimizer_state,
)

__all__ = [
    "DefaultSampler",
    "InfiniteSampler",
    "ShardedState",
    "SyncBuffers",
    "all_reduce_mean",
    "average_gradients",
    "average_metrics",
    "barrier",
    "broadcast_object",
    "broadcast_state",
    "check_dtensor_support",
    "enable_dtensor_kernels",
    "gather_optimizer_state",
    "get_device",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "optimizer_state_bytes",
    "setup_env",
    "shard_optimizer",
    "shard_optimizer_state",
    "sync_buffers",
]
