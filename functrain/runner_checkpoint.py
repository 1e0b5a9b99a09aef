"""How a :class:`~functrain.runner.Runner` writes, resumes from and loads checkpoints.

A checkpoint is a dict written atomically by rank 0: ``format``, ``version``, ``meta`` (the
finished ``epoch`` / ``iter`` as mmengine counts them, experiment name, time, torch version,
world size), ``state`` (the :class:`~functrain.state.TrainState`), ``loop`` (this rank's
:class:`~functrain.data_position.DataPosition`) and, under a process group of several ranks,
``loop_per_rank`` (every rank's position, so that each resumes where it stood).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from functrain import ranks as comm  # rank queries and object collectives
from functrain.checkpoint import (
    FORMAT,
    VERSION,
    atomic_save,
    decode,
    encode,
    find_latest_checkpoint,
    load_checkpoint,
    restore_state,
    state_to_dict,
)
from functrain.data_position import DataPosition, epoch_sampler
from functrain.state import TrainState

if TYPE_CHECKING:
    from functrain.runner import Runner

__all__ = ["find_latest_checkpoint", "load_weights", "resume", "resume_source", "write"]


def phase(events: Sequence[str]) -> str:
    """Which training event a checkpoint is taken in: ``"iter_end"`` / ``"epoch_end"``
    (a validation may be due right after it: resuming runs that check), or ``""``."""
    if "after_train_iter" in events:
        return "iter_end"
    if "after_train_epoch" in events:
        return "epoch_end"
    return ""


def completed_counters(events: Sequence[str], state: TrainState) -> tuple[int, int]:
    """(epochs, iterations) finished, as mmengine's ``save_checkpoint`` counts them."""
    if "after_train_iter" in events:
        return state.epoch, state.iteration + 1
    if "after_train_epoch" in events:
        return state.epoch + 1, state.iteration
    return state.epoch, state.iteration


def write(
    runner: Runner,
    path: Path,
    state: TrainState,
    save_optimizer: bool,
    meta: Mapping[str, Any] | None,
    on_saved: Callable[[], None] | None = None,
) -> None:
    """Write ``state`` to ``path`` (see :meth:`Runner.save_checkpoint`; a collective)."""
    epoch, iteration = completed_counters(runner._events, state)
    rng = runner.rng_guard.training_rng()
    state = state.replace(epoch=epoch, iteration=iteration, rng=rng)
    if runner.state_for_checkpoint is not None:
        state = runner.state_for_checkpoint(state)
    position = runner.data.position(runner.train_dataloader, rng, phase(runner._events))
    world_size = comm.get_world_size()
    # Each rank's own data position and generators, so that every rank resumes where it
    # stood (rank 0's alone would replay rank 0's random streams on every rank).
    positions = comm.all_gather_object(position) if world_size > 1 else None
    if not comm.is_main_process():
        _wait_for_write(path)
        return
    failure: str | None = None
    try:
        checkpoint: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "meta": {
                "epoch": epoch,
                "iter": iteration,
                "experiment_name": runner.experiment_name,
                "time": time.strftime("%Y%m%d_%H%M%S", time.localtime()),
                "torch_version": str(torch.__version__),
                "world_size": world_size,
                **dict(meta or {}),
            },
            "state": state_to_dict(state, save_optimizer=save_optimizer),
            "loop": encode(position) if position is not None else None,
        }
        if positions is not None:
            checkpoint["loop_per_rank"] = [encode(p) if p is not None else None for p in positions]
        runner.call("before_save_checkpoint", checkpoint=checkpoint)
        atomic_save(checkpoint, path)
        if on_saved is not None:
            on_saved()
    except BaseException as e:
        failure = f"{type(e).__name__}: {e}"
        if world_size > 1:
            comm.broadcast_object(failure)
        raise
    if world_size > 1:
        # The other ranks wait here until the file is complete (and learn if it failed).
        comm.broadcast_object(failure)


