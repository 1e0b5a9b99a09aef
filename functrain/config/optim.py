"""``optim_wrapper`` + ``param_scheduler`` -> one gradient transformation, as mmengine builds
its ``OptimWrapper`` and parameter schedulers.

The chain mirrors what mmengine does at each optimizer step::

    accumulate(                       # accumulative_counts > 1 (shortened last window)
      loss_scaling(                   # AmpOptimWrapper: unscale, skip inf/nan steps
        chain(clip(...),              # clip_grad: type 'norm' (default) or 'value'
              <optimizer>(lr=<lr schedule>, momentum / betas[0]=<schedule>, ...),
              mask_multipliers(...)), # paramwise_cfg (or a custom constructor)
        ...), N, max_iters)

Schedules are built with :func:`functrain.schedules.from_mmengine` in iterations (by-epoch
items with the train loader's length), with ``end`` defaulting to the loop's
``max_epochs`` / ``max_iters`` as mmengine's runner fills it in, and re-indexed by optimizer
step under accumulation (mmengine steps its schedulers once per micro-batch).
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import nn

from functrain.config.registries import (
    OPTIM_WRAPPER_CONSTRUCTORS,
    OPTIM_WRAPPERS,
    OPTIMIZERS,
    PARAM_SCHEDULERS,
)
from functrain.config.registry import ConfigError, call, check_kwargs, error_text, suggest
from functrain.schedules import ReduceOnPlateau, from_mmengine, mmengine_target
from functrain.schedules._mmengine import _PLATEAU_TYPES, _TYPES
from functrain.transforms.accumulation import accumulate, optimizer_step_schedule
from functrain.transforms.base import GradientTransformation, chain
from functrain.transforms.clipping import clip, clip_by_value
from functrain.transforms.loss_scaling import loss_scaling
from functrain.transforms.multipliers import Multiplier, mask_multipliers, paramwise_multipliers
from functrain.transforms.torch_optimizer import torch_optimizer_factory
from functrain.transforms.validation import (
    MOMENTUM,
    NONNEGATIVE,
    UNIT_INTERVAL,
    Range,
    first_out_of_range,
)

__all__ = [
    "DefaultOptimWrapperConstructor",
    "OptimizerPlan",
    "build_optimizer",
    "ema_hook",
]

WRAPPER_KEYS = {
    "OptimWrapper": ("type", "optimizer", "paramwise_cfg", "clip_grad", "accumulative_counts",
                     "constructor"),
    "AmpOptimWrapper": ("type", "optimizer", "paramwise_cfg", "clip_grad", "accumulative_counts",
                        "constructor", "loss_scale", "dtype"),
}  # fmt: skip
_IMPLEMENTATION_ARGS = ("foreach", "fused", "capturable", "differentiable")
_CLIP_KEYS = {"norm": ("type", "max_norm", "norm_type", "error_if_nonfinite", "foreach"),
              "value": ("type", "clip_value", "foreach")}  # fmt: skip
_DTYPES = {"float16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16}
# Spellings from other tools, for the suggestion only (mmengine rejects them too).
_DTYPE_ALIASES = {"fp16": "float16", "bf16": "bfloat16", "torch.float16": "float16",
                  "torch.bfloat16": "bfloat16"}  # fmt: skip
_SCALER_KEYS = ("init_scale", "growth_factor", "backoff_factor", "growth_interval", "enabled")


class DefaultOptimWrapperConstructor:
    """mmengine's default constructor, as per-parameter multipliers: ``paramwise_cfg``
    through :func:`functrain.paramwise_multipliers`.

    A custom constructor (the seed's "optimizer wrapper constructor" for special cases such
    as BatchNorm weight decay) subclasses this, registers in ``OPTIM_WRAPPER_CONSTRUCTORS``
    and is named by ``optim_wrapper.constructor``; it returns ``{parameter path:
    Multiplier(lr_mult, decay_mult)}`` for the trainable parameters it wants to change
    (the others keep 1, 1).

    Args:
        optim_wrapper_cfg: the ``optim_wrapper`` dict.
        paramwise_cfg: its ``paramwise_cfg``.

    Example:
        >>> @OPTIM_WRAPPER_CONSTRUCTORS.register_module()
        ... class NoDecayOnNorms(DefaultOptimWrapperConstructor):
        ...     def __call__(self, model):
        ...         mults = super().__call__(model)
        ...         for name, module in model.named_modules():
        ...             if isinstance(module, torch.nn.BatchNorm2d):
        ...                 for p in ("weight", "bias"):
        ...                     mults[f"{name}.{p}"] = Multiplier(1.0, 0.0)
        ...         return mults
    """

    def __init__(
        self, optim_wrapper_cfg: Mapping[str, Any], paramwise_cfg: Mapping[str, Any] | None = None
    ) -> None:
        self.optim_wrapper_cfg = dict(optim_wrapper_cfg)
        self.paramwise_cfg = dict(paramwise_cfg or {})
        self.weight_decay = dict(self.optim_wrapper_cfg.get("optimizer", {})).get("weight_decay")

    def __call__(self, model: nn.Module) -> dict[str, Multiplier]:
        with warnings.catch_warnings():
            # Reported below with the key's full path and the model's module names.
            warnings.filterwarnings("ignore", message="paramwise_cfg.custom_keys: ")
            mults = paramwise_multipliers(model, self.paramwise_cfg, weight_decay=self.weight_decay)
        _warn_unmatched_custom_keys(model, self.paramwise_cfg.get("custom_keys") or {})
        return mults


def _warn_unmatched_custom_keys(model: nn.Module, custom_keys: Mapping[str, Any]) -> None:
    """A ``UserWarning`` for each ``custom_keys`` entry that is a substring of no trainable
    parameter's name (mmengine ignores such a key silently, so it is not an error)."""
    fulls = [
        f"{prefix}.{name}"
        for prefix, module in model.named_modules()
        for name, p in module.named_parameters(recurse=False)
        if p.requires_grad
    ]
    modules = [name for name, _ in model.named_modules() if name]
    for key in custom_keys:
        if not any(key in full for full in fulls):
            top = sorted({m.split(".")[0] for m in modules})
            warnings.warn(
                f"optim_wrapper.paramwise_cfg.custom_keys.{key}: {key!r} is a substring of no "
                f"trainable parameter name of {type(model).__name__}, so it changes nothing"
                f"{suggest(key, modules)} (top-level modules: {', '.join(top) or 'none'}; "
                "mmengine ignores it silently)",
                UserWarning,
                stacklevel=3,
            )


