"""Build schedules from mmengine ``param_scheduler`` config dicts."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from functrain.schedules._anneal import CosineAnnealing, CosineRestart, Poly
from functrain.schedules._cycle import OneCycle
from functrain.schedules._decay import Exponential, MultiStep, Step
from functrain.schedules._members import count_members, is_vector, name_member, vector_values
from functrain.schedules._piece import INF, Piece
from functrain.schedules._schedule import Schedule
from functrain.schedules._warmup import Constant, Linear

__all__ = [
    "PLATEAU_TYPES",
    "SCHEDULER_TYPES",
    "from_mmengine",
    "mmengine_target",
    "piece_from_mmengine",
    "plateau_kwargs",
]

# The piece of each mmengine scheduler family (the type name without LR / Momentum).
_FAMILIES: tuple[type[Piece], ...] = (
    Constant,
    CosineAnnealing,
    CosineRestart,
    Exponential,
    Linear,
    MultiStep,
    OneCycle,
    Poly,
    Step,
)

#: mmengine's registry: ``<family>LR``, ``<family>Momentum`` (no OneCycleMomentum) and
#: the generic ``<family>ParamScheduler``, which names its hyperparameter with
#: ``param_name`` (``None`` here): type name -> (piece class, hyperparameter).
SCHEDULER_TYPES: dict[str, tuple[type[Piece], str | None]] = {}
for _cls in _FAMILIES:
    SCHEDULER_TYPES[f"{_cls.__name__}LR"] = (_cls, "lr")
    SCHEDULER_TYPES[f"{_cls.__name__}ParamScheduler"] = (_cls, None)
    if _cls is not OneCycle:
        SCHEDULER_TYPES[f"{_cls.__name__}Momentum"] = (_cls, "momentum")
#: mmengine's ReduceOnPlateau types: type name -> hyperparameter (``None``: param_name).
PLATEAU_TYPES: dict[str, str | None] = {
    "ReduceOnPlateauLR": "lr",
    "ReduceOnPlateauMomentum": "momentum",
    "ReduceOnPlateauParamScheduler": None,
}
_WINDOW_KEYS = ("type", "begin", "end", "by_epoch", "convert_to_iter_based", "last_step")
_IGNORED_KEYS = ("verbose", "_scope_")
_PLATEAU_KEYS = (
    "monitor",
    "rule",
    "factor",
    "patience",
    "threshold",
    "threshold_rule",
    "cooldown",
    "min_value",
    "eps",
)


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _type_name(cfg: Mapping[str, Any], where: str) -> str:
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where}: a scheduler config must be a dict, got {cfg!r}")
    if "type" not in cfg:
        raise ValueError(f"{where}: missing key 'type' (e.g. type='CosineAnnealingLR')")
    name = cfg["type"]
    if not isinstance(name, str):
        name = getattr(name, "__name__", repr(name))
    if name not in SCHEDULER_TYPES and name not in PLATEAU_TYPES:
        known = [*SCHEDULER_TYPES, *PLATEAU_TYPES]
        raise ValueError(f"{where}: unknown scheduler type {name!r}{_suggest(name, known)}")
    return name


def mmengine_target(cfg: Mapping[str, Any]) -> str:
    """The hyperparameter an mmengine scheduler config drives.

    ``'lr'`` for ``*LR`` types, ``'momentum'`` for ``*Momentum`` types (Adam's
    ``betas[0]`` or SGD's momentum), and the ``param_name`` key for ``*ParamScheduler``.

    Args:
        cfg: one entry of ``param_scheduler``.

    Returns:
        The hyperparameter name.

    Example:
        >>> mmengine_target(dict(type='CosineAnnealingMomentum', T_max=8))
        'momentum'
    """
    where = "param_scheduler"
    name = _type_name(cfg, where)
    target = SCHEDULER_TYPES[name][1] if name in SCHEDULER_TYPES else PLATEAU_TYPES[name]
    if target is None:
        if "param_name" not in cfg:
            raise ValueError(f"{where}: {name} needs the key 'param_name' (e.g. 'lr')")
        return str(cfg["param_name"])
    return target


def _check_keys(cfg: Mapping[str, Any], allowed: Sequence[str], where: str, name: str) -> None:
    for key in cfg:
        if key not in allowed:
            raise ValueError(
                f"{where}: {name} has no argument {key!r}{_suggest(str(key), allowed)}"
            )


def piece_from_mmengine(
    cfg: Mapping[str, Any],
    *,
    epoch_length: int | None = None,
    max_epochs: int | None = None,
    max_iters: int | None = None,
) -> Piece:
    """Translate one mmengine scheduler config dict into a :class:`Piece`.

    Follows mmengine's builder: ``by_epoch`` defaults to True; a missing ``end`` is
    ``max_epochs`` (by epoch) or ``max_iters`` when those are given (the runner's
    default), else ``INF``; ``convert_to_iter_based=True`` converts the window and
    periods to iterations with ``epoch_length``.

    Args:
        cfg: e.g. ``dict(type='MultiStepLR', milestones=[8, 11], gamma=0.1)``.
        epoch_length: iterations per epoch (required by ``convert_to_iter_based``).
        max_epochs: the train loop's epochs, used as the default ``end`` of by-epoch items.
        max_iters: the train loop's iterations, the default ``end`` of iteration items.

    Returns:
        The piece (``by_epoch=False`` after conversion).

    Example:
        >>> piece_from_mmengine(dict(type='CosineAnnealingLR', T_max=8, end=8,
        ...     convert_to_iter_based=True), epoch_length=100)
        CosineAnnealing(T_max=800, end=800)
    """
    where = "param_scheduler"
    name = _type_name(cfg, where)
    if name in PLATEAU_TYPES:
        raise ValueError(
            f"{where}: {name} depends on validation metrics, so it is not a function of the "
            "step; build it with ReduceOnPlateau.from_mmengine(cfg) and let the training "
            "loop feed it"
        )
    cls, target = SCHEDULER_TYPES[name]
    per_member = ("begin", "end", *cls.member_fields())
    vectors = {
        k: vector_values(f"{where}: {name}", k, cfg[k])
        for k in per_member
        if k in cfg and is_vector(cfg[k])
    }
    if vectors:
        # One plain config per member, translated as always, then joined: each member
        # gets exactly the scalar translation (windows and periods converted alike).
        n = count_members(f"{where}: {name}", vectors)
        assert n is not None
        pieces = []
        for i in range(n):
            one = {**cfg, **{k: v[i] for k, v in vectors.items()}}
            try:
                pieces.append(
                    piece_from_mmengine(
                        one, epoch_length=epoch_length, max_epochs=max_epochs, max_iters=max_iters
                    )
                )
            except ValueError as err:
                raise ValueError(name_member(str(err), vectors, i)) from None
        return cls.join(pieces, list(vectors))
    own = [f.name for f in attrs.fields(cls) if f.name not in ("begin", "end", "by_epoch")]
    allowed = [*_WINDOW_KEYS, *_IGNORED_KEYS, *own]
    if target is None:
        allowed.append("param_name")
    _check_keys(cfg, allowed, where, name)
    if cfg.get("last_step", -1) != -1:
        raise ValueError(
            f"{where}: {name}: `last_step` must be -1; resume a schedule by evaluating it at "
            "the restored step instead"
        )
    if target is None and cls is OneCycle and cfg.get("param_name") != "lr":
        raise ValueError(f"{where}: {name}: mmengine's OneCycle only schedules param_name='lr'")
    by_epoch = cfg.get("by_epoch", True)
    if not isinstance(by_epoch, bool):
        raise ValueError(f"{where}: {name}: `by_epoch` must be a bool, got {by_epoch!r}")
    kwargs = {key: cfg[key] for key in own if key in cfg}
    for key in ("milestones", "periods", "restart_weights"):
        if key in kwargs and isinstance(kwargs[key], Sequence):
            kwargs[key] = tuple(kwargs[key])
    begin = cfg.get("begin", 0)
    default_end = max_epochs if by_epoch else max_iters
    end = cfg.get("end", INF if default_end is None else default_end)
    convert = cfg.get("convert_to_iter_based", False)
    if convert:
        if not by_epoch:
            raise ValueError(
                f"{where}: {name}: `convert_to_iter_based` needs by_epoch=True (only "
                "epoch-based schedulers can be converted)"
            )
        if epoch_length is None or isinstance(epoch_length, bool) or epoch_length < 1:
            raise ValueError(
                f"{where}: {name}: `convert_to_iter_based` needs `epoch_length`, the number "
                f"of iterations per epoch (got {epoch_length!r})"
            )
    try:
        if convert:
            # mmengine's build_iter_from_epoch: periods scale, begin/end truncate with int().
            kwargs.update(cls.scale_periods(kwargs, epoch_length))
            begin = int(begin * epoch_length)  # type: ignore[operator]
            end = end if end == INF else int(end * epoch_length)  # type: ignore[operator]
            by_epoch = False
        return cls(**kwargs, begin=begin, end=end, by_epoch=by_epoch)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {name}: {err}") from err


def from_mmengine(
    cfg: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    base: float,
    epoch_length: int | None = None,
    param: str | None = None,
    max_epochs: int | None = None,
    max_iters: int | None = None,
    ignore_plateau: bool = False,
) -> Schedule:
    """Build a :class:`Schedule` from an mmengine ``param_scheduler`` value.

    Gives mmengine's values at every step (see :class:`Schedule` for the step counter:
    with ``epoch_length`` it counts iterations).

    Args:
        cfg: one scheduler dict or the list of them, in order.
        base: the hyperparameter's initial value (the optimizer's lr, or its momentum /
            ``betas[0]`` for ``*Momentum`` schedulers).
        epoch_length: iterations per epoch (``len(train_dataloader)``); needed by
            ``convert_to_iter_based`` and to mix by-epoch and by-iteration items.
        param: keep only the items driving this hyperparameter (``'lr'``,
            ``'momentum'``, ...). Without it, all items must drive the same one.
        max_epochs: the train loop's ``max_epochs``: default ``end`` of by-epoch items.
        max_iters: the train loop's ``max_iters``: default ``end`` of iteration items.
        ignore_plateau: skip ``ReduceOnPlateau*`` items instead of raising (build them
            with :meth:`ReduceOnPlateau.from_mmengine`).

    Returns:
        The schedule (constant ``base`` when no item drives ``param``).

    Example:
        >>> lr = 0.01
        >>> cfg = [dict(type='CosineAnnealingLR', T_max=8, eta_min=lr * 10, begin=0, end=8,
        ...             by_epoch=True, convert_to_iter_based=True),
        ...        dict(type='CosineAnnealingMomentum', T_max=8, eta_min=0.85 / 0.95,
        ...             begin=0, end=8, by_epoch=True, convert_to_iter_based=True)]
        >>> s = from_mmengine(cfg, base=lr, epoch_length=100, param='lr')
        >>> round(s(400), 6)
        0.055
    """
    items = [cfg] if isinstance(cfg, Mapping) else list(cfg)
    targets = {}
    for i, item in enumerate(items):
        name = _type_name(item, f"param_scheduler[{i}]")
        if name in PLATEAU_TYPES and ignore_plateau:
            continue
        targets[i] = mmengine_target(item)
    if param is None:
        kinds = sorted(set(targets.values()))
        if len(kinds) > 1:
            raise ValueError(
                f"from_mmengine: the list schedules several hyperparameters {kinds}; pass "
                f"`param` (one of {kinds}) and build one schedule per hyperparameter"
            )
        chosen = list(targets)
    else:
        chosen = [i for i, target in targets.items() if target == param]
    pieces = []
    for i in chosen:
        try:
            piece = piece_from_mmengine(
                items[i], epoch_length=epoch_length, max_epochs=max_epochs, max_iters=max_iters
            )
        except ValueError as err:
            where = f"param_scheduler[{i}]:"
            raise ValueError(str(err).replace("param_scheduler:", where, 1)) from err
        pieces.append(piece)
    return Schedule(tuple(pieces), base=base, epoch_length=epoch_length)


def plateau_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :class:`ReduceOnPlateau` from an mmengine config dict.

    Args:
        cfg: a ``ReduceOnPlateau*`` dict.

    Returns:
        The keyword arguments.

    Example:
        >>> plateau_kwargs(dict(type='ReduceOnPlateauLR', monitor='coco/bbox_mAP',
        ...                     rule='greater'))
        {'monitor': 'coco/bbox_mAP', 'rule': 'greater'}
    """
    where = "param_scheduler"
    name = _type_name(cfg, where)
    if name not in PLATEAU_TYPES:
        raise ValueError(f"{where}: {name} is not a ReduceOnPlateau scheduler")
    allowed = [*_WINDOW_KEYS, *_IGNORED_KEYS, *_PLATEAU_KEYS]
    if PLATEAU_TYPES[name] is None:
        allowed.append("param_name")
    _check_keys(cfg, allowed, where, name)
    if not cfg.get("by_epoch", True):
        raise ValueError(f"{where}: {name}: only by_epoch=True is supported (as in mmengine)")
    if cfg.get("convert_to_iter_based", False):
        raise ValueError(f"{where}: {name}: `convert_to_iter_based` is not supported")
    if cfg.get("last_step", -1) != -1:
        raise ValueError(f"{where}: {name}: `last_step` must be -1")
    if isinstance(cfg.get("min_value"), (list, tuple)):
        raise ValueError(
            f"{where}: {name}: per-group `min_value` lists are not supported; give one number"
        )
    keys = (*_PLATEAU_KEYS, "begin", "end")
    return {key: cfg[key] for key in keys if key in cfg}
