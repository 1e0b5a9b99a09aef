"""``train_cfg`` / ``val_cfg`` / ``test_cfg`` -> loops (with their data loaders and
evaluators), and ``default_hooks`` / ``custom_hooks`` -> callbacks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from functrain.config.builtin_registries import HOOKS, LOOPS, METRICS
from functrain.config.dataloaders import build_dataloader
from functrain.config.errors import ConfigError, error_text, named_key, suggest
from functrain.config.model_calls import predict_fn
from functrain.config.registry_class import check_kwargs, missing_required

__all__ = ["build_eval_loop", "build_hooks", "build_train_loop"]


def _build_evaluator(cfg: Any, path: str) -> Any:
    if isinstance(cfg, Sequence) and not isinstance(cfg, str):
        if len(cfg) != 1:
            raise ConfigError(path, "one evaluator per loop is supported; got a list of "
                              f"{len(cfg)}")  # fmt: skip
        cfg, path = cfg[0], f"{path}[0]"
    if isinstance(cfg, Mapping) and cfg.get("type") == "Evaluator":
        return _build_evaluator(cfg.get("metrics"), f"{path}.metrics")
    return METRICS.build(cfg, path)


def build_train_loop(cfg: Any, loader: DataLoader) -> Any:
    """``train_cfg`` -> an ``EpochBasedTrainLoop`` / ``IterBasedTrainLoop`` over ``loader``
    (``by_epoch`` shorthand accepted), errors at the key in ``train_cfg``."""
    path = "train_cfg"
    if not isinstance(cfg, Mapping):
        raise ConfigError(path, f"must be a dict, got {cfg!r}")
    cfg = dict(cfg)
    if "type" not in cfg:
        by_epoch = cfg.pop("by_epoch", True)
        cfg["type"] = "EpochBasedTrainLoop" if by_epoch else "IterBasedTrainLoop"
    elif "by_epoch" in cfg:
        raise ConfigError(f"{path}.by_epoch", "give either 'type' or the 'by_epoch' shorthand")
    if cfg["type"] not in ("EpochBasedTrainLoop", "IterBasedTrainLoop") and cfg["type"] in LOOPS:
        raise ConfigError(f"{path}.type", f"{cfg['type']} is not a train loop")
    loop_cls = LOOPS.get(cfg["type"], f"{path}.type")
    kwargs = {k: v for k, v in cfg.items() if k != "type"}
    check_kwargs(path, cfg["type"], loop_cls, {"dataloader": loader, **kwargs})
    missing = missing_required(loop_cls, {"dataloader": loader, **kwargs})
    if missing:
        raise ConfigError(f"{path}.{missing[0]}", f"{cfg['type']} needs {missing[0]!r}")
    for key in ("max_epochs", "max_iters", "val_interval", "val_begin"):
        if key in kwargs and (isinstance(kwargs[key], bool) or not isinstance(kwargs[key], int)):
            raise ConfigError(f"{path}.{key}", f"expected an int, got {kwargs[key]!r}")
    if kwargs.get("val_interval", 1) < 1:
        # mmengine would divide by it at the first validation (ZeroDivisionError).
        raise ConfigError(f"{path}.val_interval", f"must be >= 1, got {kwargs['val_interval']}")
    if "dynamic_intervals" in kwargs:
        kwargs["dynamic_intervals"] = _dynamic_intervals(kwargs["dynamic_intervals"], path)
    try:
        return loop_cls(loader, **kwargs)
    except (TypeError, ValueError) as err:
        key = named_key(error_text(err), kwargs)
        raise ConfigError(f"{path}.{key}" if key else path, f"{cfg['type']}: {err}") from err


def _dynamic_intervals(value: Any, path: str) -> list[tuple[int, int]]:
    where = f"{path}.dynamic_intervals"
    if not isinstance(value, list | tuple):
        raise ConfigError(where, f"must be a list of (milestone, interval) pairs, got {value!r}")
    pairs = []
    for i, item in enumerate(value):
        ok = isinstance(item, list | tuple) and len(item) == 2
        if not ok or not all(isinstance(x, int) and not isinstance(x, bool) for x in item):
            raise ConfigError(
                f"{where}[{i}]", f"must be a (milestone, interval) pair of ints, got {item!r}"
            )
        if item[1] < 1:
            raise ConfigError(f"{where}[{i}]", f"the interval must be >= 1, got {item[1]}")
        pairs.append((item[0], item[1]))
    return pairs


def build_eval_loop(
    cfg: Mapping[str, Any], mode: str, model: Any, device: torch.device, seed: int | None
) -> tuple[Any, torch.dtype | None]:
    """``{mode}_cfg`` + ``{mode}_dataloader`` + ``{mode}_evaluator`` (``mode``: ``'val'`` or
    ``'test'``) -> ``(loop or None, its autocast dtype)``; all three or none must be given."""
    loop_cfg, loader_cfg, evaluator_cfg = (
        cfg.get(f"{mode}_cfg"),
        cfg.get(f"{mode}_dataloader"),
        cfg.get(f"{mode}_evaluator"),
    )
    given = [x is not None for x in (loop_cfg, loader_cfg, evaluator_cfg)]
    if not any(given):
        return None, None
    if not all(given):
        missing = [
            name
            for name, g in zip(
                (f"{mode}_cfg", f"{mode}_dataloader", f"{mode}_evaluator"), given, strict=True
            )
            if not g
        ]
        raise ConfigError(
            ", ".join(missing),
            f"{mode}_cfg, {mode}_dataloader and {mode}_evaluator must be given together "
            "(mmengine's rule); add the missing ones or remove the others",
        )
    if not isinstance(loop_cfg, Mapping):
        raise ConfigError(f"{mode}_cfg", f"must be a dict (e.g. dict()), got {loop_cfg!r}")
    loop_cfg = dict(loop_cfg)
    loop_type = loop_cfg.pop("type", "ValLoop" if mode == "val" else "TestLoop")
    expected = "ValLoop" if mode == "val" else "TestLoop"
    if loop_type != expected:
        LOOPS.get(loop_type, f"{mode}_cfg.type")
        raise ConfigError(f"{mode}_cfg.type", f"must be {expected!r}, got {loop_type!r}")
    for key in loop_cfg:
        if key != "fp16":
            raise ConfigError(
                f"{mode}_cfg.{key}",
                f"unknown key {key!r} for {expected}{suggest(key, ['fp16'])} (accepted: fp16)",
            )
    autocast = torch.float16 if loop_cfg.get("fp16") else None
    from functrain.step import make_eval_step

    loader = build_dataloader(loader_cfg, f"{mode}_dataloader", seed=seed)
    evaluator = _build_evaluator(evaluator_cfg, f"{mode}_evaluator")
    loop_cls = LOOPS.get(expected)
    step = make_eval_step(model, predict_fn(device), autocast=autocast)
    return loop_cls(loader, step, evaluator), autocast


def build_hooks(cfg: Mapping[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """``default_hooks`` (by name; ``None`` removes a default) and ``custom_hooks`` (with
    ``priority``) -> ``(default callbacks by name, custom callbacks)``."""
    defaults: dict[str, Any] = {}
    default_hooks = cfg.get("default_hooks") or {}
    if not isinstance(default_hooks, Mapping):
        raise ConfigError(
            "default_hooks", f"must be a dict of name -> hook dict, got {default_hooks!r}"
        )
    for name, hook_cfg in default_hooks.items():
        path = f"default_hooks.{name}"
        defaults[name] = None if hook_cfg is None else _build_hook(hook_cfg, path)
    custom = []
    custom_hooks = cfg.get("custom_hooks") or []
    if not isinstance(custom_hooks, Sequence) or isinstance(custom_hooks, str | Mapping):
        raise ConfigError("custom_hooks", f"must be a list of hook dicts, got {custom_hooks!r}")
    for i, hook_cfg in enumerate(custom_hooks):
        hook = _build_hook(hook_cfg, f"custom_hooks[{i}]")
        if hook is not None:
            custom.append(hook)
    return defaults, custom


def _build_hook(hook_cfg: Any, path: str) -> Any:
    from functrain.callbacks import Priority, get_priority

    if not isinstance(hook_cfg, Mapping):
        if isinstance(hook_cfg, str | bytes | int | float | list | tuple):
            raise ConfigError(
                path, f"expected a dict like dict(type='CheckpointHook', ...), got {hook_cfg!r}"
            )
        return hook_cfg  # an already-built callback
    hook_cfg = dict(hook_cfg)
    priority = hook_cfg.pop("priority", None)
    if priority is not None:
        try:
            get_priority(priority)
        except (ValueError, KeyError, TypeError) as err:
            names = [p.name for p in Priority]
            text = error_text(err)
            if isinstance(priority, str):
                text = (
                    f"unknown priority {priority!r}{suggest(priority.upper(), names)} (use an "
                    f"int in [0, 100] or one of {', '.join(names)})"
                )
            raise ConfigError(f"{path}.priority", text) from err
    hook = HOOKS.build(hook_cfg, path)
    if hook is not None and priority is not None:
        hook.priority = priority
    return hook
