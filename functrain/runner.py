"""The runner: builds the run's context, calls the callbacks, runs a loop, saves checkpoints.

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
step and after every callback that returns one. The loops live in :mod:`functrain.loops`,
where the data stands for resuming in :mod:`functrain.data_position`, checkpoint writing and
resuming in :mod:`functrain.runner_checkpoint`, the log directory and logger in
:mod:`functrain.runner_log`. Differences from mmengine's ``Runner`` are listed in
:mod:`functrain.loops`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from functrain import ranks as comm  # rank queries and object collectives
from functrain import runner_checkpoint
from functrain.callbacks.base import Callback, CallbackList
from functrain.callbacks.history import ScalarHistory
from functrain.data_position import DataFeed, RngGuard
from functrain.runner_checkpoint import find_latest_checkpoint
from functrain.runner_log import RunLog
from functrain.state import TrainState

if TYPE_CHECKING:
    from functrain.loops import EpochBasedTrainLoop, IterBasedTrainLoop, TestLoop, ValLoop

__all__ = ["Runner", "default_callbacks", "find_latest_checkpoint"]


def default_callbacks() -> dict[str, Callback]:
    """mmengine's default hooks as callbacks: ``timer`` (:class:`IterTimer`),
    ``sampler_seed`` (:class:`SamplerSeed`), ``logger`` (:class:`Logger`, interval 10) and
    ``checkpoint`` (:class:`CheckpointCallback`, interval 1), plus ``terminate_on_nan``
    (:class:`TerminateOnNaN`: stop at the first non-finite loss, checked at the logger's
    interval; ``{"terminate_on_nan": None}`` removes it). Schedules live in the optimizer
    state, so there is no ``param_scheduler`` callback; ``runtime_info`` is the runner itself.
    """
    from functrain.callbacks import (
        CheckpointCallback,
        IterTimer,
        Logger,
        SamplerSeed,
        TerminateOnNaN,
    )

    return {
        "timer": IterTimer(),
        "sampler_seed": SamplerSeed(),
        "logger": Logger(),
        "terminate_on_nan": TerminateOnNaN(),
        "checkpoint": CheckpointCallback(interval=1),
    }


def _register(defaults: Mapping[str, Any] | bool | None, callbacks: Iterable[Any]) -> CallbackList:
    """The defaults (with ``defaults`` merged in: ``None`` removes, a callback replaces),
    then the user's callbacks, as mmengine registers ``default_hooks`` and ``custom_hooks``."""
    registered = CallbackList()
    if defaults is not False:
        merged: dict[str, Any] = default_callbacks()
        for name, cb in dict(defaults or {}).items():
            if cb is None:
                merged.pop(name, None)
            else:
                merged[name] = cb
        for name, cb in merged.items():
            registered.add(cb, name=name)
    for cb in callbacks:
        registered.add(cb)
    return registered


