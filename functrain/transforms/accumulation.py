"""Gradient accumulation: mmengine's ``accumulative_counts`` (:func:`accumulate`) and optax's
``MultiSteps`` (:func:`multi_steps`).

Both wrap an inner transform, sum (or average) the incoming micro-batch gradients into one
gradient-sized buffer and call the inner transform once per window, returning zero updates on
the other micro-steps. The inner transform, and so every schedule inside it, advances once
per optimizer step. Where a micro-step falls in its window depends only on how many
micro-steps came before, so the counters are host-side ints kept as static metadata of the
state (part of its tree structure), not device tensors: deciding whether to step is not a
host sync.

A micro-step's updates are returned as zeros (``apply_updates`` leaves the parameters as they
are); a loop that knows the window can also skip ``apply_updates`` on those steps
(:func:`has_updated` / ``AccumulateState.micro_step``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from functrain.transforms import foreach as fe
from functrain.transforms.base import (
    FlatTransform,
    GradientTransformation,
    as_flat,
    from_flat,
    state_record,
    static_field,
)
from functrain.tree import TreeInfo, foreach_clone

__all__ = [
    "AccumulateState",
    "MultiSteps",
    "MultiStepsState",
    "accumulate",
    "has_updated",
    "multi_steps",
    "optimizer_step_schedule",
]

State = Any
Schedule = Callable[[Any], Any]


def _zeros(updates: list[Tensor], reuse: bool, info: TreeInfo) -> list[Tensor]:
    """Zero updates: written into ``updates`` when ``reuse`` (donated, no longer needed)."""
    return info.foreach(lambda us: fe.zero(us, reuse), updates)


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Invalid {name}: {value!r}; {name} must be an int >= {minimum}")
    return value


# --------------------------------------------------------------------------- accumulate


@state_record
class AccumulateState:
    """State of :func:`accumulate`.

    Attributes:
        inner_state: the inner transform's state (advanced once per optimizer step).
        acc: the running sum of ``grad / loss_factor`` of the current window, one tensor per
            leaf, or ``None`` between windows (the buffer lives only while accumulating).
        micro_step: micro-batches seen so far (mmengine's ``_inner_count``), a host int
            (static: it depends only on how many times ``update`` was called).
    """

    inner_state: Any
    acc: tuple[Tensor, ...] | None
    micro_step: int = static_field()


def accumulate(
    inner: GradientTransformation, accumulative_counts: int, max_iters: int | None = None
) -> GradientTransformation:
    """Accumulate ``accumulative_counts`` micro-batches and step once, as mmengine's
    ``OptimWrapper(accumulative_counts=N)`` after ``initialize_count_status(model, 0,
    max_iters)``.

    Each call of ``update`` is one micro-batch with its (unscaled) gradients ``g``. The
    window's gradient is ``sum(g / loss_factor)``, in mmengine's order, with
    ``loss_factor = N``, except in the last, shortened window of the run (when ``max_iters``
    is not a multiple of ``N``), where it is that window's length ``max_iters % N``. On the
    window's last micro-batch (micro-step a multiple of ``N``, or ``max_iters``) ``inner`` is
    applied to it and its updates returned; on the others the updates are zeros. Clipping
    inside ``inner`` sees the accumulated gradient, as mmengine clips before its step.

    Schedules inside ``inner`` advance once per optimizer step. mmengine's iteration-based
    schedulers step once per micro-batch instead; :func:`optimizer_step_schedule` converts
    such a schedule so that each optimizer step uses the value mmengine's would.

    Memory: one gradient-sized buffer while a window is open (none between windows; with
    ``donate`` the first micro-batch's gradient buffer becomes it).

    Args:
        inner: the optimizer (for example ``chain(clip(35.0), sgd(lr=0.02, momentum=0.9))``).
        accumulative_counts: ``N``, micro-batches per optimizer step (int >= 1).
        max_iters: total micro-batches of the run (mmengine's ``max_counts``), which makes
            the last window shorter when not a multiple of ``N``; ``None``: every window has
            ``N`` micro-batches. Going past ``max_iters`` is a ``ValueError`` (mmengine
            divides by zero there when ``max_iters`` is a multiple of ``N``).

    Example:
        >>> tx = accumulate(chain(clip(35.0), sgd(lr=0.02, momentum=0.9)), 4, max_iters=1000)
    """
    n = _check_count("accumulative_counts", accumulative_counts, 1)
    if max_iters is not None:
        max_iters = _check_count("max_iters", max_iters, 1)
    flat = as_flat(inner)
    remainder = None if max_iters is None else max_iters % n

    def loss_factor(micro_step: int) -> int:
        # mmengine's OptimWrapper.scale_loss, with _inner_count before this micro-batch.
        if n == 1 or max_iters is None:
            return n
        return n if micro_step < max_iters - remainder else remainder

    def init(params: list[Tensor], info: TreeInfo) -> AccumulateState:
        return AccumulateState(flat.init(params, info), None, 0)

    def update(
        updates: list[Tensor],
        state: AccumulateState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], AccumulateState]:
        if not isinstance(state, AccumulateState):
            raise ValueError(
                f"accumulate got a state of type {type(state).__name__}; pass the state "
                "returned by this transform's init/update"
            )
        step = state.micro_step
        if max_iters is not None and step >= max_iters:
            raise ValueError(
                f"accumulate: micro-step {step + 1} is past max_iters={max_iters}; build the "
                "transform with the run's total number of micro-batches"
            )
        factor = loss_factor(step)
        count = step + 1
        donate = info.donate
        should_update = count % n == 0 or count == max_iters
        if should_update and state.acc is None and factor == 1:
            # A window of one micro-batch: its gradient as is (g / 1 is exact).
            new, inner_state = flat.update(updates, state.inner_state, params, info, **extra)
            return new, AccumulateState(inner_state, None, count)
        scaled = info.foreach(lambda g: fe.div(g, float(factor), donate), updates)
        if state.acc is None:
            acc = scaled
        else:
            acc = info.foreach(lambda a, s: fe.add(a, s, donate), list(state.acc), scaled)
        if should_update:
            # The buffer is handed to inner (which may write into it when donating) and the
            # state drops it.
            new, inner_state = flat.update(acc, state.inner_state, params, info, **extra)
            return new, AccumulateState(inner_state, None, count)
        # When donating, ``scaled`` is the incoming buffer: free to reuse unless it became acc.
        zeros = _zeros(scaled, donate and state.acc is not None, info)
        return zeros, AccumulateState(state.inner_state, tuple(acc), count)

    name = f"accumulate({flat.name}, accumulative_counts={n}, max_iters={max_iters})"
    return from_flat(FlatTransform(init, update, name=name))


def optimizer_step_schedule(
    schedule: Schedule, accumulative_counts: int, max_iters: int | None = None
) -> Schedule:
    """An iteration-based schedule (mmengine steps it once per micro-batch) re-indexed by
    optimizer step, for a transform inside :func:`accumulate`.

    mmengine's ``ParamSchedulerHook`` steps iteration-based schedulers after every
    micro-batch, so optimizer step ``k`` (0-based) runs at micro-batch ``k * N + N - 1`` (or
    ``max_iters - 1`` for the shortened last window) with the value the schedule has there.
    The returned schedule gives exactly that: ``schedule(min(k * N + N - 1, max_iters - 1))``.
    It accepts what schedules accept (an int, a 0-d or 1-d integer tensor).

    Example:
        >>> lr = optimizer_step_schedule(lambda it: 0.1 * 0.99**it, 4, max_iters=1000)
        >>> tx = accumulate(sgd(lr=lr), 4, max_iters=1000)
    """
    n = _check_count("accumulative_counts", accumulative_counts, 1)
    if max_iters is not None:
        max_iters = _check_count("max_iters", max_iters, 1)

    def at_step(step: Any) -> Any:
        iteration = step * n + (n - 1)
        if max_iters is not None:
            iteration = (
                torch.clamp(iteration, max=max_iters - 1)
                if isinstance(iteration, Tensor)
                else min(iteration, max_iters - 1)
            )
        return schedule(iteration)

    return at_step


# --------------------------------------------------------------------------- MultiSteps


@state_record
class MultiStepsState:
    """State of :func:`multi_steps` (optax's ``MultiStepsState`` fields).

    Attributes:
        inner_state: the inner transform's state.
        acc_grads: the running mean (or sum) of the window's gradients, one tensor per leaf,
            or ``None`` between windows.
        mini_step: micro-steps taken in the current window, a host int (static).
        gradient_step: optimizer steps taken so far, a host int (static).
    """

    inner_state: Any
    acc_grads: tuple[Tensor, ...] | None
    mini_step: int = static_field()
    gradient_step: int = static_field()


def multi_steps(
    inner: GradientTransformation,
    every_k_schedule: int | Callable[[int], int],
    *,
    use_grad_mean: bool = True,
) -> GradientTransformation:
    """Apply ``inner`` once every ``k`` calls to the mean of the ``k`` gradients (optax's
    ``MultiSteps``).

    Calls that do not complete a window return zero updates and leave ``inner`` untouched.
    The mean is a running mean, ``acc += (g - acc) / (i + 1)`` (optax's form), which stays in
    range where a sum might overflow; the final ``acc`` is what ``inner`` receives.

    Args:
        inner: the optimizer to apply every ``k`` micro-steps.
        every_k_schedule: ``k`` (an int >= 1), or a function of the optimizer step count
            (a Python int) returning ``k`` for the next window.
        use_grad_mean: average the gradients (``True``, optax's default) or sum them.

    Example:
        >>> tx = multi_steps(adamw(lr=1e-3), every_k_schedule=4)
    """
    if callable(every_k_schedule):
        k_of: Callable[[int], int] = every_k_schedule
    else:
        _check_count("every_k_schedule", every_k_schedule, 1)
        k_of = lambda step: every_k_schedule  # noqa: E731
    flat = as_flat(inner)

    def init(params: list[Tensor], info: TreeInfo) -> MultiStepsState:
        return MultiStepsState(flat.init(params, info), None, 0, 0)

    def update(
        updates: list[Tensor],
        state: MultiStepsState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], MultiStepsState]:
        if not isinstance(state, MultiStepsState):
            raise ValueError(
                f"multi_steps got a state of type {type(state).__name__}; pass the state "
                "returned by this transform's init/update"
            )
        k = _check_count("every_k_schedule(step)", k_of(state.gradient_step), 1)
        mini = state.mini_step
        donate = info.donate
        emit = mini + 1 >= k
        if state.acc_grads is None:
            if emit:
                new, inner_state = flat.update(updates, state.inner_state, params, info, **extra)
                return new, MultiStepsState(inner_state, None, 0, state.gradient_step + 1)
            # The first gradient of a window is the mean so far; keep the donated buffer.
            acc = updates if donate else foreach_clone(updates)
            zeros = _zeros(updates, False, info)
            return zeros, MultiStepsState(state.inner_state, tuple(acc), 1, state.gradient_step)
        acc = list(state.acc_grads)
        if use_grad_mean:
            acc = info.foreach(lambda a, g: fe.lerp(a, g, 1.0 / (mini + 1), donate), acc, updates)
        else:
            acc = info.foreach(lambda a, g: fe.add(a, g, donate), acc, updates)
        if emit:
            new, inner_state = flat.update(acc, state.inner_state, params, info, **extra)
            return new, MultiStepsState(inner_state, None, 0, state.gradient_step + 1)
        zeros = _zeros(updates, donate, info)
        return zeros, MultiStepsState(state.inner_state, tuple(acc), mini + 1, state.gradient_step)

    name = f"multi_steps({flat.name}, every_k_schedule={every_k_schedule!r})"
    return from_flat(FlatTransform(init, update, name=name))


def has_updated(state: MultiStepsState | AccumulateState) -> bool:
    """Whether the last ``update`` of :func:`multi_steps` / :func:`accumulate` stepped the
    inner transform (a host bool read from static counters: no sync)."""
    if isinstance(state, MultiStepsState):
        return state.mini_step == 0 and state.gradient_step > 0
    if isinstance(state, AccumulateState):
        return state.acc is None and state.micro_step > 0
    raise ValueError(
        f"has_updated expects a MultiStepsState or AccumulateState, got {type(state).__name__}"
    )


class MultiSteps:
    """optax's ``MultiSteps`` spelling of :func:`multi_steps`.

    ``MultiSteps(opt, every_k_schedule)`` has ``init`` / ``update`` (usable wherever a
    :class:`GradientTransformation` is, including in ``chain``), ``gradient_transformation()``
    and ``has_updated(state)``.

    Example:
        >>> ms = MultiSteps(adamw(lr=1e-3), every_k_schedule=4)
        >>> state = ms.init(params)  # doctest: +SKIP
    """

    def __init__(
        self,
        opt: GradientTransformation,
        every_k_schedule: int | Callable[[int], int],
        use_grad_mean: bool = True,
    ) -> None:
        self._tx = multi_steps(opt, every_k_schedule, use_grad_mean=use_grad_mean)
        self.init = self._tx.init
        self.update = self._tx.update
        self.flat = self._tx.flat

    def gradient_transformation(self) -> GradientTransformation:
        """The equivalent :class:`GradientTransformation`."""
        return self._tx

    has_updated = staticmethod(has_updated)

    def __iter__(self) -> Any:
        return iter(self._tx)
