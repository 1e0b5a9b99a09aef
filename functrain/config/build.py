"""A whole mmengine-style config -> a :class:`functrain.loops.Runner`.

:func:`build_runner` reads the sections an mmengine ``Runner`` reads, in its order:
``custom_imports`` (imported first, so their registrations exist), ``default_scope``
(ignored, with a log line: functrain has one scope), ``env_cfg`` / ``launcher``,
``randomness`` (seeds set before the model is built), ``model``, the data loaders,
``train_cfg`` / ``val_cfg`` / ``test_cfg``, ``optim_wrapper`` + ``param_scheduler`` (see
:mod:`functrain.config.optim`), ``auto_scale_lr``, ``default_hooks`` (merged by name into the
defaults; ``None`` removes one) and ``custom_hooks`` (with ``priority``), ``work_dir``,
``resume``, ``load_from``, ``log_level``.

Models follow mmengine's ``BaseModel`` calling convention: a batch that is a tuple/list is
passed as ``model(*batch, mode=...)``, a dict as ``model(**batch, mode=...)``. In
``mode='loss'`` the model returns a loss tensor or a dict of them, summed like mmengine's
``parse_losses`` (every key containing ``'loss'``; the others are logged); in
``mode='predict'`` its outputs go to the evaluator (``val_evaluator``).

Not mmengine: the default ``collate_fn`` is torch's ``default_collate`` (mmengine's is
``pseudo_collate`` followed by the model's data preprocessor); name
``collate_fn=dict(type='pseudo_collate')`` to get mmengine's.
"""

from __future__ import annotations

import importlib
import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from functrain.config.builtin_registries import MODELS
from functrain.config.config_dict import to_plain
from functrain.config.dataloaders import build_dataloader, seed_from_config
from functrain.config.errors import ConfigError, check_allowed, error_text
from functrain.config.loops_hooks import build_eval_loop, build_hooks, build_train_loop
from functrain.config.model_calls import (
    loss_fn,
    parse_losses,
)
from functrain.config.optim import OptimizerPlan, build_optimizer

# Some names are re-exported from the modules they moved to when the config package was
# split by what each module holds, so that imports from here keep working.
__all__ = [
    "KNOWN_KEYS",
    "Built",
    "build_dataloader",
    "build_model",
    "build_runner",
    "build_training",
    "check_top_level",
    "compile_option",
    "import_custom_modules",
    "parse_losses",
    "plan_training",
    "to_plain",
]

logger = logging.getLogger("functrain.config")
#: Top-level keys a config may have (others are the user's own variables, unless they look
#: like a misspelling of one of these).
KNOWN_KEYS = (
    "model", "train_dataloader", "val_dataloader", "test_dataloader", "train_cfg", "val_cfg",
    "test_cfg", "optim_wrapper", "param_scheduler", "val_evaluator", "test_evaluator",
    "default_hooks", "custom_hooks", "custom_imports", "default_scope", "env_cfg", "launcher",
    "log_level", "log_processor", "load_from", "resume", "work_dir", "randomness",
    "auto_scale_lr", "visualizer", "experiment_name", "compile",
)  # fmt: skip
_IGNORED_WITH_NOTE = {
    "log_processor": "the logger's window_size / by_epoch options are on LoggerHook",
}
#: MMCV 1.x / MMDetection 2.x keys: mmengine's runner ignores them, so a config that still
#: has them trains without what they say. Building warns, naming the replacement.
LEGACY_KEYS = {
    "optimizer_config": "optim_wrapper (clip_grad=..., accumulative_counts=...)",
    "lr_config": "param_scheduler",
    "momentum_config": "param_scheduler (*Momentum schedulers)",
    "runner": "train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=...)",
    "total_epochs": "train_cfg=dict(max_epochs=...)",
    "checkpoint_config": "default_hooks=dict(checkpoint=dict(type='CheckpointHook', ...))",
    "log_config": "default_hooks=dict(logger=dict(type='LoggerHook', ...))",
    "evaluation": "val_cfg, val_evaluator and train_cfg.val_interval",
    "fp16": "optim_wrapper=dict(type='AmpOptimWrapper', ...)",
    "workflow": "train_cfg / val_cfg",
}


