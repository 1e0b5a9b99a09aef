"""Read the hyperparameter values in force from any optimizer state, and set the ones a
transform reads from its state: functrain's equivalent of optax's ``inject_hyperparams``.

functrain's transforms already keep the values they used in their states, as 0-d tensors
(``LearningRateState.lr``, ``ScaleByAdamState.b1``, ``TraceState.momentum``,
``DecayState.weight_decay``, ``ClipState.norm``, ``LossScaleState.scale``), so no wrapper is
needed: :func:`values_in_force` walks a state (chains, named chains, ``masked``,
``partition``, ``accumulate``, ``loss_scaling``, ...) and returns them as a flat dict for a
logger, and :func:`set_hyperparam` returns a state with one of them replaced. Which
record fields hold which value, and which of them a transform reads back (may be set), is
the one table :data:`HYPERPARAMETERS`; the walking is :mod:`functrain.transforms.state_path`.

Example:
    >>> cosine_schedule = functrain.schedules.cosine_annealing_lr(1e-3, T_max=1000)
    >>> tx = chain(clip(1.0), adamw(lr=cosine_schedule))
    >>> values_in_force(state)  # doctest: +SKIP
    {'grad_norm': tensor(0.73), 'momentum': tensor(0.9, dtype=torch.float64),
     'lr': tensor(0.0009, dtype=torch.float64)}
    >>> state = set_hyperparam(state, "lr", 1e-4)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor

from functrain.transforms.adam import ScaleByAdamState
from functrain.transforms.clipping import ClipState
from functrain.transforms.loss_scaling import LossScaleState
from functrain.transforms.momentum import TraceState
from functrain.transforms.scaling import DecayState, LearningRateState
from functrain.transforms.state_path import Path, find, get, replace, walk
from functrain.transforms.torch_optimizer import TorchOptimizerState

__all__ = [
    "HYPERPARAMETERS",
    "SETTABLE",
    "Hyperparameter",
    "hyperparameter_paths",
    "recorded_paths",
    "set_hyperparam",
    "values_in_force",
]


@attrs.frozen
class Hyperparameter:
    """One value a transform records in its state record.

    Attributes:
        record: the state record class.
        field: its field holding the value (a 0-d tensor).
        name: the name it is logged and set under (mmengine logs Adam's ``betas[0]`` as
            ``momentum``).
        settable: the transform reads the field back from its state, so writing it changes
            the next update (:func:`set_hyperparam`, ``ReduceOnPlateauCallback``). Otherwise
            the value is what the transform used (a constant closed over when it was built,
            or a schedule's value) and is recorded for logging only.
        logged: :class:`~functrain.callbacks.LoggerHook` logs it every iteration.
    """

    record: type
    field: str
    name: str
    settable: bool
    logged: bool = True


#: The one table of hyperparameters recorded in states, in the logger's order of preference
#: (an Adam ``b1`` before a ``trace`` momentum). A 0-d tensor field called ``lr``, ``b1``,
#: ``momentum`` or ``weight_decay`` of a record not listed here is read too (:data:`_BY_FIELD`),
#: never set.
HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    Hyperparameter(LearningRateState, "lr", "lr", settable=True),
    Hyperparameter(TorchOptimizerState, "lr", "lr", settable=True, logged=False),
    Hyperparameter(ScaleByAdamState, "b1", "momentum", settable=False),
    Hyperparameter(TraceState, "momentum", "momentum", settable=False),
    Hyperparameter(DecayState, "weight_decay", "weight_decay", settable=False, logged=False),
    Hyperparameter(ClipState, "norm", "grad_norm", settable=False),
    Hyperparameter(LossScaleState, "scale", "loss_scale", settable=True, logged=False),
)
_BY_RECORD = {(h.record, h.field): h for h in HYPERPARAMETERS}
# Field name of another record -> logged name.
_BY_FIELD = {"lr": "lr", "b1": "momentum", "momentum": "momentum", "weight_decay": "weight_decay"}
#: The ``(record, field)`` pairs of :data:`HYPERPARAMETERS` that can be set: a constant
#: learning rate (``scale_by_learning_rate`` with a float, or a torch optimizer's) and the
#: loss scale.
SETTABLE = frozenset((h.record, h.field) for h in HYPERPARAMETERS if h.settable)


@attrs.frozen
class _Entry:
    name: str
    path: Path
    value: Tensor
    record: type
    field: str


def _entries_in(state: Any) -> list[_Entry]:
    """Every recorded hyperparameter in ``state``, depth first."""
    out = []
    for path, node in walk(state):
        if not attrs.has(type(node)):
            continue
        for f in attrs.fields(type(node)):
            value = getattr(node, f.name)
            if f.metadata.get("static", False) or not isinstance(value, Tensor):
                continue
            row = _BY_RECORD.get((type(node), f.name))
            name = row.name if row is not None else _BY_FIELD.get(f.name)
            # 1-d: one value per stacked ensemble member (functrain.ensemble).
            if name is not None and value.ndim <= 1:
                out.append(_Entry(name, path + (("attr", f.name),), value, type(node), f.name))
    return out


def recorded_vectors(state: Any) -> list[tuple[str, Tensor]]:
    """``(name, values)`` of every hyperparameter recorded per member (a 1-d tensor) in
    ``state``: what :func:`functrain.ensemble` checks against its member count."""
    return [(e.name, e.value) for e in _entries_in(state) if e.value.ndim == 1]


def _named(path: Path) -> tuple[str, ...]:
    # named_chain names and partition labels (dict keys): the readable part of a path.
    return tuple(str(key) for kind, key in path if kind == "key")


def _entries(state: Any) -> dict[str, _Entry]:
    by_name: dict[str, list[_Entry]] = {}
    for e in _entries_in(state):
        by_name.setdefault(e.name, []).append(e)
    keyed: dict[str, _Entry] = {}
    for name, group in by_name.items():
        if len(group) == 1:
            keyed[name] = group[0]
            continue
        keys = ["/".join(_named(e.path) + (name,)) for e in group]
        for e, key in zip(group, keys, strict=True):
            if keys.count(key) > 1:
                # Same readable path (e.g. two learning rates in one plain chain): use the
                # member indices too.
                key = "/".join(str(k) for kind, k in e.path if kind != "attr") + "/" + name
            keyed[key] = e
    return keyed


def hyperparameter_paths(opt_state: Any) -> dict[str, Path]:
    """``{name: path}`` of the values a logger reads every iteration (``lr``, ``momentum``,
    ``grad_norm``: the :data:`HYPERPARAMETERS` marked ``logged``), for those present in
    ``opt_state``: the first record of the first listed kind holding each name.

    Example:
        >>> paths = hyperparameter_paths(state)  # doctest: +SKIP
        >>> get(state, paths["lr"])  # doctest: +SKIP
    """
    out: dict[str, Path] = {}
    for h in HYPERPARAMETERS:
        if not h.logged or h.name in out:
            continue
        paths = find(opt_state, h.record)
        if paths:
            out[h.name] = paths[0] + (("attr", h.field),)
    return out


def recorded_paths(opt_state: Any, name: str) -> list[tuple[Hyperparameter, Path]]:
    """Every record in ``opt_state`` holding the :data:`HYPERPARAMETERS` value ``name``
    (e.g. every learning rate of a ``partition``), with its table row and its path.

    Example:
        >>> [(h.settable, p) for h, p in recorded_paths(state, "lr")]  # doctest: +SKIP
        [(True, (('item', 1), ('attr', 'lr')))]
    """
    found = [
        (h, path + (("attr", h.field),))
        for h in HYPERPARAMETERS
        if h.name == name
        for path in find(opt_state, h.record)
    ]
    # A torch optimizer without a numeric lr records None there.
    return [(h, path) for h, path in found if isinstance(get(opt_state, path), Tensor)]


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
    if isinstance(value, Tensor) and old.ndim == 1 and value.ndim == 1:
        # Per-member values (an ensemble): one new value per member.
        if value.shape != old.shape:
            raise ValueError(
                f"set_hyperparam: {name!r} has {old.shape[0]} per-member values, got "
                f"{value.shape[0]}"
            )
        new = value.detach().to(device=old.device, dtype=old.dtype)
    elif isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"set_hyperparam: {name!r} must be a scalar, got shape {value.shape}")
        new = value.detach().reshape(()).to(device=old.device, dtype=old.dtype)
        if old.ndim:  # one value for every member
            new = new.expand_as(old).clone()
    else:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"set_hyperparam: {name!r} must be a number, got {value!r}")
        if entry.field == "lr" and not value >= 0.0:
            raise ValueError(f"Invalid learning rate: {value!r}")
        if entry.field == "scale" and not value > 0.0:
            raise ValueError(f"Invalid loss scale: {value!r}; must be > 0")
        new = torch.full_like(old, float(value))
    return replace(state, entry.path, new)
