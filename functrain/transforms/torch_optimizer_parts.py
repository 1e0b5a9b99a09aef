"""The pieces of :func:`functrain.from_torch_optimizer` that do not touch its state records:
argument checks (the class, its constructor's keywords, schedules), Python-number helpers,
and the param-group layout of per-parameter multipliers."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from functrain.transforms.base import GradientTransformation
from functrain.transforms.hyperparams import Schedule
from functrain.transforms.validation import is_schedule
from functrain.tree import TreeInfo, foreach_clone

__all__ = [
    "Hyper",
    "Layout",
    "Mults",
    "Number",
    "check_class",
    "check_kwargs",
    "check_no_closure",
    "check_schedules",
    "clone_all",
    "construct",
    "factory_signature",
    "export_param_state",
    "has_schedule",
    "host_tensor",
    "is_host_number",
    "is_hyper",
    "is_number",
    "layout",
    "load_param_state",
    "same",
    "step_optimizer",
    "to_python",
    "to_tensor",
    "value_at",
    "with_schedules",
]

Number = bool | int | float
Hyper = float | int | tuple[float | int, ...] | list[float | int]
Mults = tuple[float, float]
Layout = tuple[tuple[Mults, tuple[int, ...]], ...]

_CPU = torch.device("cpu")
_DTYPES = {bool: torch.bool, int: torch.int64, float: torch.float64}


def host_tensor(number: Number) -> Tensor:
    """``number`` as a 0-d CPU tensor that holds it exactly (``bool``, ``int64`` or
    ``float64`` for a Python ``bool`` / ``int`` / ``float``)."""
    return torch.tensor(number, dtype=_DTYPES[type(number)], device=_CPU)


def is_host_number(value: Any) -> bool:
    """A Python ``bool``, ``int`` or ``float`` (what :func:`host_tensor` holds)."""
    return type(value) in _DTYPES


def to_tensor(value: Hyper) -> Tensor | tuple[Tensor, ...]:
    """A tracked hyperparameter (a number or a tuple of them) as 0-d CPU tensors."""
    if isinstance(value, tuple | list):
        return tuple(host_tensor(v) for v in value)
    return host_tensor(value)


def to_python(value: Tensor | tuple[Tensor, ...], like: Hyper) -> Hyper:
    """A tracked hyperparameter back as Python numbers, in the container ``like`` has."""
    if isinstance(value, tuple | list):
        container = type(like) if isinstance(like, tuple | list) else tuple
        return container(v.item() for v in value)
    return value.item()


def is_number(value: Any) -> bool:
    """An ``int`` or ``float`` (not a ``bool``)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_hyper(value: Any) -> bool:
    """A hyperparameter the state tracks: a number or a non-empty tuple/list of numbers."""
    if isinstance(value, tuple | list):
        return bool(value) and all(is_number(v) for v in value)
    return is_number(value)


def has_schedule(value: Any) -> bool:
    """``value`` is a schedule or a tuple/list holding one."""
    if isinstance(value, tuple | list):
        return any(is_schedule(v) for v in value)
    return is_schedule(value)


def constructor_arguments(optimizer_cls: type) -> tuple[list[str], bool]:
    """The keyword arguments ``optimizer_cls(params, ...)`` accepts (its first argument, the
    parameters, left out) and whether it takes ``**kwargs``."""
    try:
        sig = inspect.signature(optimizer_cls.__init__)
    except (TypeError, ValueError):
        return [], True
    params = [p for p in sig.parameters.values() if p.name != "self"][1:]
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def check_class(optimizer_cls: Any) -> None:
    """Raise ``TypeError`` unless ``optimizer_cls`` is a ``torch.optim.Optimizer`` subclass
    (the message says what was passed instead: an instance, a transform...)."""
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


def check_no_closure(optimizer_cls: type) -> None:
    """Raise ``ValueError`` when ``optimizer_cls.step`` needs a closure (L-BFGS)."""
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


def signature_hint(name: str, accepted: Sequence[str], var_keyword: bool) -> str:
    """``"<name> accepts: a, b and **kwargs"`` for error messages."""
    listed = ", ".join(accepted) if accepted else "none"
    return f"{name} accepts: {listed}" + (" and **kwargs" if var_keyword else "")


