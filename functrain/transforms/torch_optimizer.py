"""Any ``torch.optim.Optimizer`` subclass as a :class:`GradientTransformation` (an escape hatch).

MMDetection's tutorial has users write their own optimizer class and register it::

    @OPTIMIZERS.register_module()
    class MyOptimizer(Optimizer):
        def __init__(self, params, a, b, c): ...

:func:`from_torch_optimizer` runs such a class unchanged, number for number as it runs
imperatively::

    tx = from_torch_optimizer(MyOptimizer, a=0.1, b=0.9, c=1e-4)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    params = apply_updates(params, updates)

Each ``update`` makes private copies of the parameters ("shadows"), builds the optimizer over
them, loads its per-parameter state (copies, so the incoming state is never changed, unless
the caller donates it), sets ``shadow.grad = updates``, calls ``optimizer.step()`` and returns
``updates = new - params`` (so that ``params + updates`` is the optimizer's new
parameters), plus the new state. What the optimizer carries from one step to the next must be in ``optimizer.state``
and ``param_groups``, the contract its own ``state_dict()`` relies on; anything kept on
``self`` elsewhere is rebuilt fresh every step.

This is a compatibility path, not the fast one: it syncs with the host every step (the
hyperparameters, the Python numbers in the optimizer's state and the scheduled values are
handed to the optimizer as Python numbers, as torch's LR schedulers do), loops over the
leaves in Python and runs whatever implementation the class has. It is not differentiable
(``torch.func.grad`` cannot see through ``optimizer.step()``). The bookkeeping (step count,
hyperparameters, Python numbers) lives on the CPU, where reading it costs no device sync;
the optimizer's own tensors stay where it puts them.

Exactness. Through :func:`functrain.apply_gradients` (what :func:`functrain.make_train_step`
and the loops use) the optimizer writes the new parameters itself (the transform carries a
fused-path descriptor, :class:`~functrain.transforms.kernel_specs.Kernel`, for this), so they are
bitwise the imperative ones; with ``donate=True`` it even steps in place on the donated
parameters, with no copy. Two caveats of that path are functrain's usual ones: a
:func:`functrain.clip` right before it is folded in as ``grads / (1 / coefficient)`` (an
ulp from ``clip_grad_norm_``'s ``grads * coefficient`` at most), and it falls back to the
path below when autograd must see the step.

Through ``update`` + ``apply_updates`` the parameters become ``params + (new - params)``,
which is bitwise ``new`` whenever ``new`` is within a factor of two of ``params`` with the
same sign (Sterbenz's lemma makes the difference exact), and otherwise whenever any
floating-point update can give ``new``: where ``params + (new - params)`` misses, no other
update hits (none within 6 ulps did, over 92,444 such misses). Those misses come from a
parameter crossing zero, or shrinking more than twofold, in one step onto a value finer than
the grid of ``new - params`` (1.8% of the element-steps of a 50-step SGD run with momentum
0.9 and lr 0.05 on N(0, 1) parameters, none of Adam's); the result is then within an ulp of
``|new - params|`` of the optimizer's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from functrain.transforms import foreach as fe
from functrain.transforms import torch_optimizer_parts as parts
from functrain.transforms.base import (
    FlatTransform,
    GradientTransformation,
    from_flat,
    state_record,
    static_field,
)
from functrain.transforms.hyperparams import Schedule
from functrain.transforms.kernel_specs import Kernel, group_value
from functrain.transforms.optim_parts import check_state_paths
from functrain.transforms.torch_optimizer_parts import Hyper, Layout, Mults, Number
from functrain.transforms.validation import is_schedule
from functrain.tree import TreeInfo, foreach_clone

__all__ = [
    "HostNumber",
    "TorchOptimizerState",
    "from_torch_optimizer",
    "torch_optimizer_factory",
]

_CPU = torch.device("cpu")


@state_record
class HostNumber:
    """A Python number an optimizer keeps in its per-parameter state (``state["step"] = 0``).

    Held as a 0-d CPU tensor (``bool``, ``int64`` or ``float64``, which hold a Python
    ``bool`` / ``int`` / ``float`` exactly) so that the state contains only tensors, and
    handed back to the optimizer as the Python number (``value.item()``).

    Attributes:
        value: the number, a 0-d tensor.

    Example:
        >>> HostNumber.of(3).item()
        3
    """

    value: Tensor

    @classmethod
    def of(cls, number: Number) -> HostNumber:
        """Wrap a Python ``bool``, ``int`` or ``float``."""
        return cls(parts.host_tensor(number))

    def item(self) -> Number:
        """The Python number."""
        return self.value.item()


@state_record
class TorchOptimizerState:
    """State of :func:`from_torch_optimizer`: a torch optimizer's state, checkpointable.

    Attributes:
        count: number of ``update`` calls (0-d int64, CPU); schedules are evaluated at it.
        lr: the base learning rate in force (``param_groups[...]["lr"]`` before any
            ``lr_mult``), a 0-d float64 CPU tensor, or ``None`` when the optimizer has no
            numeric ``lr``. Kept as its own field so that loggers find it
            (:func:`functrain.values_in_force`).
        hyperparams: the other numeric hyperparameters of the param groups (``momentum``,
            ``betas``, ``weight_decay``, the ``a``/``b``/``c`` of a user's class...), by
            name: a 0-d CPU tensor (``float64`` for a float, ``int64`` for an int) or a tuple
            of them; base values, before ``decay_mult``. They are read back after every step,
            so an optimizer that changes its own hyperparameters keeps doing so.
        param_state: per leaf, what ``optimizer.state[param]`` holds (tensors, ``None`` and
            Python numbers as :class:`HostNumber`), or ``None`` while it is empty (most
            optimizers fill it on the first step).
        paths: dotted leaf paths the state was built for (static).
    """

    count: Tensor
    lr: Tensor | None
    hyperparams: dict[str, Tensor | tuple[Tensor, ...]]
    param_state: tuple[dict[str, Tensor | HostNumber | None] | None, ...]
    paths: tuple[str, ...] = static_field()


class _Adapter:
    """One :func:`from_torch_optimizer` transform: what a probe of the class found at
    construction (which ``param_groups`` entries are numbers the state tracks, which are
    scheduled) and the ``init`` / ``update`` / fused ``apply`` built on one
    ``optimizer.step()``."""

    def __init__(
        self, optimizer_cls: type[torch.optim.Optimizer], defaults: dict[str, Any]
    ) -> None:
        self.optimizer_cls = optimizer_cls
        self.cls_name = optimizer_cls.__qualname__
        self.label = f"from_torch_optimizer({self.cls_name})"
        zero = torch.zeros((), dtype=torch.int64, device=_CPU)
        # Schedules are given to the constructor at their step-0 value (it may validate them).
        self.init_kwargs = {k: parts.with_schedules(v, zero) for k, v in defaults.items()}
        # A probe over a dummy parameter: argument errors surface now (not at the first
        # step), and its param group tells which hyperparameters are numbers to track.
        probe = parts.construct(optimizer_cls, [torch.zeros((1, 1))], self.init_kwargs)
        group = probe.param_groups[0]
        self.group_keys = [k for k in group if k != "params"]
        self.tracked: dict[str, Hyper] = {
            k: v for k, v in group.items() if k != "params" and parts.is_hyper(v)
        }
        del probe, group
        self.schedules: dict[str, Any] = {
            k: v for k, v in defaults.items() if parts.has_schedule(v)
        }
        parts.check_schedules(self.cls_name, self.schedules, self.tracked)
        # A scheduled lr re-based per lr_mult, built once per multiplier.
        self.rebased: dict[float, Schedule] = {}

    # -- hyperparameters ----------------------------------------------------------------------
    def base_values(self, state: TorchOptimizerState) -> dict[str, Hyper]:
        """The tracked hyperparameters for this step, before multipliers, as Python numbers."""
        values: dict[str, Hyper] = {}
        for key, like in self.tracked.items():
            stored = state.lr if key == "lr" else state.hyperparams[key]
            values[key] = float(stored.item()) if key == "lr" else parts.to_python(stored, like)
            if key in self.schedules:
                sched = self.schedules[key]
                if isinstance(sched, tuple | list):
                    values[key] = type(values[key])(
                        parts.value_at(s, state.count) if is_schedule(s) else v
                        for s, v in zip(sched, values[key], strict=True)
                    )
                else:
                    values[key] = parts.value_at(sched, state.count)
        return values

    def group_values(self, base: dict[str, Hyper], mults: Mults, count: Tensor) -> dict[str, Hyper]:
        """One param group's values: ``lr * lr_mult`` (a schedule re-based), ``weight_decay
        * decay_mult``."""
        lr_mult, decay_mult = mults
        values = dict(base)
        if lr_mult != 1.0:
            sched = self.schedules.get("lr")
            if sched is None:
                values["lr"] = base["lr"] * lr_mult
            else:
                values["lr"] = parts.value_at(self.rebase(sched, lr_mult), count)
        if decay_mult != 1.0:
            values["weight_decay"] = base["weight_decay"] * decay_mult
        return values

    def rebase(self, sched: Schedule, lr_mult: float) -> Schedule:
        """``sched`` for a group with ``lr_mult``, as scale_by_learning_rate re-bases it."""
        if lr_mult not in self.rebased:
            start = getattr(sched, "base", None)
            with_base = getattr(sched, "with_base", None)
            self.rebased[lr_mult] = (
                with_base(start * lr_mult)
                if isinstance(start, float) and with_base is not None
                else (lambda step, m=lr_mult: parts.value_at(sched, step) * m)
            )
        return self.rebased[lr_mult]

    def read_back(
        self, opt: torch.optim.Optimizer, base: dict[str, Hyper], per_group: list[dict[str, Hyper]]
    ) -> dict[str, Hyper]:
        """The base hyperparameters in force after the step (an optimizer may change its own).

        Raises when the step added, removed or changed a group entry the state cannot carry.
        """
        after = dict(base)
        for g, (group, given) in enumerate(zip(opt.param_groups, per_group, strict=True)):
            keys = [k for k in group if k != "params"]
            if set(keys) != set(self.group_keys):
                changed = sorted(set(keys) ^ set(self.group_keys))
                raise RuntimeError(
                    f"{self.label}: optimizer.step() added or removed param_groups[{g}] "
                    f"entries {changed}; only the entries present after construction are "
                    "carried between steps"
                )
            for key in self.tracked:
                value = group[key]
                if parts.same(value, given[key]) or key in self.schedules:
                    continue
                if len(per_group) > 1 or not parts.is_hyper(value):
                    raise RuntimeError(
                        f"{self.label}: optimizer.step() changed param_groups[{g}][{key!r}] "
                        f"from {given[key]!r} to {value!r}; an optimizer that rewrites its own "
                        "hyperparameters can be carried only with one param group and numeric "
                        "values (no mask_multipliers)"
                    )
                after[key] = value
        return after

    def hyper_state(
        self, values: dict[str, Hyper], previous: TorchOptimizerState | None
    ) -> tuple[Tensor | None, dict[str, Any]]:
        """The record's ``lr`` and ``hyperparams``, reusing unchanged tensors."""

        def tensor(key: str, value: Hyper) -> Any:
            if previous is not None:
                old = previous.lr if key == "lr" else previous.hyperparams[key]
                if parts.same(parts.to_python(old, value), value):
                    return old
            if key == "lr":
                return torch.tensor(float(value), dtype=torch.float64, device=_CPU)
            return parts.to_tensor(value)

        lr = tensor("lr", values["lr"]) if "lr" in self.tracked else None
        rest = {k: tensor(k, v) for k, v in values.items() if k != "lr"}
        return lr, rest

    # -- the optimizer --------------------------------------------------------------------------
    def build(
        self, shadows: list[Tensor], layout: Layout, base: dict[str, Hyper], count: Tensor
    ) -> tuple[torch.optim.Optimizer, list[dict[str, Hyper]]]:
        """The optimizer over ``shadows``, its groups set to this step's hyperparameters."""
        per_group = [self.group_values(base, mults, count) for mults, _ in layout]
        if len(layout) == 1:
            opt = parts.construct(self.optimizer_cls, shadows, self.init_kwargs)
        else:
            # As mmengine's constructor: each group's lr / weight_decay given at construction.
            groups = []
            for (mults, idx), values in zip(layout, per_group, strict=True):
                group: dict[str, Any] = {"params": [shadows[i] for i in idx]}
                if mults[0] != 1.0:
                    group["lr"] = values["lr"]
                if mults[1] != 1.0:
                    group["weight_decay"] = values["weight_decay"]
                groups.append(group)
            opt = parts.construct(self.optimizer_cls, groups, self.init_kwargs)
        for group, values in zip(opt.param_groups, per_group, strict=True):
            group.update(values)  # what an LR scheduler does between steps
        return opt, per_group

    def init(self, params: list[Tensor], info: TreeInfo) -> TorchOptimizerState:
        """The state before the first step (what the constructor put in ``optimizer.state``)."""
        self.refuse_vmap()
        layout = parts.layout(info, self.label, self.tracked)
        with torch.no_grad():
            shadows = info.foreach(foreach_clone, params) if params else []
        count = torch.zeros((), dtype=torch.int64, device=_CPU)
        # The probe's values: what the constructor made of the arguments (schedules at 0).
        base = dict(self.tracked)
        # An optimizer that creates its state in the constructor (Adagrad) shows it here.
        opt, _ = self.build(shadows, layout, base, count)
        lr, hyperparams = self.hyper_state(base, None)
        param_state = parts.export_param_state(opt, shadows, info.paths, self.label, HostNumber.of)
        return TorchOptimizerState(count, lr, hyperparams, param_state, info.paths)

    def refuse_vmap(self) -> None:
        fe.refuse_vmap(
            self.label,
            f"it runs a stateful torch.optim.{self.cls_name} object (Python loops over "
            "param_groups, hyperparameters read on the host)",
            "use functrain's own optimizer of that name (functrain.sgd, functrain.adamw, ...), "
            "which vmaps",
        )

    def step(
        self,
        grads: list[Tensor],
        state: TorchOptimizerState,
        params: list[Tensor],
        info: TreeInfo,
        *,
        in_place: bool,
    ) -> tuple[list[Tensor], TorchOptimizerState]:
        """One ``optimizer.step()``: the new parameters and state.

        The optimizer steps on copies of ``params`` or, with ``in_place`` (the caller
        donated them), on ``params`` themselves; on the incoming ``grads`` and state buffers
        when ``info.donate``, else on copies.
        """
        self.refuse_vmap()
        check_state_paths(self.label, state.paths, info)
        donate = info.donate
        layout = parts.layout(info, self.label, self.tracked)
        base = self.base_values(state)
        with torch.no_grad():
            if in_place:
                shadows = [p.detach() for p in params]
            else:
                shadows = info.foreach(foreach_clone, params)
            if not donate:
                grads = info.foreach(foreach_clone, grads)
            opt, per_group = self.build(shadows, layout, base, state.count)
            parts.load_param_state(opt, shadows, state.param_state, donate)
            for shadow, grad in zip(shadows, grads, strict=True):
                if grad.dtype != shadow.dtype or grad.device != shadow.device:
                    grad = grad.to(device=shadow.device, dtype=shadow.dtype)
                shadow.grad = grad
            parts.step_optimizer(opt, self.label, self.cls_name)
            for shadow in shadows:
                shadow.grad = None  # the shadows outlive the step only as new parameters
        after = self.read_back(opt, base, per_group)
        lr, hyperparams = self.hyper_state(after, state)
        param_state = parts.export_param_state(opt, shadows, info.paths, self.label, HostNumber.of)
        new_state = TorchOptimizerState(state.count + 1, lr, hyperparams, param_state, state.paths)
        return shadows, new_state

    def update(
        self,
        updates: list[Tensor],
        state: TorchOptimizerState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], TorchOptimizerState]:
        """``new - params`` of one step (the best update there is: see the module docstring)."""
        if params is None:
            raise ValueError(
                f"{self.label} needs the parameters: call update(grads, state, params) (the "
                "optimizer steps on copies of them)"
            )
        new, new_state = self.step(updates, state, params, info, in_place=False)
        with torch.no_grad():
            deltas = info.foreach(lambda xs, ps: list(torch._foreach_sub(xs, ps)), new, params)
        return deltas, new_state

    def apply(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        state: TorchOptimizerState,
        info: TreeInfo,
        *,
        lr: float | Tensor | list[float | Tensor],
        weight_decay: float | list[float],
        decoupled: bool,
        grad_scale: Tensor | None = None,
    ) -> tuple[list[Tensor], TorchOptimizerState]:
        """The fused form (:func:`functrain.apply_gradients`): the optimizer writes the new
        parameters itself, so they are bitwise its own (no ``params + (new - params)``)."""
        if weight_decay != 0.0 and weight_decay != 0:
            raise AssertionError("from_torch_optimizer folds no weight decay")  # Kernel flags
        if grad_scale is not None:
            # A clip folded into the step, as torch's fused kernels take it.
            grads = info.foreach(
                lambda gs: list(torch._foreach_div(gs, grad_scale.to(gs[0].device))), grads
            )
        unit = isinstance(lr, float) and lr == -1.0
        in_place = info.donate and unit
        new, new_state = self.step(grads, state, params, info, in_place=in_place)
        if unit:  # nothing after this member in the chain: new is the step's result
            # In place, the optimizer wrote into the donated parameters themselves.
            return (list(params) if in_place else new), new_state

        def scaled(g: int, ps: list[Tensor], xs: list[Tensor]) -> list[Tensor]:
            # As the unfused chain computes it: (new - params) * scale, added to params.
            factor = group_value(lr, g, ps[0].device)
            deltas = torch._foreach_sub(xs, ps)
            return list(torch._foreach_add(ps, torch._foreach_mul(deltas, -factor)))

        with torch.no_grad():
            return info.foreach(scaled, params, new, with_group=True), new_state


