"""The torch.optim name table that configs use."""

from __future__ import annotations

import pytest
import torch

import functrain as ft
from functrain.transforms.torch_names import TORCH_OPTIMIZERS, optimizer_from_config


def test_every_entry_is_a_torch_optim_class_with_the_same_arguments():
    import inspect

    for name, factory in TORCH_OPTIMIZERS.items():
        torch_cls = getattr(torch.optim, name)
        torch_args = set(inspect.signature(torch_cls).parameters) - {
            "params",
            "foreach",
            "fused",
            "capturable",
            "differentiable",
        }
        ours = set(inspect.signature(factory).parameters)
        assert torch_args <= ours, f"{name}: missing {sorted(torch_args - ours)}"


def test_config_builds_the_same_optimizer_as_the_alias():
    params = {"w": torch.randn(3, 2)}
    grads = {"w": torch.randn(3, 2)}
    a = optimizer_from_config(
        dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=1e-4, foreach=True)
    )
    b = ft.sgd(lr=0.02, momentum=0.9, weight_decay=1e-4)
    pa, _ = ft.apply_gradients(a, params, grads, a.init(params))
    pb, _ = ft.apply_gradients(b, params, grads, b.init(params))
    assert torch.equal(pa["w"], pb["w"])
    optimizer_from_config(
        dict(type="AdamW", lr=1e-4, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.05)
    )


def test_unknown_type_and_argument_are_named_with_suggestions():
    with pytest.raises(ValueError, match=r"unknown optimizer type 'Adamw'; did you mean 'AdamW'"):
        optimizer_from_config(dict(type="Adamw", lr=1e-3))
    with pytest.raises(ValueError, match=r"unknown argument 'momentun'; did you mean 'momentum'"):
        optimizer_from_config(dict(type="SGD", lr=1e-3, momentun=0.9))
    with pytest.raises(ValueError, match="needs a 'type'"):
        optimizer_from_config(dict(lr=1e-3))


def test_every_torch_optim_optimizer_has_an_entry():
    import inspect

    torch_classes = {
        name
        for name, obj in vars(torch.optim).items()
        if inspect.isclass(obj)
        and issubclass(obj, torch.optim.Optimizer)
        and obj is not torch.optim.Optimizer
    }
    assert torch_classes <= set(TORCH_OPTIMIZERS), sorted(torch_classes - set(TORCH_OPTIMIZERS))
