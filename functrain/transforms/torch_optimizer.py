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

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from functrain.transforms.adam import check_state_paths
from functrain.transforms.base import (
    FlatTransform,
    GradientTransformation,
    from_flat,
    state_record,
    static_field,
)
from functrain.transforms.hyperparams import Schedule
from functrain.transforms.kernel_specs import Kernel, group_value
from functrain.transforms.validation import is_schedule
from functrain.tree import TreeInfo, foreach_clone

__all__ = [
    "HostNumber",
    "TorchOptimizerState",
    "from_torch_optimizer",
    "torch_optimizer_factory",
]

Number = bool | int | float
Hyper = float | int | tuple[float | int, ...] | list[float | int]
Mults = tuple[float, float]
Layout = tuple[tuple[Mults, tuple[int, ...]], ...]

_CPU = torch.device("cpu")
_DTYPES = {bool: torch.bool, int: torch.int64, float: torch.float64}


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
        return cls(torch.tensor(number, dtype=_DTYPES[type(number)], device=_CPU))

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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_hyper(value: Any) -> bool:
    """A hyperparameter the state tracks: a number or a non-empty tuple/list of numbers."""
    if isinstance(value, tuple | list):
        return bool(value) and all(_is_number(v) for v in value)
    return _is_number(value)


def _has_schedule(value: Any) -> bool:
    if isinstance(value, tuple | list):
        return any(is_schedule(v) for v in value)
    return is_schedule(value)


def _constructor_arguments(optimizer_cls: type) -> tuple[list[str], bool]:
    """The keyword arguments ``optimizer_cls(params, ...)`` accepts (its first argument, the
    parameters, left out) and whether it takes ``**kwargs``."""
    try:
        sig = inspect.signature(optimizer_cls.__init__)
    except (TypeError, ValueError):
        return [], True
    params = [p for p in sig.parameters.values() if p.name != "self"][1:]
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def _check_class(optimizer_cls: Any) -> None:
    if isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer):
        return
    if isinstance(optimizer_cls, torch.optim.Optimizer):
        name = type(optimizer_cls).__name__
        raise TypeError(
            f"from_torch_optimizer expects a torch.optim.Optimizer subclass, got an instance of "
            f"{name}; pass the class and its arguments: from_torch_optimizer({name}, lr=...)"
        )
    if isinstance(optimizer_cls, GradientTransformation):
        raise TypeError(
            "from_torch_optimizer expects a torch.optim.Optimizer subclass, got a "
            "GradientTransformation: functrain's own optimizers need no adapter, use it directly"
        )
    name = getattr(optimizer_cls, "__qualname__", None) or type(optimizer_cls).__name__
    raise TypeError(
        f"from_torch_optimizer expects a torch.optim.Optimizer subclass (e.g. "
        f"torch.optim.SGD or your own `class MyOptimizer(Optimizer)`), got {name!r} "
        f"({type(optimizer_cls).__name__})"
    )


def _check_no_closure(optimizer_cls: type) -> None:
    name = optimizer_cls.__qualname__
    try:
        closure = inspect.signature(optimizer_cls.step).parameters.get("closure")
    except (TypeError, ValueError):
        closure = None
    needs_closure = closure is not None and closure.default is inspect.Parameter.empty
    if needs_closure or issubclass(optimizer_cls, torch.optim.LBFGS):
        raise ValueError(
            f"{name}.step needs a closure (it re-evaluates the loss inside a step), which a "
            "GradientTransformation's update cannot give it. For torch.optim.LBFGS use "
            "functrain.lbfgs (its update takes value_fn= / loss_fn=); for another such "
            "optimizer write a transform in the same style"
        )


def _signature_hint(name: str, accepted: Sequence[str], var_keyword: bool) -> str:
    listed = ", ".join(accepted) if accepted else "none"
    return f"{name} accepts: {listed}" + (" and **kwargs" if var_keyword else "")


def _check_kwargs(optimizer_cls: type, defaults: Mapping[str, Any]) -> None:
    name = optimizer_cls.__qualname__
    accepted, var_keyword = _constructor_arguments(optimizer_cls)
    if "params" in defaults:
        raise TypeError(
            f"from_torch_optimizer({name}, ...): do not pass 'params'; the transform hands "
            "the optimizer its parameters (pass only hyperparameters)"
        )
    if var_keyword:
        return
    for key in defaults:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"{name}: unknown argument {key!r}{hint} "
                f"({_signature_hint(name, accepted, var_keyword)})"
            )


