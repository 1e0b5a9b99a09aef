"""Callbacks: objects with methods named after mmengine's hook points, run in priority order.

A callback method receives the loop context (the :class:`functrain.runner.Runner`, which has
mmengine's ``runner.epoch``, ``runner.iter``, ``runner.max_iters``... attributes) and the
current :class:`functrain.state.TrainState`, plus the event's own keyword arguments
(``batch_idx``, ``data_batch``, ``outputs``, ``metrics``, ``checkpoint``), and returns a new
state or ``None`` (keep the state). An mmengine hook ports by changing its base class to
:class:`Callback` and adding the ``state`` argument::

    class PrintLoss(Callback):
        priority = "LOW"

        def after_train_iter(self, runner, state, batch_idx, data_batch=None, outputs=None):
            if self.every_n_train_iters(runner, 100):
                print(runner.iter, float(outputs["loss"]))  # a host sync, every 100 iterations

Order: lower priority value first (HIGHEST=0 ... LOWEST=100, ints or names); callbacks of
equal priority run in registration order; the runner's default callbacks are registered before
the user's (mmengine's rules).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from functrain.callbacks.history import ScalarHistory

if TYPE_CHECKING:
    from functrain.state import TrainState

__all__ = [
    "EVENTS",
    "Callback",
    "CallbackList",
    "Priority",
    "ScalarHistory",
    "get_priority",
]

#: Every event a loop emits, mmengine's ``Hook.stages``.
EVENTS: tuple[str, ...] = (
    "before_run",
    "after_load_checkpoint",
    "before_train",
    "before_train_epoch",
    "before_train_iter",
    "after_train_iter",
    "after_train_epoch",
    "before_val",
    "before_val_epoch",
    "before_val_iter",
    "after_val_iter",
    "after_val_epoch",
    "after_val",
    "before_save_checkpoint",
    "after_train",
    "before_test",
    "before_test_epoch",
    "before_test_iter",
    "after_test_iter",
    "after_test_epoch",
    "after_test",
    "after_run",
)


class Priority(enum.IntEnum):
    """Callback priorities (mmengine's values): lower runs first."""

    HIGHEST = 0
    VERY_HIGH = 10
    HIGH = 30
    ABOVE_NORMAL = 40
    NORMAL = 50
    BELOW_NORMAL = 60
    LOW = 70
    VERY_LOW = 90
    LOWEST = 100


def get_priority(priority: int | str | Priority) -> int:
    """The integer value of ``priority`` (an int in [0, 100], a :class:`Priority` or its name).

    Example:
        >>> get_priority("below_normal"), get_priority(5)
        (60, 5)
    """
    if isinstance(priority, Priority):
        return int(priority)
    if isinstance(priority, bool):
        raise TypeError(f"priority must be an int, a name or a Priority, got {priority!r}")
    if isinstance(priority, int):
        if not 0 <= priority <= 100:
            raise ValueError(f"priority must be between 0 and 100, got {priority}")
        return priority
    if isinstance(priority, str):
        try:
            return int(Priority[priority.upper()])
        except KeyError:
            names = ", ".join(p.name for p in Priority)
            raise ValueError(f"unknown priority {priority!r}; use one of {names}") from None
    raise TypeError(f"priority must be an int, a name or a Priority, got {priority!r}")


def _noop(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a :class:`Callback` event method as the inherited do-nothing default."""
    fn._functrain_noop = True  # type: ignore[attr-defined]
    return fn


def _snake(name: str) -> str:
    name = re.sub(r"(Callback|Hook)$", "", name) or name
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


class Callback:
    """Base class: every event method is a no-op; override the ones you need.

    Attributes:
        priority: an int in [0, 100] or a :class:`Priority` name (default ``"NORMAL"``).
        name: the callback's name, used to replace or remove it and as the key of its
            persistent state in ``state.callbacks``. Defaults to the class name in snake case
            without a ``Callback`` suffix (``EarlyStopping`` -> ``"early_stopping"``).

    The helpers (``every_n_epochs``, ``every_n_train_iters``, ``every_n_inner_iters``,
    ``end_of_epoch``, ``is_last_train_epoch``, ``is_last_train_iter``) are mmengine's.
    """

    priority: int | str = "NORMAL"
    name: str | None = None

    def state_key(self) -> str:
        """The key of this callback's persistent state in ``state.callbacks``."""
        return self.name or _snake(type(self).__name__)

    def get_state(self, state: TrainState, default: Any = None) -> Any:
        """This callback's persistent state in ``state`` (``default`` when absent)."""
        return state.callbacks.get(self.state_key(), default)

    def set_state(self, state: TrainState, value: Any) -> TrainState:
        """``state`` with this callback's persistent state set to ``value``."""
        return state.with_callback_state(self.state_key(), value)

    # mmengine's helper predicates -------------------------------------------------------
    @staticmethod
    def every_n_epochs(runner: Any, n: int, start: int = 0) -> bool:
        dividend = runner.epoch + 1 - start
        return dividend % n == 0 if dividend >= 0 and n > 0 else False

    @staticmethod
    def every_n_inner_iters(batch_idx: int, n: int) -> bool:
        return (batch_idx + 1) % n == 0 if n > 0 else False

    @staticmethod
    def every_n_train_iters(runner: Any, n: int, start: int = 0) -> bool:
        dividend = runner.iter + 1 - start
        return dividend % n == 0 if dividend >= 0 and n > 0 else False

    @staticmethod
    def end_of_epoch(dataloader: Any, batch_idx: int) -> bool:
        return batch_idx + 1 == len(dataloader)

    @staticmethod
    def is_last_train_epoch(runner: Any) -> bool:
        return runner.epoch + 1 == runner.max_epochs

    @staticmethod
    def is_last_train_iter(runner: Any) -> bool:
        return runner.iter + 1 == runner.max_iters

    # The events (mmengine's ``Hook`` methods plus ``state``). Each returns a new state or
    # ``None``; the inherited no-ops are marked so that the runner never calls them.
    @_noop
    def before_run(self, runner: Any, state: TrainState) -> TrainState | None:
        """Before anything else in ``train`` / ``val`` / ``test``."""
        return None

    @_noop
    def after_run(self, runner: Any, state: TrainState) -> TrainState | None:
        """After everything else in ``train`` / ``val`` / ``test``."""
        return None

    @_noop
    def before_train(self, runner: Any, state: TrainState) -> TrainState | None:
        """Before the first training epoch (after resuming)."""
        return None

    @_noop
    def after_train(self, runner: Any, state: TrainState) -> TrainState | None:
        """After the last training epoch and its validation."""
        return None

    @_noop
    def before_val(self, runner: Any, state: TrainState) -> TrainState | None:
        """Before a validation run."""
        return None

    @_noop
    def after_val(self, runner: Any, state: TrainState) -> TrainState | None:
        """After a validation run."""
        return None

    @_noop
    def before_test(self, runner: Any, state: TrainState) -> TrainState | None:
        """Before a test run."""
        return None

    @_noop
    def after_test(self, runner: Any, state: TrainState) -> TrainState | None:
        """After a test run."""
        return None

    @_noop
    def before_save_checkpoint(
        self, runner: Any, state: TrainState, checkpoint: dict[str, Any]
    ) -> TrainState | None:
        """Just before ``checkpoint`` (editable in place) is written."""
        return None

    @_noop
    def after_load_checkpoint(
        self, runner: Any, state: TrainState, checkpoint: dict[str, Any]
    ) -> TrainState | None:
        """Right after ``checkpoint`` is read, before the state is restored from it."""
        return None

    @_noop
    def before_train_epoch(self, runner: Any, state: TrainState) -> TrainState | None:
        """Before each training epoch (once for the iteration-based loop)."""
        return None

    @_noop
    def before_val_epoch(self, runner: Any, state: TrainState) -> TrainState | None:
        """Before the batches of a validation run."""
        return None

    @_noop
    def before_test_epoch(self, runner: Any, state: TrainState) -> TrainState | None:
        """Before the batches of a test run."""
        return None

    @_noop
    def after_train_epoch(self, runner: Any, state: TrainState) -> TrainState | None:
        """After each training epoch; ``runner.epoch`` is not yet incremented."""
        return None

    @_noop
    def after_val_epoch(
        self, runner: Any, state: TrainState, metrics: Mapping[str, float] | None = None
    ) -> TrainState | None:
        """After the batches of a validation run, with the evaluator's ``metrics``."""
        return None

    @_noop
    def after_test_epoch(
        self, runner: Any, state: TrainState, metrics: Mapping[str, float] | None = None
    ) -> TrainState | None:
        """After the batches of a test run, with the evaluator's ``metrics``."""
        return None

    @_noop
    def before_train_iter(
        self, runner: Any, state: TrainState, batch_idx: int, data_batch: Any = None
    ) -> TrainState | None:
        """Before the train step on batch ``batch_idx`` of the epoch."""
        return None

    @_noop
    def before_val_iter(
        self, runner: Any, state: TrainState, batch_idx: int, data_batch: Any = None
    ) -> TrainState | None:
        """Before the eval step on validation batch ``batch_idx``."""
        return None

    @_noop
    def before_test_iter(
        self, runner: Any, state: TrainState, batch_idx: int, data_batch: Any = None
    ) -> TrainState | None:
        """Before the eval step on test batch ``batch_idx``."""
        return None

    @_noop
    def after_train_iter(
        self,
        runner: Any,
        state: TrainState,
        batch_idx: int,
        data_batch: Any = None,
        outputs: Mapping[str, Any] | None = None,
    ) -> TrainState | None:
        """After the train step; ``outputs`` are its metrics, still on the device."""
        return None

    @_noop
    def after_val_iter(
        self,
        runner: Any,
        state: TrainState,
        batch_idx: int,
        data_batch: Any = None,
        outputs: Any = None,
    ) -> TrainState | None:
        """After the eval step on validation batch ``batch_idx``, with its ``outputs``."""
        return None

    @_noop
    def after_test_iter(
        self,
        runner: Any,
        state: TrainState,
        batch_idx: int,
        data_batch: Any = None,
        outputs: Any = None,
    ) -> TrainState | None:
        """After the eval step on test batch ``batch_idx``, with its ``outputs``."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.state_key()!r}, priority={self.priority!r})"


def _handles(cb: Any, event: str) -> bool:
    """Whether ``cb`` does something on ``event`` (a :class:`Callback`'s inherited no-op
    does not, so the dispatch table skips it)."""
    fn = getattr(type(cb), event, None)
    if fn is None:
        return callable(getattr(cb, event, None))
    return not getattr(fn, "_functrain_noop", False)


class CallbackList:
    """Callbacks in run order, with per-event dispatch tables.

    The run order is a stable sort of the registration order by priority, which is what
    mmengine's ``register_hook`` insertion produces. ``replace`` keeps the replaced
    callback's place in the registration order.
    """

    def __init__(self, callbacks: Iterable[Any] = ()) -> None:
        self._registered: list[tuple[Any, int, str]] = []
        self._tables: dict[str, list[Callable[..., Any]]] = {}
        for cb in callbacks:
            self.add(cb)

    def add(self, cb: Any, priority: int | str | None = None, name: str | None = None) -> None:
        """Register ``cb`` (priority and name default to the callback's own)."""
        value = get_priority(priority if priority is not None else getattr(cb, "priority", 50))
        key = name or (cb.state_key() if isinstance(cb, Callback) else _snake(type(cb).__name__))
        if name is not None and isinstance(cb, Callback):
            cb.name = name
        if key in self.names():
            raise ValueError(
                f"a callback named {key!r} is already registered; give this one another "
                f"name (Callback.name) or use replace({key!r}, ...)"
            )
        self._registered.append((cb, value, key))
        self._rebuild()

    def remove(self, name: str) -> Any:
        """Unregister the callback called ``name`` and return it."""
        i = self._index(name)
        cb = self._registered.pop(i)[0]
        self._rebuild()
        return cb

    def replace(self, name: str, cb: Any, priority: int | str | None = None) -> Any:
        """Put ``cb`` in place of the callback called ``name`` (same name); return the old one."""
        i = self._index(name)
        old = self._registered[i][0]
        value = get_priority(priority if priority is not None else getattr(cb, "priority", 50))
        if isinstance(cb, Callback):
            cb.name = name
        self._registered[i] = (cb, value, name)
        self._rebuild()
        return old

    def get(self, name: str) -> Any:
        """The callback called ``name``."""
        return self._registered[self._index(name)][0]

    def names(self) -> list[str]:
        """Names in run order."""
        return [key for _, _, key in self._ordered()]

    def handlers(self, event: str) -> list[Callable[..., Any]]:
        """Bound methods that handle ``event``, in run order."""
        return self._tables.get(event, [])

    def __iter__(self) -> Iterator[Any]:
        return iter([cb for cb, _, _ in self._ordered()])

    def __len__(self) -> int:
        return len(self._registered)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def _index(self, name: str) -> int:
        for i, (_, _, key) in enumerate(self._registered):
            if key == name:
                return i
        raise KeyError(f"no callback named {name!r}; registered: {self.names()}")

    def _ordered(self) -> list[tuple[Any, int, str]]:
        return sorted(self._registered, key=lambda item: item[1])

    def _rebuild(self) -> None:
        ordered = self._ordered()
        self._tables = {
            event: [getattr(cb, event) for cb, _, _ in ordered if _handles(cb, event)]
            for event in EVENTS
        }
        # Events a callback defines beyond mmengine's list (custom hook points).
        for cb, _, _ in ordered:
            for attr in dir(cb):
                if attr.startswith(("before_", "after_")) and attr not in self._tables:
                    self._tables[attr] = [
                        getattr(c, attr) for c, _, _ in ordered if callable(getattr(c, attr, None))
                    ]
