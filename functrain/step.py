"""Train and eval steps: pure-looking functions ``(state, batch) -> ...`` built from a module.

The step contract (what the loops call, and what a hand-written step must do):

- a **train step** is ``step(state: TrainState, batch) -> (new_state, metrics)``. It returns a
  state with new ``params``, ``buffers`` and ``opt_state`` and must leave ``iteration``,
  ``epoch`` and ``callbacks`` alone (the loop owns the counters, as mmengine's loop does).
  ``metrics`` is a ``{name: tensor}`` dict of 0-d tensors left on the device (``"loss"`` at
  least, for the logger); reading them on the host is the logger's business, at its interval.
  A step built with ``donate=True`` may reuse the buffers of the state it was given; the loop
  never touches an old state again.
- an **eval step** is ``step(state, batch) -> outputs``, where ``outputs`` is whatever the
  evaluator's ``process`` expects (a dict of tensors for :class:`functrain.loops.MeanMetrics`).

Both builders take a function of ``(forward, batch)``, where ``forward(*args, **kwargs)`` runs
the module with the state's tensors (what ``torch.func.functional_call`` does, through
:class:`functrain.module_call.ModuleCall`, which resolves the names once)::

    def loss_fn(forward, batch):
        x, y = batch
        logits = forward(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"acc": (logits.argmax(-1) == y).float().mean()}  # or just `loss`
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor
from torch.func import grad_and_value

from functrain.module_call import ModuleCall
from functrain.state import TrainState
from functrain.transforms.base import GradientTransformation
from functrain.transforms.fused_step import apply_gradients
from functrain.transforms.loss_scaling import find_loss_scale_state

if TYPE_CHECKING:
    from functrain.distributed.grad_buckets import GradientBuckets

__all__ = ["make_eval_step", "make_train_step"]

Forward = Callable[..., Any]
LossFn = Callable[[Forward, Any], Any]
TrainStep = Callable[[TrainState, Any], tuple[TrainState, dict[str, Tensor]]]
EvalStep = Callable[[TrainState, Any], Any]


def _split_loss(out: Any) -> tuple[Tensor, dict[str, Tensor]]:
    if isinstance(out, tuple):
        if len(out) != 2 or not isinstance(out[1], Mapping):
            raise TypeError(
                "loss_fn must return a loss tensor or (loss, {name: tensor}), got a tuple of "
                f"{len(out)} items"
            )
        loss, aux = out
    else:
        loss, aux = out, {}
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise TypeError(
            "loss_fn must return a 0-d loss tensor, got "
            + (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else repr(loss))
        )
    return loss, {k: v.detach() if isinstance(v, Tensor) else v for k, v in aux.items()}


def _autocast(dtype: torch.dtype | None, device_type: str) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def _device_type(state: TrainState) -> str:
    for t in state.params.values():
        return t.device.type
    return "cpu"


def make_train_step(
    model: torch.nn.Module,
    loss_fn: LossFn,
    tx: GradientTransformation,
    *,
    donate: bool = True,
    autocast: torch.dtype | None = None,
    fused: bool | None = None,
    grad: str = "auto",
    distributed: bool | None = None,
    bucket_cap_mb: float | None = None,
    process_group: Any = None,
    compile: bool | str = False,
) -> TrainStep:
    """Build ``step(state, batch) -> (state, metrics)``: forward, backward and one update.

    The gradients are ``torch.func.grad_and_value`` of ``loss_fn`` with respect to
    ``state.params``; the module runs through ``functional_call`` on ``state.params`` and
    ``state.buffers`` in training mode. BatchNorm updates its running statistics in place on
    the buffer tensors it is given: with ``donate=True`` those are the state's own buffers
    (the old state is given up), otherwise copies, so the input state is left untouched. The
    update is :func:`functrain.apply_gradients` (torch's fused kernels when the chain allows).

    Args:
        model: the module (only its structure and code are used; its own tensors are not).
        loss_fn: ``loss_fn(forward, batch) -> loss`` or ``(loss, {name: tensor})``; the
            extra tensors are returned in ``metrics`` (detached, on the device).
        tx: the gradient transformation whose state is ``state.opt_state``.
        donate: let the step reuse the input state's buffers (what a loop wants). Results are
            bitwise the same either way.
        autocast: run ``loss_fn`` under ``torch.autocast`` with this dtype (``torch.bfloat16``,
            or ``torch.float16`` with a :func:`functrain.loss_scaling` transform in ``tx``:
            the step then differentiates ``loss * scale`` and the transform unscales, skips
            overflowing steps and adapts the scale, as mmengine's AmpOptimWrapper). Parameters,
            gradients and the update stay in their own dtype; ``metrics["loss"]`` is unscaled.
        fused: passed to :func:`functrain.apply_gradients`.
        grad: ``"func"`` differentiates with ``torch.func.grad_and_value`` (composable with
            other ``torch.func`` transforms); ``"autograd"`` with ``torch.autograd.grad`` on
            detached leaves, the same gradients without functorch's per-call wrapping
            (about 0.3 ms per step, a fifth of a small MLP's step on a CPU core, see
            ``benchmarks/loop.py``; and no ``torch._dynamo`` import, which ``torch.func.grad``
            pays on its first call, about 1.5 s). ``"auto"`` (default) takes ``"autograd"``
            unless the step must be seen by an outer transform: when it is called inside a
            ``torch.func`` transform (``vmap``, ``grad``, ...) or while autograd records and
            a parameter requires grad (differentiating through the step); there it takes
            ``"func"``. Both give bitwise the same gradients, losses and BatchNorm statistics
            (the same kernels in the same order; ``tests/test_loop_step.py`` checks every
            example config).
        distributed: data parallelism with DDP's semantics (see
            :mod:`functrain.distributed.data_parallel`). ``None`` (default): on when a
            ``torch.distributed`` default process group of more than one rank is initialized
            when the step is built; ``False``: off; ``True``: on, and an initialized process
            group is required. When on, each rank's gradients are averaged across ranks
            (one flat all-reduce per ``(device, dtype)``, DDP's numerics) before ``tx`` sees
            them, unless ``tx`` averages them itself: a chain containing
            :func:`~functrain.distributed.data_parallel.average_gradients` (put it inside
            :func:`functrain.accumulate` to all-reduce only on the stepping micro-batch, DDP's
            ``no_sync``) or :func:`~functrain.distributed.zero.shard_optimizer`. Without
            either, an ``accumulate`` in ``tx`` sees averaged gradients on every micro-batch:
            the same result, with an all-reduce per micro-batch. ``metrics["loss"]`` is this
            rank's loss (no extra collective).
        bucket_cap_mb: with ``distributed`` on and ``grad="autograd"`` (or ``"auto"``), overlap the
            all-reduce with backward: gradients go into buckets of at most this many MiB
            that are all-reduced asynchronously as soon as they are full (DDP's default is
            25). ``None``: one all-reduce per ``(device, dtype)`` after backward.
        process_group: the process group to average over (default: the default group).
        compile: compile forward, backward and update as one program with ``torch.compile``
            (see :mod:`functrain.compiled_step`): ``True``, or a ``torch.compile`` mode name
            (``"reduce-overhead"`` captures it in a CUDA graph on CUDA). Graph breaks are
            named in a warning; without a working compiler, a warning and the eager step.

    Returns:
        The train step. ``metrics`` holds ``"loss"`` and whatever ``loss_fn`` added.

    Example:
        >>> def loss_fn(forward, batch):
        ...     x, y = batch
        ...     return torch.nn.functional.cross_entropy(forward(x), y)
        >>> step = make_train_step(model, loss_fn, functrain.adamw(1e-3))  # doctest: +SKIP
        >>> state, metrics = step(state, (x, y))  # doctest: +SKIP
    """

    if grad not in ("auto", "func", "autograd"):
        raise ValueError(f"grad must be 'auto', 'func' or 'autograd', got {grad!r}")
    if compile and fused is None:
        # Inductor fuses the foreach update into the backward's loops; torch's fused kernels
        # (tensor lr) have no fake implementation to trace.
        fused = False
    loss = _loss_of(model, loss_fn, autocast)
    average = _data_parallel_averaging(tx, grad, distributed, bucket_cap_mb, process_group)
    # The gradient function: torch.func's or autograd's, with the all-reduce of data
    # parallelism either overlapped with backward (buckets) or after it (a wrapper).
    if average is not None and bucket_cap_mb is not None:
        from functrain.distributed.data_parallel import GradientBuckets

        buckets = GradientBuckets(bucket_cap_mb, process_group)
        gradients = _autograd_gradients(loss, buckets)
    else:
        gradients = {
            "func": _func_gradients,
            "autograd": _autograd_gradients,
            "auto": _auto_gradients,
        }[grad](loss)
        if average is not None:
            gradients = _averaged(gradients, average)
    loss_scale = _loss_scale_reader()

    def train_step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, Tensor]]:
        if not model.training:
            model.train()
        buffers = state.buffers if donate else {k: b.clone() for k, b in state.buffers.items()}
        inputs = StepInputs(buffers, batch, _device_type(state), loss_scale(state.opt_state))
        grads, (value, aux) = gradients(state.params, inputs)
        params, opt_state = apply_gradients(
            tx, state.params, grads, state.opt_state, donate=donate, fused=fused
        )
        metrics = {"loss": value.detach(), **aux}
        return state.replace(params=params, buffers=buffers, opt_state=opt_state), metrics

    if compile:
        from functrain.compiled_step import compile_train_step

        return compile_train_step(train_step, compile)
    return train_step


class StepInputs(NamedTuple):
    """What a step's loss needs besides the params (which gradients are taken of)."""

    buffers: dict[str, Tensor]
    batch: Any
    device_type: str
    scale: Tensor | None  # the loss_scaling transform's scale, or None


Grads = dict[str, Tensor]
LossAndAux = tuple[Tensor, dict[str, Tensor]]
#: ``loss(params, inputs) -> (loss to differentiate, (loss, aux))``.
ScaledLoss = Callable[[dict[str, Tensor], StepInputs], tuple[Tensor, LossAndAux]]
#: ``gradients(params, inputs) -> (grads, (loss, aux))``.
Gradients = Callable[[dict[str, Tensor], StepInputs], tuple[Grads, LossAndAux]]


def _loss_of(model: torch.nn.Module, loss_fn: LossFn, autocast: torch.dtype | None) -> ScaledLoss:
    """``loss_fn`` on the module run with the given tensors; the loss times ``scale`` (the
    loss_scaling transform's, else the loss itself) is what gets differentiated."""
    call = ModuleCall(model)

    def loss(params: dict[str, Tensor], inputs: StepInputs) -> tuple[Tensor, LossAndAux]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            return call(params, inputs.buffers, args, kwargs)

        with _autocast(autocast, inputs.device_type):
            value, aux = _split_loss(loss_fn(forward, inputs.batch))
        # With a loss_scaling transform the gradients are those of loss * scale, which the
        # transform unscales (as GradScaler's scaler.scale(loss).backward()).
        scale = inputs.scale
        scaled = value if scale is None else value * scale.to(value.device)
        return scaled, (value.detach(), aux)

    return loss


def _func_gradients(loss: ScaledLoss) -> Gradients:
    """Gradients by ``torch.func.grad_and_value`` (composes with other torch.func transforms)."""
    grad_and_loss = grad_and_value(loss, has_aux=True)

    def gradients(params: dict[str, Tensor], inputs: StepInputs) -> tuple[Grads, LossAndAux]:
        grads, (_, out) = grad_and_loss(params, inputs)
        return grads, out

    return gradients


def _autograd_gradients(loss: ScaledLoss, buckets: GradientBuckets | None = None) -> Gradients:
    """Gradients by ``torch.autograd.grad`` on detached leaves; with ``buckets`` (a
    :class:`~functrain.distributed.data_parallel.GradientBuckets`) each bucket is all-reduced
    as backward fills it, and the averaged gradients are returned."""

    def gradients(params: dict[str, Tensor], inputs: StepInputs) -> tuple[Grads, LossAndAux]:
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            scaled, out = loss(leaves, inputs)
            if buckets is not None:
                buckets.attach(list(leaves.values()))
            if scaled.requires_grad:
                grads = torch.autograd.grad(scaled, list(leaves.values()), allow_unused=True)
            else:  # the loss uses no parameter (torch.func.grad gives zeros there too)
                grads = (None,) * len(leaves)
        if buckets is not None:
            return dict(zip(leaves, buckets.finish(grads), strict=True)), out
        # A parameter the loss does not use gets a zero gradient (torch.func's convention).
        filled = {
            k: g if g is not None else torch.zeros_like(params[k])
            for k, g in zip(leaves, grads, strict=True)
        }
        return filled, out

    return gradients


def _auto_gradients(loss: ScaledLoss) -> Gradients:
    """``grad="auto"``: autograd's gradients, or torch.func's where an outer transform must see
    the step (inside a ``torch.func`` transform, or a parameter that autograd tracks)."""
    func, autograd = _func_gradients(loss), _autograd_gradients(loss)

    def gradients(params: dict[str, Tensor], inputs: StepInputs) -> tuple[Grads, LossAndAux]:
        if torch._C._functorch.peek_interpreter_stack() is not None or (
            torch.is_grad_enabled() and any(p.requires_grad for p in params.values())
        ):
            return func(params, inputs)
        return autograd(params, inputs)

    return gradients


def _averaged(gradients: Gradients, average: Callable[[Grads], Grads]) -> Gradients:
    """``gradients`` followed by ``average`` (the all-reduce after backward)."""

    def averaged(params: dict[str, Tensor], inputs: StepInputs) -> tuple[Grads, LossAndAux]:
        grads, out = gradients(params, inputs)
        return average(grads), out

    return averaged


def _loss_scale_reader() -> Callable[[Any], Tensor | None]:
    """``read(opt_state)``: the loss_scaling transform's scale, or ``None`` without one
    (whether there is one is decided once, on the first step: the state's structure)."""
    found: bool | None = None

    def read(opt_state: Any) -> Tensor | None:
        nonlocal found
        if found is None:
            try:
                find_loss_scale_state(opt_state)
                found = True
            except ValueError:
                found = False
        return find_loss_scale_state(opt_state).scale if found else None

    return read


def _data_parallel_averaging(
    tx: GradientTransformation,
    grad: str,
    distributed: bool | None,
    bucket_cap_mb: float | None,
    process_group: Any,
) -> Callable[[dict[str, Tensor]], dict[str, Tensor]] | None:
    """How the step averages gradients across ranks, or ``None`` when it does not."""
    if distributed is False and bucket_cap_mb is None:
        return None
    # Imported here: functrain.distributed may import the loops, which import this module.
    from functrain.distributed.data_parallel import (
        all_reduce_mean,
        resolve_distributed,
        syncs_gradients,
    )

    on = resolve_distributed(distributed, process_group, where="make_train_step")
    if bucket_cap_mb is not None:
        if not on:
            raise ValueError(
                "make_train_step(bucket_cap_mb=...) buckets the gradient all-reduce of data "
                "parallel training; it needs distributed=True (or an initialized process group "
                "of several ranks with distributed=None)"
            )
        if grad == "func":
            raise ValueError(
                "make_train_step(bucket_cap_mb=...) overlaps the all-reduce with backward "
                "through autograd hooks; it needs grad='autograd' or 'auto' (torch.func.grad "
                "has no hooks), or pass bucket_cap_mb=None"
            )
        if syncs_gradients(tx):
            raise ValueError(
                "make_train_step(bucket_cap_mb=...): tx averages the gradients itself "
                "(average_gradients / shard_optimizer), so the step must not; pass "
                "bucket_cap_mb=None"
            )
    if not on or syncs_gradients(tx):
        return None

    def average(grads: dict[str, Tensor]) -> dict[str, Tensor]:
        return dict(zip(grads, all_reduce_mean(list(grads.values()), process_group), strict=True))

    return average


def make_eval_step(
    model: torch.nn.Module,
    fn: LossFn,
    *,
    autocast: torch.dtype | None = None,
) -> EvalStep:
    """Build ``step(state, batch) -> fn(forward, batch)`` in eval mode, without gradients.

    Args:
        model: the module.
        fn: ``fn(forward, batch) -> outputs``; ``forward`` runs ``model`` on the state's
            params and buffers (BatchNorm uses its running statistics, dropout is off).
        autocast: run ``fn`` under ``torch.autocast`` with this dtype.

    Example:
        >>> def metrics_fn(forward, batch):
        ...     x, y = batch
        ...     logits = forward(x)
        ...     return {"acc": (logits.argmax(-1) == y).float()}  # per-sample values
        >>> eval_step = make_eval_step(model, metrics_fn)  # doctest: +SKIP
    """

    call = ModuleCall(model)

    def eval_step(state: TrainState, batch: Any) -> Any:
        if model.training:
            model.eval()

        def forward(*args: Any, **kwargs: Any) -> Any:
            return call(state.params, state.buffers, args, kwargs)

        with torch.no_grad(), _autocast(autocast, _device_type(state)):
            return fn(forward, batch)

    return eval_step
