"""Training, validation and test loops with mmengine's semantics, and the runner that drives them.

::

    runner = Runner(
        state=TrainState.create(model, tx),
        train_step=make_train_step(model, loss_fn, tx),
        train_loop=EpochBasedTrainLoop(train_loader, max_epochs=12, val_interval=5,
                                       dynamic_intervals=[(11, 2)]),
        val_loop=ValLoop(val_loader, make_eval_step(model, metrics_fn)),
        callbacks=[EarlyStopping(monitor="acc")],
        work_dir="work_dirs/exp1",
    )
    state = runner.train()          # validates after epochs 5, 10, 12

The runner holds the current :class:`~functrain.state.TrainState` and replaces it after each
step and after every callback that returns one. The order of events, the counters the
callbacks see (``runner.iter`` is the index of the running iteration in
``before/after_train_iter``; ``runner.epoch`` is not yet incremented in
``after_train_epoch``), when validation runs (``val_begin``, ``val_interval``, after the last
epoch always, ``dynamic_intervals`` by mmengine's bisect rule) and how early stopping finishes
the current epoch and its validation are those of mmengine 0.10.7's ``Runner``,
``EpochBasedTrainLoop``, ``IterBasedTrainLoop``, ``ValLoop`` and ``TestLoop`` (the tests
record mmengine's own event sequence and compare).

Differences from mmengine, on purpose:

- a resumed run continues from the exact batch where the checkpoint was taken (the data order
  is replayed from saved generator states and the consumed batches skipped; mmengine's epoch
  loop restarts the epoch), and when the checkpoint was taken at the end of an iteration or
  epoch, the validation check that follows it is run first (a crash may have happened before
  it). A run stopped after iteration k and resumed ends bitwise where the uninterrupted run
  ends (tested on CPU for both loops);
- a checkpoint requested by a callback is written once all callbacks of that event have run,
  so it holds their updates (mmengine writes it inside the checkpoint hook);
- validation and test run with the random generators saved and restored around them, so that
  how often one validates does not change the training run's random stream;
- the iteration-based loop does not sleep 2 s when it restarts its data iterator.

Under ``torch.distributed`` (see :mod:`functrain.distributed.comm`) every rank runs the same
runner; only rank 0 writes (text log, JSON scalars, TensorBoard, progress bar, plots,
checkpoints), the other ranks log warnings and errors to the terminal only. Checkpoints hold
every rank's data position and random generator states, so all ranks resume from one file
where each of them stood; a rank that raises aborts the process group so that the others
fail at once instead of waiting in a collective (``abort_on_error``).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from functrain import ranks as comm  # rank queries and object collectives
from functrain.callbacks.base import Callback, CallbackList, ScalarHistory
from functrain.checkpoint import (
    FORMAT,
    VERSION,
    atomic_save,
    decode,
    encode,
    load_checkpoint,
    restore_state,
    state_to_dict,
)
from functrain.state import RngState, TrainState, capture_rng, restore_rng

__all__ = [
    "EpochBasedTrainLoop",
    "Evaluator",
    "IterBasedTrainLoop",
    "MeanMetrics",
    "Runner",
    "TestLoop",
    "ValLoop",
    "default_callbacks",
    "find_latest_checkpoint",
]


def calc_dynamic_intervals(
    start_interval: int, dynamic_interval_list: Sequence[tuple[int, int]] | None = None
) -> tuple[list[int], list[int]]:
    """mmengine's ``calc_dynamic_intervals``: milestones ``[0, m1, ...]`` and intervals."""
    if dynamic_interval_list is None:
        return [0], [start_interval]
    milestones, intervals = [0], [start_interval]
    for item in dynamic_interval_list:
        if not (isinstance(item, Sequence) and len(item) == 2):
            raise ValueError(
                f"dynamic_intervals must be a list of (milestone, interval) pairs, got {item!r}"
            )
        milestones.append(int(item[0]))
        intervals.append(int(item[1]))
    return milestones, intervals


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Evaluators


class Evaluator:
    """What a validation / test loop needs from an evaluator (a protocol; subclassing is
    optional): ``reset()`` before a run, ``process(outputs, data_batch)`` for each batch
    (``outputs`` is the eval step's return value) and ``evaluate() -> {name: float}``."""

    def reset(self) -> None:  # pragma: no cover - protocol
        pass

    def process(self, outputs: Any, data_batch: Any) -> None:  # pragma: no cover - protocol
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:  # pragma: no cover - protocol
        raise NotImplementedError


