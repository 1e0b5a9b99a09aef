"""Who am I in the process group, and the object collectives that rank-aware code needs.

A low-level module (it imports ``torch.distributed`` and nothing from functrain), so that the
loops, the callbacks, the checkpoint writer and :mod:`functrain.distributed` can all use it
without one floor reaching into another's internals.

Every helper works whether or not ``torch.distributed`` is initialized: without a process
group (or with one of a single process) ``get_rank()`` is 0, ``get_world_size()`` 1,
``barrier()`` does nothing and ``broadcast_object(x)`` returns ``x``, so rank-aware code
(loggers, checkpoint writers) runs unchanged in a plain single-process run.

Failure handling: a rank that raises while the others wait in a collective would leave them
waiting until the collective timeout. :func:`abort_on_failure` (which the
:class:`functrain.loops.Runner` calls on an exception) writes the error into the group's
key-value store, reads the errors other ranks wrote, and aborts the process group so that
peers blocked in a collective fail at once instead of waiting; the peers' exceptions then
carry a note naming the rank that failed first and its message.

Example:
    >>> from functrain.ranks import get_rank, get_world_size, is_main_process
    >>> (get_rank(), get_world_size(), is_main_process())  # a plain python process
    (0, 1, True)
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "abort_on_failure",
    "all_gather_object",
    "barrier",
    "broadcast_object",
    "get_device",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "is_active",
    "is_distributed",
    "is_main_process",
    "sync_random_seed",
    "synced_timestamp",
]

# The same logger name as before the move to this module, so log filters keep working.
logger = logging.getLogger("functrain.distributed")

_FAILURE_KEY = "functrain/failure/"


# --------------------------------------------------------------------------------------------
# Who am I


def is_distributed() -> bool:
    """Whether the default ``torch.distributed`` process group is initialized.

    Example:
        >>> is_distributed()  # in a plain python process
        False
    """
    return dist.is_available() and dist.is_initialized()


def get_rank(group: dist.ProcessGroup | None = None) -> int:
    """This process's rank in ``group`` (the default group); 0 without a process group.

    Example:
        >>> get_rank()
        0
    """
    return dist.get_rank(group) if is_distributed() else 0


def get_world_size(group: dist.ProcessGroup | None = None) -> int:
    """The number of processes in ``group`` (the default group); 1 without a process group.

    Example:
        >>> get_world_size()
        1
    """
    return dist.get_world_size(group) if is_distributed() else 1


def get_local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``, set by torchrun); 0 without a
    process group.

    Example:
        >>> get_local_rank()
        0
    """
    if not is_distributed():
        return 0
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process(group: dist.ProcessGroup | None = None) -> bool:
    """Whether this process is rank 0 (the one that writes logs and checkpoints).

    Example:
        >>> is_main_process()
        True
    """
    return get_rank(group) == 0


def get_device() -> torch.device:
    """The device this process computes on: ``cuda:LOCAL_RANK`` under a process group with
    CUDA (what :func:`functrain.distributed.init_distributed` selects; the CPU when the
    machine has fewer GPUs than processes), the current CUDA device without a process group,
    else the CPU. Use it as ``TrainState.create(model, tx, device=get_device())``.

    Example:
        >>> get_device().type in ("cpu", "cuda")
        True
    """
    if torch.cuda.is_available():
        if not is_distributed():
            return torch.device("cuda", torch.cuda.current_device())
        if get_local_rank() < torch.cuda.device_count():
            return torch.device("cuda", get_local_rank())
    return torch.device("cpu")


def is_active(group: dist.ProcessGroup | None = None) -> bool:
    """Whether collectives over ``group`` (the default group) have peers to talk to: a process
    group is initialized and has more than one rank.

    Example:
        >>> is_active()
        False
    """
    return is_distributed() and dist.get_world_size(group) > 1


# --------------------------------------------------------------------------------------------
# Collectives that are no-ops in a single process