class Built:
    """What :func:`build_runner` made, besides the runner: for tests and :func:`explain`.

    Attributes:
        runner: the :class:`~functrain.loops.Runner`.
        model: the model module (its own tensors are the initial ones; training updates
            ``runner.state``).
        plan: the :class:`~functrain.config.optim.OptimizerPlan` (``None`` without training).
        device: where the state lives.
        cfg: the config as plain dicts.
    """

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def import_custom_modules(custom_imports: Any) -> list[str]:
    """mmengine's ``custom_imports``: import each module so its registrations take effect.

    Args:
        custom_imports: ``dict(imports=['pkg.mod', ...], allow_failed_imports=False)``.

    Returns:
        The modules imported.
    """
    if custom_imports is None:
        return []
    path = "custom_imports"
    if not isinstance(custom_imports, Mapping):
        raise ConfigError(path, f"must be dict(imports=[...]), got {custom_imports!r}")
    check_allowed(path, custom_imports, ("imports", "allow_failed_imports"), path)
    imports = custom_imports.get("imports", [])
    if isinstance(imports, str):
        imports = [imports]
    if not isinstance(imports, list | tuple):
        raise ConfigError(f"{path}.imports", f"must be a list of module names, got {imports!r}")
    done = []
    for i, name in enumerate(imports):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{path}.imports[{i}]", f"must be a module name (str), got {name!r}")
        try:
            importlib.import_module(name)
        except ImportError as err:
            if custom_imports.get("allow_failed_imports", False):
                warnings.warn(
                    f"custom_imports.imports[{i}]: {name} failed to import ({err}); skipped "
                    "(allow_failed_imports=True)",
                    stacklevel=2,
                )
                continue
            raise ConfigError(
                f"{path}.imports[{i}]", f"cannot import {name!r}: {err}{_import_hint(name)}"
            ) from err
        done.append(name)
    return done


def _import_hint(name: str) -> str:
    """For ``'pkg.mod.MyClass'``: import the module that registers it, not the class."""
    module, _, attr = name.rpartition(".")
    try:
        found = hasattr(importlib.import_module(module), attr) if module else False
    except ImportError:
        found = False
    return f"; list the module that registers it ({module!r}), not {attr!r} itself" if found else ""


def _auto_scale_lr(cfg: Mapping[str, Any], optim_wrapper: Mapping[str, Any], batch: int) -> Any:
    """mmengine's ``auto_scale_lr``: ``lr *= world_size * batch_size / base_batch_size``."""
    scale = cfg.get("auto_scale_lr")
    if scale is not None and not isinstance(scale, Mapping):
        raise ConfigError(
            "auto_scale_lr", f"must be dict(enable=..., base_batch_size=...), got {scale!r}"
        )
    if not scale or not scale.get("enable", False):
        return optim_wrapper
    if "base_batch_size" not in scale:
        raise ConfigError("auto_scale_lr", "needs 'base_batch_size' when enable=True")
    base = scale["base_batch_size"]
    if isinstance(base, bool) or not isinstance(base, int | float) or base <= 0:
        raise ConfigError("auto_scale_lr.base_batch_size", f"expected a number > 0, got {base!r}")
    from functrain.ranks import get_world_size

    ratio = get_world_size() * batch / scale["base_batch_size"]
    optimizer = dict(optim_wrapper["optimizer"])
    optimizer["lr"] = optimizer["lr"] * ratio
    logger.info("auto_scale_lr: lr scaled by %s to %s", ratio, optimizer["lr"])
    return {**optim_wrapper, "optimizer": optimizer}


def check_top_level(cfg: Mapping[str, Any]) -> None:
    """A top-level key that looks like a misspelt known key is an error."""
    import difflib

    for key in cfg:
        if key in KNOWN_KEYS or key.startswith("_"):
            continue
        close = difflib.get_close_matches(key.lower(), KNOWN_KEYS, n=1, cutoff=0.8)
        if close:
            raise ConfigError(key, f"unknown config key {key!r}; did you mean {close[0]!r}?")
        if key in LEGACY_KEYS:
            warnings.warn(
                f"{key}: an MMCV 1.x / MMDetection 2.x key, which mmengine and functrain ignore; "
                f"use {LEGACY_KEYS[key]}",
                UserWarning,
                stacklevel=3,
            )


