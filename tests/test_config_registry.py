"""Registries: mmengine's register_module decorator, lookups with suggestions, building with
key checks, and the built-in entries under mmengine's names."""

from __future__ import annotations

import pytest
import torch

import functrain as ft
from functrain.config import HOOKS, OPTIMIZERS, ConfigError, Registry
from functrain.config.registry_class import Lazy


def test_register_module_as_decorator_with_names_and_force():
    reg = Registry("THINGS", "thing")

    @reg.register_module()
    class Alpha:
        def __init__(self, x: int = 1) -> None:
            self.x = x

    @reg.register_module(name=["beta", "Beta"])
    def make_beta(y: float = 0.5) -> tuple[str, float]:
        return ("beta", y)

    assert reg.get("Alpha") is Alpha
    assert reg.get("beta") is make_beta and reg.get("Beta") is make_beta
    assert reg.register_module(module=Alpha) is Alpha  # the same object again: fine
    with pytest.raises(KeyError, match="already registered in THINGS"):
        reg.register_module("Alpha", module=make_beta)
    reg.register_module("Alpha", module=make_beta, force=True)
    assert reg.get("Alpha") is make_beta
    assert sorted(reg) == ["Alpha", "Beta", "beta"] and len(reg) == 3 and "beta" in reg


def test_unknown_type_names_the_registry_and_suggests():
    with pytest.raises(ConfigError) as err:
        OPTIMIZERS.get("AdamW2", "optim_wrapper.optimizer.type")
    assert err.value.path == "optim_wrapper.optimizer.type"
    assert "registry OPTIMIZERS" in str(err.value) and "did you mean 'AdamW'" in str(err.value)
    with pytest.raises(ConfigError, match="did you mean 'SGD'"):
        OPTIMIZERS.get("sgd")  # case-insensitive match comes first


def test_build_checks_keys_and_numbers_before_calling():
    reg = Registry("THINGS", "thing")
    calls = []

    @reg.register_module()
    def thing(lr: float = 0.1, momentum: float = 0.0) -> str:
        calls.append((lr, momentum))
        return "built"

    assert reg.build(dict(type="thing", lr=0.2), "a.b") == "built"
    with pytest.raises(ConfigError) as err:
        reg.build(dict(type="thing", momentun=0.9), "a.b")
    assert err.value.path == "a.b.momentun"
    assert "did you mean 'momentum'" in str(err.value) and "accepted: lr, momentum" in str(
        err.value
    )
    with pytest.raises(ConfigError) as err:
        reg.build(dict(type="thing", lr="0.01"), "a.b")
    assert err.value.path == "a.b.lr" and "got the string '0.01'" in str(err.value)
    with pytest.raises(ConfigError, match="needs a 'type'"):
        reg.build(dict(lr=0.1), "a.b")
    assert calls == [(0.2, 0.0)]  # the failing builds never reached the factory


def test_factory_errors_come_back_with_the_path():
    # The factory's message names the argument, so the path goes down to its key.
    with pytest.raises(ConfigError) as err:
        OPTIMIZERS.build(dict(type="SGD", lr=-1.0), "optim_wrapper.optimizer")
    assert err.value.path == "optim_wrapper.optimizer.lr"
    assert "Invalid lr: -1.0" in str(err.value)
    # A message that names no argument stays at the factory's path.
    with pytest.raises(ConfigError) as err:
        OPTIMIZERS.build(dict(type="SGD", lr=0.1, nesterov=True), "optim_wrapper.optimizer")
    assert err.value.path == "optim_wrapper.optimizer"
    assert "Nesterov momentum requires a momentum" in str(err.value)


def test_lazy_entries_resolve_on_get():
    reg = Registry("THINGS", "thing")
    reg.register_module("Linear", module=Lazy("torch.nn:Linear"))
    assert reg.get("Linear") is torch.nn.Linear
    layer = reg.build(dict(type="Linear", in_features=2, out_features=3), "model")
    assert isinstance(layer, torch.nn.Linear)


def test_builtin_names_cover_torch_optim_and_mmengine_hooks():
    import inspect

    torch_classes = {
        name
        for name, obj in vars(torch.optim).items()
        if inspect.isclass(obj)
        and issubclass(obj, torch.optim.Optimizer)
        and obj is not torch.optim.Optimizer
    }
    assert torch_classes <= set(OPTIMIZERS)
    tx = OPTIMIZERS.build(dict(type="AdamW", lr=1e-3, weight_decay=0.05), "optimizer")
    assert isinstance(tx, ft.GradientTransformation)
    for name in ("IterTimerHook", "LoggerHook", "CheckpointHook", "DistSamplerSeedHook",
                 "EMAHook", "EarlyStoppingHook", "ParamSchedulerHook", "RuntimeInfoHook"):  # fmt: skip
        assert name in HOOKS
    # Schedules live in the optimizer state: mmengine's ParamSchedulerHook builds nothing.
    assert HOOKS.build(dict(type="ParamSchedulerHook"), "default_hooks.param_scheduler") is None
    cb = HOOKS.build(dict(type="CheckpointHook", interval=2, max_keep_ckpts=3), "default_hooks.x")
    assert isinstance(cb, ft.callbacks.CheckpointCallback)


def test_ema_hook_maps_to_the_ema_callback_and_rejects_other_strategies():
    ema = HOOKS.build(dict(type="EMAHook", momentum=0.01, begin_iter=5), "custom_hooks[0]")
    assert isinstance(ema, ft.callbacks.EMA)
    with pytest.raises(ConfigError, match="StochasticWeightAverage"):
        HOOKS.build(dict(type="EMAHook", ema_type="StochasticWeightAverage"), "custom_hooks[0]")


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("optim_wraper", "optim_wrapper"),
        ("param_schedulers", "param_scheduler"),
        ("train_cfgs", "train_cfg"),
        ("default_hook", "default_hooks"),
        ("Model", "model"),
        ("custom_import", "custom_imports"),
    ],
)
def test_misspelt_top_level_keys_are_errors_and_user_variables_are_not(key, suggestion):
    from functrain.config.build import check_top_level

    with pytest.raises(ConfigError) as err:
        check_top_level({key: 1, "lr": 0.1})
    assert err.value.path == key
    assert str(err.value).endswith(f"unknown config key {key!r}; did you mean {suggestion!r}?")
    check_top_level({"lr": 0.1, "max_iters": 10, "interval": 5, "data_root": "x", "model": {}})
