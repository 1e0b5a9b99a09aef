"""Process-group helpers in one place, for users: who am I, waiting for the others and the
object collectives (defined in :mod:`functrain.ranks`, which the loops, callbacks and
checkpoints import directly), and setting the group up under torchrun or from an mmengine
``env_cfg`` (defined in :mod:`functrain.distributed.launch`).

Each rank query and collective works without a process group too (rank 0 of a world of 1,
collectives that return their input), and :func:`abort_on_failure` makes a failing rank's
error visible to its peers instead of leaving them waiting; see :mod:`functrain.ranks`.

Example:
    >>> from functrain.distributed.comm import get_rank, init_distributed
    >>> init_distributed("none"), get_rank()  # a single process: nothing to set up
    (False, 0)
"""

from __future__ import annotations

from functrain.distributed.launch import (
    DEFAULT_TIMEOUT,
    SUPPORTED_LAUNCHERS,
    EnvInfo,
    init_distributed,
    setup_env,
)
from functrain.ranks import (
    abort_on_failure,
    all_gather_object,
    barrier,
    broadcast_object,
    get_device,
    get_local_rank,
    get_rank,
    get_world_size,
    is_distributed,
    is_main_process,
    sync_random_seed,
    synced_timestamp,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "SUPPORTED_LAUNCHERS",
    "EnvInfo",
    "abort_on_failure",
    "all_gather_object",
    "barrier",
    "broadcast_object",
    "get_device",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "setup_env",
    "sync_random_seed",
    "synced_timestamp",
]