@attrs.frozen
class OptimizerPlan:
    """What :func:`build_optimizer` made, for the runner and for :func:`explain`.

    Attributes:
        tx: the gradient transformation.
        optimizer: the optimizer's type name and its hyperparameters as given (defaults
            filled in from the factory's signature).
        schedules: ``{hyperparameter: schedule of the iteration}`` (mmengine's values per
            iteration, before any re-indexing for accumulation).
        multipliers: ``{parameter path: Multiplier}`` for every trainable parameter.
        clip_grad: the ``clip_grad`` dict or ``None``.
        accumulative_counts: micro-batches per optimizer step.
        autocast: the autocast dtype of an ``AmpOptimWrapper`` (else ``None``).
        plateaus: ``(ReduceOnPlateau, hyperparameter)`` pairs, run by a callback.
        wrapper: ``"OptimWrapper"`` or ``"AmpOptimWrapper"``.
        sharded: the optimizer state is sharded across ranks (``ZeroRedundancyOptimizer``).
    """

    tx: GradientTransformation
    optimizer: dict[str, Any]
    schedules: dict[str, Any]
    multipliers: dict[str, Multiplier]
    clip_grad: dict[str, Any] | None
    accumulative_counts: int
    autocast: torch.dtype | None
    plateaus: list[tuple[ReduceOnPlateau, str]]
    wrapper: str
    sharded: bool = False

    def describe(self) -> str:
        """The transform chain in words."""
        opt = ", ".join(
            f"{k}=<schedule>" if k in self.schedules or (k == "betas" and "momentum" in self.schedules)
            else f"{k}={v!r}"
            for k, v in self.optimizer.items() if k != "type"
        )  # fmt: skip
        parts = []
        if self.clip_grad:
            c = {k: v for k, v in self.clip_grad.items() if k not in ("type", "foreach")}
            kind = "clip_by_value" if self.clip_grad.get("type") == "value" else "clip"
            parts.append(f"{kind}({', '.join(f'{k}={v!r}' for k, v in c.items())})")
        parts.append(f"{self.optimizer['type']}({opt})")
        groups = sorted({(m.lr_mult, m.decay_mult) for m in self.multipliers.values()})
        if groups != [(1.0, 1.0)]:
            parts.append(f"mask_multipliers({len(groups)} (lr_mult, decay_mult) groups)")
        text = f"chain({', '.join(parts)})"
        if self.wrapper == "AmpOptimWrapper":
            text = f"loss_scaling({text}) with autocast({self.autocast})"
        if self.accumulative_counts > 1:
            text = f"accumulate({text}, accumulative_counts={self.accumulative_counts})"
        return text