def _construct(
    optimizer_cls: type, params: Any, kwargs: Mapping[str, Any]
) -> torch.optim.Optimizer:
    """``optimizer_cls(params, **kwargs)``, its argument errors naming the class."""
    name = optimizer_cls.__qualname__
    try:
        return optimizer_cls(params, **kwargs)
    except TypeError as err:
        accepted, var_keyword = _constructor_arguments(optimizer_cls)
        raise TypeError(f"{name}: {err} ({_signature_hint(name, accepted, var_keyword)})") from err
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err


def _value_at(schedule: Schedule, count: Tensor) -> float:
    # At the Python int step, on the host: the optimizer takes Python numbers, and this is the
    # value a hand-written loop or an mmengine scheduler sets (a tensor step may round a
    # plain callable in float32).
    return float(schedule(int(count)))


def _with_schedules(value: Any, count: Tensor) -> Any:
    """``value`` with every schedule in it (it, or entries of a tuple) evaluated at ``count``."""
    if isinstance(value, tuple | list):
        return type(value)(_value_at(v, count) if is_schedule(v) else v for v in value)
    return _value_at(value, count) if is_schedule(value) else value


def _to_tensor(value: Hyper) -> Tensor | tuple[Tensor, ...]:
    if isinstance(value, tuple | list):
        return tuple(HostNumber.of(v).value for v in value)
    return HostNumber.of(value).value


def _to_python(value: Tensor | tuple[Tensor, ...], like: Hyper) -> Hyper:
    """A tracked hyperparameter back as Python numbers, in the container ``like`` has."""
    if isinstance(value, tuple | list):
        container = type(like) if isinstance(like, tuple | list) else tuple
        return container(v.item() for v in value)
    return value.item()


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return False
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001  (an exotic value without a boolean ==)
        return False


def _clone_all(tensors: list[Tensor]) -> list[Tensor]:
    """Copies of ``tensors``: floating ones in one foreach launch, the others one by one."""
    floating = [i for i, t in enumerate(tensors) if t.is_floating_point()]
    out = list(tensors)
    for i, c in zip(floating, foreach_clone([tensors[i] for i in floating]), strict=True):
        out[i] = c
    for i, t in enumerate(tensors):
        if out[i] is t:
            out[i] = t.clone()
    return out