def _members(
    state: TrainState, members: int | None, labels: Iterable[str] | None
) -> tuple[int | None, list[str] | None]:
    """The ensemble size (given, or recorded by an ``ensemble(...)`` optimizer state) and
    the members' labels, checked."""
    from functrain.transforms.members import StackedState

    recorded = state.opt_state.members if isinstance(state.opt_state, StackedState) else None
    if members is not None:
        if isinstance(members, bool) or not isinstance(members, int) or members < 1:
            raise ValueError(f"Runner: members must be a positive int or None, got {members!r}")
        if recorded is not None and recorded != members:
            raise ValueError(
                f"Runner: members={members}, but the optimizer state is an ensemble of "
                f"{recorded} members (functrain.ensemble(tx, {recorded}))"
            )
    else:
        members = recorded
    if labels is None:
        return members, None if members is None else [f"#{i}" for i in range(members)]
    if isinstance(labels, str):
        raise TypeError("Runner: member_labels must be a list of strings, got one string")
    labels = list(labels)
    if members is None:
        raise ValueError(
            "Runner: member_labels given, but the run has no members (pass members=N, or "
            "an optimizer state made by functrain.ensemble)"
        )
    if len(labels) != members or not all(isinstance(x, str) for x in labels):
        raise ValueError(
            f"Runner: member_labels must be {members} strings (one per member), got {labels!r}"
        )
    return members, labels


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
        members: the ensemble size N when ``state`` is a stacked ensemble (see
            :mod:`functrain.ensembles`). ``None`` (default) detects it: an optimizer state
            made by :func:`functrain.ensemble` (``StackedState``) records N; otherwise the
            run is a plain one. An int is checked against what the state records. With
            members, the callbacks work per member (see "Ensembles" below).
        member_labels: one short string per member naming its settings (``"lr=0.001
            seed=1"``), shown in log lines and plot legends; default ``"#0"``, ``"#1"``...
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

    Ensembles: with ``members`` (given or detected), the train step's metrics and the eval
    step's outputs carry a leading member axis (``make_ensemble_train_step`` /
    ``make_ensemble_eval_step``) and every per-member scalar is named ``"<name>/<i>"`` for
    member ``i``: the logged records (``loss/3``, ``lr/3``, ``grad_norm/3``) and the
    validation metrics (``acc/3``; the default :class:`~functrain.evaluators.MeanMetrics`
    averages per member). The callbacks then act per member: ``Logger`` (one terminal line
    with min / median / max and the best member), ``CheckpointCallback`` (``save_best`` per
    member or for the best member), ``EarlyStopping`` and ``TerminateOnNaN`` (stop single
    members through :func:`functrain.stop_members`), ``EMA`` (per-member momentum),
    ``CurvesPlot`` (one curve per member, legend ``member_labels``),
    ``ReduceOnPlateauCallback`` (one plateau per member). Checkpoints hold the stacked state
    and resume bitwise.

    Attributes a callback can use (mmengine names): ``epoch``, ``iter``, ``max_epochs``,
    ``max_iters``, ``train_loop``, ``val_loop``, ``test_loop``, ``train_dataloader``,
    ``val_dataloader``, ``test_dataloader``, ``work_dir``, ``log_dir``, ``timestamp``,
    ``logger``, ``history`` (the message hub), ``mode`` (``"train"``/``"val"``/``"test"``),
    ``stop_training`` (settable), ``state``, ``callbacks``, ``save_checkpoint``; and
    ``members`` (N or ``None``) and ``member_labels`` (``None`` for a plain run).
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
        members: int | None = None,
        member_labels: Iterable[str] | None = None,
    ) -> None:
        if not isinstance(state, TrainState):
            raise TypeError(f"state must be a TrainState, got {type(state).__name__}")
        self.members, self.member_labels = _members(state, members, member_labels)
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
        self.mode = "train"
        self.history = ScalarHistory()
        self.log_records: list[dict[str, Any]] = []
        self.last_val_metrics: dict[str, float] | None = None
        self.data = DataFeed()  # where the training data stands (resume replays it)
        self.rng_guard = RngGuard()  # validation leaves the training's random stream alone
        name = f"functrain.runner.{id(self):x}"
        self.run_log = RunLog(lambda: self.work_dir, self.timestamp, log_level, name)
        self._events: list[str] = []  # the events being dispatched, outermost first
        self._pending_saves: list[tuple[int, Path, bool, Any, Any, Any]] = []
        self.callbacks = _register(default_callbacks, callbacks)

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
        """``work_dir / timestamp`` (see :class:`~functrain.runner_log.RunLog`)."""
        return self.run_log.log_dir

    @property
    def logger(self) -> logging.Logger:
        return self.run_log.logger

    @property
    def log_level(self) -> int | str:
        """The terminal logger's level (takes effect when the logger is next made)."""
        return self.run_log.level

    @log_level.setter
    def log_level(self, value: int | str) -> None:
        self.run_log.level = value

    def _close_logger(self) -> None:
        self.run_log.close()

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
            for _, path, save_optimizer, meta, on_saved, select in self._take_saves(depth):
                state = select(self.state) if select is not None else self.state
                runner_checkpoint.write(self, path, state, save_optimizer, meta, on_saved)
        finally:
            self._take_saves(depth)
            self._events.pop()

    def _take_saves(self, depth: int) -> list[tuple[int, Path, bool, Any, Any, Any]]:
        """Remove and return the saves requested during the event at ``depth``."""
        if not self._pending_saves:  # nearly every event: nothing to write
            return []
        taken = [item for item in self._pending_saves if item[0] == depth]
        self._pending_saves = [item for item in self._pending_saves if item[0] != depth]
        return taken

    # -- running -------------------------------------------------------------------------------
    def train(self) -> TrainState:
        """Run the train loop (with validation); returns the final state."""
        if self.train_loop is None:
            raise RuntimeError("Runner.train needs a train_loop and a train_step")
        self.mode = "train"
        self.train_loop.stop_training = False
        self._run(self.train_loop)
        return self.state

    def val(self) -> dict[str, float]:
        """Run the validation loop once (``before_run``, load, val, ``after_run``)."""
        if self.val_loop is None:
            raise RuntimeError("Runner.val needs a val_loop")
        return self._run(self.val_loop)

    def test(self) -> dict[str, float]:
        """Run the test loop once (``before_run``, load, test, ``after_run``)."""
        if self.test_loop is None:
            raise RuntimeError("Runner.test needs a test_loop")
        return self._run(self.test_loop)

    def _run(self, loop: Any) -> Any:
        """The story of every run: set up, ``before_run``, load or resume, run the loop,
        ``after_run``; on an error, let the other ranks know; always close the log."""
        try:
            self.run_log.sync()
            self.call("before_run")
            self._load_or_resume()
            result = loop.run(self)
            self.call("after_run")
        except BaseException as e:
            self._on_error(e)
            raise
        finally:
            self._close_logger()
        return result

    def _on_error(self, exc: BaseException) -> None:
        """Under a process group of several ranks, let the peers fail now (see
        ``abort_on_error``) instead of waiting for this rank in a collective."""
        if self.abort_on_error and comm.get_world_size() > 1:
            if self.run_log.is_open:
                self.logger.error(f"rank {comm.get_rank()} failed: {type(exc).__name__}: {exc}")
            comm.abort_on_failure(exc)

    # -- checkpoints (see functrain.runner_checkpoint) ---------------------------------------
    def save_checkpoint(
        self,
        path: str | os.PathLike[str],
        state: TrainState | None = None,
        *,
        save_optimizer: bool = True,
        meta: Mapping[str, Any] | None = None,
        on_saved: Callable[[], None] | None = None,
        select: Callable[[TrainState], TrainState] | None = None,
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

        ``select(state) -> state`` picks what is written from that final state (an
        ensemble's member: ``CheckpointCallback`` writes per-member best checkpoints so).
        """
        path = Path(path)
        if self._events and self._events[-1] != "before_save_checkpoint":
            self._pending_saves.append(
                (len(self._events), path, save_optimizer, meta, on_saved, select)
            )
            return path
        state = self.state if state is None else state
        if select is not None:
            state = select(state)
        runner_checkpoint.write(self, path, state, save_optimizer, meta, on_saved)
        return path

    def _load_or_resume(self) -> None:
        if self._loaded:
            return
        source = runner_checkpoint.resume_source(
            self._resume, self._load_from, lambda: self.work_dir
        )
        if source is not None:
            self.resume(source)
        elif self._load_from is not None:
            self.load_checkpoint(self._load_from)
        self._loaded = True

    def resume(self, path: str | os.PathLike[str]) -> None:
        """Restore the whole state and the data position from the checkpoint at ``path``.

        Under a process group every rank calls it with the same file: the tensors go to
        the devices of this rank's state, and the data position (random generators,
        sampler seed) is this rank's own when the checkpoint was written by as many ranks.
        """
        runner_checkpoint.resume(self, path)
        self._loaded = True

    def load_checkpoint(self, path: str | os.PathLike[str], *, strict: bool = True) -> None:
        """Load the params and buffers of the checkpoint at ``path`` (no optimizer state)."""
        runner_checkpoint.load_weights(self, path, strict)
        self._loaded = True
