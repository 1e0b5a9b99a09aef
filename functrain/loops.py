"""Training, validation and test loops with mmengine's semantics.

The :class:`~functrain.runner.Runner` that drives them lives in :mod:`functrain.runner` (and is
importable from here); evaluators in :mod:`functrain.evaluators`; where the data stands for
resuming in :mod:`functrain.data_position`; :mod:`functrain.runner` shows them used together.

The order of events, the counters the callbacks see (``runner.iter`` is the index of the
running iteration in ``before/after_train_iter``; ``runner.epoch`` is not yet incremented in
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
- the iteration-based loop does not sleep 2 s when it restarts its data iterator;
- a non-finite loss stops the run (the default ``terminate_on_nan`` callback,
  :class:`~functrain.callbacks.TerminateOnNaN`), and ``max_epochs=0`` / ``max_iters=0`` warn.

Under ``torch.distributed`` (see :mod:`functrain.distributed.comm`) every rank runs the same
runner; only rank 0 writes (text log, JSON scalars, TensorBoard, progress bar, plots,
checkpoints), the other ranks log warnings and errors to the terminal only. Checkpoints hold
every rank's data position and random generator states, so all ranks resume from one file
where each of them stood; a rank that raises aborts the process group so that the others
fail at once instead of waiting in a collective (``abort_on_error``).
"""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from functrain import ranks as comm  # rank queries and object collectives
from functrain.data_position import DataFeed, DataPosition, epoch_sampler, set_sampler_epoch
from functrain.evaluators import Evaluator, MeanMetrics
from functrain.state import TrainState

if TYPE_CHECKING:
    from functrain.runner import Runner

__all__ = [
    "DataPosition",
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
# Train loops


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

    def _setup(
        self,
        dataloader: Iterable[Any],
        key: str,
        maximum: int,
        val_begin: int,
        val_interval: int,
        dynamic_intervals: Sequence[tuple[int, int]] | None,
    ) -> int:
        """What both loops set up: the data, the validation schedule; returns ``maximum``
        (``max_epochs`` or ``max_iters``, called ``key``) checked."""
        self.dataloader = dataloader
        maximum = _positive_int(key, maximum, minimum=0)
        if maximum == 0:
            # Allowed (a run that only loads and validates, say), but usually a config typo:
            # a run that "succeeds" without one step must say so.
            warnings.warn(
                f"{type(self).__name__}: {key}=0, so train() runs no training step (no "
                f"validation, no checkpoint of trained weights); set train_cfg.{key} >= 1 "
                "to train",
                UserWarning,
                stacklevel=3,
            )
        self.val_begin = val_begin
        self.val_interval = val_interval
        self.stop_training = False
        self.dynamic_milestones, self.dynamic_intervals = calc_dynamic_intervals(
            val_interval, dynamic_intervals
        )
        return maximum

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
        sampler = epoch_sampler(dataloader)
        if type(sampler).__name__ == "InfiniteSampler":
            raise ValueError(
                "EpochBasedTrainLoop: the dataloader's sampler is an InfiniteSampler, whose "
                "epochs never end; use IterBasedTrainLoop with it, or DefaultSampler here"
            )
        self.max_epochs = self._setup(
            dataloader, "max_epochs", max_epochs, val_begin, val_interval, dynamic_intervals
        )
        self.max_iters = self.max_epochs * len(dataloader)  # type: ignore[arg-type]

    def run(self, runner: Runner) -> TrainState:
        runner.call("before_train")
        if runner.data.take_resume_phase() == "epoch_end" and runner.state.epoch > 0:
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
        iterator, data_pass = runner.data.open_pass(self.dataloader, runner.state.epoch)
        for idx, data_batch in enumerate(iterator, data_pass.consumed):
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
        self.max_iters = self._setup(
            dataloader, "max_iters", max_iters, val_begin, val_interval, dynamic_intervals
        )
        self.max_epochs = 1

    def run(self, runner: Runner) -> TrainState:
        runner.call("before_train")
        runner.call("before_train_epoch")
        stream = _InfiniteStream(runner.data, self.dataloader)
        if runner.data.take_resume_phase() == "iter_end" and runner.state.iteration > 0:
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
    (mmengine's ``_InfiniteDataloaderIterator``), opening each pass through the runner's
    :class:`~functrain.data_position.DataFeed` so that resume can replay the order."""

    def __init__(self, feed: DataFeed, loader: Iterable[Any]) -> None:
        self.feed = feed
        self.loader = loader
        self._open(feed.first_pass_index())

    def _open(self, index: int) -> None:
        if index > 0:
            set_sampler_epoch(self.loader, index)
        self.iterator, self.data_pass = self.feed.open_pass(self.loader, index)

    def __next__(self) -> Any:
        try:
            batch = next(self.iterator)
        except StopIteration:
            self._open(self.data_pass.index + 1)
            try:
                batch = next(self.iterator)
            except StopIteration:
                raise RuntimeError("the training dataloader yields no batches") from None
        self.data_pass.consumed += 1
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
            with runner.rng_guard():
                runner.call(f"before_{mode}")
                runner.call(f"before_{mode}_epoch")
                members = getattr(runner, "members", None)
                if members and isinstance(self.evaluator, MeanMetrics):
                    if self.evaluator.members is None:
                        self.evaluator.members = members  # per-member means, "acc/i"
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


# The runner imports nothing from this module at import time, so it can be re-exported here
# (``functrain.loops.Runner`` is where it always lived); old checkpoints name
# ``functrain.loops:DataPosition``, found through the import above.
from functrain.runner import Runner, default_callbacks, find_latest_checkpoint  # noqa: E402