def _layout(info: TreeInfo, label: str, tracked: Mapping[str, Hyper]) -> Layout:
    """The torch param groups: one per distinct ``(lr_mult, decay_mult)``, leaves in order."""
    everything = (((1.0, 1.0), tuple(range(info.num_leaves))),)
    if info.multipliers is None or all(m == (1.0, 1.0) for m in info.multipliers):
        return everything
    per_leaf: list[Mults] = [(1.0, 1.0)] * info.num_leaves
    for g, idx in enumerate(info.groups):
        for i in idx:
            per_leaf[i] = info.multipliers[g]
    groups: dict[Mults, list[int]] = {}
    for i, mults in enumerate(per_leaf):
        groups.setdefault(mults, []).append(i)
    for key, index in (("lr", 0), ("weight_decay", 1)):
        if not _is_number(tracked.get(key)):
            users = [info.paths[i] for i, m in enumerate(per_leaf) if m[index] != 1.0]
            if users:
                mult = ("lr_mult", "decay_mult")[index]
                raise ValueError(
                    f"{label}: {users[0]!r} has a {mult} but the optimizer's param_groups "
                    f"have no numeric {key!r} for it to multiply (mmengine's paramwise_cfg "
                    f"scales param_groups['{key}'])"
                )
    return tuple((mults, tuple(idx)) for mults, idx in groups.items())


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
    _check_class(optimizer_cls)
    _check_no_closure(optimizer_cls)
    _check_kwargs(optimizer_cls, defaults)
    cls_name = optimizer_cls.__qualname__
    label = f"from_torch_optimizer({cls_name})"

    zero = torch.zeros((), dtype=torch.int64, device=_CPU)
    # Schedules are given to the constructor at their step-0 value (it may validate them).
    init_kwargs = {k: _with_schedules(v, zero) for k, v in defaults.items()}
    # A probe over a dummy parameter: argument errors surface now (not at the first step),
    # and its param group tells which hyperparameters are numbers the state must track.
    probe = _construct(optimizer_cls, [torch.zeros((1, 1))], init_kwargs)
    group_keys = [k for k in probe.param_groups[0] if k != "params"]
    tracked: dict[str, Hyper] = {
        k: v for k, v in probe.param_groups[0].items() if k != "params" and _is_hyper(v)
    }
    del probe
    schedules: dict[str, Any] = {k: v for k, v in defaults.items() if _has_schedule(v)}
    for key, value in schedules.items():
        if key not in tracked:
            where = ", ".join(tracked) or "no numbers"
            raise ValueError(
                f"{cls_name}: {key!r} is a schedule but {cls_name} keeps no number {key!r} in "
                f"its param_groups (they hold {where}), so it cannot be set before a step; "
                "give it a constant"
            )
        if isinstance(value, tuple | list) and (
            not isinstance(tracked[key], tuple | list) or len(tracked[key]) != len(value)
        ):
            raise ValueError(
                f"{cls_name}: {key!r} is {value!r} but its param_groups entry is "
                f"{tracked[key]!r}; a schedule must replace a number of the same shape"
            )

    def base_values(state: TorchOptimizerState) -> dict[str, Hyper]:
        """The tracked hyperparameters for this step, before multipliers, as Python numbers."""
        values: dict[str, Hyper] = {}
        for key, like in tracked.items():
            stored = state.lr if key == "lr" else state.hyperparams[key]
            values[key] = float(stored.item()) if key == "lr" else _to_python(stored, like)
            if key in schedules:
                sched = schedules[key]
                if isinstance(sched, tuple | list):
                    values[key] = type(values[key])(
                        _value_at(s, state.count) if is_schedule(s) else v
                        for s, v in zip(sched, values[key], strict=True)
                    )
                else:
                    values[key] = _value_at(sched, state.count)
        return values

    rebased: dict[float, Schedule] = {}

    def group_values(base: dict[str, Hyper], mults: Mults, count: Tensor) -> dict[str, Hyper]:
        lr_mult, decay_mult = mults
        values = dict(base)
        if lr_mult != 1.0:
            sched = schedules.get("lr")
            if sched is None:
                values["lr"] = base["lr"] * lr_mult
            else:
                if lr_mult not in rebased:
                    start = getattr(sched, "base", None)
                    with_base = getattr(sched, "with_base", None)
                    rebased[lr_mult] = (
                        with_base(start * lr_mult)
                        if isinstance(start, float) and with_base is not None
                        else (lambda step, m=lr_mult: _value_at(sched, step) * m)
                    )
                values["lr"] = _value_at(rebased[lr_mult], count)
        if decay_mult != 1.0:
            values["weight_decay"] = base["weight_decay"] * decay_mult
        return values

    def build(
        shadows: list[Tensor], layout: Layout, base: dict[str, Hyper], count: Tensor
    ) -> tuple[torch.optim.Optimizer, list[dict[str, Hyper]]]:
        """The optimizer over ``shadows``, its groups set to this step's hyperparameters."""
        per_group = [group_values(base, mults, count) for mults, _ in layout]
        if len(layout) == 1:
            opt = _construct(optimizer_cls, shadows, init_kwargs)
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
            opt = _construct(optimizer_cls, groups, init_kwargs)
        for group, values in zip(opt.param_groups, per_group, strict=True):
            group.update(values)  # what an LR scheduler does between steps
        return opt, per_group

    def export(opt: torch.optim.Optimizer, shadows: list[Tensor], paths: Sequence[str]) -> tuple:
        """``opt.state`` as the record's ``param_state``."""
        index = {id(s): i for i, s in enumerate(shadows)}
        for key in opt.state:
            if id(key) not in index:
                raise RuntimeError(
                    f"{label}: the optimizer keeps state under {key!r}, which is not one of "
                    "its parameters; only per-parameter state (optimizer.state[param]) can be "
                    "carried between steps"
                )
        out: list[dict[str, Any] | None] = []
        for shadow, path in zip(shadows, paths, strict=True):
            entries = opt.state.get(shadow)
            if not entries:
                out.append(None)
                continue
            record: dict[str, Any] = {}
            for key, value in entries.items():
                if not isinstance(key, str):
                    raise TypeError(
                        f"{label}: optimizer.state[{path!r}] has a non-string key {key!r}; "
                        "only string keys can be checkpointed"
                    )
                if isinstance(value, Tensor):
                    record[key] = value.detach()
                elif value is None:
                    record[key] = None
                elif type(value) in _DTYPES:
                    record[key] = HostNumber.of(value)
                else:
                    raise TypeError(
                        f"{label}: optimizer.state[{path!r}][{key!r}] is a "
                        f"{type(value).__name__}; the state can carry tensors, Python "
                        "numbers (bool, int, float) and None"
                    )
            out.append(record)
        return tuple(out)

    def load(
        opt: torch.optim.Optimizer,
        shadows: list[Tensor],
        param_state: tuple[dict[str, Any] | None, ...],
        donate: bool,
    ) -> None:
        """Put ``param_state`` into ``opt.state``: copies of its tensors unless ``donate``."""
        tensors = [
            v
            for entries in param_state
            if entries
            for v in entries.values()
            if isinstance(v, Tensor)
        ]
        copies = iter(tensors if donate else _clone_all(tensors))
        for shadow, entries in zip(shadows, param_state, strict=True):
            if entries is None:
                opt.state.pop(shadow, None)
                continue
            opt.state[shadow] = {
                key: next(copies)
                if isinstance(v, Tensor)
                else (v.item() if isinstance(v, HostNumber) else v)
                for key, v in entries.items()
            }

    def read_back(
        opt: torch.optim.Optimizer, base: dict[str, Hyper], per_group: list[dict[str, Hyper]]
    ) -> dict[str, Hyper]:
        """The base hyperparameters in force after the step (an optimizer may change its own).

        Raises when the step added, removed or changed a group entry the state cannot carry.
        """
        after = dict(base)
        for g, (group, given) in enumerate(zip(opt.param_groups, per_group, strict=True)):
            keys = [k for k in group if k != "params"]
            if set(keys) != set(group_keys):
                changed = sorted(set(keys) ^ set(group_keys))
                raise RuntimeError(
                    f"{label}: optimizer.step() added or removed param_groups[{g}] entries "
                    f"{changed}; only the entries present after construction are carried "
                    "between steps"
                )
            for key in tracked:
                value = group[key]
                if _same(value, given[key]) or key in schedules:
                    continue
                if len(per_group) > 1 or not _is_hyper(value):
                    raise RuntimeError(
                        f"{label}: optimizer.step() changed param_groups[{g}][{key!r}] from "
                        f"{given[key]!r} to {value!r}; an optimizer that rewrites its own "
                        "hyperparameters can be carried only with one param group and numeric "
                        "values (no mask_multipliers)"
                    )
                after[key] = value
        return after

    def hyper_state(
        values: dict[str, Hyper], previous: TorchOptimizerState | None
    ) -> tuple[Tensor | None, dict[str, Any]]:
        """The record's ``lr`` and ``hyperparams``, reusing unchanged tensors."""

        def tensor(key: str, value: Hyper) -> Any:
            if previous is not None:
                old = previous.lr if key == "lr" else previous.hyperparams[key]
                if _same(_to_python(old, value), value):
                    return old
            if key == "lr":
                return torch.tensor(float(value), dtype=torch.float64, device=_CPU)
            return _to_tensor(value)

        lr = tensor("lr", values["lr"]) if "lr" in tracked else None
        rest = {k: tensor(k, v) for k, v in values.items() if k != "lr"}
        return lr, rest

    def init(params: list[Tensor], info: TreeInfo) -> TorchOptimizerState:
        layout = _layout(info, label, tracked)
        with torch.no_grad():
            shadows = info.foreach(foreach_clone, params) if params else []
        count = torch.zeros((), dtype=torch.int64, device=_CPU)
        # The probe's values: what the constructor made of the arguments (schedules at 0).
        base = dict(tracked)
        # An optimizer that creates its state in the constructor (Adagrad) shows it here.
        opt, _ = build(shadows, layout, base, count)
        lr, hyperparams = hyper_state(base, None)
        param_state = export(opt, shadows, info.paths)
        return TorchOptimizerState(count, lr, hyperparams, param_state, info.paths)

    def step(
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
        check_state_paths(label, state.paths, info)
        donate = info.donate
        layout = _layout(info, label, tracked)
        base = base_values(state)
        with torch.no_grad():
            if in_place:
                shadows = [p.detach() for p in params]
            else:
                shadows = info.foreach(foreach_clone, params)
            if not donate:
                grads = info.foreach(foreach_clone, grads)
            opt, per_group = build(shadows, layout, base, state.count)
            load(opt, shadows, state.param_state, donate)
            for shadow, grad in zip(shadows, grads, strict=True):
                if grad.dtype != shadow.dtype or grad.device != shadow.device:
                    grad = grad.to(device=shadow.device, dtype=shadow.dtype)
                shadow.grad = grad
            try:
                opt.step()
            except TypeError as err:
                if "NoneType" in str(err) and "callable" in str(err):
                    raise TypeError(
                        f"{label}: {cls_name}.step() called its closure, which a "
                        "GradientTransformation cannot give it (use functrain.lbfgs for "
                        f"L-BFGS): {err}"
                    ) from err
                raise
            for shadow in shadows:
                shadow.grad = None  # the shadows outlive the step only as new parameters
        after = read_back(opt, base, per_group)
        lr, hyperparams = hyper_state(after, state)
        param_state = export(opt, shadows, info.paths)
        new_state = TorchOptimizerState(state.count + 1, lr, hyperparams, param_state, state.paths)
        return shadows, new_state

    def update(
        updates: list[Tensor],
        state: TorchOptimizerState,
        params: list[Tensor] | None,
        info: TreeInfo,
        **extra: Any,
    ) -> tuple[list[Tensor], TorchOptimizerState]:
        if params is None:
            raise ValueError(
                f"{label} needs the parameters: call update(grads, state, params) (the "
                "optimizer steps on copies of them)"
            )
        new, new_state = step(updates, state, params, info, in_place=False)
        with torch.no_grad():
            # The best update there is (see the module docstring).
            deltas = info.foreach(lambda xs, ps: list(torch._foreach_sub(xs, ps)), new, params)
        return deltas, new_state

    def apply(
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
        new, new_state = step(grads, state, params, info, in_place=in_place)
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

    shown = ", ".join(f"{k}={v!r}" for k, v in defaults.items())
    name = f"from_torch_optimizer({cls_name}{', ' + shown if shown else ''})"
    # No decay or clip is folded into this "kernel" other than what it can apply exactly
    # as the unfused chain would (see ``apply``).
    fusion = Kernel(apply, coupled_decay=False, decoupled_decay=False)
    return from_flat(FlatTransform(init, update, name=name, fusion=fusion))


def torch_optimizer_factory(
    optimizer_cls: type[torch.optim.Optimizer],
) -> Callable[..., GradientTransformation]:
    """A factory ``(**hyperparameters) -> from_torch_optimizer(optimizer_cls, ...)`` with the
    class's own keyword signature (``params`` left out), for registries and configs.

    The signature lets a config builder check the keys and read the defaults (the base
    ``lr`` a scheduler starts from) exactly as for functrain's own optimizers.

    Example:
        >>> make = torch_optimizer_factory(torch.optim.SGD)
        >>> "momentum" in inspect.signature(make).parameters
        True
        >>> tx = make(lr=0.1, momentum=0.9)
    """
    _check_class(optimizer_cls)
    _check_no_closure(optimizer_cls)

    def factory(**defaults: Any) -> GradientTransformation:
        return from_torch_optimizer(optimizer_cls, **defaults)

    try:
        sig = inspect.signature(optimizer_cls.__init__)
        params = [p for p in sig.parameters.values() if p.name != "self"][1:]
        keyword = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind is not p.VAR_KEYWORD else p
            for p in params
            if p.kind is not p.VAR_POSITIONAL
        ]
        factory.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=keyword, return_annotation=GradientTransformation
        )
    except (TypeError, ValueError):
        pass
    factory.__name__ = optimizer_cls.__name__
    factory.__qualname__ = optimizer_cls.__qualname__
    factory.__doc__ = (
        f"{optimizer_cls.__qualname__} run through functrain.from_torch_optimizer.\n\n"
        + (optimizer_cls.__doc__ or "")
    )
    factory.optimizer_cls = optimizer_cls  # type: ignore[attr-defined]
    return factory