def compile_option(value: Any) -> bool | str:
    """The config's ``compile`` (mmengine's spelling: a bool, or a dict of ``torch.compile``
    options) as :func:`functrain.make_train_step`'s ``compile``: ``False``, ``True`` or a
    ``torch.compile`` mode name. Of the dict, ``mode`` is used; ``backend='inductor'``,
    ``fullgraph`` and ``dynamic=False`` are what functrain does anyway; other keys are errors
    (functrain compiles the whole step, so mmengine's ``target`` has no meaning here)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(
            "compile", f"expected a bool or a dict of torch.compile options, got {value!r}"
        )
    accepted = {"mode", "backend", "fullgraph", "dynamic"}
    for key in value:
        if key not in accepted:
            raise ConfigError(
                f"compile.{key}",
                f"functrain reads only {sorted(accepted)} of the compile options, got {key!r}",
            )
    if value.get("backend", "inductor") != "inductor":
        raise ConfigError(
            "compile.backend", f"only 'inductor' is supported, got {value['backend']!r}"
        )
    if value.get("dynamic", False):
        raise ConfigError("compile.dynamic", "functrain compiles one program per batch shape")
    mode = value.get("mode")
    if mode is not None and not isinstance(mode, str):
        raise ConfigError("compile.mode", f"expected a torch.compile mode name, got {mode!r}")
    return mode or True


def build_model(cfg: Mapping[str, Any], device: torch.device | str = "cpu") -> torch.nn.Module:
    """The config's ``model`` (a dict built from ``MODELS``, or a module), on ``device``."""
    if "model" not in cfg:
        raise ConfigError("model", "the config needs a 'model' (e.g. model=dict(type='DigitsNet'))")
    model_cfg = cfg["model"]
    model = (
        model_cfg if isinstance(model_cfg, torch.nn.Module) else MODELS.build(model_cfg, "model")
    )
    if not isinstance(model, torch.nn.Module):
        raise ConfigError("model", f"built a {type(model).__name__}, not a torch.nn.Module")
    return model.to(device)


def build_training(
    cfg: Mapping[str, Any],
    model: torch.nn.Module,
    *,
    seed: int | None = None,
    rank: int = 0,
    diff_rank_seed: bool = False,
    data_parallel: bool = False,
) -> tuple[Any, OptimizerPlan]:
    """The train loop (with its data loader) and the optimizer plan of a config."""
    for key in ("train_dataloader", "train_cfg", "optim_wrapper"):
        if cfg.get(key) is None:
            raise ConfigError(key, f"training needs {key} (the config has the other train keys)")
    loader = build_dataloader(
        cfg["train_dataloader"], "train_dataloader", seed=seed, rank=rank,
        diff_rank_seed=diff_rank_seed,
    )  # fmt: skip
    train_loop = build_train_loop(cfg["train_cfg"], loader)
    by_epoch = bool(train_loop.by_epoch)
    optim_wrapper = _auto_scale_lr(cfg, cfg["optim_wrapper"], loader.batch_size or 1)
    plan = build_optimizer(
        optim_wrapper,
        model,
        param_scheduler=cfg.get("param_scheduler"),
        epoch_length=len(loader) if by_epoch else None,
        max_epochs=train_loop.max_epochs,
        max_iters=train_loop.max_iters,
        by_epoch_loop=by_epoch,
        data_parallel=data_parallel,
    )
    return train_loop, plan


def plan_training(
    cfg: Mapping[str, Any], model: torch.nn.Module | None = None
) -> tuple[torch.nn.Module, Any, OptimizerPlan]:
    """``(model, train loop, optimizer plan)`` of a config on the CPU, for inspecting it
    (``functrain explain`` / ``schedule``): the config is checked and its ``custom_imports``
    imported as :func:`build_runner` does, but nothing is trained, seeded or written."""
    cfg = to_plain(cfg)
    check_top_level(cfg)
    import_custom_modules(cfg.get("custom_imports"))
    model = model if model is not None else build_model(cfg, "cpu")
    train_loop, plan = build_training(cfg, model, seed=0)
    return model, train_loop, plan


def _env_error(launcher: str, err: BaseException) -> ConfigError:
    """``setup_env``'s error at the key it names (``env_cfg.mp_cfg.mp_start_method``)."""
    text = error_text(err)
    if launcher not in ("none", "pytorch"):
        return ConfigError("launcher", text)
    unknown = re.match(r"unknown (env_cfg(?:\.\w+)*) key '(\w+)'", text)
    if unknown:
        return ConfigError(f"{unknown[1]}.{unknown[2]}", text)
    named = re.match(r"(env_cfg(?:\.\w+)*)", text)
    return ConfigError(named[1] if named else "env_cfg", text)


