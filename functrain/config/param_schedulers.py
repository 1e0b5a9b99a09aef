"""``param_scheduler`` -> one schedule per hyperparameter (built with
:func:`functrain.schedules.from_mmengine`), errors at the item's key, and the check that each
schedule stays in its hyperparameter's valid range over the whole run."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from functrain.config.builtin_registries import PARAM_SCHEDULERS
from functrain.config.errors import ConfigError, error_text, suggest
from functrain.config.registry_class import call
from functrain.schedules import ReduceOnPlateau, from_mmengine, mmengine_target
from functrain.schedules._mmengine import PLATEAU_TYPES, SCHEDULER_TYPES
from functrain.transforms.validation import (
    MOMENTUM,
    NONNEGATIVE,
    UNIT_INTERVAL,
    Range,
    first_out_of_range,
)

__all__ = ["build_schedules", "item_paths", "schedule_items", "valid_ranges"]


def item_paths(param_scheduler: Any, n: int) -> list[str]:
    """The config path of each scheduler item: ``param_scheduler`` for a single dict,
    ``param_scheduler[i]`` in a list."""
    if isinstance(param_scheduler, Mapping):
        return ["param_scheduler"]
    return [f"param_scheduler[{i}]" for i in range(n)]


def schedule_items(param_scheduler: Any) -> list[Mapping[str, Any]]:
    """``param_scheduler`` (``None``, a dict or a list of dicts) as a list of items, each
    checked to be a dict with a registered ``type``."""
    if param_scheduler is None:
        return []
    items = [param_scheduler] if isinstance(param_scheduler, Mapping) else param_scheduler
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise ConfigError("param_scheduler", f"must be a dict or a list of dicts, got {items!r}")
    paths = item_paths(param_scheduler, len(items))
    for item, where in zip(items, paths, strict=True):
        if not isinstance(item, Mapping):
            raise ConfigError(where, f"must be a dict, got {item!r}")
        if "type" not in item:
            raise ConfigError(where, "needs a 'type' (e.g. 'CosineAnnealingLR')")
        PARAM_SCHEDULERS.get(item["type"], f"{where}.type")
    return list(items)


_WHERE = re.compile(r"param_scheduler(?:\[(\d+)\])?:\s*")
_KEY_IN_MESSAGE = (
    re.compile(r"has no argument '([^']+)'"),
    re.compile(r"needs the key '([^']+)'"),
    re.compile(r"`(\w+)`"),
)


def _scheduler_error(where: str, err: BaseException, paths: Sequence[str]) -> ConfigError:
    """A scheduler builder's ``ValueError`` as a :class:`ConfigError` at the item's key
    (``param_scheduler[2].T_max``): its ``param_scheduler[i]:`` prefixes (``i`` counts the
    items given to the builder, ``paths`` holds their paths in the config) become the path,
    and the key the message names is appended."""
    text = error_text(err)
    while match := _WHERE.match(text):
        if match.group(1) is not None and int(match.group(1)) < len(paths):
            where = paths[int(match.group(1))]
        text = text[match.end() :]
    # "LinearLR: Linear: ..." names the scheduler and then its piece: keep the first.
    text = re.sub(
        r"^(\w+): (\w+): ", lambda m: f"{m[1]}: " if m[1].startswith(m[2]) else m[0], text
    )
    key = next((m.group(1) for rx in _KEY_IN_MESSAGE if (m := rx.search(text))), None)
    return ConfigError(f"{where}.{key}" if key and where in paths else where, text)


def build_schedules(
    items: list[Mapping[str, Any]],
    bases: Mapping[str, float],
    *,
    epoch_length: int | None,
    max_epochs: int | None,
    max_iters: int | None,
    by_epoch_loop: bool,
    paths: Sequence[str],
    valid: Mapping[str, tuple[str, Range]] | None = None,
) -> tuple[dict[str, Any], list[tuple[ReduceOnPlateau, str]]]:
    """``{hyperparameter: schedule}`` and the plateau items (``paths``: each item's path in
    the config, for errors). Each schedule in ``valid`` (``{hyperparameter: (optimizer key,
    valid range)}``) is checked over the whole run (see :func:`_check_schedule_range`)."""
    builtin = set(SCHEDULER_TYPES) | set(PLATEAU_TYPES)
    targets: dict[str, list[int]] = {}
    plateaus = []
    for i, item in enumerate(items):
        where = paths[i]
        if not by_epoch_loop and item.get("by_epoch", True) and item["type"] in SCHEDULER_TYPES:
            raise ConfigError(
                f"{where}.by_epoch",
                f"{item['type']} is by_epoch (the default) but train_cfg is iteration-based: "
                "mmengine would never step it; set by_epoch=False",
            )
        if item.get("convert_to_iter_based") and not item.get("by_epoch", True):
            raise ConfigError(
                f"{where}.convert_to_iter_based",
                "only applies to by_epoch=True schedulers (mmengine ignores it otherwise); "
                "remove it or set by_epoch=True",
            )
        if item["type"] in builtin:
            try:
                target = mmengine_target(item)
            except ValueError as err:
                raise _scheduler_error(where, err, [where]) from err
        else:
            target = str(item.get("param_name", "lr"))
        if item["type"] in PLATEAU_TYPES:
            try:
                plateaus.append((ReduceOnPlateau.from_mmengine(item), target))
            except (ValueError, TypeError) as err:
                raise _scheduler_error(where, err, [where]) from err
            continue
        targets.setdefault(target, []).append(i)
    schedules = {}
    for target, indices in targets.items():
        if target not in bases:
            first = items[indices[0]]
            raise ConfigError(
                f"{paths[indices[0]]}.{'param_name' if 'param_name' in first else 'type'}",
                f"schedules {target!r}, which the optimizer does not have"
                f"{suggest(target, bases)} (schedulable: {', '.join(bases)})",
            )
        chosen = [items[i] for i in indices]
        custom = [i for i in indices if items[i]["type"] not in builtin]
        if custom:
            if len(indices) > 1:
                raise ConfigError(
                    paths[custom[0]],
                    f"a custom scheduler ({items[custom[0]]['type']}) must be the only one "
                    f"driving {target!r}",
                )
            item = dict(chosen[0])
            factory = PARAM_SCHEDULERS.get(item.pop("type"))
            item.pop("param_name", None)
            schedules[target] = call(
                paths[custom[0]], "custom scheduler", factory,
                {"base": bases[target], **item},
            )  # fmt: skip
            continue
        try:
            schedules[target] = from_mmengine(
                chosen,
                base=bases[target],
                epoch_length=epoch_length,
                param=target,
                max_epochs=max_epochs,
                max_iters=max_iters,
            )
        except (ValueError, TypeError, KeyError) as err:
            where = paths[indices[0]] if len(indices) == 1 else "param_scheduler"
            raise _scheduler_error(where, err, [paths[i] for i in indices]) from err
    horizon = max_iters if max_iters is not None else (
        max_epochs * epoch_length if max_epochs is not None and epoch_length else None
    )  # fmt: skip
    for target, schedule in schedules.items():
        if valid and target in valid and horizon:
            window = _Windows(items, paths, targets[target], epoch_length)
            _check_schedule_range(target, schedule, bases[target], valid[target], horizon, window)
    return schedules, plateaus


@attrs.frozen
class _Windows:
    """The scheduler items driving one hyperparameter, to tell which one is in force at an
    iteration (for the range error)."""

    items: Sequence[Mapping[str, Any]]
    paths: Sequence[str]
    indices: Sequence[int]
    epoch_length: int | None

    def at(self, step: int) -> int:
        """The index (in ``items``) of the item whose window holds ``step`` (the last one
        listed when several do), else of the last one that began before it."""
        began = []
        for i in self.indices:
            item = self.items[i]
            scale = (self.epoch_length or 1) if item.get("by_epoch", True) else 1
            begin = item.get("begin", 0) * scale
            end = item.get("end", float("inf")) * scale
            if begin <= step:
                began.append((begin <= step < end, begin, i))
        return max(began)[2] if began else self.indices[0]


def _check_schedule_range(
    target: str, schedule: Any, base: float, valid: tuple[str, Range], horizon: int,
    windows: _Windows,
) -> None:  # fmt: skip
    """:class:`ConfigError` at the scheduler item in force when ``schedule`` first leaves
    the range the optimizer's own check enforces (``lr >= 0``, ``momentum`` in ``[0, 1]``,
    ``betas[0]`` in ``[0, 1)``, ...), naming the item, the iteration and the value. The
    schedule is evaluated once over all ``horizon`` iterations as a 1-d tensor, when the
    config is built: the optimizer never checks per step."""
    key, rule = valid
    found = first_out_of_range(schedule, horizon, rule)
    if found is None:
        return
    step, value = found
    i = windows.at(step)
    item = windows.items[i]
    raise ConfigError(
        windows.paths[i],
        f"{item['type']} ({windows.paths[i]}) drives {key} to {value!r} at iteration {step} "
        f"(optim_wrapper.optimizer.{key} = {base!r}); {rule.describe(key)} at every "
        "iteration (check its factors, eta_min / end values and the base value)",
    )


def valid_ranges(given: Mapping[str, Any]) -> dict[str, tuple[str, Range]]:
    """``{schedulable hyperparameter: (its optimizer key, valid range)}``: the rules the
    Python factories apply to a number (:mod:`functrain.transforms.validation`); any other
    numeric hyperparameter must stay finite."""
    valid = {
        key: (key, NONNEGATIVE) for key in ("lr", "weight_decay", "eps") if key in given
    }  # fmt: skip
    if "momentum" in given:
        valid["momentum"] = ("momentum", MOMENTUM)
    elif isinstance(given.get("betas"), tuple):
        valid["momentum"] = ("betas[0]", UNIT_INTERVAL)
    finite = Range(-float("inf"), float("inf"))
    for key, value in given.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            valid.setdefault(key, (key, finite))
    return valid