def _check_allowed(path: str, cfg: Mapping[str, Any], allowed: Sequence[str], what: str) -> None:
    for key in cfg:
        if key not in allowed:
            raise ConfigError(
                f"{path}.{key}",
                f"unknown key {key!r} for {what}{suggest(key, allowed)} "
                f"(accepted: {', '.join(allowed)})",
            )


def _number(path: str, value: Any, *, positive: bool = False, integer: bool = False) -> Any:
    kinds = int if integer else int | float
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an int" if integer else "a number"
        raise ConfigError(path, f"expected {kind}, got {value!r} ({type(value).__name__})")
    if positive and not value > 0:
        hint = " (1 means no accumulation)" if path.endswith("accumulative_counts") else ""
        raise ConfigError(path, f"must be > 0, got {value!r}{hint}")
    return value


def _check_paramwise_values(path: str, paramwise_cfg: Any) -> None:
    """Type errors in ``paramwise_cfg`` with their full path (the multiplier builder checks
    the names and the semantics)."""
    if not isinstance(paramwise_cfg, Mapping):
        raise ConfigError(path, f"must be a dict, got {paramwise_cfg!r}")
    for key, value in paramwise_cfg.items():
        if key.endswith("_mult"):
            _number(f"{path}.{key}", value)
        elif key == "custom_keys":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path}.custom_keys", f"must be a dict, got {value!r}")
            for name, mults in value.items():
                if not isinstance(mults, Mapping):
                    raise ConfigError(
                        f"{path}.custom_keys.{name}",
                        f"must be a dict like dict(lr_mult=0.1), got {mults!r}",
                    )
                for field, mult in mults.items():
                    _number(f"{path}.custom_keys.{name}.{field}", mult)