def _first_group_values(
    cfg: Mapping[str, Any], model: torch.nn.Module, plan: OptimizerPlan
) -> dict[str, Any]:
    """``{name: fn(iteration)}`` for the scalars mmengine would log differently from the
    state's values (see :class:`~functrain.config.hooks.FirstGroupScalars`), or ``{}``."""
    if plan.plateaus:  # ReduceOnPlateau changes the state's values: log those
        return {}
    first = next(iter(model.named_parameters()), (None, None))
    per_param = bool(cfg["optim_wrapper"].get("paramwise_cfg")) or (
        "constructor" in cfg["optim_wrapper"]
    )
    mult = plan.multipliers.get(first[0]) if per_param and first[1].requires_grad else None
    lr_mult = mult.lr_mult if mult is not None else 1.0
    values: dict[str, Any] = {}
    lr = plan.schedules.get("lr")
    base = plan.optimizer.get("lr")
    if lr_mult != 1.0 and isinstance(base, int | float):
        rebase = getattr(lr, "with_base", None)
        if lr is None:
            values["lr"] = lambda i: base * lr_mult
        elif rebase is not None:  # mmengine steps each group from its own initial lr
            values["lr"] = rebase(base * lr_mult)
        else:
            values["lr"] = lambda i: lr(i) * lr_mult
    elif lr is not None and plan.accumulative_counts > 1:
        values["lr"] = lr
    if "momentum" in plan.schedules and plan.accumulative_counts > 1:
        values["momentum"] = plan.schedules["momentum"]
    if per_param and len(plan.multipliers) > 1 and isinstance(base, int | float):
        # mmengine's optimizer then has several param groups and also logs `base_lr`, the
        # schedule of its unscaled base group.
        values["base_lr"] = lr if lr is not None else (lambda i: base)
    return values


def _sharded_checkpoint_hooks(plan: OptimizerPlan | None) -> dict[str, Any]:
    """A sharded optimizer state is gathered whole into checkpoints and re-sharded on load."""
    if plan is None or not plan.sharded:
        return {}
    from functrain.distributed.zero import gather_optimizer_state, shard_optimizer_state

    return {
        "state_for_checkpoint": gather_optimizer_state,
        "state_from_checkpoint": shard_optimizer_state,
    }


def _visualizer(cfg: Mapping[str, Any], runner: Any) -> Any:
    """The config's ``visualizer`` (``save_dir``: ``<log_dir>/vis_data``, mmengine's place),
    with the callback that records the config and closes it per run; ``None`` without one.
    A backend whose package is missing stops here, before training, naming the extra."""
    spec = cfg.get("visualizer")
    if spec is None:
        return None
    from functrain.visualization import MissingBackendPackage, VisualizerRun, build_visualizer

    try:
        vis = build_visualizer(spec, runner.log_dir / "vis_data")
    except MissingBackendPackage as err:
        raise ConfigError("visualizer.vis_backends", str(err)) from None
    except (ValueError, TypeError) as err:
        text = error_text(err)
        path, _, reason = text.partition(": ")  # the message names the key when it can
        if not path.startswith("visualizer") or not reason:
            path, reason = "visualizer", text
        raise ConfigError(path, reason) from err
    runner.register_callback(VisualizerRun(cfg))
    return vis