class MeanMetrics(Evaluator):
    """Averages the eval step's ``{name: tensor}`` outputs over the whole run.

    A 1-d (or larger) tensor holds per-sample values, averaged over all samples (exact
    dataset accuracy with ``{"acc": (pred == y).float()}``); a 0-d tensor is a per-batch value,
    averaged over batches. The sums stay on the device; ``evaluate`` reads them with one host
    transfer.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}

    def process(self, outputs: Mapping[str, Any], data_batch: Any = None) -> None:
        if not isinstance(outputs, Mapping):
            raise TypeError(
                "MeanMetrics expects the eval step to return a {name: tensor} dict, got "
                f"{type(outputs).__name__}"
            )
        for key, value in outputs.items():
            value = torch.as_tensor(value).detach()
            total = value.double().sum() if value.dim() else value.double()
            count = value.numel() if value.dim() else 1
            self._sums[key] = total if key not in self._sums else self._sums[key] + total
            self._counts[key] = self._counts.get(key, 0) + count

    def evaluate(self) -> dict[str, float]:
        """The means; under a process group of several ranks, over every rank's samples
        (sums and counts are gathered, so a rank may have seen no batch at all). Samples a
        padding sampler (``DefaultSampler(round_up=True)``) repeats count twice; validate
        with ``round_up=False`` for exact dataset means."""
        values = ScalarHistory.read(self._sums)
        parts = {k: (v, self._counts[k]) for k, v in values.items()}
        if comm.get_world_size() > 1:
            sums: dict[str, float] = {}
            counts: dict[str, int] = {}
            for rank_parts in comm.all_gather_object(parts):
                for k, (total, count) in rank_parts.items():
                    sums[k] = sums.get(k, 0.0) + total
                    counts[k] = counts.get(k, 0) + count
            parts = {k: (sums[k], counts[k]) for k in sums}
        return {k: total / count for k, (total, count) in parts.items()}


# --------------------------------------------------------------------------------------------
# Data position (resume from the exact batch)


@attrs.frozen
class DataPosition:
    """Where the training data stood: pass number, batches consumed in the pass, and the
    generator states needed to replay the pass's order."""

    pass_index: int
    consumed: int
    pass_rng: RngState | None = None
    pass_generators: tuple[bytes, ...] | None = None
    rng: RngState | None = None
    generators: tuple[bytes, ...] | None = None
    phase: str = ""
    sampler_seed: int | None = None


def _loader_generators(loader: Any) -> list[torch.Generator]:
    found: list[torch.Generator] = []
    candidates = [
        getattr(loader, "generator", None),
        getattr(getattr(loader, "sampler", None), "generator", None),
        getattr(
            getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator", None
        ),
    ]
    for g in candidates:
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


def _generator_states(loader: Any) -> tuple[bytes, ...]:
    return tuple(bytes(g.get_state().numpy().tobytes()) for g in _loader_generators(loader))


def _set_generator_states(loader: Any, states: tuple[bytes, ...] | None) -> None:
    if not states:
        return
    gens = _loader_generators(loader)
    if len(gens) != len(states):
        warnings.warn(
            "resume: the training dataloader's generators differ from the checkpoint's; the "
            "data order after resuming may differ from the interrupted run",
            stacklevel=3,
        )
        return
    for g, s in zip(gens, states, strict=True):
        g.set_state(torch.frombuffer(bytearray(s), dtype=torch.uint8).clone())


def _epoch_sampler(loader: Any) -> Any:
    """The loader's sampler that has ``set_epoch`` (its ``sampler`` or its batch sampler's
    ``sampler``, where mmengine's ``DistSamplerSeedHook`` looks), or ``None``."""
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and hasattr(sampler, "set_epoch"):
        return sampler
    inner = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    if inner is not None and hasattr(inner, "set_epoch"):
        return inner
    return None


def _set_sampler_epoch(loader: Any, epoch: int) -> None:
    """``set_epoch`` on the loader's sampler, as mmengine's samplers and seed hook do."""
    sampler = _epoch_sampler(loader)
    if sampler is not None:
        sampler.set_epoch(epoch)


def _sampler_seed(loader: Any) -> int | None:
    """The integer ``seed`` of the loader's seeded sampler (functrain's and mmengine's
    ``DefaultSampler`` / ``InfiniteSampler``, torch's ``DistributedSampler``): with
    ``seed=None`` it was drawn at random, so a checkpoint keeps it to replay the order."""
    seed = getattr(_epoch_sampler(loader), "seed", None)
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


class _Pass:
    __slots__ = ("consumed", "finished", "index", "rng", "generators")

    def __init__(self, index: int, consumed: int, rng: Any, generators: Any) -> None:
        self.index = index
        self.consumed = consumed
        self.rng = rng
        self.generators = generators
        self.finished = False


# --------------------------------------------------------------------------------------------
# Loops


class _TrainLoop:
    dataloader: Any
    stop_training: bool
    max_epochs: int
    max_iters: int
    val_begin: int
    val_interval: int
    dynamic_milestones: list[int]
    dynamic_intervals: list[int]
    by_epoch: bool

    def _run_iter(self, runner: Runner, batch_idx: int, data_batch: Any) -> None:
        runner.call("before_train_iter", batch_idx=batch_idx, data_batch=data_batch)
        state, outputs = runner.train_step(runner.state, data_batch)
        if not isinstance(state, TrainState):
            raise TypeError(
                f"the train step must return (TrainState, metrics), got {type(state).__name__}"
            )
        runner.state = state
        history = runner.history
        for key, value in outputs.items():
            history.update("train/" + key, value)
        runner.call("after_train_iter", batch_idx=batch_idx, data_batch=data_batch, outputs=outputs)
        runner.state = runner.state.replace(iteration=runner.state.iteration + 1)

    def _progress(self, runner: Runner) -> tuple[int, int]:
        """(finished epochs or iterations, their maximum): what validation is counted in."""
        raise NotImplementedError

    def _maybe_validate(self, runner: Runner) -> None:
        done, total = self._progress(runner)
        # mmengine's rule: the interval in force is the one of the last milestone <= done + 1.
        self.val_interval = self.dynamic_intervals[
            bisect.bisect(self.dynamic_milestones, done + 1) - 1
        ]
        if (
            runner.val_loop is not None
            and done >= self.val_begin
            and (done % self.val_interval == 0 or done == total)
        ):
            runner.val_loop.run(runner)