def _clip_transform(path: str, cfg: Any) -> GradientTransformation:
    if not isinstance(cfg, Mapping):
        raise ConfigError(path, f"must be a dict like dict(max_norm=35, norm_type=2), got {cfg!r}")
    kind = cfg.get("type", "norm")
    if kind not in _CLIP_KEYS:
        hint = suggest(kind, _CLIP_KEYS)
        if not hint and str(kind).lower().lstrip("l") in ("1", "2", "inf"):
            hint = f"; did you mean type='norm' with norm_type={str(kind).lower().lstrip('l')}?"
        raise ConfigError(
            f"{path}.type", f"unknown clip type {kind!r}{hint} (accepted: 'norm' (the "
            "default, clip_grad_norm_) and 'value' (clip_grad_value_))"
        )  # fmt: skip
    _check_allowed(path, cfg, _CLIP_KEYS[kind], f"clip_grad type {kind!r}")
    if kind == "value":
        if "clip_value" not in cfg:
            raise ConfigError(path, "clip_grad type 'value' needs 'clip_value'")
        return call(path, "clip_grad", clip_by_value, {"clip_value": _number(
            f"{path}.clip_value", cfg["clip_value"], positive=True)})  # fmt: skip
    if "max_norm" not in cfg:
        raise ConfigError(path, "clip_grad needs 'max_norm' (e.g. dict(max_norm=35, norm_type=2))")
    kwargs = {"max_norm": _number(f"{path}.max_norm", cfg["max_norm"], positive=True)}
    if "norm_type" in cfg:
        kwargs["norm_type"] = _number(f"{path}.norm_type", cfg["norm_type"])
    if "error_if_nonfinite" in cfg:
        kwargs["error_if_nonfinite"] = bool(cfg["error_if_nonfinite"])
    return call(path, "clip_grad", clip, kwargs)


def _defaults(factory: Callable[..., Any]) -> dict[str, Any]:
    params = inspect.signature(factory).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _item_paths(param_scheduler: Any, n: int) -> list[str]:
    """The config path of each scheduler item: ``param_scheduler`` for a single dict,
    ``param_scheduler[i]`` in a list."""
    if isinstance(param_scheduler, Mapping):
        return ["param_scheduler"]
    return [f"param_scheduler[{i}]" for i in range(n)]


def _schedule_items(param_scheduler: Any) -> list[Mapping[str, Any]]:
    if param_scheduler is None:
        return []
    items = [param_scheduler] if isinstance(param_scheduler, Mapping) else param_scheduler
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise ConfigError("param_scheduler", f"must be a dict or a list of dicts, got {items!r}")
    paths = _item_paths(param_scheduler, len(items))
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


