"""Read the hyperparameter values in force from any optimizer state, and set the ones a
transform reads from its state: functrain's equivalent of optax's ``inject_hyperparams``.

functrain's transforms already keep the values they used in their states, as 0-d tensors
(``LearningRateState.lr``, ``ScaleByAdamState.b1``, ``TraceState.momentum``,
``DecayState.weight_decay``, ``ClipState.norm``, ``LossScaleState.scale``), so no wrapper is
needed: :func:`values_in_force` walks a state (chains, named chains, ``masked``,
``partition``, ``accumulate``, ``loss_scaling``, ...) and returns them as a flat dict for a
logger, and :func:`set_hyperparam` returns a state with one of them replaced.

Example:
    >>> tx = chain(clip(1.0), adamw(lr=cosine_schedule))
    >>> values_in_force(state)  # doctest: +SKIP
    {'grad_norm': tensor(0.73), 'momentum': tensor(0.9, dtype=torch.float64),
     'lr': tensor(0.0009, dtype=torch.float64)}
    >>> state = set_hyperparam(state, "lr", 1e-4)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import torch
from torch import Tensor

from functrain.transforms.clipping import ClipState
from functrain.transforms.loss_scaling import LossScaleState
from functrain.transforms.scaling import LearningRateState
from functrain.transforms.torch_optimizer import TorchOptimizerState

__all__ = ["SETTABLE", "set_hyperparam", "values_in_force"]

# Field name of a state record -> logged name (mmengine logs Adam's betas[0] as momentum).
_BY_FIELD = {"lr": "lr", "b1": "momentum", "momentum": "momentum", "weight_decay": "weight_decay"}
# Fields whose meaning depends on their record.
_BY_RECORD = {(ClipState, "norm"): "grad_norm", (LossScaleState, "scale"): "loss_scale"}
#: The (record, field) pairs a transform reads back from its state, which
#: :func:`set_hyperparam` may therefore change: a constant learning rate
#: (``scale_by_learning_rate`` with a float) and the loss scale. Every other recorded value
#: is what the transform used (a constant closed over at construction, or a schedule's value)
#: and changes only by rebuilding the transform or its schedule.
SETTABLE = frozenset(
    {(LearningRateState, "lr"), (LossScaleState, "scale"), (TorchOptimizerState, "lr")}
)

Location = tuple[tuple[str, Any], ...]


@attrs.frozen
class _Entry:
    name: str
    named: tuple[str, ...]
    full: tuple[str, ...]
    location: Location
    value: Tensor
    record: type
    field: str


def _log_name(record: type, field: str, value: Any) -> str | None:
    if not isinstance(value, Tensor) or value.ndim != 0:
        return None
    return _BY_RECORD.get((record, field)) or _BY_FIELD.get(field)


def _walk(
    node: Any, named: tuple[str, ...], full: tuple[str, ...], loc: Location
) -> Iterator[_Entry]:
    if node is None or isinstance(node, Tensor):
        return
    if isinstance(node, tuple | list):
        if node and all(isinstance(x, Tensor) for x in node):
            return  # per-leaf buffers
        for i, child in enumerate(node):
            yield from _walk(child, named, full + (str(i),), loc + (("item", i),))
    elif isinstance(node, dict):
        # named_chain names and partition labels: the readable part of a path.
        for key, child in node.items():
            yield from _walk(child, named + (str(key),), full + (str(key),), loc + (("key", key),))
    elif attrs.has(type(node)):
        for f in attrs.fields(type(node)):
            if f.metadata.get("static", False):
                continue
            value = getattr(node, f.name)
            name = _log_name(type(node), f.name, value)
            if name is not None:
                yield _Entry(
                    name, named, full, loc + (("attr", f.name),), value, type(node), f.name
                )
            else:
                yield from _walk(value, named, full, loc + (("attr", f.name),))


def _entries(state: Any) -> dict[str, _Entry]:
    entries = list(_walk(state, (), (), ()))
    by_name: dict[str, list[_Entry]] = {}
    for e in entries:
        by_name.setdefault(e.name, []).append(e)
    keyed: dict[str, _Entry] = {}
    for name, group in by_name.items():
        if len(group) == 1:
            keyed[name] = group[0]
            continue
        keys = ["/".join(e.named + (name,)) for e in group]
        for e, key in zip(group, keys, strict=True):
            if keys.count(key) > 1:
                # Same readable path (e.g. two learning rates in one plain chain): use the
                # member indices too.
                key = "/".join(e.full + (name,))
            keyed[key] = e
    return keyed


def values_in_force(state: Any) -> dict[str, Tensor]:
    """The hyperparameter values in force recorded anywhere in ``state``, keyed by name.

    Names: ``lr`` (``LearningRateState.lr``), ``momentum`` (Adam's ``b1`` and SGD's
    ``momentum``, as mmengine logs them), ``weight_decay`` (a scheduled
    ``add_decayed_weights``; a constant one keeps no state), ``grad_norm`` (the last
    pre-clip global norm of :func:`~functrain.clip`), ``loss_scale`` (:func:`loss_scaling`),
    and any 0-d tensor field called ``lr``, ``momentum``, ``b1`` or ``weight_decay`` in
    another transform's state record. A name that occurs more than once is prefixed with
    its ``partition`` label / ``named_chain`` name (``"backbone/lr"``), or, where that does
    not tell them apart, with its full member path (``"1/0/lr"``).

    The values are the state's own 0-d tensors, on their devices: no host sync (a logger
    syncs when it prints). With :func:`~functrain.mask_multipliers` the recorded ``lr`` is
    the base one (before ``lr_mult``).

    Example:
        >>> state = chain(clip(1.0), adamw(lr=1e-3)).init(params)  # doctest: +SKIP
        >>> sorted(values_in_force(state))  # doctest: +SKIP
        ['grad_norm', 'lr', 'momentum']
    """
    return {key: e.value for key, e in _entries(state).items()}


def set_hyperparam(state: Any, name: str, value: float | Tensor) -> Any:
    """A copy of ``state`` with the recorded value ``name`` (a key of
    :func:`values_in_force`) replaced by ``value``; ``state`` itself is not modified.

    Only values the transform reads back from its state can be set (:data:`SETTABLE`): a
    constant learning rate (``scale_by_learning_rate(<float>)``, so ``sgd``/``adam``/
    ``adamw(lr=<float>)``; the next update uses the new value) and the loss scale of
    :func:`loss_scaling`. A scheduled learning rate is re-evaluated from its step count on
    every update, so setting it lasts until the next update; change the schedule instead.
    Momentum, betas, weight decay and the clip norm are recorded for logging only (the
    transform closed over them when it was built): setting them is a ``ValueError``.

    Args:
        state: an optimizer state.
        name: which value, e.g. ``"lr"`` or ``"head/lr"``.
        value: a number or a 0-d tensor (no host sync: a tensor is only moved and cast).

    Example:
        >>> state = set_hyperparam(state, "lr", 1e-4)  # doctest: +SKIP
    """
    entries = _entries(state)
    if name not in entries:
        raise ValueError(
            f"set_hyperparam: no value {name!r} in this state; it records {sorted(entries)!r}"
        )
    entry = entries[name]
    if (entry.record, entry.field) not in SETTABLE:
        raise ValueError(
            f"set_hyperparam: {name!r} ({entry.record.__name__}.{entry.field}) is recorded "
            "for logging only; the transform does not read it from its state. Rebuild the "
            "transform (or give it a schedule) to change it"
        )
    old = entry.value
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"set_hyperparam: {name!r} must be a scalar, got shape {value.shape}")
        new = value.detach().reshape(()).to(device=old.device, dtype=old.dtype)
    else:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"set_hyperparam: {name!r} must be a number, got {value!r}")
        if entry.field == "lr" and not value >= 0.0:
            raise ValueError(f"Invalid learning rate: {value!r}")
        if entry.field == "scale" and not value > 0.0:
            raise ValueError(f"Invalid loss scale: {value!r}; must be > 0")
        new = torch.tensor(float(value), dtype=old.dtype, device=old.device)
    return _replace(state, entry.location, new)


def _replace(node: Any, loc: Location, new: Any) -> Any:
    if not loc:
        return new
    kind, key = loc[0]
    if kind == "item":
        items = list(node)
        items[key] = _replace(node[key], loc[1:], new)
        return tuple(items) if isinstance(node, tuple) else items
    if kind == "key":
        out = dict(node)
        out[key] = _replace(node[key], loc[1:], new)
        return out
    return attrs.evolve(node, **{key: _replace(getattr(node, key), loc[1:], new)})