def barrier(group: dist.ProcessGroup | None = None) -> None:
    """Wait until every rank of ``group`` gets here; nothing without a process group.

    Example:
        >>> barrier()  # returns at once in a single process
    """
    if is_active(group):
        dist.barrier(group=group)


def broadcast_object(obj: Any, src: int = 0, group: dist.ProcessGroup | None = None) -> Any:
    """Rank ``src``'s ``obj`` (any picklable object) on every rank; ``obj`` itself without a
    process group.

    Every rank of ``group`` must call it (it is a collective); what the other ranks pass is
    ignored.

    Example:
        >>> broadcast_object({"timestamp": "20240101_120000"})
        {'timestamp': '20240101_120000'}
    """
    if not is_active(group):
        return obj
    box = [obj if get_rank(group) == src else None]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def all_gather_object(obj: Any, group: dist.ProcessGroup | None = None) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank; ``[obj]`` without a process group.

    Example:
        >>> all_gather_object(3)
        [3]
    """
    if not is_active(group):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def sync_random_seed(group: dist.ProcessGroup | None = None) -> int:
    """A random seed in ``[0, 2**31)`` drawn on rank 0 and shared by every rank (mmengine's
    ``sync_random_seed``: drawn with ``numpy.random.randint(2**31)``).

    Example:
        >>> 0 <= sync_random_seed() < 2**31
        True
    """
    try:
        import numpy as np

        seed = int(np.random.randint(2**31))
    except ImportError:  # pragma: no cover - numpy ships with torch's usual installs
        import random

        seed = random.randrange(2**31)
    return int(broadcast_object(seed, src=0, group=group))


def synced_timestamp() -> str:
    """``time.strftime("%Y%m%d_%H%M%S")`` of rank 0's clock, on every rank (a collective
    under a process group, as mmengine's runner broadcasts its timestamp).

    Example:
        >>> len(synced_timestamp())
        15
    """
    return str(broadcast_object(time.strftime("%Y%m%d_%H%M%S", time.localtime())))


# --------------------------------------------------------------------------------------------
# Failing fast


def _store() -> Any:
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


def abort_on_failure(exc: BaseException, group_timeout: float = 5.0) -> None:
    """Make this rank's failure visible to its peers and stop them from waiting on it.

    Writes ``exc``'s message into the process group's store, adds a note to ``exc`` with
    the error of the rank that failed first if another rank reported one earlier (on
    Python >= 3.11; logged otherwise), then aborts the default process group (or destroys
    it where abort is unavailable), so that a peer blocked in a collective with this rank
    fails at once. Does nothing without a process group of several ranks. Never raises.

    Args:
        exc: the exception this rank is failing with.
        group_timeout: seconds the store may take to answer (it may be gone already).

    Example:
        >>> abort_on_failure(RuntimeError("boom"))  # no process group: nothing happens
    """
    if not is_active(None):
        return
    rank = get_rank()
    store = _store()
    reports: list[tuple[float, int, str]] = []
    if store is not None:
        try:
            store.set_timeout(datetime.timedelta(seconds=group_timeout))
            for peer in range(get_world_size()):
                key = f"{_FAILURE_KEY}{peer}"
                if peer != rank and store.check([key]):
                    stamp, _, text = store.get(key).decode(errors="replace").partition("|")
                    reports.append((float(stamp), peer, text))
            message = f"{type(exc).__name__}: {exc}"
            store.set(f"{_FAILURE_KEY}{rank}", f"{time.time()}|{message}")
        except Exception as e:  # the store may live in a rank that is gone
            logger.debug(f"could not use the process group's store: {e}")
    if reports:
        _, peer, text = min(reports)
        note = f"rank {rank} stopped after rank {peer} failed first with: {text}"
        if hasattr(exc, "add_note"):
            exc.add_note(note)
        else:  # pragma: no cover - Python 3.10
            logger.error(note)
    try:
        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
        if abort is not None:
            abort()
        else:  # pragma: no cover - older torch
            dist.destroy_process_group()
    except Exception as e:
        logger.debug(f"aborting the process group failed: {e}")