def from_torch_optimizer(
    optimizer_cls: type[torch.optim.Optimizer], **defaults: Any
) -> GradientTransformation:
    """Run a ``torch.optim.Optimizer`` subclass as a :class:`GradientTransformation`.

    The result is the optimizer's own arithmetic, step for step: ``apply_gradients`` gives
    bitwise the parameters ``optimizer.step()`` would leave, ``apply_updates(params,
    updates)`` the same but for a rounding within an ulp of the update where a parameter
    crosses zero (see the module docstring), and the state holds ``optimizer.state`` and
    the numeric ``param_groups`` hyperparameters as tensors, so that it round-trips
    ``torch.save`` / functrain checkpoints and ``optree``. ``update`` needs the parameters.

    Without per-parameter multipliers the optimizer gets one param group with the leaves
    in flattening order, as ``optimizer_cls(list(params), **defaults)``. In a chain with
    :func:`functrain.mask_multipliers` it gets one param group per distinct ``(lr_mult,
    decay_mult)`` (leaves in order), with ``lr = lr * lr_mult`` and ``weight_decay =
    weight_decay * decay_mult``, as mmengine's ``DefaultOptimWrapperConstructor`` builds
    them; a scheduled ``lr`` is re-based per group as :func:`functrain.scale_by_learning_rate`
    does (``schedule.with_base(base * lr_mult)`` for a :class:`functrain.schedules.Schedule`,
    else ``float(schedule(step)) * lr_mult``).

    Host syncs every step and per-leaf Python loops: a compatibility path, not the fast one
    (use functrain's own optimizers, e.g. :func:`functrain.sgd`, where they exist).

    Args:
        optimizer_cls: the optimizer class (not an instance), e.g. ``torch.optim.SGD`` or a
            user's ``class MyOptimizer(Optimizer)``. Optimizers whose ``step`` needs a
            closure (``torch.optim.LBFGS``) are rejected: use :func:`functrain.lbfgs`.
        **defaults: the constructor's keyword arguments (everything but ``params``). A
            numeric hyperparameter that the optimizer keeps in its ``param_groups`` under the
            same name (``lr``, ``momentum``, ``a``...; or an entry of ``betas``) may be a
            schedule of the step (a callable, see :mod:`functrain.schedules`): before each
            step ``param_groups[i][name] = float(schedule(count))``, as an LR scheduler
            would set it.

    Returns:
        A transform whose state is a :class:`TorchOptimizerState`.

    Raises:
        TypeError: ``optimizer_cls`` is not an ``Optimizer`` subclass, or the constructor
            rejects the arguments (the message names the class and its accepted arguments).
        ValueError: the optimizer needs a closure; the constructor rejects a value (its own
            message, prefixed with the class name); a schedule for a name the optimizer does
            not keep as a number in its ``param_groups``.

    Example:
        >>> tx = chain(clip(1.0), from_torch_optimizer(torch.optim.SGD, lr=0.1, momentum=0.9))
        >>> state = tx.init(params)  # doctest: +SKIP
        >>> updates, state = tx.update(grads, state, params)  # doctest: +SKIP
        >>> params = apply_updates(params, updates)  # doctest: +SKIP
    """
    parts.check_class(optimizer_cls)
    parts.check_no_closure(optimizer_cls)
    parts.check_kwargs(optimizer_cls, defaults)
    adapter = _Adapter(optimizer_cls, defaults)
    shown = ", ".join(f"{k}={v!r}" for k, v in defaults.items())
    name = f"from_torch_optimizer({adapter.cls_name}{', ' + shown if shown else ''})"
    # No decay or clip is folded into this "kernel" other than what it can apply exactly
    # as the unfused chain would (see ``_Adapter.apply``).
    fusion = Kernel(adapter.apply, coupled_decay=False, decoupled_decay=False)
    return from_flat(FlatTransform(adapter.init, adapter.update, name=name, fusion=fusion))