class EpochBasedTrainLoop(_TrainLoop):
    """mmengine's ``EpochBasedTrainLoop``.

    Args:
        dataloader: a re-iterable of batches with ``len`` (a ``torch.utils.data.DataLoader``).
        max_epochs: total epochs.
        val_begin: first epoch (1-based, counting finished epochs) after which to validate.
        val_interval: validate every this many epochs (and after the last epoch).
        dynamic_intervals: ``[(milestone, interval), ...]``: from epoch ``milestone`` on
            the interval is ``interval`` (mmengine's rule: the interval in force after epoch
            ``e`` finishes is the one of the last milestone ``<= e + 1``).
    """

    by_epoch = True

    def __init__(
        self,
        dataloader: Iterable[Any],
        max_epochs: int,
        val_begin: int = 1,
        val_interval: int = 1,
        dynamic_intervals: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        sampler = _epoch_sampler(dataloader)
        if type(sampler).__name__ == "InfiniteSampler":
            raise ValueError(
                "EpochBasedTrainLoop: the dataloader's sampler is an InfiniteSampler, whose "
                "epochs never end; use IterBasedTrainLoop with it, or DefaultSampler here"
            )
        self.dataloader = dataloader
        self.max_epochs = _positive_int("max_epochs", max_epochs, minimum=0)
        self.max_iters = self.max_epochs * len(dataloader)  # type: ignore[arg-type]
        self.val_begin = val_begin
        self.val_interval = val_interval
        self.stop_training = False
        self.dynamic_milestones, self.dynamic_intervals = calc_dynamic_intervals(
            val_interval, dynamic_intervals
        )

    def run(self, runner: Runner) -> TrainState:
        runner.call("before_train")
        if runner._take_resume_phase() == "epoch_end" and runner.state.epoch > 0:
            # The checkpoint was taken at the end of an epoch, before the validation that
            # follows it: run that check now, so that the resumed run continues exactly.
            self._maybe_validate(runner)
        while runner.state.epoch < self.max_epochs and not self.stop_training:
            self.run_epoch(runner)
            self._maybe_validate(runner)
        runner.call("after_train")
        return runner.state

    def _progress(self, runner: Runner) -> tuple[int, int]:
        return runner.state.epoch, self.max_epochs

    def run_epoch(self, runner: Runner) -> None:
        runner.call("before_train_epoch")
        iterator, start = runner._open_pass(self.dataloader, runner.state.epoch)
        data_pass = runner._pass
        for idx, data_batch in enumerate(iterator, start):
            data_pass.consumed = idx + 1
            self._run_iter(runner, idx, data_batch)
        data_pass.finished = True
        runner.call("after_train_epoch")
        runner.state = runner.state.replace(epoch=runner.state.epoch + 1)


class IterBasedTrainLoop(_TrainLoop):
    """mmengine's ``IterBasedTrainLoop``: the whole run is one "epoch" of ``max_iters``
    iterations; the data iterator is restarted when exhausted, with the sampler's epoch
    advanced (``set_epoch``), and validation follows ``val_begin`` / ``val_interval`` /
    ``dynamic_intervals`` counted in iterations.
    """

    by_epoch = False

    def __init__(
        self,
        dataloader: Iterable[Any],
        max_iters: int,
        val_begin: int = 1,
        val_interval: int = 1000,
        dynamic_intervals: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        self.dataloader = dataloader
        self.max_iters = _positive_int("max_iters", max_iters, minimum=0)
        self.max_epochs = 1
        self.val_begin = val_begin
        self.val_interval = val_interval
        self.stop_training = False
        self.dynamic_milestones, self.dynamic_intervals = calc_dynamic_intervals(
            val_interval, dynamic_intervals
        )

    def run(self, runner: Runner) -> TrainState:
        runner.call("before_train")
        runner.call("before_train_epoch")
        stream = _InfiniteStream(runner, self.dataloader)
        if runner._take_resume_phase() == "iter_end" and runner.state.iteration > 0:
            # Taken after an iteration, before the validation check that follows it.
            self._maybe_validate(runner)
        while runner.state.iteration < self.max_iters and not self.stop_training:
            data_batch = next(stream)
            self._run_iter(runner, runner.state.iteration, data_batch)
            self._maybe_validate(runner)
        runner.call("after_train_epoch")
        runner.call("after_train")
        return runner.state

    def _progress(self, runner: Runner) -> tuple[int, int]:
        return runner.state.iteration, self.max_iters


class _InfiniteStream:
    """Batches forever: restarts the loader on exhaustion with the sampler's epoch advanced
    (mmengine's ``_InfiniteDataloaderIterator``), opening each pass through the runner so
    that resume can replay the order."""

    def __init__(self, runner: Runner, loader: Iterable[Any]) -> None:
        self.runner = runner
        self.loader = loader
        pending = runner._pending_position
        index = pending.pass_index if pending is not None else 0
        self._open(index)

    def _open(self, index: int) -> None:
        if index > 0:
            _set_sampler_epoch(self.loader, index)
        self.iterator, _ = self.runner._open_pass(self.loader, index)

    def __next__(self) -> Any:
        data_pass = self.runner._pass
        try:
            batch = next(self.iterator)
        except StopIteration:
            self._open(data_pass.index + 1)
            data_pass = self.runner._pass
            try:
                batch = next(self.iterator)
            except StopIteration:
                raise RuntimeError("the training dataloader yields no batches") from None
        data_pass.consumed += 1
        return batch


class _EvalLoop:
    mode = "val"

    def __init__(
        self,
        dataloader: Iterable[Any],
        eval_step: Callable[[TrainState, Any], Any],
        evaluator: Any | None = None,
    ) -> None:
        self.dataloader = dataloader
        self.eval_step = eval_step
        self.evaluator = evaluator if evaluator is not None else MeanMetrics()

    def run(self, runner: Runner) -> dict[str, float]:
        mode = self.mode
        previous_mode = runner.mode
        runner.mode = mode
        try:
            with runner._rng_guard():
                runner.call(f"before_{mode}")
                runner.call(f"before_{mode}_epoch")
                if hasattr(self.evaluator, "reset"):
                    self.evaluator.reset()
                for idx, data_batch in enumerate(self.dataloader):
                    runner.call(f"before_{mode}_iter", batch_idx=idx, data_batch=data_batch)
                    outputs = self.eval_step(runner.state, data_batch)
                    self.evaluator.process(outputs, data_batch)
                    runner.call(
                        f"after_{mode}_iter", batch_idx=idx, data_batch=data_batch, outputs=outputs
                    )
                metrics = dict(self.evaluator.evaluate())
                if comm.get_world_size() > 1:
                    # What callbacks decide from the metrics (best checkpoint, early stop,
                    # plateau) must agree on every rank, or the ranks part ways and hang:
                    # all take rank 0's, as mmengine's evaluator broadcasts them.
                    metrics = comm.broadcast_object(metrics)
                runner.call(f"after_{mode}_epoch", metrics=metrics)
                runner.call(f"after_{mode}")
        finally:
            runner.mode = previous_mode
        if mode == "val":
            runner.last_val_metrics = metrics
        return metrics


class ValLoop(_EvalLoop):
    """mmengine's ``ValLoop``: ``before_val``, ``before_val_epoch``, per batch
    ``before_val_iter`` / eval step / ``evaluator.process`` / ``after_val_iter``, then
    ``metrics = evaluator.evaluate()``, ``after_val_epoch(metrics=...)``, ``after_val``.

    Args:
        dataloader: the validation batches.
        eval_step: ``eval_step(state, batch) -> outputs`` (see
            :func:`functrain.step.make_eval_step`).
        evaluator: an :class:`Evaluator`; default :class:`MeanMetrics`.
    """

    mode = "val"


class TestLoop(_EvalLoop):
    """mmengine's ``TestLoop``: as :class:`ValLoop` with ``test`` events."""

    mode = "test"


# --------------------------------------------------------------------------------------------
# The runner


def default_callbacks() -> dict[str, Callback]:
    """mmengine's default hooks as callbacks: ``timer`` (:class:`IterTimer`),
    ``sampler_seed`` (:class:`SamplerSeed`), ``logger`` (:class:`Logger`, interval 10) and
    ``checkpoint`` (:class:`CheckpointCallback`, interval 1). Schedules live in the optimizer
    state, so there is no ``param_scheduler`` callback; ``runtime_info`` is the runner itself.
    """
    from functrain.callbacks import CheckpointCallback, IterTimer, Logger, SamplerSeed

    return {
        "timer": IterTimer(),
        "sampler_seed": SamplerSeed(),
        "logger": Logger(),
        "checkpoint": CheckpointCallback(interval=1),
    }


_make_default_callbacks = default_callbacks


def find_latest_checkpoint(work_dir: str | os.PathLike[str]) -> str | None:
    """The path in ``work_dir/last_checkpoint`` (written by the checkpoint callback), if the
    pointer and the file it names exist."""
    pointer = Path(work_dir) / "last_checkpoint"
    if not pointer.is_file():
        return None
    target = pointer.read_text().strip()
    return target if target and Path(target).is_file() else None


class Runner:
    """Drives a train loop, a validation loop and a test loop, and calls the callbacks.

    Args:
        state: the initial :class:`~functrain.state.TrainState`.
        train_step: ``step(state, batch) -> (state, metrics)`` (see :mod:`functrain.step`).
        train_loop: an :class:`EpochBasedTrainLoop` or :class:`IterBasedTrainLoop`.
        val_loop: a :class:`ValLoop`, run by the train loop at its intervals and by
            :meth:`val`.
        test_loop: a :class:`TestLoop`, run by :meth:`test`.
        callbacks: user callbacks, registered after the default ones.
        default_callbacks: mmengine's ``default_hooks``: a dict merged into
            :func:`default_callbacks` (a ``None`` value removes that default, a callback
            replaces it); ``False`` registers none.
        work_dir: where logs and checkpoints go (default: a new temporary directory).
        resume: ``True`` resumes from ``work_dir/last_checkpoint`` when it exists (or from
            ``load_from``); a path resumes from that file. Resuming restores the whole state
            (params, buffers, optimizer state, counters, callback state, RNG) and the data
            position.
        load_from: a checkpoint whose params and buffers are loaded before running
            (mmengine's ``load_from``; no optimizer state, counters start at the state's).
        experiment_name: shown in logs (default: the timestamp).
        log_level: level of the runner's terminal logger (the text log file in ``log_dir``
            always gets INFO and above). Ranks other than 0 show warnings and errors only
            and write no log file.
        state_for_checkpoint: ``fn(state) -> state`` giving the state to write, called on
            every rank before each save (it may communicate: a sharded optimizer state
            gathers its shards here; only rank 0's result is written). Default: the state
            as it is, which is right when every rank holds the same (replicated) state.
        state_from_checkpoint: ``fn(loaded, current) -> state`` turning the state read from
            a checkpoint (shaped like ``state_for_checkpoint(current)``) into the one this
            rank trains with (re-sharding it, say); called on every rank after loading.
        abort_on_error: under a process group of several ranks, when the run raises, write
            the error where the other ranks can read it and abort the process group, so
            that ranks waiting in a collective fail at once (with a note naming the rank
            that failed first) rather than after the collective timeout. Set ``False`` to
            keep the process group usable after an exception.

    Under ``torch.distributed`` every rank builds the same runner (the constructor
    broadcasts rank 0's timestamp, and its temporary ``work_dir`` when none is given) and
    calls ``train`` / ``val`` / ``test``. Only rank 0 writes files; a checkpoint save is a
    collective (every rank gathers its data position to rank 0, rank 0 writes, and all wait
    until the file is complete), and resuming reads the same file on every rank.

    Attributes a callback can use (mmengine names): ``epoch``, ``iter``, ``max_epochs``,
    ``max_iters``, ``train_loop``, ``val_loop``, ``test_loop``, ``train_dataloader``,
    ``val_dataloader``, ``test_dataloader``, ``work_dir``, ``log_dir``, ``timestamp``,
    ``logger``, ``history`` (the message hub), ``mode`` (``"train"``/``"val"``/``"test"``),
    ``stop_training`` (settable), ``state``, ``callbacks``, ``save_checkpoint``.
    """

    def __init__(
        self,
        *,
        state: TrainState,
        train_step: Callable[[TrainState, Any], tuple[TrainState, Mapping[str, Tensor]]]
        | None = None,
        train_loop: EpochBasedTrainLoop | IterBasedTrainLoop | None = None,
        val_loop: ValLoop | None = None,
        test_loop: TestLoop | None = None,
        callbacks: Iterable[Any] = (),
        default_callbacks: Mapping[str, Any] | bool | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        resume: bool | str | os.PathLike[str] = False,
        load_from: str | os.PathLike[str] | None = None,
        experiment_name: str | None = None,
        log_level: int | str = "INFO",
        state_for_checkpoint: Callable[[TrainState], TrainState] | None = None,
        state_from_checkpoint: Callable[[TrainState, TrainState], TrainState] | None = None,
        abort_on_error: bool = True,
    ) -> None:
        if not isinstance(state, TrainState):
            raise TypeError(f"state must be a TrainState, got {type(state).__name__}")
        if train_loop is not None and train_step is None:
            raise ValueError("a train_loop needs a train_step")
        self.state = state
        self.train_step = train_step
        self.train_loop = train_loop
        self.val_loop = val_loop
        self.test_loop = test_loop
        self._work_dir = Path(work_dir) if work_dir is not None else None
        if self._work_dir is None and comm.get_world_size() > 1:
            # Every rank must use rank 0's directory (a collective, so decided here).
            made = tempfile.mkdtemp(prefix="functrain-") if comm.is_main_process() else None
            self._work_dir = Path(comm.broadcast_object(made))
        self._resume = resume
        self._load_from = load_from
        self._loaded = False
        # Rank 0's clock names the log directory on every rank (mmengine broadcasts it).
        self.timestamp = comm.synced_timestamp()
        self.state_for_checkpoint = state_for_checkpoint
        self.state_from_checkpoint = state_from_checkpoint
        self.abort_on_error = abort_on_error
        self.experiment_name = experiment_name or self.timestamp
        self.log_level = log_level
        self.mode = "train"
        self.history = ScalarHistory()
        self.log_records: list[dict[str, Any]] = []
        self.last_val_metrics: dict[str, float] | None = None
        self._events: list[str] = []
        self._pass: _Pass | None = None
        self._pending_position: DataPosition | None = None
        self._guarded_rng: RngState | None = None
        self._pending_saves: list[tuple[int, Path, bool, Any, Callable[[], None] | None]] = []
        self._resume_phase = ""
        self._log_dir: Path | None = None
        self._log_dir_synced = False
        self._logger: logging.Logger | None = None

        self.callbacks = CallbackList()
        if default_callbacks is not False:
            defaults: dict[str, Any] = _make_default_callbacks()
            for name, cb in dict(default_callbacks or {}).items():
                if cb is None:
                    defaults.pop(name, None)
                else:
                    defaults[name] = cb
            for name, cb in defaults.items():
                self.callbacks.add(cb, name=name)
        for cb in callbacks:
            self.callbacks.add(cb)

    # -- mmengine-style read-only context ----------------------------------------------------
    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def iter(self) -> int:
        return self.state.iteration

    @property
    def max_epochs(self) -> int:
        return self.train_loop.max_epochs if self.train_loop is not None else 0

    @property
    def max_iters(self) -> int:
        return self.train_loop.max_iters if self.train_loop is not None else 0

    @property
    def train_dataloader(self) -> Any:
        return self.train_loop.dataloader if self.train_loop is not None else None

    @property
    def val_dataloader(self) -> Any:
        return self.val_loop.dataloader if self.val_loop is not None else None

    @property
    def test_dataloader(self) -> Any:
        return self.test_loop.dataloader if self.test_loop is not None else None

    @property
    def stop_training(self) -> bool:
        return bool(self.train_loop is not None and self.train_loop.stop_training)

    @stop_training.setter
    def stop_training(self, value: bool) -> None:
        if self.train_loop is None:
            raise RuntimeError("stop_training: there is no train loop")
        self.train_loop.stop_training = bool(value)

    @property
    def work_dir(self) -> Path:
        if self._work_dir is None:
            self._work_dir = Path(tempfile.mkdtemp(prefix="functrain-"))
        return self._work_dir

    @property
    def log_dir(self) -> Path:
        """``work_dir / timestamp`` (``_1``, ``_2``... appended if it exists), created on
        rank 0 only; every rank agrees on the name."""
        if self._log_dir is None:
            base = self.work_dir / self.timestamp
            candidate, n = base, 1
            if comm.is_main_process():
                while candidate.exists():
                    candidate, n = Path(f"{base}_{n}"), n + 1
                candidate.mkdir(parents=True)
            self._log_dir = candidate
        return self._log_dir

    def _sync_log_dir(self) -> None:
        """Give every rank rank 0's ``log_dir`` (a collective, at the start of a run)."""
        if self._log_dir_synced or comm.get_world_size() == 1:
            return
        self._log_dir = Path(comm.broadcast_object(str(self.log_dir)))
        self._log_dir_synced = True

    @property
    def logger(self) -> logging.Logger:
        if self._logger is None:
            logger = logging.getLogger(f"functrain.runner.{id(self):x}")
            level = (
                logging.getLevelName(self.log_level)
                if isinstance(self.log_level, str)
                else self.log_level
            )
            main = comm.is_main_process()
            if not main:
                # Other ranks: warnings and errors on the terminal, no file (mmengine shows
                # only errors there; a rank's own warnings, such as a resume mismatch, help).
                level = max(level, logging.WARNING)
            # The file always gets INFO lines; log_level quiets the terminal only.
            logger.setLevel(min(level, logging.INFO) if main else level)
            logger.propagate = False
            fmt = logging.Formatter("%(asctime)s - functrain - %(levelname)s - %(message)s")
            if not main:
                fmt = logging.Formatter(
                    f"%(asctime)s - functrain - rank {comm.get_rank()} - %(levelname)s - "
                    "%(message)s"
                )
            terminal = logging.StreamHandler(sys.stdout)
            terminal.setFormatter(fmt)
            terminal.setLevel(level)
            logger.addHandler(terminal)
            if main:
                file = logging.FileHandler(self.log_dir / f"{self.timestamp}.log")
                file.setFormatter(fmt)
                file.setLevel(min(level, logging.INFO))
                logger.addHandler(file)
            self._logger = logger
        return self._logger

    def _close_logger(self) -> None:
        if self._logger is not None:
            for handler in list(self._logger.handlers):
                handler.close()
                self._logger.removeHandler(handler)
            self._logger = None

    # -- callbacks ---------------------------------------------------------------------------
    def register_callback(
        self, callback: Any, priority: int | str | None = None, name: str | None = None
    ) -> None:
        """Add a callback (see :class:`~functrain.callbacks.base.CallbackList`)."""
        self.callbacks.add(callback, priority=priority, name=name)

    def call(self, event: str, **kwargs: Any) -> None:
        """Run every callback's ``event`` method in priority order, threading the state."""
        handlers = self.callbacks.handlers(event)
        if not handlers:
            return
        self._events.append(event)
        depth = len(self._events)
        try:
            for fn in handlers:
                out = fn(self, self.state, **kwargs)
                if out is not None:
                    if not isinstance(out, TrainState):
                        owner = getattr(fn, "__self__", fn)
                        raise TypeError(
                            f"{owner!r}.{event} returned a {type(out).__name__}; a callback "
                            "returns a new TrainState or None"
                        )
                    self.state = out
            # Checkpoints requested by this event's callbacks are written now, with the state
            # all of them left (a LOWEST-priority callback's update is not lost).
            pending = [item for item in self._pending_saves if item[0] == depth]
            if pending:
                self._pending_saves = [item for item in self._pending_saves if item[0] != depth]
                for _, path, save_optimizer, meta, on_saved in pending:
                    self._write_checkpoint(path, self.state, save_optimizer, meta, on_saved)
        finally:
            self._pending_saves = [item for item in self._pending_saves if item[0] != depth]
            self._events.pop()

    # -- running -------------------------------------------------------------------------------
    def train(self) -> TrainState:
        """Run the train loop (with validation); returns the final state."""
        if self.train_loop is None:
            raise RuntimeError("Runner.train needs a train_loop and a train_step")
        self.mode = "train"
        self.train_loop.stop_training = False
        try:
            self._sync_log_dir()
            self.call("before_run")
            self._load_or_resume()
            self.train_loop.run(self)
            self.call("after_run")
        except BaseException as e:
            self._on_error(e)
            raise
        finally:
            self._close_logger()
        return self.state

    def val(self) -> dict[str, float]:
        """Run the validation loop once (``before_run``, load, val, ``after_run``)."""
        return self._eval_only(self.val_loop, "val")

    def test(self) -> dict[str, float]:
        """Run the test loop once (``before_run``, load, test, ``after_run``)."""
        return self._eval_only(self.test_loop, "test")

    def _eval_only(self, loop: _EvalLoop | None, what: str) -> dict[str, float]:
        if loop is None:
            raise RuntimeError(f"Runner.{what} needs a {what}_loop")
        try:
            self._sync_log_dir()
            self.call("before_run")
            self._load_or_resume()
            metrics = loop.run(self)
            self.call("after_run")
        except BaseException as e:
            self._on_error(e)
            raise
        finally:
            self._close_logger()
        return metrics

    def _on_error(self, exc: BaseException) -> None:
        """Under a process group of several ranks, let the peers fail now (see
        ``abort_on_error``) instead of waiting for this rank in a collective."""
        if self.abort_on_error and comm.get_world_size() > 1:
            if self._logger is not None:
                self.logger.error(f"rank {comm.get_rank()} failed: {type(exc).__name__}: {exc}")
            comm.abort_on_failure(exc)

    @contextlib.contextmanager
    def _rng_guard(self) -> Iterator[None]:
        """Run a block (validation, test) without changing the training's random stream."""
        snapshot = capture_rng()
        outer, self._guarded_rng = self._guarded_rng, self._guarded_rng or snapshot
        try:
            yield
        finally:
            self._guarded_rng = outer
            restore_rng(snapshot)

    def _training_rng(self) -> RngState:
        """The generator state training continues with (outside any validation block)."""
        return self._guarded_rng if self._guarded_rng is not None else capture_rng()

    # -- data passes -------------------------------------------------------------------------
    def _open_pass(self, loader: Iterable[Any], index: int) -> tuple[Iterator[Any], int]:
        """Start pass ``index`` over ``loader``; on resume, replay it to the saved position."""
        pending, self._pending_position = self._pending_position, None
        if pending is not None and pending.consumed > 0 and pending.pass_index == index:
            if pending.pass_rng is not None:
                restore_rng(pending.pass_rng)
            _set_generator_states(loader, pending.pass_generators)
            iterator = iter(loader)
            if iterator is loader:
                warnings.warn(
                    "resume: the training data is a one-shot iterator, so the batches already "
                    f"used in this pass cannot be replayed; skipping {pending.consumed} "
                    "batches of whatever it yields now",
                    stacklevel=2,
                )
            skipped = 0
            for _ in range(pending.consumed):
                try:
                    next(iterator)
                except StopIteration:
                    break
                skipped += 1
            if pending.rng is not None:
                restore_rng(pending.rng)
            _set_generator_states(loader, pending.generators)
            self._pass = _Pass(index, skipped, pending.pass_rng, pending.pass_generators)
            return iterator, skipped
        if pending is not None:
            if pending.consumed > 0:
                warnings.warn(
                    f"resume: the checkpoint stopped in data pass {pending.pass_index} but the "
                    f"loop starts pass {index}; starting the pass from its first batch",
                    stacklevel=2,
                )
            if pending.rng is not None:
                restore_rng(pending.rng)
            _set_generator_states(loader, pending.generators)
        self._pass = _Pass(index, 0, capture_rng(), _generator_states(loader))
        return iter(loader), 0

    def _position(self) -> DataPosition | None:
        if self._pass is None:
            return self._pending_position
        p = self._pass
        loader = self.train_dataloader
        rng, gens = self._training_rng(), _generator_states(loader)
        phase, seed = self._phase(), _sampler_seed(loader)
        if p.finished:
            return DataPosition(p.index + 1, 0, None, None, rng, gens, phase, seed)
        return DataPosition(p.index, p.consumed, p.rng, p.generators, rng, gens, phase, seed)

    def _phase(self) -> str:
        """Which training event a checkpoint is taken in: ``"iter_end"`` / ``"epoch_end"``
        (a validation may be due right after it: resuming runs that check), or ``""``."""
        if "after_train_iter" in self._events:
            return "iter_end"
        if "after_train_epoch" in self._events:
            return "epoch_end"
        return ""

    def _take_resume_phase(self) -> str:
        phase, self._resume_phase = self._resume_phase, ""
        return phase

    # -- checkpoints -------------------------------------------------------------------------
    def _completed_counters(self, state: TrainState) -> tuple[int, int]:
        """(epochs, iterations) finished, as mmengine's ``save_checkpoint`` counts them."""
        if "after_train_iter" in self._events:
            return state.epoch, state.iteration + 1
        if "after_train_epoch" in self._events:
            return state.epoch + 1, state.iteration
        return state.epoch, state.iteration

    def save_checkpoint(
        self,
        path: str | os.PathLike[str],
        state: TrainState | None = None,
        *,
        save_optimizer: bool = True,
        meta: Mapping[str, Any] | None = None,
        on_saved: Callable[[], None] | None = None,
    ) -> Path:
        """Write a checkpoint of the state to ``path`` atomically.

        Called from a callback, the file is written once every callback of the current event
        has run, with the state they leave (``state`` is then ignored), and the counters
        written are those of finished work: inside ``after_train_iter`` the running
        iteration counts as done, inside ``after_train_epoch`` the running epoch, as in
        mmengine's ``save_checkpoint``. ``before_save_checkpoint(checkpoint=...)`` runs just
        before the write (callbacks may edit the dict); ``on_saved()`` right after it.
        Outside the events, ``state`` (default: the current one) is written immediately.

        Under a process group of several ranks this is a collective: every rank must call
        it (the callbacks do), ``state_for_checkpoint`` runs and the data positions are
        gathered on every rank, then rank 0 alone runs ``before_save_checkpoint``, writes
        the file and calls ``on_saved()``, and every rank returns only once the file is
        complete (an error while writing is raised on every rank).
        """
        path = Path(path)
        if self._events and self._events[-1] != "before_save_checkpoint":
            self._pending_saves.append((len(self._events), path, save_optimizer, meta, on_saved))
            return path
        self._write_checkpoint(
            path, self.state if state is None else state, save_optimizer, meta, on_saved
        )
        return path

    def _write_checkpoint(
        self,
        path: Path,
        state: TrainState,
        save_optimizer: bool,
        meta: Mapping[str, Any] | None,
        on_saved: Callable[[], None] | None = None,
    ) -> None:
        epoch, iteration = self._completed_counters(state)
        state = state.replace(epoch=epoch, iteration=iteration, rng=self._training_rng())
        if self.state_for_checkpoint is not None:
            state = self.state_for_checkpoint(state)
        position = self._position()
        world_size = comm.get_world_size()
        # Each rank's own data position and generators, so that every rank resumes where it
        # stood (rank 0's alone would replay rank 0's random streams on every rank).
        positions = comm.all_gather_object(position) if world_size > 1 else None
        if not comm.is_main_process():
            self._wait_for_write(path)
            return
        failure: str | None = None
        try:
            checkpoint: dict[str, Any] = {
                "format": FORMAT,
                "version": VERSION,
                "meta": {
                    "epoch": epoch,
                    "iter": iteration,
                    "experiment_name": self.experiment_name,
                    "time": time.strftime("%Y%m%d_%H%M%S", time.localtime()),
                    "torch_version": str(torch.__version__),
                    "world_size": world_size,
                    **dict(meta or {}),
                },
                "state": state_to_dict(state, save_optimizer=save_optimizer),
                "loop": encode(position) if position is not None else None,
            }
            if positions is not None:
                checkpoint["loop_per_rank"] = [
                    encode(p) if p is not None else None for p in positions
                ]
            self.call("before_save_checkpoint", checkpoint=checkpoint)
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

    def _wait_for_write(self, path: Path) -> None:
        failure = comm.broadcast_object(None)
        if failure is not None:
            raise RuntimeError(f"rank 0 failed to write checkpoint {str(path)!r}: {failure}")

    def _load_or_resume(self) -> None:
        if self._loaded:
            return
        resume_from: str | os.PathLike[str] | None = None
        if self._resume is True:
            resume_from = (
                self._load_from
                if self._load_from is not None
                else find_latest_checkpoint(self.work_dir)
            )
        elif self._resume:
            resume_from = self._resume  # type: ignore[assignment]
        if comm.get_world_size() > 1:
            # Rank 0's view of work_dir/last_checkpoint decides for every rank.
            resume_from = comm.broadcast_object(resume_from)
        if resume_from is not None:
            self.resume(resume_from)
        elif self._load_from is not None:
            self.load_checkpoint(self._load_from)
        self._loaded = True

    def resume(self, path: str | os.PathLike[str]) -> None:
        """Restore the whole state and the data position from the checkpoint at ``path``.

        Under a process group every rank calls it with the same file: the tensors go to
        the devices of this rank's state, and the data position (random generators,
        sampler seed) is this rank's own when the checkpoint was written by as many ranks.
        """
        ckpt = load_checkpoint(path)
        self.call("after_load_checkpoint", checkpoint=ckpt)
        self.state = self._restore(ckpt, path, load_optimizer=True, strict=True)
        position = self._rank_position(ckpt, str(path))
        if position is not None and position.rng is not None:
            self.state = self.state.replace(rng=position.rng)
        seed = position.sampler_seed if position is not None else None
        sampler = _epoch_sampler(self.train_dataloader)
        if seed is not None and sampler is not None and getattr(sampler, "seed", None) != seed:
            # A sampler built with seed=None drew a new seed in this process; the order of
            # the interrupted run needs the old one.
            self.logger.info(f"resume: sampler seed {sampler.seed} -> {seed} (checkpoint's)")
            if hasattr(sampler, "load_state_dict"):
                sampler.load_state_dict({**sampler.state_dict(), "seed": seed})
            else:
                sampler.seed = seed
        self._pending_position = position
        self._resume_phase = position.phase if position is not None else ""
        self._pass = None
        self._loaded = True
        self.logger.info(f"resumed from {path}: epoch {self.epoch}, iter {self.iter}")

    def _restore(
        self, ckpt: Mapping[str, Any], path: Any, *, load_optimizer: bool, strict: bool
    ) -> TrainState:
        current = self.state
        template = current
        if self.state_for_checkpoint is not None:
            template = self.state_for_checkpoint(current)
        loaded = restore_state(
            ckpt, template, path=path, load_optimizer=load_optimizer, strict=strict
        )
        if self.state_from_checkpoint is not None:
            loaded = self.state_from_checkpoint(loaded, current)
        return loaded

    def _rank_position(self, ckpt: Mapping[str, Any], where: str) -> DataPosition | None:
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
                stacklevel=3,
            )
        position = decode(loop, where) if loop is not None else None
        if position is not None and not isinstance(position, DataPosition):
            raise TypeError(f"{where}: bad 'loop' entry in the checkpoint")
        return position

    def load_checkpoint(self, path: str | os.PathLike[str], *, strict: bool = True) -> None:
        """Load the params and buffers of the checkpoint at ``path`` (no optimizer state)."""
        ckpt = load_checkpoint(path)
        self.call("after_load_checkpoint", checkpoint=ckpt)
        self.state = self._restore(ckpt, path, load_optimizer=False, strict=strict)
        self._loaded = True
        self.logger.info(f"loaded checkpoint {path}")