def _build_schedules(
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
    builtin = set(_TYPES) | set(_PLATEAU_TYPES)
    targets: dict[str, list[int]] = {}
    plateaus = []
    for i, item in enumerate(items):
        where = paths[i]
        if not by_epoch_loop and item.get("by_epoch", True) and item["type"] in _TYPES:
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
        if item["type"] in _PLATEAU_TYPES:
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


def _valid_ranges(given: Mapping[str, Any]) -> dict[str, tuple[str, Range]]:
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


def build_optimizer(
    optim_wrapper: Mapping[str, Any],
    model: nn.Module,
    *,
    param_scheduler: Any = None,
    epoch_length: int | None = None,
    max_epochs: int | None = None,
    max_iters: int | None = None,
    by_epoch_loop: bool = True,
    data_parallel: bool = False,
) -> OptimizerPlan:
    """Build the transform for an mmengine ``optim_wrapper`` and ``param_scheduler``.

    Args:
        optim_wrapper: ``dict(type='OptimWrapper' | 'AmpOptimWrapper', optimizer=dict(...),
            paramwise_cfg=..., clip_grad=..., accumulative_counts=..., constructor=...,
            loss_scale=..., dtype=...)``.
        model: the model (for the per-parameter multipliers).
        param_scheduler: mmengine's ``param_scheduler`` (a dict or a list).
        epoch_length: iterations per epoch (``len(train_dataloader)``).
        max_epochs: the train loop's ``max_epochs`` (default ``end`` of by-epoch items).
        max_iters: the train loop's ``max_iters`` (default ``end`` of iteration items, and
            the shortened last accumulation window).
        by_epoch_loop: whether the train loop is epoch-based (an iteration-based loop
            rejects by-epoch schedulers, which mmengine would never step).
        data_parallel: average the gradients across the ranks of the default process group
            first (:func:`~functrain.distributed.data_parallel.average_gradients`, inside the
            accumulation, so only the stepping micro-batch all-reduces: DDP's ``no_sync``).
            ``optimizer=dict(type='ZeroRedundancyOptimizer', optimizer_type='AdamW', ...)``
            (mmengine's ZeRO) shards the optimizer state instead
            (:func:`~functrain.distributed.zero.shard_optimizer`), which averages as well.

    Returns:
        An :class:`OptimizerPlan`; its ``tx`` is the transform.

    Raises:
        ConfigError: naming the key path of the problem.

    Example:
        >>> plan = build_optimizer(dict(optimizer=dict(type='SGD', lr=0.02, momentum=0.9),
        ...                             clip_grad=dict(max_norm=35)), model)  # doctest: +SKIP
    """
    path = "optim_wrapper"
    if not isinstance(optim_wrapper, Mapping):
        raise ConfigError(path, f"must be a dict, got {optim_wrapper!r}")
    wrapper = optim_wrapper.get("type", "OptimWrapper")
    OPTIM_WRAPPERS.get(wrapper, f"{path}.type")
    _check_allowed(path, optim_wrapper, WRAPPER_KEYS[wrapper], wrapper)
    if "optimizer" not in optim_wrapper:
        raise ConfigError(
            path,
            "needs an 'optimizer' (e.g. optimizer=dict(type='SGD', lr=0.02)); a child config "
            "with _delete_=True replaces the base's optim_wrapper entirely, so it must repeat "
            "the optimizer",
        )
    opt_cfg = optim_wrapper["optimizer"]
    if not isinstance(opt_cfg, Mapping) or "type" not in opt_cfg:
        raise ConfigError(f"{path}.optimizer", f"must be a dict with a 'type', got {opt_cfg!r}")
    sharded = opt_cfg["type"] == "ZeroRedundancyOptimizer"
    if sharded:
        if "optimizer_type" not in opt_cfg:
            raise ConfigError(
                f"{path}.optimizer",
                "ZeroRedundancyOptimizer needs 'optimizer_type' (e.g. optimizer_type='AdamW')",
            )
        if wrapper == "AmpOptimWrapper":
            raise ConfigError(
                f"{path}.type",
                "AmpOptimWrapper with ZeroRedundancyOptimizer is not supported: each rank would "
                "check only its shard for inf/nan; use OptimWrapper (or bfloat16 autocast)",
            )
        opt_cfg = {k: v for k, v in opt_cfg.items() if k not in ("type", "optimizer_type")}
        opt_cfg = {"type": optim_wrapper["optimizer"]["optimizer_type"], **opt_cfg}
    factory = OPTIMIZERS.get(opt_cfg["type"], f"{path}.optimizer.type")
    torch_class = isinstance(factory, type) and issubclass(factory, torch.optim.Optimizer)
    if torch_class:
        # A torch.optim.Optimizer subclass registered as in MMDetection's tutorial runs through
        # the adapter; its factory has the class's keyword signature (params left out), and
        # foreach / fused / ... are the class's own arguments.
        factory = torch_optimizer_factory(factory)
    kwargs = {
        k: v
        for k, v in opt_cfg.items()
        if k != "type" and (torch_class or k not in _IMPLEMENTATION_ARGS)
    }
    check_kwargs(f"{path}.optimizer", f"optimizer {opt_cfg['type']}", factory, kwargs)
    if "betas" in kwargs and isinstance(kwargs["betas"], list):
        kwargs["betas"] = tuple(kwargs["betas"])
    if "betas" in kwargs and not (
        isinstance(kwargs["betas"], tuple)
        and len(kwargs["betas"]) == 2
        and all(isinstance(b, int | float) and not isinstance(b, bool) for b in kwargs["betas"])
    ):
        raise ConfigError(
            f"{path}.optimizer.betas",
            f"expected a pair of numbers like (0.9, 0.999), got {kwargs['betas']!r}",
        )
    given = {**_defaults(factory), **kwargs}
    for key in ("lr", "momentum", "weight_decay", "eps"):
        if key in kwargs:
            _number(f"{path}.optimizer.{key}", kwargs[key])

    bases = {k: given[k] for k in ("lr", "weight_decay") if isinstance(given.get(k), int | float)}
    if isinstance(given.get("momentum"), int | float):
        bases["momentum"] = given["momentum"]
    elif isinstance(given.get("betas"), tuple):
        bases["momentum"] = given["betas"][0]
    for key, value in given.items():  # other numeric hyperparameters a ParamScheduler may drive
        if isinstance(value, int | float) and not isinstance(value, bool):
            bases.setdefault(key, value)

    what = f"optimizer {opt_cfg['type']}"
    items = _schedule_items(param_scheduler)
    if items:
        # A scheduled hyperparameter reaches the factory as a schedule, which its number
        # checks (lr >= 0, momentum in [0, 1], ...) do not see: run them on the configured
        # numbers first, with the Python API's own messages.
        call(f"{path}.optimizer", what, factory, kwargs)
    schedules, plateaus = _build_schedules(
        items, bases, epoch_length=epoch_length, max_epochs=max_epochs, max_iters=max_iters,
        by_epoch_loop=by_epoch_loop, paths=_item_paths(param_scheduler, len(items)),
        valid=_valid_ranges(given),
    )  # fmt: skip
    n = _number(
        f"{path}.accumulative_counts", optim_wrapper.get("accumulative_counts", 1),
        positive=True, integer=True,
    )  # fmt: skip
    scheduled = {}
    for target, schedule in schedules.items():
        if n > 1:
            schedule = optimizer_step_schedule(schedule, n, max_iters)
        scheduled[target] = schedule
    if "momentum" in scheduled and "momentum" not in given:
        scheduled["betas"] = (scheduled.pop("momentum"), given["betas"][1])
    optimizer = call(f"{path}.optimizer", what, factory, {**kwargs, **scheduled})

    paramwise_cfg = optim_wrapper.get("paramwise_cfg")
    if paramwise_cfg is not None:
        _check_paramwise_values(f"{path}.paramwise_cfg", paramwise_cfg)
    ctor_cfg = optim_wrapper.get("constructor", "DefaultOptimWrapperConstructor")
    ctor_cls = OPTIM_WRAPPER_CONSTRUCTORS.get(ctor_cfg, f"{path}.constructor")
    constructor = call(
        f"{path}.constructor", f"constructor {ctor_cfg}", ctor_cls,
        {"optim_wrapper_cfg": optim_wrapper, "paramwise_cfg": paramwise_cfg},
    )  # fmt: skip
    try:
        multipliers = {
            k: m if isinstance(m, Multiplier) else Multiplier(*m)
            for k, m in dict(constructor(model)).items()
        }
    except (ValueError, TypeError, KeyError) as err:
        default = ctor_cfg == "DefaultOptimWrapperConstructor"
        raise _paramwise_error(path, err, default=default) from err
    members = []
    if data_parallel and not sharded:
        from functrain.distributed.data_parallel import average_gradients

        members.append(average_gradients())
    clip_cfg = optim_wrapper.get("clip_grad")
    if clip_cfg is not None:
        members.append(_clip_transform(f"{path}.clip_grad", clip_cfg))
    members.append(optimizer)
    if any(m != Multiplier() for m in multipliers.values()):
        members.append(mask_multipliers(multipliers))
    tx = chain(*members)
    if sharded:
        from functrain.distributed.zero import shard_optimizer

        tx = call(f"{path}.optimizer", "ZeroRedundancyOptimizer", shard_optimizer, {"tx": tx})

    autocast = None
    if wrapper == "AmpOptimWrapper":
        dtype = optim_wrapper.get("dtype") or "float16"
        if isinstance(dtype, str):
            if dtype not in _DTYPES:
                hint = suggest(_DTYPE_ALIASES.get(dtype.lower(), dtype), _DTYPES)
                raise ConfigError(
                    f"{path}.dtype", f"unknown dtype {dtype!r}{hint} "
                    f"(accepted: {', '.join(_DTYPES)})",
                )  # fmt: skip
            dtype = _DTYPES[dtype]
        elif not isinstance(dtype, torch.dtype):
            raise ConfigError(
                f"{path}.dtype",
                f"expected 'float16' or 'bfloat16' (or the torch dtype), got {dtype!r}",
            )
        autocast = dtype
        tx = loss_scaling(tx, **_scaler_kwargs(f"{path}.loss_scale", optim_wrapper))
    if n > 1:
        tx = accumulate(tx, n, max_iters)
    return OptimizerPlan(
        tx=tx,
        optimizer={"type": opt_cfg["type"], **given},
        schedules=schedules,
        multipliers=multipliers,
        clip_grad=dict(clip_cfg) if clip_cfg is not None else None,
        accumulative_counts=n,
        autocast=autocast,
        plateaus=plateaus,
        wrapper=wrapper,
        sharded=sharded,
    )


def _paramwise_error(path: str, err: BaseException, *, default: bool) -> ConfigError:
    """The multiplier builder's error at its key: ``paramwise_cfg.custom_keys.backbone.
    decay_mult needs ...`` -> path ``optim_wrapper.paramwise_cfg.custom_keys.backbone.
    decay_mult``; ``paramwise_cfg: unknown key 'x'`` -> ``optim_wrapper.paramwise_cfg.x``.
    Other messages stay at ``paramwise_cfg`` (``constructor`` for a custom constructor)."""
    text = error_text(err)
    match = re.match(r"paramwise_cfg((?:\.\S+?)*)(?::\s+|\s+(?=\w))", text)
    if match is None:
        return ConfigError(f"{path}.{'paramwise_cfg' if default else 'constructor'}", text)
    sub, text = match.group(1), text[match.end() :]
    unknown = re.match(r"unknown key '([^']+)'", text)
    if not sub and unknown:
        sub = f".{unknown.group(1)}"
    if "weight_decay" in text and "needs" in text:
        text += "; give the optimizer a weight_decay (e.g. optimizer=dict(..., weight_decay=1e-4))"
    return ConfigError(f"{path}.paramwise_cfg{sub}", text)


def _scaler_kwargs(path: str, optim_wrapper: Mapping[str, Any]) -> dict[str, Any]:
    """AmpOptimWrapper's ``loss_scale``: ``'dynamic'`` (GradScaler's defaults), a number (a
    static scale) or a dict of GradScaler arguments."""
    loss_scale = optim_wrapper.get("loss_scale", "dynamic")
    if loss_scale == "dynamic":
        return {}
    if isinstance(loss_scale, int | float) and not isinstance(loss_scale, bool):
        return {"init_scale": float(_number(path, loss_scale, positive=True)), "dynamic": False}
    if isinstance(loss_scale, Mapping):
        _check_allowed(path, loss_scale, _SCALER_KEYS, "loss_scale (GradScaler arguments)")
        kwargs = dict(loss_scale)
        if not kwargs.pop("enabled", True):
            raise ConfigError(f"{path}.enabled", "use OptimWrapper instead of a disabled scaler")
        return kwargs
    raise ConfigError(
        path, f"must be 'dynamic', a number or a dict of GradScaler arguments, got {loss_scale!r}"
    )


def ema_hook(
    ema_type: str = "ExponentialMovingAverage",
    strict_load: bool = True,
    begin_iter: int = 0,
    begin_epoch: int = 0,
    momentum: float = 0.0002,
    interval: int = 1,
    update_buffers: bool = False,
) -> Any:
    """mmengine's ``EMAHook`` config -> :class:`functrain.callbacks.EMA` (only the
    ``ExponentialMovingAverage`` strategy)."""
    from functrain.callbacks import EMA

    if ema_type != "ExponentialMovingAverage":
        raise ValueError(f"ema_type {ema_type!r} is not supported; only 'ExponentialMovingAverage'")
    return EMA(
        momentum=momentum,
        interval=interval,
        begin_iter=begin_iter,
        begin_epoch=begin_epoch,
        update_buffers=update_buffers,
    )