def _wait_for_write(path: Path) -> None:
    failure = comm.broadcast_object(None)
    if failure is not None:
        raise RuntimeError(f"rank 0 failed to write checkpoint {str(path)!r}: {failure}")


def resume_source(
    resume: bool | str | os.PathLike[str],
    load_from: str | os.PathLike[str] | None,
    work_dir: Callable[[], Path],
) -> str | os.PathLike[str] | None:
    """The checkpoint to resume from (mmengine's rules), agreed on by every rank."""
    source: str | os.PathLike[str] | None = None
    if resume is True:
        source = load_from if load_from is not None else find_latest_checkpoint(work_dir())
    elif resume:
        source = resume
    if comm.get_world_size() > 1:
        # Rank 0's view of work_dir/last_checkpoint decides for every rank.
        source = comm.broadcast_object(source)
    return source


def resume(runner: Runner, path: str | os.PathLike[str]) -> None:
    """Restore ``runner``'s whole state and data position from ``path``."""
    ckpt = load_checkpoint(path)
    runner.call("after_load_checkpoint", checkpoint=ckpt)
    runner.state = _restore(runner, ckpt, path, load_optimizer=True, strict=True)
    position = _rank_position(ckpt, str(path))
    if position is not None and position.rng is not None:
        runner.state = runner.state.replace(rng=position.rng)
    seed = position.sampler_seed if position is not None else None
    sampler = epoch_sampler(runner.train_dataloader)
    if seed is not None and sampler is not None and getattr(sampler, "seed", None) != seed:
        # A sampler built with seed=None drew a new seed in this process; the order of
        # the interrupted run needs the old one.
        runner.logger.info(f"resume: sampler seed {sampler.seed} -> {seed} (checkpoint's)")
        if hasattr(sampler, "load_state_dict"):
            sampler.load_state_dict({**sampler.state_dict(), "seed": seed})
        else:
            sampler.seed = seed
    runner.data.resume_at(position)
    runner.logger.info(f"resumed from {path}: epoch {runner.epoch}, iter {runner.iter}")


def load_weights(runner: Runner, path: str | os.PathLike[str], strict: bool) -> None:
    """Load the params and buffers of the checkpoint at ``path`` into ``runner.state``."""
    ckpt = load_checkpoint(path)
    runner.call("after_load_checkpoint", checkpoint=ckpt)
    runner.state = _restore(runner, ckpt, path, load_optimizer=False, strict=strict)
    runner.logger.info(f"loaded checkpoint {path}")


def _restore(
    runner: Runner, ckpt: Mapping[str, Any], path: Any, *, load_optimizer: bool, strict: bool
) -> TrainState:
    current = runner.state
    template = current
    if runner.state_for_checkpoint is not None:
        template = runner.state_for_checkpoint(current)
    loaded = restore_state(ckpt, template, path=path, load_optimizer=load_optimizer, strict=strict)
    if runner.state_from_checkpoint is not None:
        loaded = runner.state_from_checkpoint(loaded, current)
    return loaded


def _rank_position(ckpt: Mapping[str, Any], where: str) -> DataPosition | None:
    """This rank's data position in ``ckpt`` (rank 0's when the number of ranks changed,
    with a warning: the per-rank shares of the data then differ anyway)."""
    loop = ckpt.get("loop")
    per_rank = ckpt.get("loop_per_rank")
    world_size, rank = comm.get_world_size(), comm.get_rank()
    if per_rank is not None and len(per_rank) == world_size:
        loop = per_rank[rank]
    elif per_rank is not None or world_size > 1:
        saved = len(per_rank) if per_rank is not None else 1
        warnings.warn(
            f"resume: {where} was written by {saved} process(es), this run has "
            f"{world_size}; every rank continues from rank 0's data position and random "
            "state, so the data order after resuming differs from the interrupted run",
            stacklevel=4,
        )
    position = decode(loop, where) if loop is not None else None
    if position is not None and not isinstance(position, DataPosition):
        raise TypeError(f"{where}: bad 'loop' entry in the checkpoint")
    return position
