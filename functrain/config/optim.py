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
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
from torch import nn

from functrain.config.builtin_registries import (
    OPTIM_WRAPPER_CONSTRUCTORS,
    OPTIM_WRAPPERS,
    OPTIMIZERS,
)
from functrain.config.errors import (
    ConfigError,
    MemberValues,
    check_allowed,
    check_number,
    suggest,
)
from functrain.config.hooks import ema_hook
from functrain.config.param_schedulers import (
    build_schedules,
    item_paths,
    schedule_items,
    valid_ranges,
)
from functrain.config.paramwise import (
    DefaultOptimWrapperConstructor,
    check_paramwise_values,
    paramwise_error,
)
from functrain.config.registry_class import call, check_kwargs
from functrain.schedules import ReduceOnPlateau
from functrain.transforms.accumulation import accumulate, optimizer_step_schedule
from functrain.transforms.base import GradientTransformation, chain
from functrain.transforms.clipping import clip, clip_by_value
from functrain.transforms.loss_scaling import loss_scaling
from functrain.transforms.multipliers import Multiplier, mask_multipliers
from functrain.transforms.torch_optimizer import torch_optimizer_factory

# Some names are re-exported from the modules they moved to when the config package was
# split by what each module holds, so that imports from here keep working.
__all__ = ["DefaultOptimWrapperConstructor", "OptimizerPlan", "build_optimizer", "ema_hook"]

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
    check_allowed(path, cfg, _CLIP_KEYS[kind], f"clip_grad type {kind!r}")
    if kind == "value":
        if "clip_value" not in cfg:
            raise ConfigError(path, "clip_grad type 'value' needs 'clip_value'")
        return call(path, "clip_grad", clip_by_value, {"clip_value": check_number(
            f"{path}.clip_value", cfg["clip_value"], positive=True)})  # fmt: skip
    if "max_norm" not in cfg:
        raise ConfigError(path, "clip_grad needs 'max_norm' (e.g. dict(max_norm=35, norm_type=2))")
    kwargs = {"max_norm": check_number(f"{path}.max_norm", cfg["max_norm"], positive=True)}
    if "norm_type" in cfg:
        kwargs["norm_type"] = check_number(f"{path}.norm_type", cfg["norm_type"])
    if "error_if_nonfinite" in cfg:
        kwargs["error_if_nonfinite"] = bool(cfg["error_if_nonfinite"])
    return call(path, "clip_grad", clip, kwargs)


def _defaults(factory: Callable[..., Any]) -> dict[str, Any]:
    params = inspect.signature(factory).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


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
    check_allowed(path, optim_wrapper, WRAPPER_KEYS[wrapper], wrapper)
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
        and all(
            (isinstance(b, int | float) and not isinstance(b, bool))
            or (isinstance(b, MemberValues) and check_number(f"{path}.optimizer.betas", b))
            for b in kwargs["betas"]
        )
    ):
        raise ConfigError(
            f"{path}.optimizer.betas",
            f"expected a pair of numbers like (0.9, 0.999), got {kwargs['betas']!r}",
        )
    given = {**_defaults(factory), **kwargs}
    for key in ("lr", "momentum", "weight_decay", "eps"):
        if key in kwargs:
            check_number(f"{path}.optimizer.{key}", kwargs[key])

    # A sweep's per-member values (MemberValues) are bases too: the schedules take vectors.
    numeric = int | float | MemberValues
    bases = {k: given[k] for k in ("lr", "weight_decay") if isinstance(given.get(k), numeric)}
    if isinstance(given.get("momentum"), numeric):
        bases["momentum"] = given["momentum"]
    elif isinstance(given.get("betas"), tuple):
        bases["momentum"] = given["betas"][0]
    for key, value in given.items():  # other numeric hyperparameters a ParamScheduler may drive
        if isinstance(value, numeric) and not isinstance(value, bool):
            bases.setdefault(key, value)

    what = f"optimizer {opt_cfg['type']}"
    items = schedule_items(param_scheduler)
    if items:
        # A scheduled hyperparameter reaches the factory as a schedule, which its number
        # checks (lr >= 0, momentum in [0, 1], ...) do not see: run them on the configured
        # numbers first, with the Python API's own messages.
        call(f"{path}.optimizer", what, factory, kwargs)
    schedules, plateaus = build_schedules(
        items, bases, epoch_length=epoch_length, max_epochs=max_epochs, max_iters=max_iters,
        by_epoch_loop=by_epoch_loop, paths=item_paths(param_scheduler, len(items)),
        valid=valid_ranges(given),
    )  # fmt: skip
    n = check_number(
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
        check_paramwise_values(f"{path}.paramwise_cfg", paramwise_cfg)
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
        raise paramwise_error(path, err, default=default) from err
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


def _scaler_kwargs(path: str, optim_wrapper: Mapping[str, Any]) -> dict[str, Any]:
    """AmpOptimWrapper's ``loss_scale``: ``'dynamic'`` (GradScaler's defaults), a number (a
    static scale) or a dict of GradScaler arguments."""
    loss_scale = optim_wrapper.get("loss_scale", "dynamic")
    if loss_scale == "dynamic":
        return {}
    if isinstance(loss_scale, int | float) and not isinstance(loss_scale, bool):
        return {
            "init_scale": float(check_number(path, loss_scale, positive=True)),
            "dynamic": False,
        }
    if isinstance(loss_scale, Mapping):
        check_allowed(path, loss_scale, _SCALER_KEYS, "loss_scale (GradScaler arguments)")
        kwargs = dict(loss_scale)
        if not kwargs.pop("enabled", True):
            raise ConfigError(f"{path}.enabled", "use OptimWrapper instead of a disabled scaler")
        return kwargs
    raise ConfigError(
        path, f"must be 'dynamic', a number or a dict of GradScaler arguments, got {loss_scale!r}"
    )
