"""``Hook``: mmengine's hook base class, so an mmengine hook ports by changing its imports.

An mmengine hook's methods take ``(self, runner, ...)``; a functrain callback's take
``(self, runner, state, ...)`` and may return a new state. Subclassing :class:`Hook` (instead
of :class:`functrain.callbacks.Callback`) accepts either form: a method without a ``state``
parameter is called mmengine's way and keeps the state unchanged. The seed's example::

    from functrain.config import HOOKS, Hook   # was: mmengine.hooks.Hook, mmdet.registry.HOOKS

    @HOOKS.register_module()
    class MyHook(Hook):
        def __init__(self, a, b): ...
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None): ...

``runner`` has mmengine's attributes (``epoch``, ``iter``, ``max_iters``, ``work_dir``,
``logger``, ...; see :class:`functrain.loops.Runner`); the model's current tensors are in
``runner.state``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from functrain.callbacks.base import EVENTS, Callback

__all__ = ["FirstGroupScalars", "Hook", "NumClassCheck", "ema_hook"]


def _takes_state(method: Callable[..., Any]) -> bool:
    params = list(inspect.signature(method).parameters)
    return len(params) >= 3 and params[2] == "state"


def _mmengine_style(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: Any, runner: Any, state: Any, *args: Any, **kwargs: Any) -> None:
        method(self, runner, *args, **kwargs)
        return None

    return call


class Hook(Callback):
    """mmengine's ``Hook``: event methods with or without the ``state`` argument.

    Example:
        >>> class CountIters(Hook):
        ...     def __init__(self):
        ...         self.count = 0
        ...     def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        ...         self.count += 1
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for event in EVENTS:
            method = cls.__dict__.get(event)
            if callable(method) and not _takes_state(method):
                setattr(cls, event, _mmengine_style(method))


class NumClassCheck(Hook):
    """MMDetection's ``NumClassCheckHook``: before each train and val epoch, every module of
    the model with an int ``num_classes`` must agree with the length of the dataset's
    ``metainfo['classes']`` (a tuple or list, not a string).

    Needs ``runner.model`` (set by :func:`functrain.config.build_runner`); a dataset without
    ``metainfo['classes']`` is skipped, as in MMDetection.
    """

    def _check(self, runner: Any, loader: Any) -> None:
        model = getattr(runner, "model", None)
        dataset = getattr(loader, "dataset", None)
        classes = (getattr(dataset, "metainfo", None) or {}).get("classes")
        if model is None or classes is None:
            return
        if isinstance(classes, str):
            raise ValueError(
                f"metainfo['classes'] of {type(dataset).__name__} must be a tuple of names, "
                f"got the string {classes!r} (write ({classes!r},) for one class)"
            )
        for name, module in model.named_modules():
            n = getattr(module, "num_classes", None)
            if isinstance(n, int) and not isinstance(n, bool) and n != len(classes):
                raise ValueError(
                    f"num_classes={n} of {type(module).__name__} ({name or 'the model'}) does "
                    f"not match the {len(classes)} classes of {type(dataset).__name__}"
                )

    def before_train_epoch(self, runner):
        self._check(runner, runner.train_dataloader)

    def before_val_epoch(self, runner):
        self._check(runner, runner.val_dataloader)


def _float_at(fn_and_iteration: tuple[Callable[[int], Any], int]) -> float:
    fn, iteration = fn_and_iteration
    return float(fn(iteration))


class FirstGroupScalars(Callback):
    """Log ``lr`` / ``momentum`` as mmengine does: its ``RuntimeInfoHook`` records, before
    each iteration, the value of the optimizer's *first parameter group*, and its schedulers
    step every iteration (micro-batches included).

    functrain's state records the base group's values, advanced once per optimizer step;
    they differ from mmengine's log when the first parameter has an ``lr_mult`` (e.g.
    ``custom_keys={'backbone': dict(lr_mult=0.1)}`` with the backbone first) or under
    ``accumulative_counts``. :func:`functrain.config.build_runner` adds this callback then,
    with ``values = {name: fn(iteration)}`` giving mmengine's per-iteration value; it writes
    them into ``runner.history`` before the logger reads it. What the optimizer uses is not
    affected. With several parameter groups mmengine also logs ``base_lr``, the unscaled
    group's value; so does this callback when given it.

    Args:
        values: ``{"lr": fn, "base_lr": fn, "momentum": fn}`` (any of them), each
            ``fn(iteration) -> float``.
    """

    priority = "ABOVE_NORMAL"  # before the logger (BELOW_NORMAL)
    name = "first_group_scalars"

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = dict(values)

    def after_train_iter(self, runner, state, batch_idx, data_batch=None, outputs=None):
        # Deferred: computed (as float(fn(iteration))) only for the iterations a reader asks
        # for, the logger's every `interval`, instead of a schedule evaluation per iteration.
        for name, fn in self.values.items():
            runner.history.defer(f"train/{name}", _float_at, (fn, runner.iter))


def ema_hook(
    ema_type: str = "ExponentialMovingAverage",
    strict_load: bool = True,
    begin_iter: int = 0,
    begin_epoch: int = 0,
    momentum: float = 0.0002,
    interval: int = 1,
    update_buffers: bool = False,
) -> Any:
    """mmengine's ``EMAHook`` config -> :class:`functrain.callbacks.EMA` (only the
    ``ExponentialMovingAverage`` strategy)."""
    from functrain.callbacks import EMA

    if ema_type != "ExponentialMovingAverage":
        raise ValueError(f"ema_type {ema_type!r} is not supported; only 'ExponentialMovingAverage'")
    return EMA(
        momentum=momentum,
        interval=interval,
        begin_iter=begin_iter,
        begin_epoch=begin_epoch,
        update_buffers=update_buffers,
    )