def torch_optimizer_factory(
    optimizer_cls: type[torch.optim.Optimizer],
) -> Callable[..., GradientTransformation]:
    """A factory ``(**hyperparameters) -> from_torch_optimizer(optimizer_cls, ...)`` with the
    class's own keyword signature (``params`` left out), for registries and configs.

    The signature lets a config builder check the keys and read the defaults (the base
    ``lr`` a scheduler starts from) exactly as for functrain's own optimizers.

    Example:
        >>> import inspect
        >>> make = torch_optimizer_factory(torch.optim.SGD)
        >>> "momentum" in inspect.signature(make).parameters
        True
        >>> tx = make(lr=0.1, momentum=0.9)
    """
    parts.check_class(optimizer_cls)
    parts.check_no_closure(optimizer_cls)

    def factory(**defaults: Any) -> GradientTransformation:
        return from_torch_optimizer(optimizer_cls, **defaults)

    signature = parts.factory_signature(optimizer_cls)
    if signature is not None:
        factory.__signature__ = signature  # type: ignore[attr-defined]
    factory.__name__ = optimizer_cls.__name__
    factory.__qualname__ = optimizer_cls.__qualname__
    factory.__doc__ = (
        f"{optimizer_cls.__qualname__} run through functrain.from_torch_optimizer.\n\n"
        + (optimizer_cls.__doc__ or "")
    )
    factory.optimizer_cls = optimizer_cls  # type: ignore[attr-defined]
    return factory