def build_runner(
    cfg: Mapping[str, Any],
    *,
    work_dir: str | Path | None = None,
    resume: bool | str | None = None,
    load_from: str | None = None,
    device: str | torch.device | None = None,
    launcher: str | None = None,
    compile: bool | str | Mapping[str, Any] | None = None,
) -> Built:
    """Build a runner from an mmengine-style config.

    Args:
        cfg: the config (a dict or a loaded ``Config``).
        work_dir: overrides ``cfg['work_dir']`` (default when neither: a temporary dir).
        resume: overrides ``cfg['resume']``: ``True`` resumes from the work dir's last
            checkpoint, a path from that file.
        load_from: overrides ``cfg['load_from']``.
        device: ``'cpu'``, ``'cuda'`` (default: CUDA when available).
        launcher: overrides ``cfg['launcher']``: ``'none'`` or ``'pytorch'`` (torchrun).
        compile: overrides ``cfg['compile']`` (mmengine's key): ``True``, a dict of
            ``torch.compile`` options of which functrain reads ``mode`` (e.g.
            ``dict(mode='reduce-overhead')``), or a mode name: the train step is compiled as
            one program (:func:`functrain.make_train_step`'s ``compile``).

    Returns:
        :class:`Built` with the runner, model, optimizer plan and device.

    Raises:
        ConfigError: naming the offending key path.

    Example:
        >>> built = build_runner(load_config("examples/configs/digits_adamw.py"))  # doctest: +SKIP
        >>> built.runner.train()  # doctest: +SKIP
    """
    from functrain.callbacks import ReduceOnPlateauCallback
    from functrain.distributed.comm import get_rank, get_world_size, setup_env
    from functrain.loops import Runner
    from functrain.state import TrainState
    from functrain.step import make_train_step

    cfg = to_plain(cfg)
    if not isinstance(cfg, Mapping):
        raise ConfigError("", f"a config must be a dict, got {type(cfg).__name__}")
    check_top_level(cfg)
    work_dir = work_dir if work_dir is not None else cfg.get("work_dir")
    if work_dir is not None and Path(work_dir).exists() and not Path(work_dir).is_dir():
        # Checked before anything is built (the runner would fail creating its log dir).
        raise ConfigError("work_dir", f"{str(work_dir)!r} is a file, not a directory")
    import_custom_modules(cfg.get("custom_imports"))
    scope = cfg.get("default_scope")
    if scope not in (None, "functrain"):
        logger.info("default_scope=%r ignored: functrain has one registry scope", scope)
    for key, why in _IGNORED_WITH_NOTE.items():
        if cfg.get(key) is not None:
            logger.info("%s ignored: %s", key, why)
    launcher = launcher or cfg.get("launcher", "none")
    try:
        setup_env(cfg.get("env_cfg"), launcher)
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise _env_error(launcher, err) from err
    rank = get_rank()
    seed = seed_from_config(cfg, rank)
    diff_rank_seed = bool((cfg.get("randomness") or {}).get("diff_rank_seed", False))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        from functrain.ranks import get_local_rank

        device = torch.device("cuda", get_local_rank())

    model = build_model(cfg, device)
    data_parallel = get_world_size() > 1
    train_loop = plan = train_step = None
    if cfg.get("train_cfg") is not None or cfg.get("train_dataloader") is not None:
        train_loop, plan = build_training(
            cfg, model, seed=seed, rank=rank, diff_rank_seed=diff_rank_seed,
            data_parallel=data_parallel,
        )  # fmt: skip
        state = TrainState.create(model, plan.tx, device=device)
        # The transform averages the gradients itself when data_parallel (see build_optimizer).
        train_step = make_train_step(
            model,
            loss_fn(device),
            plan.tx,
            autocast=plan.autocast,
            compile=compile_option(compile if compile is not None else cfg.get("compile")),
        )
    else:
        from functrain.transforms.base import identity

        state = TrainState.create(model, identity(), device=device)

    if data_parallel:
        from functrain.distributed.data_parallel import broadcast_state

        state = broadcast_state(state)  # every rank starts from rank 0's tensors
    val_loop, _ = build_eval_loop(cfg, "val", model, device, seed)
    test_loop, _ = build_eval_loop(cfg, "test", model, device, seed)
    defaults, custom = build_hooks(cfg)
    if plan is not None:
        logged = _first_group_values(cfg, model, plan)
        if logged:
            from functrain.config.hooks import FirstGroupScalars

            custom.append(FirstGroupScalars(logged))
        for plateau, target in plan.plateaus:
            if target not in ("lr", "momentum"):
                raise ConfigError(
                    "param_scheduler", f"ReduceOnPlateau of {target!r} is not supported"
                )
            custom.append(ReduceOnPlateauCallback(plateau, param=target))
    resume_value = resume if resume is not None else cfg.get("resume", False)
    runner = Runner(
        state=state,
        train_step=train_step,
        train_loop=train_loop,
        val_loop=val_loop,
        test_loop=test_loop,
        callbacks=custom,
        default_callbacks=defaults,
        work_dir=work_dir,
        resume=resume_value,
        load_from=load_from if load_from is not None else cfg.get("load_from"),
        experiment_name=cfg.get("experiment_name"),
        log_level=cfg.get("log_level", "INFO"),
        **_sharded_checkpoint_hooks(plan),
    )
    runner.model = model  # mmengine's runner.model, for hooks that inspect the module
    runner.visualizer = _visualizer(cfg, runner)
    return Built(runner=runner, model=model, plan=plan, device=device, cfg=cfg, seed=seed)