def check_kwargs(optimizer_cls: type, defaults: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` for ``params`` or a keyword the constructor does not accept (with
    the closest accepted name)."""
    name = optimizer_cls.__qualname__
    accepted, var_keyword = constructor_arguments(optimizer_cls)
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
                f"({signature_hint(name, accepted, var_keyword)})"
            )


def construct(optimizer_cls: type, params: Any, kwargs: Mapping[str, Any]) -> torch.optim.Optimizer:
    """``optimizer_cls(params, **kwargs)``, its argument errors naming the class."""
    name = optimizer_cls.__qualname__
    try:
        return optimizer_cls(params, **kwargs)
    except TypeError as err:
        accepted, var_keyword = constructor_arguments(optimizer_cls)
        raise TypeError(f"{name}: {err} ({signature_hint(name, accepted, var_keyword)})") from err
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err


def value_at(schedule: Schedule, count: Tensor) -> float:
    # At the Python int step, on the host: the optimizer takes Python numbers, and this is the
    # value a hand-written loop or an mmengine scheduler sets (a tensor step may round a
    # plain callable in float32).
    return float(schedule(int(count)))


def with_schedules(value: Any, count: Tensor) -> Any:
    """``value`` with every schedule in it (it, or entries of a tuple) evaluated at ``count``."""
    if isinstance(value, tuple | list):
        return type(value)(value_at(v, count) if is_schedule(v) else v for v in value)
    return value_at(value, count) if is_schedule(value) else value


def same(a: Any, b: Any) -> bool:
    """``a`` and ``b`` are the same Python value of the same type (tensors only by identity)."""
    if a is b:
        return True
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return False
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001  (an exotic value without a boolean ==)
        return False


def clone_all(tensors: list[Tensor]) -> list[Tensor]:
    """Copies of ``tensors``: floating ones in one foreach launch, the others one by one."""
    floating = [i for i, t in enumerate(tensors) if t.is_floating_point()]
    out = list(tensors)
    for i, c in zip(floating, foreach_clone([tensors[i] for i in floating]), strict=True):
        out[i] = c
    for i, t in enumerate(tensors):
        if out[i] is t:
            out[i] = t.clone()
    return out


def layout(info: TreeInfo, label: str, tracked: Mapping[str, Hyper]) -> Layout:
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
        if not is_number(tracked.get(key)):
            users = [info.paths[i] for i, m in enumerate(per_leaf) if m[index] != 1.0]
            if users:
                mult = ("lr_mult", "decay_mult")[index]
                raise ValueError(
                    f"{label}: {users[0]!r} has a {mult} but the optimizer's param_groups "
                    f"have no numeric {key!r} for it to multiply (mmengine's paramwise_cfg "
                    f"scales param_groups['{key}'])"
                )
    return tuple((mults, tuple(idx)) for mults, idx in groups.items())


def check_schedules(
    cls_name: str, schedules: Mapping[str, Any], tracked: Mapping[str, Hyper]
) -> None:
    """Each schedule must replace a number the optimizer keeps in its ``param_groups``
    (``tracked``, from a probe), of the same shape (a tuple of schedules for ``betas``)."""
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


def factory_signature(optimizer_cls: type) -> inspect.Signature | None:
    """``optimizer_cls.__init__``'s signature as keyword-only arguments without ``self``
    and ``params`` (what :func:`functrain.torch_optimizer_factory` shows), or ``None`` when
    it cannot be read."""
    try:
        sig = inspect.signature(optimizer_cls.__init__)
    except (TypeError, ValueError):
        return None
    params = [p for p in sig.parameters.values() if p.name != "self"][1:]
    keyword = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind is not p.VAR_KEYWORD else p
        for p in params
        if p.kind is not p.VAR_POSITIONAL
    ]
    try:
        return sig.replace(parameters=keyword, return_annotation=GradientTransformation)
    except (TypeError, ValueError):
        return None


def export_param_state(
    opt: torch.optim.Optimizer,
    shadows: list[Tensor],
    paths: Sequence[str],
    label: str,
    wrap: Callable[[Number], Any],
) -> tuple[dict[str, Any] | None, ...]:
    """``opt.state`` as a ``TorchOptimizerState.param_state``: per leaf, its entries with
    tensors detached and Python numbers wrapped by ``wrap`` (``HostNumber.of``), or ``None``
    where it is empty."""
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
        out.append(_export_entries(entries, path, label, wrap) if entries else None)
    return tuple(out)


def _export_entries(
    entries: dict[Any, Any], path: str, label: str, wrap: Callable[[Number], Any]
) -> dict[str, Any]:
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
        elif is_host_number(value):
            record[key] = wrap(value)
        else:
            raise TypeError(
                f"{label}: optimizer.state[{path!r}][{key!r}] is a "
                f"{type(value).__name__}; the state can carry tensors, Python "
                "numbers (bool, int, float) and None"
            )
    return record


def load_param_state(
    opt: torch.optim.Optimizer,
    shadows: list[Tensor],
    param_state: tuple[dict[str, Any] | None, ...],
    donate: bool,
) -> None:
    """Put ``param_state`` into ``opt.state``: copies of its tensors unless ``donate``, and
    each wrapped Python number (the only other entries besides ``None``) as ``.item()``."""
    tensors = [
        v for entries in param_state if entries for v in entries.values() if isinstance(v, Tensor)
    ]
    copies = iter(tensors if donate else clone_all(tensors))
    for shadow, entries in zip(shadows, param_state, strict=True):
        if entries is None:
            opt.state.pop(shadow, None)
            continue
        opt.state[shadow] = {
            key: next(copies) if isinstance(v, Tensor) else (v if v is None else v.item())
            for key, v in entries.items()
        }


def step_optimizer(opt: torch.optim.Optimizer, label: str, cls_name: str) -> None:
    """``opt.step()``, a call of the missing closure explained."""
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
